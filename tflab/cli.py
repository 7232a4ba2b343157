"""The `tflab` command line: parse, call one function of the core, render.

Heavy libraries (TensorFlow, grpc, boto3, paramiko) are imported inside the commands that
need them, never here, so `tflab --help` starts fast.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import click
import typer

from infra.errors import InfraError
from tflab.errors import InputError, TflabError, exit_code_for

app = typer.Typer(
    name="tflab",
    help="A real TensorFlow GPU lab on AWS: `tflab up`, `tflab run-lab`, `tflab down`. "
         "`tflab run-lab --local` runs the whole lab on this machine.\n\n"
         "Exit codes: 0 ok, 1 unexpected error, 2 bad command line, 3 bad input or local setup, "
         "4 cloud refused, 5 host or server unreachable, 6 a lab step failed, 7 not found, "
         "8 a server rejected the request, 9 an SSH host key unknown, changed or revoked, "
         "130 interrupted by Ctrl-C (143 SIGTERM, 129 SIGHUP).",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _complete_lab_name(incomplete: str) -> list[str]:
    """Shell completion of --name: the labs in the local state whose names start with what was typed."""
    from tflab.state import StateStore

    try:
        return [name for name in StateStore().names() if name.startswith(incomplete)]
    except (OSError, TflabError):  # an unusable state home: nothing to offer, and no trace in the shell
        return []


# ---------------------------------------------------------------- options shared by several commands

NAME_HELP = "The lab's name."
REGION_HELP = "AWS region [default: --profile's, AWS_REGION, AWS_DEFAULT_REGION or ~/.aws/config]."
PROFILE_HELP = "AWS profile [default: AWS_PROFILE or 'default']."
HOST_HELP = "Any machine instead of a lab: user@address[:port]."
IDENTITY_HELP = "Private key file [default: the lab's key; with --host, your SSH agent and ~/.ssh keys]."
KNOWN_HOSTS_HELP = "known_hosts file [default: the lab's own; with --host, ~/.ssh/known_hosts]."
ACCEPT_HELP = ("Trust an unknown host key on first use and record it (for a lab made by `up`: when its console "
               "shows no fingerprints); a changed key is always refused.")

LabName = Annotated[str, typer.Option("--name", help=NAME_HELP, autocompletion=_complete_lab_name)]
Region = Annotated[Optional[str], typer.Option("--region", help=REGION_HELP)]
Profile = Annotated[Optional[str], typer.Option("--profile", help=PROFILE_HELP)]
SshHostSpec = Annotated[Optional[str], typer.Option("--host", help=HOST_HELP)]
Identity = Annotated[Optional[str], typer.Option("--identity", "-i", help=IDENTITY_HELP)]
KnownHosts = Annotated[Optional[str], typer.Option("--known-hosts", help=KNOWN_HOSTS_HELP)]
AcceptNewHostKey = Annotated[bool, typer.Option("--accept-new-host-key", help=ACCEPT_HELP)]


def _console(json_mode: bool):
    from tflab.console import Console

    return Console(json_mode=json_mode)


@app.command("run-lab")
def run_lab(
    ctx: typer.Context,
    local: bool = typer.Option(False, "--local", help="Run the whole lab on this machine: no cloud, no SSH."),
    name: LabName = "lab",
    host: SshHostSpec = None,
    hosts: Optional[str] = typer.Option(None, "--hosts",
                                        help="Train across several machines: user@a,user@b,... (each as --host takes "
                                             "it); the first is the chief, which also serves. One worker on each. "
                                             "TensorFlow's worker ports (from 23456) take no authentication: use "
                                             "machines on a private network."),
    identity: Identity = None,
    known_hosts: KnownHosts = None,
    accept_new_host_key: AcceptNewHostKey = False,
    python: Optional[str] = typer.Option(None, "--python", help="The host's interpreter, if it already has TensorFlow "
                                                               "and the rest [default: a venv the bootstrap makes]."),
    workdir: str = typer.Option("~/tflab", "--workdir", help="Folder on the host."),
    ssh_timeout: Optional[float] = typer.Option(None, "--ssh-timeout", min=0,
                                                help="Seconds to wait for SSH to answer [default: 600 for a lab "
                                                     "made by `up`, which may still be booting; --host: 0, one try]."),
    detach: bool = typer.Option(False, "--detach", help="Leave at once after the report (services keep running on the host)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the results here [default: ./tflab-results/<lab>]."),
    steps: int = typer.Option(100, "--steps", min=1, max=10_000_000, help="Gradient descent steps."),
    learning_rate: float = typer.Option(0.001, "--learning-rate", help="Learning rate (> 0, finite)."),
    num_examples: int = typer.Option(60, "--num-examples", min=2, max=10_000_000, help="Number of noisy points."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1,
                                        help="Random seed; the same seed gives the same run."),
    port: int = typer.Option(9000, "--port", min=1, max=65535,
                             help="--local: model server gRPC port (a free one if taken)."),
    rest_port: int = typer.Option(8501, "--rest-port", min=0, max=65535,
                                  help="--local: REST port, 0 for none (a free one if taken)."),
    tensorboard_port: int = typer.Option(6006, "--tensorboard-port", min=1, max=65535,
                                         help="--local: TensorBoard port (a free one if taken)."),
    builtin_server: bool = typer.Option(False, "--builtin-server",
                                        help="Use tflab's stand-in server even where tensorflow_model_server exists."),
    workers: int = typer.Option(1, "--workers", min=1, max=16,
                                help="Train across this many TensorFlow processes on the host "
                                     "(MultiWorkerMirroredStrategy); the same seed gives the same weights as one "
                                     "[default: 1; with --hosts, one per host]."),
    workload: Optional[str] = typer.Option(None, "--workload", click_type=click.Choice(["mlp"]),
                                           help="After the lab's training, a workload where distribution matters, "
                                                "timed per epoch (mlp: a 400k-parameter MLP on synthetic data)."),
    epochs: int = typer.Option(3, "--epochs", min=1, max=1000, help="Epochs of --workload."),
    keep_running: bool = typer.Option(False, "--keep-running",
                                      help="--local: keep TensorBoard and the model server up until Ctrl-C."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
) -> None:
    """Run every step of the lab, serve the model and call it over gRPC; print the report.

    On a lab made by `tflab up` (--name), on any SSH machine (--host), or here (--local).
    """
    if not 0 < learning_rate < float("inf"):
        raise typer.BadParameter("must be > 0 and finite", param_hint="--learning-rate")
    from tflab.lab import HOST_PORTS, LabOptions
    from tflab.labs import open_run
    from tflab.report import render
    from tflab.signals import wait_for_interrupt

    console = _console(json_out)
    wanted = {"serving": port, "rest": rest_port, "tensorboard": tensorboard_port} if local else dict(HOST_PORTS)
    nodes = _hosts_option(hosts, local=local, host=host) if hosts is not None else None
    host_name = None  # a --host lab's name: --name when given, else the one derived from its address
    if (host is not None or nodes) and ctx.get_parameter_source("name") == click.core.ParameterSource.COMMANDLINE:
        host_name = _host_lab_name(name)
    options = LabOptions(steps=steps, learning_rate=learning_rate, num_examples=num_examples, seed=seed,
                         ports=wanted, prefer_builtin_server=builtin_server, workers=workers, workload=workload,
                         epochs=epochs)
    with open_run(options, console, local=local, name=name, host=host, identity=identity, known_hosts=known_hosts,
                  accept_new=accept_new_host_key, python=python, workdir=workdir, ssh_timeout=ssh_timeout,
                  out=out, hosts=nodes, host_name=host_name,
                  provider_of=lambda state: _provider(None, None, state)) as run:
        report = run.execute()
        console.result(report.to_json(), render(report))
        if not run.host.keeps_services:  # this machine: the services end with the command
            if keep_running:
                console.info(f"TensorBoard: {report.tensorboard.url}   model server: {report.server.address}   "
                             "(Ctrl-C to stop)")
                wait_for_interrupt()
            return
        again = f"`{report.tunnel}`"
        if not detach and sys.stdin.isatty() and sys.stdout.isatty():
            console.info("tunnels open: " + ", ".join(f"{k} {v}" for k, v in report.urls.items() if v)
                         + "   (Ctrl-C to close them; the services keep running on the host)")
            if not wait_for_interrupt(lambda: run.alive):
                console.warn(f"the SSH connection to {run.host.name} dropped; the services keep running there: "
                             f"{again} forwards them again at the same addresses")
            else:
                console.info(f"tunnels closed; the services keep running on the host: {again} opens them again at "
                             "the same addresses")
        else:
            console.info(f"the tunnels close now, so the addresses above do not answer until {again} opens them "
                         "again (the same local ports, where free); the services keep running on the host")


def _host_lab_name(name: str) -> str:
    """--name given with --host: the name the lab is remembered under; not the name of a lab made by `up`."""
    from tflab.state import StateStore, check_name

    if StateStore().load(check_name(name)) is not None:
        raise InputError(f"--name {name} is a lab made by `tflab up`, not a --host lab",
                         hint=f"give the machine's lab another --name, or drop --host to run on lab '{name}'")
    return name


def _hosts_option(value: str, *, local: bool, host: str | None) -> list[str]:
    """--hosts as a list of host specs (2 to 16, each checked as --host checks it, none twice)."""
    from tflab.ssh import parse_host

    if local or host is not None:
        raise InputError("--hosts cannot be combined with --local or --host",
                         hint="--hosts user@a,user@b runs across those machines; --local --workers N runs N "
                              "workers here")
    specs = [part.strip() for part in value.split(",")]
    if len(specs) < 2 or not all(specs):
        raise InputError(f"--hosts {value!r} does not name at least two machines",
                         hint="e.g. --hosts ubuntu@10.0.0.5,ubuntu@10.0.0.6 (for one machine, --host)")
    if len(specs) > 16:
        raise InputError(f"--hosts names {len(specs)} machines; at most 16", hint="name fewer machines")
    seen: dict[tuple, str] = {}
    for spec in specs:
        where = parse_host(spec)  # a malformed one: InputError naming it
        if where in seen:
            raise InputError(f"--hosts names {spec!r} twice (as {seen[where]!r})",
                             hint="name each machine (user, address and port) once")
        seen[where] = spec
    return specs


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model_base_path: Path = typer.Option(..., "--model-base-path",
                                         help="Folder holding the model's numeric version folders (1, 2, ...)."),
    model_name: str = typer.Option("nn", "--model-name", help="Name clients ask for."),
    port: int = typer.Option(9000, "--port", min=1, max=65535, help="gRPC port on 127.0.0.1."),
    rest_port: int = typer.Option(8501, "--rest-port", min=0, max=65535, help="REST port on 127.0.0.1, 0 for none."),
    builtin: bool = typer.Option(False, "--builtin", help="Use tflab's stand-in even where tensorflow_model_server exists."),
) -> None:
    """Serve a SavedModel over gRPC until Ctrl-C: TensorFlow Serving when installed, else tflab's stand-in.

    Further TensorFlow Serving flags (--enable_batching, --monitoring_config_file=...) go to the server as given.
    """
    from tflab.serving import serve_here

    serve_here(model_base_path, model_name=model_name, port=port, rest_port=rest_port, builtin=builtin,
               extra=list(ctx.args), console=_console(False))


@app.command(context_settings={"ignore_unknown_options": True})
def predict(
    xs: List[float] = typer.Argument(..., help="Inputs x to predict y for (negative numbers work as they are)."),
    address: str = typer.Option("127.0.0.1:9000", "--address", help="Model server gRPC address."),
    model: str = typer.Option("nn", "--model", help="Model name."),
    signature: str = typer.Option("prediction", "--signature", help="Signature name."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="A specific model version [default: latest]."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Deadline of the call, in seconds."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Call the served model's Predict over gRPC and print each x, its prediction and the noise-free value."""
    from tflab.client import ServingClient
    from tflab.lab import noise_free

    console = _console(json_out)
    with ServingClient(address, timeout=timeout) as client:
        result = client.predict(xs, model=model, signature=signature, version=version)
    rows = [{"x": x, "predicted": y, "noise_free": noise_free(x)} for x, y in zip(result.inputs, result.outputs)]
    document = {"address": address, "model": model, "version": result.version, "signature": result.signature,
                "predictions": rows, "seconds": round(result.seconds, 6)}
    text = [f"model {model} version {result.version} ({result.signature}) at {address}",
            f"{'x':>8} {'predicted':>12} {'noise-free':>11}"]
    text += [f"{r['x']:>8g} {r['predicted']:>12.6f} {r['noise_free']:>11g}" for r in rows]
    console.result(document, "\n".join(text))


# ---------------------------------------------------------------- the cloud lifecycle

def _confirm(yes: bool, action: str):
    """A confirm(question) that asks on a terminal, or refuses off one unless --yes."""
    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise InputError(f"refusing to {action} without --yes: standard input is not a terminal",
                             hint="add --yes to confirm")
        return typer.confirm(question, default=False, err=True)

    return confirm


def _provider(region: Optional[str], profile: Optional[str], state=None):
    from tflab.cloud import check_region, make_provider

    if region is not None:  # an empty --region is refused, not taken as "the default"
        check_region(region)
    if profile is not None and not profile.strip():
        raise InputError("--profile is empty", hint="give a profile from ~/.aws/config, or leave --profile out")
    if state is not None:
        region = region or state.region or None
        profile = profile or state.profile or None
    return make_provider(region, profile)


def _status_text(doc: dict) -> str:
    if not doc.get("exists"):
        return f"lab {doc['name']} ({doc['region']}): no instance (local state only)"
    cost = doc.get("cost_usd_estimate") or {}
    lines = [f"lab {doc['name']} ({doc['region']}): {doc['state']}"
             + (f" - {doc['stopped_why']}" if doc.get("stopped_why") else ""),
             f"  instance   {doc['instance_id']} {doc['instance_type']}{' (spot)' if doc.get('spot') else ''} "
             f"in {doc.get('zone')}",
             f"  address    {doc.get('public_ip') or '-'}"]
    for node in doc.get("nodes", []):
        lines.append(f"  node {node['index']}     {node['instance_id']} {node['state']} {node.get('public_ip') or '-'} "
                     f"(private {node.get('private_ip') or '-'}){' - the chief' if node['index'] == 0 else ''}")
    if doc.get("uptime_hours") is not None:
        lines.append(f"  uptime     {doc['uptime_hours']:.2f} h")
    if cost:
        price = f"${doc['hourly_usd']:.3f}/h ({doc['price_source']})" if doc.get("hourly_usd") else "price unknown"
        lines.append(f"  cost       about ${cost['total']:.2f} since it started (instance "
                     + (f"${cost['instance']:.2f}" if cost["instance"] is not None else "-")
                     + (f", public IPv4 ${cost['public_ipv4']:.2f}" if cost.get("public_ipv4") else "")
                     + f", {doc['volume_gb']} GiB disk ${cost['disk']:.2f}); {price}"
                     + (f" + public IPv4 ${doc['public_ipv4_hourly_usd']:.3f}/h" if doc.get("public_ipv4_hourly_usd")
                        else "")
                     + f" + disk ${doc['disk_hourly_usd']:.3f}/h")
    lines += [f"  note       {note}" for note in doc.get("notes", [])]
    view = doc.get("watchdog")
    if view:
        from tflab.autostop import summary

        lines.append(f"  autostop   {summary(view)}")
    if doc.get("key_path"):
        lines.append(f"  ssh        ssh -i {doc['key_path']} {doc['ssh_user']}@{doc['ssh_address'].rsplit(':', 1)[0]}")
    lines.append("  ports      " + ", ".join(f"{k} {v['host']} -> local {v['local']}" for k, v in doc["ports"].items()))
    return "\n".join(lines)


def _host_status_text(doc: dict) -> str:
    services = doc["services"]
    answering = sum(1 for s in services.values() if s["answers"])
    lines = [f"lab {doc['name']} (host {doc['address']}): {answering} of {len(services)} services answer",
             f"  workdir     {doc['workdir']}"]
    for name, service in services.items():
        lines.append(f"  {name:<11} port {service['port']} on the host: "
                     + ("running" if service["running"] else "not running")
                     + (", answers" if service["answers"] else ", does not answer"))
    lines.append(f"  autostop    the watchdog {'runs' if doc['watchdog_running'] else 'does not run'} "
                 f"(`tflab autostop --name {doc['name']}`)")
    lines.append(f"  next        tflab open --name {doc['name']}" + ("" if answering == len(services) and services
                                                                    else "   (starts what is down; nothing retrained)"))
    return "\n".join(lines)


@app.command()
def up(
    name: LabName = "lab",
    region: Region = None,
    profile: Profile = None,
    instance_type: str = typer.Option("g4dn.xlarge", "--instance-type", help="EC2 instance type (g4dn.xlarge: 1 NVIDIA T4)."),
    spot: bool = typer.Option(False, "--spot", help="A one-time spot instance (cheaper; AWS may reclaim it)."),
    nodes: int = typer.Option(1, "--nodes", min=1, max=16,
                              help="Instances in the lab, for training across machines (`run-lab` uses them all): "
                                   "one zone, a security group that lets them reach each other, node 0 the chief."),
    placement: str = typer.Option("cluster", "--placement", click_type=click.Choice(["cluster", "none"]),
                                  help="With --nodes: a cluster placement group (low latency between the nodes, "
                                       "where the type allows one), or none."),
    disk_gb: int = typer.Option(100, "--disk-gb", min=20, max=16384, help="Root volume size (gp3), GiB."),
    ami: Optional[str] = typer.Option(None, "--ami", help="An image id instead of the current Deep Learning AMI."),
    ami_parameter: Optional[str] = typer.Option(None, "--ami-parameter",
                                                help="The SSM parameter holding the image id "
                                                     "[default: the Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04)]."),
    ssh_cidr: Optional[str] = typer.Option(None, "--ssh-cidr", help="Who may SSH in [default: this machine's public address /32]."),
    subnet_id: Optional[str] = typer.Option(None, "--subnet-id", help="Launch in this subnet [default: the default VPC's]; "
                                                               "a public address is asked for, so it needs a route to "
                                                               "an internet gateway (else --ssh-host, over a VPN)."),
    ssh_host: Optional[str] = typer.Option(None, "--ssh-host", help="Reach the lab at this address instead of its public one (VPN, forwarded port)."),
    ssh_port: Optional[int] = typer.Option(None, "--ssh-port", help="SSH port of --ssh-host [default: 22]."),
    ssh_user: Optional[str] = typer.Option(None, "--ssh-user", help="SSH user [default: ubuntu]."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the instance is launched."),
    wait_timeout: float = typer.Option(900, "--wait-timeout", min=0, help="Seconds to wait for the instance to run."),
    host_key_timeout: float = typer.Option(240, "--host-key-timeout", min=0,
                                           help="Seconds to wait for the SSH host key fingerprints in the console output."),
    ssh_timeout: float = typer.Option(600, "--ssh-timeout", min=0,
                                      help="Seconds to wait for SSH to answer (an instance that stops meanwhile "
                                           "ends the wait at once)."),
    accept_new_host_key: AcceptNewHostKey = False,
    keep_on_failure: bool = typer.Option(False, "--keep-on-failure", help="Keep what a failed up created (for debugging)."),
    idle_stop: str = typer.Option("60m", "--idle-stop", help="Stop the lab after this long without activity "
                                                             "(SSH, tunnels, kernels, requests, GPU, steps): 30m, 2h, off."),
    max_lifetime: str = typer.Option("12h", "--max-lifetime",
                                     help="Stop it after this long whatever the activity (a safety net for a "
                                          "forgotten lab): 8h, off."),
    idle_action: Optional[str] = typer.Option(None, "--idle-action",
                                              click_type=click.Choice(["stop", "terminate"]),
                                              help="What the watchdog's shutdown does: stop (keeps the disk) or "
                                                   "terminate [default: stop; a spot lab can only terminate]."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before launching."),
    json_out: bool = typer.Option(False, "--json", help="Print the lab's state as JSON."),
) -> None:
    """Launch a GPU instance from the current Deep Learning AMI, wait until SSH answers with its verified
    host key (the host's bootstrap starts at boot), and remember it as a lab. An idle watchdog on the
    instance stops it after an hour without activity, and after 12 hours in any case (`tflab autostop`).
    With --nodes N, N instances in one zone for training across machines (`tflab run-lab` uses them all)."""
    from tflab.cloud import UpRequest, UpSettings, up_lab
    from tflab.state import StateStore

    if ami is not None and ami_parameter is not None:
        raise typer.BadParameter("give --ami or --ami-parameter, not both", param_hint="--ami")
    settings = UpSettings(profile=profile, wait=not no_wait, wait_timeout=wait_timeout,
                          host_key_timeout=host_key_timeout, keep_on_failure=keep_on_failure, ssh_host=ssh_host,
                          ssh_port=ssh_port, ssh_user=ssh_user, ssh_timeout=ssh_timeout,
                          accept_new_host_key=accept_new_host_key)
    request = UpRequest(name=name, instance_type=instance_type, spot=spot, nodes=nodes, placement=placement,
                        disk_gb=disk_gb, ami=ami, ami_parameter=ami_parameter, ssh_cidr=ssh_cidr,
                        subnet_id=subnet_id, idle_stop=idle_stop, max_lifetime=max_lifetime,
                        idle_action=idle_action, settings=settings)
    console = _console(json_out)
    state, action = up_lab(request, lambda known: _provider(region, profile, known), StateStore(), console,
                           confirm=_confirm(yes, "launch an instance"))
    doc = state.to_dict() | {"action": action}
    address = state.ssh_host or state.public_ip
    text = (f"lab '{name}' {action}: {state.instance_id} ({state.instance_type}) in {state.region}, "
            f"address {address or 'not yet known'}\n"
            + "".join(f"  node {n['index']}: {n['instance_id']} {n.get('public_ip') or '-'} "
                      f"(private {n.get('private_ip') or '-'})\n" for n in state.nodes)
            + f"next: tflab run-lab --name {name}   ...   tflab down --name {name}")
    console.result(doc, text)


@app.command()
def status(
    name: LabName = "lab",
    region: Region = None,
    profile: Profile = None,
    no_host: bool = typer.Option(False, "--no-host", help="Do not ask the lab host for its watchdog's state (SSH)."),
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show a lab: state (and why it stopped), type, address, uptime, what it costs, its autostop
    watchdog (idle for how long, when it acts), ports. For a lab run on any machine (run-lab --host): its
    address and whether each of its services runs and answers, asked over SSH (nothing on AWS)."""
    from tflab.hostlabs import status_any

    kind, doc = status_any(name, lambda state: _provider(region, profile, state), ask_host=not no_host)
    _console(json_out).result(doc, _host_status_text(doc) if kind == "host" else _status_text(doc))


@app.command("list")
def list_(
    region: Region = None,
    profile: Profile = None,
    json_out: bool = typer.Option(False, "--json", help="Print the labs as JSON."),
) -> None:
    """List every tflab lab: the labs made by `up` in the region (found by tags), and the labs run on any
    machine (run-lab --host) that this machine remembers (no AWS call for those)."""
    from tflab.hostlabs import list_all

    console = _console(json_out)
    doc = list_all(lambda state: _provider(region, profile, state), console)
    console.result(doc, _list_text(doc))


def _list_text(doc: dict) -> str:
    def cost(row: dict) -> str:
        total = (row.get("cost_usd_estimate") or {}).get("total")
        return f"${total:.2f}" if total is not None else "-"

    def kind(row: dict) -> str:
        count = len(row.get("nodes", [])) or 1
        return (f"{count} x " if count > 1 else "") + row.get("instance_type", "-")

    def line(r: dict) -> str:
        if r["kind"] == "host":
            return f"{r['name']:<16} {'host':<5} {'-':<10} {'-':<18} {r['address']:<16} {'-':<20} {'-':>8}"
        return (f"{r['name']:<16} {'up':<5} {r.get('state', '-'):<10} {kind(r):<18} "
                f"{r.get('public_ip') or '-':<16} {r.get('instance_id', '-'):<20} {cost(r):>8}")

    text = "\n".join(line(r) for r in doc["labs"])
    if text:
        text = (f"{'LAB':<16} {'KIND':<5} {'STATE':<10} {'TYPE':<18} {'ADDRESS':<16} {'INSTANCE':<20} "
                f"{'COST':>8}\n" + text)
    text = text or f"no tflab labs in {doc['region']}"
    return text + "".join(f"\n{d['name']:<16} damaged state file {d['path']} ({d['error']}): `tflab down --name "
                          f"{d['name']}` removes the lab by its tags and the file" for d in doc["damaged_states"])


@app.command()
def down(
    name: LabName = "lab",
    region: Region = None,
    profile: Profile = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before removing."),
    json_out: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Remove everything the lab created (found by tags), then check that nothing is left. For a lab run on
    any machine (run-lab --host): stop its services there and forget it here; nothing else on the machine
    is touched, and nothing on AWS is called."""
    from tflab.hostlabs import down_any

    console = _console(json_out)
    kind, report = down_any(name, lambda state: _provider(region, profile, state), console,
                            confirm=_confirm(yes, "remove a lab"))
    if kind == "host":
        console.result(report, f"lab '{name}' on {report['address']}: its services stopped, and the lab "
                               "forgotten here (nothing else on the machine was touched)")
    else:
        console.result(report, f"lab '{name}' in {report['region']}: "
                               + ("removed; nothing tagged with it is left" if report["removed"] else "nothing to remove"))


# ---------------------------------------------------------------- SSH

def _target(name: str, host: Optional[str], identity: Optional[str], known_hosts: Optional[str], accept_new: bool):
    """The SSH target of --host, else of the lab --name (its missing fingerprints read from the cloud once more),
    or of the --host lab run-lab remembered under that name (tflab.labs)."""
    from tflab.labs import resolve_target

    return resolve_target(name, host, identity, known_hosts, accept_new)


@app.command(context_settings={"ignore_unknown_options": True})
def ssh(
    command: Optional[List[str]] = typer.Argument(None, help="A command to run (after --); none: a shell."),
    name: LabName = "lab",
    host: SshHostSpec = None,
    identity: Identity = None,
    known_hosts: KnownHosts = None,
    accept_new_host_key: AcceptNewHostKey = False,
) -> None:
    """Open a shell on the lab (or --host), or run a command there and exit with its status."""
    from tflab.session import ssh_session

    status = ssh_session(_target(name, host, identity, known_hosts, accept_new_host_key), command, _console(False))
    if status is not None:  # else the system's ssh has taken this process's place
        raise typer.Exit(status)


@app.command()
def tunnel(
    name: LabName = "lab",
    host: SshHostSpec = None,
    identity: Identity = None,
    known_hosts: KnownHosts = None,
    accept_new_host_key: AcceptNewHostKey = False,
    forward: Optional[List[str]] = typer.Option(None, "--forward", "-L", help="Another forward, LOCAL:REMOTE (repeatable)."),
    no_lab_ports: bool = typer.Option(False, "--no-lab-ports", help="Only the --forward ports, not the lab's."),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="run-lab's --workdir on the host, where it records "
                                                                  "the ports its services chose [default: the lab's; "
                                                                  "~/tflab for --host]."),
    reconnect_tries: int = typer.Option(8, "--reconnect-tries", min=0, help="Reconnects to try when SSH drops."),
    client: str = typer.Option("auto", "--client", envvar="TFLAB_TUNNEL_CLIENT",
                               click_type=click.Choice(["auto", "openssh", "paramiko"], case_sensitive=False),
                               help="Who carries the forwards: auto (the system's ssh where present, else paramiko), "
                                    "openssh or paramiko. run-lab's tunnels follow $TFLAB_TUNNEL_CLIENT."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON line on stdout each time the forwards are up "
                                                        "(and one when SSH drops), for scripts."),
) -> None:
    """Forward the lab's ports to 127.0.0.1 here until Ctrl-C: Jupyter 8888->8000, TensorBoard 6006,
    Serving gRPC 9000 and REST 8501 (a taken local port moves to a free one); reconnects when SSH drops.
    Where a port was taken on the host, run-lab moved the service to another: the tunnel goes there.
    The local ports are the ones the lab's tunnels last used, where free: its URLs stay the same.
    Prints the lab's URLs, Jupyter's with its token (read from the host, never written here).
    The host key is verified by tflab first; the forwards then run in the system's `ssh` where present."""
    from tflab import labs
    from tflab.session import forward_lab
    from tflab.ssh import Connection
    from tflab.tunnels import parse_forward

    target = _target(name, host, identity, known_hosts, accept_new_host_key)
    extra = [parse_forward(spec) for spec in forward or []]
    if no_lab_ports and not extra:
        raise InputError("nothing to forward", hint="drop --no-lab-ports or add --forward LOCAL:REMOTE")
    if workdir is None:
        workdir = "~/tflab" if host is not None else _recorded_workdir(name)
    forward_lab(Connection(target), _console(json_out), key=labs.lab_key(name, host, target), workdir=workdir,
                extra=extra, lab_ports=not no_lab_ports, tries=reconnect_tries, client=client)


@app.command("open")
def open_(
    name: LabName = "lab",
    region: Region = None,
    profile: Profile = None,
    browser: bool = typer.Option(False, "--browser", help="Open Jupyter and TensorBoard in your browser "
                                                          "(Python's webbrowser)."),
    reconnect_tries: int = typer.Option(8, "--reconnect-tries", min=0, help="Reconnects to try when SSH drops."),
    client: str = typer.Option("auto", "--client", envvar="TFLAB_TUNNEL_CLIENT",
                               click_type=click.Choice(["auto", "openssh", "paramiko"], case_sensitive=False),
                               help="Who carries the forwards (as `tflab tunnel --client`)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON line with every URL (Jupyter's with its "
                                                        "token) each time the tunnels are up, as `tunnel --json`."),
) -> None:
    """Come back to a lab: start its services where they are down, with nothing retrained (the model server
    serves the last exported version; the notebooks and TensorBoard's logs are where they were), open the
    tunnels, and print the URLs, Jupyter's with its token (read from the host, never written here), until
    Ctrl-C. The URLs are the ones the lab's tunnels used before, where those ports are free here.
    A lab made by `up` must be running: a stopped one is started by `tflab up --name N` (open says so).
    For a lab run on any machine (run-lab --host), nothing on AWS is called."""
    from tflab.session import open_lab

    open_lab(name, _console(json_out), provider_of=lambda state: _provider(region, profile, state), browser=browser,
             tries=reconnect_tries, client=client)


@app.command()
def autostop(
    name: LabName = "lab",
    host: SshHostSpec = None,
    identity: Identity = None,
    known_hosts: KnownHosts = None,
    accept_new_host_key: AcceptNewHostKey = False,
    workdir: Optional[str] = typer.Option(None, "--workdir", help="Where the watchdog is on the host: a lab made by "
                                                                  "`up` has it in ~/tflab; on a --host it is in run-lab's "
                                                                  "--workdir [default: ~/tflab]."),
    idle: Optional[str] = typer.Option(None, "--idle", help="Act after this long without activity: 45s, 30m, 2h, off."),
    max_lifetime: Optional[str] = typer.Option(None, "--max-lifetime",
                                               help="Act after this long whatever the activity: 8h, off."),
    keep: Optional[str] = typer.Option(None, "--keep", help="Count the lab as active for this long from now: 2h, off."),
    off: bool = typer.Option(False, "--off", help="Turn the watchdog off: the lab runs until you stop it."),
    on: bool = typer.Option(False, "--on", help="Turn the watchdog back on."),
    json_out: bool = typer.Option(False, "--json", help="Print the watchdog's view as JSON."),
) -> None:
    """Show or change the idle watchdog of a lab (or --host): how long it has been idle, what is active,
    when it acts. A lab made by `up` powers itself off; on a --host machine the lab's services stop."""
    from tflab.autostop import parse_duration, render
    from tflab.labs import autostop_lab

    if off and on:
        raise typer.BadParameter("give --off or --on, not both", param_hint="--off")
    seconds = {key: parse_duration(value, option) if value is not None else None
               for key, value, option in (("idle", idle, "--idle"), ("max_lifetime", max_lifetime, "--max-lifetime"),
                                          ("keep", keep, "--keep"))}
    console = _console(json_out)
    view, where = autostop_lab(name, host, console, identity=identity, known_hosts=known_hosts,
                               accept_new=accept_new_host_key, workdir=workdir, off=off, on=on, **seconds)
    if off:
        console.warn(f"autostop is OFF on {where}: the lab keeps running (and billing) until you stop it")
    console.result(view, render(view, where))


@app.command("iam-policy")
def iam_policy(
    nodes: bool = typer.Option(True, "--nodes/--no-nodes",
                               help="With what `up --nodes N` needs (a cluster placement group)."),
    spot: bool = typer.Option(True, "--spot/--no-spot",
                              help="With what `up --spot` needs (the spot price; the Spot service-linked role once)."),
) -> None:
    """Print the least-privilege IAM policy tflab needs (JSON; infra/iam-policy.json), to attach to the
    IAM user or role you run it as: e.g. `tflab iam-policy > tflab.json; aws iam put-user-policy --user-name
    NAME --policy-name tflab --policy-document file://tflab.json`. --no-nodes --no-spot: one-node on-demand
    labs only."""
    import json

    from infra.iam import iam_policy as policy_for

    policy = policy_for(nodes=nodes, spot=spot)
    _console(False).result(policy, json.dumps(policy, indent=2))


def _recorded_workdir(name: str) -> str | None:
    """run-lab's workdir on a lab's host, as run-lab recorded it in the lab's state, or for a --host lab in
    its record (None before any run)."""
    from tflab.labs import recorded_workdir

    return recorded_workdir(name)


@app.command("ssh-config")
def ssh_config(name: LabName = "lab") -> None:
    """Print an OpenSSH config block for the lab, so that `ssh tflab-<name>` works (append it to ~/.ssh/config)."""
    from tflab.session import ssh_config_block

    console = _console(False)
    console.result({}, ssh_config_block(name, _target(name, None, None, None, False), console))


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app; turn expected failures into one line and an exit code.

    Signals are caught from the first instruction: SIGINT, SIGTERM and SIGHUP unwind the command
    (everything it started ends), and it exits with 128 + the signal's number.
    """
    from tflab import signals

    signals.install()
    try:
        # prog_name and complete_var fixed: `python -m tflab` completes and documents itself as `tflab`.
        code = app(args=argv, standalone_mode=False, prog_name="tflab", complete_var="_TFLAB_COMPLETE")
    except (TflabError, InfraError) as err:
        tail = getattr(err, "tail", "")
        if tail:
            sys.stderr.write("".join(f"  | {line}\n" for line in tail.splitlines()[-15:]))
        sys.stderr.write(f"tflab: error: {err.message}\n")
        if err.hint:
            sys.stderr.write(f"  hint: {err.hint}\n")
        sys.exit(int(exit_code_for(err)))
    except (typer.Abort, KeyboardInterrupt):
        _interrupted(signals.received())
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:
        # click's (or typer's vendored click's) usage errors: they know how to show themselves.
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            err.show()
            sys.exit(err.exit_code)
        raise
    if code == 130 and signals.received():  # typer turns a KeyboardInterrupt into the exit code 130
        _interrupted(signals.received())
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted(signum: int) -> None:
    """Say which signal stopped the command (its cleanup has run) and exit with 128 + its number."""
    signum = signum or signal.SIGINT
    sys.stderr.write(f"tflab: interrupted ({signal.Signals(signum).name})\n")
    sys.exit(128 + int(signum))
