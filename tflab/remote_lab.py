"""run-lab on a lab host over SSH: connect (host key verified), push remote/, bootstrap, then the
same pipeline as --local (tflab.lab) with the services on the host and tunnels to reach them.

connect -> push -> bootstrap (or wait for the one started at boot) -> tunnels -> steps, services,
predictions through the tunnel -> fetch the plot and the report -> report.
"""

from __future__ import annotations

import json
import posixpath
import secrets
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tflab import ports
from tflab.console import Console
from tflab.lab import LabOptions, LabRun, run_lab
from tflab.paths import remote_dir
from tflab.ssh import Connection, SshHost, SshTarget, wait_for_ssh
from tflab.tunnels import Forward, Tunnels

FORWARDS = ports.LAB_PORTS


@dataclass(frozen=True)
class HostOptions:
    """Where on the host, and with which interpreter."""

    workdir: str = "~/tflab"
    python: str | None = None  # an interpreter that has everything; None: bootstrap a venv
    ssh_timeout: float = 600.0
    bootstrap_timeout: float = 3600.0


@dataclass
class RemoteRun:
    """A finished remote run: the report, and the connection and tunnels still open."""

    report: dict
    connection: Connection
    tunnels: Tunnels
    workdir: str


def is_this_machine(address: str) -> bool:
    """Whether an SSH address is this machine's loopback (the lab's services then share our ports)."""
    import ipaddress

    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def loopback_ports(connection: Connection, path: str) -> dict[str, int]:
    """Ports for the services of a lab host that is this machine: the previous run's (so its services,
    still running, are kept), else free ones; remembered in path on the host."""
    try:
        previous = json.loads(connection.read_text(path))
        if set(previous) == set(FORWARDS):
            return {name: int(port) for name, port in previous.items()}
    except (OSError, ValueError):
        pass
    chosen: dict[str, int] = {}
    for name in FORWARDS:
        chosen[name] = ports.pick(0, set(chosen.values()))
    connection.run(f"mkdir -p {shlex.quote(posixpath.dirname(path))} && "
                   f"printf %s {shlex.quote(json.dumps(chosen))} > {shlex.quote(path)}", step="ports")
    return chosen


def resolve_workdir(connection: Connection, workdir: str) -> str:
    """An absolute path on the host (~ and relative paths are under the SSH user's home)."""
    if workdir.startswith("/"):
        return workdir.rstrip("/")
    home = connection.output("cd ~ && pwd").strip()
    rest = workdir[2:] if workdir.startswith("~/") else ("" if workdir == "~" else workdir)
    return posixpath.join(home, rest).rstrip("/")


def jupyter_token(connection: Connection, path: str) -> None:
    """Make the host's Jupyter token file (0600) once; later runs keep the same token and URL."""
    script = (f"umask 077; mkdir -p {shlex.quote(posixpath.dirname(path))}; "
              f"[ -s {shlex.quote(path)} ] || printf %s {secrets.token_hex(24)} > {shlex.quote(path)}")
    connection.run(script, step="jupyter token")


def run_remote(target: SshTarget, lab_options: LabOptions, host_options: HostOptions, console: Console,
               out: Path) -> RemoteRun:
    """Run the whole lab on the target; the tunnels stay open in the returned run (stop them)."""
    started = time.monotonic()
    phases: dict[str, float] = {}
    with console.waiting(f"connecting to {target.display}") as update:
        connection = wait_for_ssh(target, timeout=host_options.ssh_timeout, progress=update)
    if connection.host_key_note:
        console.note(f"host key of {target.display} {connection.host_key_note}")
    phases["connect"] = time.monotonic() - started
    tunnels = None
    try:
        workdir = resolve_workdir(connection, host_options.workdir)
        with console.waiting(f"pushing remote/ to {workdir}/remote") as update:
            pushed = connection.push(remote_dir(), posixpath.join(workdir, "remote"), progress=update)
        if connection.no_sftp_note:
            console.note(connection.no_sftp_note)
        console.info(f"pushed {len(pushed['sent'])} files ({pushed['bytes']:,} bytes), {pushed['skipped']} unchanged")
        phases["push"] = time.monotonic() - started

        t0 = time.monotonic()
        console.info("preparing the host (bootstrap; a second run skips what is done)")
        connection.run(shlex.join(["bash", posixpath.join(workdir, "remote", "bootstrap.sh"), workdir,
                                   host_options.python or ""]),
                       step="bootstrap", timeout=host_options.bootstrap_timeout,
                       on_line=lambda kind, line: console.stream("bootstrap", line.removeprefix("[bootstrap] ")))
        python = connection.read_text(posixpath.join(workdir, "python")).strip()
        serving = connection.read_text(posixpath.join(workdir, "serving")).strip()
        phases["bootstrap"] = time.monotonic() - started
        bootstrap_seconds = time.monotonic() - t0

        token_file = posixpath.join(workdir, "jupyter-token")
        jupyter_token(connection, token_file)
        host = SshHost(connection, python=python, workdir=workdir)
        remote_ports = {name: remote for name, (remote, _) in FORWARDS.items()}
        if is_this_machine(target.host):  # the host's services and our tunnels would want the same ports
            remote_ports = loopback_ports(connection, posixpath.join(workdir, "services", "ports.json"))
            console.note("the lab host is this machine: its services listen on other ports ("
                         + ", ".join(f"{k} {v}" for k, v in remote_ports.items()) + ")")
        tunnels = Tunnels(connection, [Forward(name, remote_ports[name], local)
                                       for name, (_, local) in FORWARDS.items()])
        tunnels.start(wait=False)  # the system's ssh logs in while the steps run
        for name, (wanted, got) in tunnels.moved.items():
            console.note(f"local port {wanted} ({name}) is in use; using {got} instead")
        by_port = {remote_ports[name]: tunnels.local_ports[name] for name in FORWARDS}

        def reach(port: int) -> int:
            if "tunnels_ready" not in phases:  # first use: the forwards must be up now
                tunnels.ready()
                phases["tunnels_ready"] = time.monotonic() - started
                for note in tunnels.notes:
                    console.note(note)
            return by_port[port]

        options = replace(lab_options, workdir=workdir, serving_port=remote_ports["serving"],
                          rest_port=remote_ports["rest"], tensorboard_port=remote_ports["tensorboard"],
                          jupyter_port=remote_ports["jupyter"], jupyter_token_file=token_file,
                          server_kind=serving, stop_on_failure=False)
        run: LabRun = run_lab(host, options, console, reach=reach, link_alive=tunnels.check)
        phases["lab"] = time.monotonic() - started

        report = run.report
        gpus = connection.run("nvidia-smi -L 2>/dev/null || true", step="gpus", check=False).tail.strip()
        report["host"] = {"name": target.display, "address": f"{target.host}:{target.port}", "python": python,
                          "workdir": workdir, "serving": serving, "bootstrap_seconds": round(bootstrap_seconds, 3),
                          "tunnel_client": tunnels.client,
                          "ports": remote_ports,
                          "gpus_nvidia_smi": [line for line in gpus.splitlines() if line.startswith("GPU")],
                          "gpus_tensorflow": report.get("tensorflow", {}).get("gpus", [])}
        report["urls"] = {"tensorboard": tunnels.url("tensorboard"), "jupyter": report.get("jupyter", {}).get("url"),
                          "serving_grpc": f"127.0.0.1:{tunnels.local_ports['serving']}",
                          "serving_rest": tunnels.url("rest", "/v1/models/nn")}
        report["server"]["address"] = report["urls"]["serving_grpc"]
        report["server"]["rest_address"] = f"127.0.0.1:{tunnels.local_ports['rest']}"
        report["remote_artifacts"] = dict(report["artifacts"])
        with console.waiting(f"fetching the plot and the report into {out}"):
            out.mkdir(parents=True, exist_ok=True)
            plot = connection.fetch(report["artifacts"]["plot"], out / posixpath.basename(report["artifacts"]["plot"]))
            report["artifacts"] = dict(report["artifacts"], plot=str(plot))
            saved = dict(report, jupyter={k: v for k, v in report.get("jupyter", {}).items() if k != "url"},
                         urls={k: v for k, v in report["urls"].items() if k != "jupyter"})  # no token in files
            (out / "report.json").write_text(json.dumps(saved, indent=2) + "\n")
        phases["total"] = time.monotonic() - started
        report["timings"] = dict(report.get("timings", {}), **{f"phase_{k}": round(v, 3) for k, v in phases.items()})
        return RemoteRun(report, connection, tunnels, workdir)
    except BaseException:
        if tunnels is not None:
            tunnels.stop()
        connection.close()
        raise
