"""The lab's cloud lifecycle on this machine's side: up, status, list, down.

Orchestrates an infra Provider, the lab state and the console. Everything the cloud holds is
found by the lab's tags, so `down` works without local state and after a half-done `up`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from tflab.autostop import BOOT_PROGRAM, boot_script as watchdog_boot_script, tell_peers
from tflab.console import Console
from tflab.ports import LAB_PORTS
from tflab.errors import ExitCode, InputError, NotFoundError, TflabError
from tflab.state import LabState, StateStore, check_name, check_ssh_user

if TYPE_CHECKING:
    from infra.provider import LaunchSpec, Provider
    from tflab.ssh import SshTarget

log = logging.getLogger(__name__)

Confirm = Callable[[str], bool]


class Cancelled(TflabError):
    """The user said no; nothing was changed."""

    exit_code = ExitCode.INTERRUPTED


def embedded(name: str, path: str) -> str:
    """Shell that writes remote/<name> to path on the host, as a quoted here-document (the whole user data is
    gzip-compressed, packed_user_data: the file's text compresses there, in one stream with the rest)."""
    from tflab.paths import remote_dir

    text = (remote_dir() / name).read_text()
    if name.endswith(".py"):
        text = without_comments(text)
    end = "TFLAB_" + re.sub(r"\W", "_", name).upper() + "_END"
    if not text.endswith("\n") or end in text.splitlines():  # a here-document needs both
        raise TflabError(f"remote/{name} cannot be carried in the user data as a here-document")
    return f"cat > {shlex.quote(path)} <<'{end}'\n{text}{end}"


def without_comments(source: str) -> str:
    """Python source without its comments and docstrings: the same program in fewer bytes of user data (EC2
    takes 16 KB), since remote/watchdog.py explains itself at length."""
    import ast
    import io
    import tokenize

    lines = source.splitlines(keepends=True)
    dropped: set[int] = set()  # lines to leave out (blank lines inside a string stay)
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and len(body) > 1 \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            dropped.update(range(body[0].lineno - 1, body[0].end_lineno))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row = token.start[0] - 1
        if token.type == tokenize.COMMENT and row > 0 and row not in dropped:  # the #! line stays
            code = lines[row][:token.start[1]].rstrip()
            if code:
                lines[row] = code + "\n"
            else:
                dropped.add(row)
        elif token.type == tokenize.NL and not lines[row].strip():  # a blank line between statements
            dropped.add(row)
    return "".join(line for row, line in enumerate(lines) if row not in dropped)


def boot_user_data(ssh_user: str, workdir: str = "tflab", autostop: dict | None = None) -> str:
    """The boot script (the user data, before packed_user_data compresses it) that starts the host's bootstrap
    while the instance boots (run-lab then waits for it), and installs the idle watchdog with the policy
    autostop (tflab.autostop.policy: remote/watchdog.py's policy keys).

    It runs as root at boot: the user is checked (check_ssh_user) and every value is shell-quoted.
    """
    check_ssh_user(ssh_user)
    if not workdir or workdir.startswith("/") or "\0" in workdir or "\n" in workdir:
        raise InputError(f"{workdir!r} is not a folder name under the lab user's home", hint="e.g. tflab")
    home = "/root" if ssh_user == "root" else f"/home/{ssh_user}"
    folder = f"{home}/{workdir}"
    q = shlex.quote
    bootstrap = f"{folder}/remote/bootstrap.sh"
    return (f"#!/bin/bash\n# tflab: prepare the lab while the instance boots (remote/bootstrap.sh, as run-lab runs it)\n"
            f"mkdir -p {q(folder + '/remote')}\n{embedded('bootstrap.sh', bootstrap)}\n"
            f"chown -R {q(ssh_user + ':')} {q(folder)}\n"
            f"sudo -u {q(ssh_user)} -H nohup bash {q(bootstrap)} {q(folder)} >/dev/null 2>&1 &\n"
            + (watchdog_boot_script(folder, ssh_user, autostop, embedded("watchdog.py", BOOT_PROGRAM))
               if autostop else ""))


def packed_user_data(script: str) -> bytes:
    """The boot script as EC2 gets it: one gzip stream. cloud-init decompresses gzip'd user data before
    it looks at it ("User-data ... can be gzip-compressed", cloud-init's user data formats), and EC2's
    16 KB limit is on these raw bytes (before base64), so the script's files fit with room to spare."""
    import gzip

    return gzip.compress(script.encode(), mtime=0)


INSTANCE_TYPE = re.compile(r"[a-z0-9][a-z0-9-]*\.[a-z0-9-]+")  # g4dn.xlarge, u-6tb1.metal, c7i-flex.large
AMI_ID = re.compile(r"ami-[0-9a-f]{1,17}")  # ami- and 8 or 17 hex digits on AWS
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{1,17}")


def check_launch_options(*, instance_type: str, ami: str | None, ami_parameter: str | None, subnet_id: str | None,
                         ssh_host: str | None, ssh_port: int | None, ssh_user: str | None,
                         timeouts: dict[str, float]) -> None:
    """Refuse `up`'s options that cannot work, before any AWS call (an InputError naming the option)."""
    import math

    from infra import limits
    from tflab.addresses import check_address

    if not INSTANCE_TYPE.fullmatch(instance_type) or len(instance_type) > 64:
        raise InputError(f"--instance-type {instance_type!r} is not an instance type name",
                         hint="e.g. --instance-type g4dn.xlarge (family.size)")
    from infra.pricing import dlami_unsupported

    gpu = dlami_unsupported(instance_type)
    if gpu and ami is None and ami_parameter is None:  # the default Deep Learning AMI cannot drive that GPU
        raise InputError(f"--instance-type {instance_type} ({gpu}) is not supported by the Deep Learning Base OSS "
                         "Nvidia Driver GPU AMI that tflab launches: the lab would run TensorFlow on the CPU",
                         hint="choose a supported type, e.g. --instance-type g4dn.xlarge (T4), g5.xlarge (A10G), "
                              "g6.xlarge (L4) or p4d.24xlarge (A100); or bring an image that supports it with --ami")
    if ami is not None and not AMI_ID.fullmatch(ami):
        raise InputError(f"--ami {ami!r} is not an image id", hint="e.g. --ami ami-0123456789abcdef0, or leave it out")
    if ami_parameter is not None:
        problems = limits.SSM_PARAMETER_NAME.problems(ami_parameter)
        if problems:
            raise InputError(f"--ami-parameter {ami_parameter[:80]!r} is not an SSM parameter name: {'; '.join(problems)}",
                             hint="e.g. --ami-parameter /aws/service/deeplearning/ami/x86_64/"
                                  "base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id")
    if subnet_id is not None and not SUBNET_ID.fullmatch(subnet_id):
        raise InputError(f"--subnet-id {subnet_id!r} is not a subnet id",
                         hint="e.g. --subnet-id subnet-0123456789abcdef0, or leave it out for the default VPC")
    if ssh_host is not None:
        check_address(ssh_host, "--ssh-host")
    if ssh_port is not None and not 1 <= ssh_port <= 65535:
        raise InputError(f"--ssh-port {ssh_port} is not a port", hint="ports are 1-65535 (SSH's is 22)")
    if ssh_user is not None:
        check_ssh_user(ssh_user)
    for option, seconds in timeouts.items():
        if not math.isfinite(seconds) or seconds < 0:
            raise InputError(f"{option} {seconds} is not a number of seconds",
                             hint=f"give {option} a finite number >= 0; every wait has a limit")


def make_provider(region: str | None, profile: str | None, poll: float = 2.0):
    """An AwsProvider for the region and profile, resolved as the AWS CLI does (flags, env, ~/.aws)."""
    import boto3

    from infra.aws import AwsProvider, translated

    if region is not None:
        check_region(region)
    if profile is not None and (not profile.strip() or any(c.isspace() or not c.isprintable() for c in profile)):
        raise InputError(f"--profile {profile!r} is not a profile name",
                         hint="give a profile from ~/.aws/config (`aws configure list-profiles`), or leave --profile out")
    with translated("the AWS session"):  # an unknown profile: CredentialsError, with its hint
        session = boto3.Session(profile_name=profile, region_name=region)
    if session.region_name:  # none at all is AwsProvider's "no AWS region configured"
        check_region(session.region_name, source="the configured region (AWS_REGION, AWS_DEFAULT_REGION or "
                                                 "~/.aws/config)")
    return AwsProvider(session, poll=poll)


def check_region(region: str, source: str = "--region") -> str:
    """A region name as botocore accepts it (e.g. us-west-2); an InputError before any AWS call otherwise."""
    from botocore.exceptions import InvalidRegionError
    from botocore.utils import validate_region_name

    try:
        if not region:
            raise InvalidRegionError(region_name=region)
        validate_region_name(region)
    except InvalidRegionError as exc:
        raise InputError(f"{source} is {region!r}, not an AWS region name",
                         hint="e.g. --region us-west-2 (`aws ec2 describe-regions` lists them)") from exc
    return region


def refresh_fingerprints(store: StateStore, state: LabState, node: int = 0) -> LabState:
    """Read the instance's host key fingerprints from its console output once more (they appear
    a few minutes after boot); returns the state, updated and saved when they were found.

    Best effort: without credentials or permission here, the state is returned as it was (and SSH
    then refuses the unknown key, saying so)."""
    from infra.errors import InfraError

    instance_id = state.node(node)["instance_id"]
    if not instance_id:
        return state
    try:
        found = make_provider(state.region, state.profile).host_key_fingerprints(instance_id, 0, lambda s: None)
    except (InfraError, TflabError, OSError) as exc:
        log.info("could not read the console output of %s: %s", state.instance_id, exc)
        return state
    if not found:
        return state
    nodes = [dict(n, host_key_fingerprints=found) if n["index"] == node else n for n in state.nodes]
    updated = LabState.from_dict(state.to_dict() | {"nodes": nodes}
                                 | ({"host_key_fingerprints": found} if node == 0 else {}))
    store.save(updated)
    return updated


def node_target(store: StateStore, name: str, node: int = 0, accept_new: bool = False) -> SshTarget:
    """The SSH target of the lab's node (tflab.targets.resolve_target), its missing host key fingerprints
    read from its console output once more (refresh_fingerprints)."""
    from tflab.targets import resolve_target

    return resolve_target(name=name, host=None, accept_new=accept_new, store=store, refresh=refresh_fingerprints,
                          node=node)


CHECKIP_URL = "https://checkip.amazonaws.com"  # answers the caller's address as AWS sees it, one line


def ssh_cidr(given: str | None, url: str = CHECKIP_URL) -> str:
    """The address range allowed to SSH in: the one given, else this machine's public address /32 (as url
    answers it; `up` prints it, since behind a proxy or a NAT with several exits it may not be the one SSH
    comes from)."""
    if given is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = response.read(64).decode("ascii", "replace").strip()
        except OSError as exc:
            raise InputError(f"could not detect this machine's public address ({exc})",
                             hint="pass --ssh-cidr with your address, e.g. --ssh-cidr 203.0.113.7/32") from exc
        try:
            address = ipaddress.IPv4Address(answer)
        except ValueError as exc:  # e.g. a proxy's login page
            raise InputError(f"could not detect this machine's public address: {url} answered {answer[:40]!r}, "
                             "not an IPv4 address (a proxy in the way?)",
                             hint="pass --ssh-cidr with your address, e.g. --ssh-cidr 203.0.113.7/32") from exc
        given = f"{address}/32"
    try:
        network = ipaddress.ip_network(given, strict=False)
    except ValueError as exc:
        raise InputError(f"--ssh-cidr {given!r} is not an address range", hint="e.g. --ssh-cidr 203.0.113.7/32") from exc
    if network.version != 4:
        raise InputError("--ssh-cidr must be an IPv4 range", hint="e.g. --ssh-cidr 203.0.113.7/32")
    if network.prefixlen < 16:
        raise InputError(f"--ssh-cidr {network} would open SSH to {network.num_addresses:,} addresses",
                         hint="tflab opens SSH to your own address only: give a /32 (or a range of at most /16)")
    return str(network)


def _age_hours(launched: str | None) -> float | None:
    if not launched:
        return None
    start = datetime.fromisoformat(launched)
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - start).total_seconds() / 3600)


def _node_entries(instances: list, fingerprints: list[dict], previous: LabState | None) -> list[dict]:
    """The state's nodes of a lab of several instances (none for one), by their tflab:node index."""
    if len(instances) < 2:
        return []
    old = {n["instance_id"]: n for n in (previous.nodes if previous else [])}
    entries = []
    for index, (inst, prints) in enumerate(zip(instances, fingerprints)):
        entries.append({**old.get(inst.id, {}), "index": index, "instance_id": inst.id, "public_ip": inst.public_ip,
                        "private_ip": inst.private_ip, "zone": inst.zone,
                        "host_key_fingerprints": prints or old.get(inst.id, {}).get("host_key_fingerprints") or {}})
    return entries


def by_node(instances: list) -> list:
    """A lab's instances in node order (the chief first); a lab of one is its one instance."""
    return sorted(instances, key=lambda i: (i.node is None, i.node or 0, i.launch_time or "", i.id))


def _state_from(name: str, provider: Provider, inst, previous: LabState | None, store: StateStore,
                profile: str | None, fingerprints: dict | None = None, nodes: list | None = None,
                node_prints: list[dict] | None = None, **overrides) -> LabState:
    from infra.pricing import hourly

    key = store.key_path(name)
    base = previous.to_dict() if previous else {}
    base.update(name=name, region=provider.region, profile=profile, instance_id=inst.id,
                instance_type=inst.instance_type, spot=inst.spot, image_id=inst.image_id, zone=inst.zone,
                public_ip=inst.public_ip, key_name=inst.key_name, key_path=str(key) if key.exists() else None,
                security_group_id=inst.security_groups[0] if inst.security_groups else None,
                hourly_usd=hourly(inst.instance_type, provider.region), launched_at=inst.launch_time)
    if fingerprints:
        base["host_key_fingerprints"] = fingerprints
    if nodes is not None:
        prints = node_prints or [fingerprints or {}] + [{}] * (len(nodes) - 1)
        base["nodes"] = _node_entries(nodes, prints, previous)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return LabState.from_dict(base)


@dataclass(frozen=True)
class UpSettings:
    """How `up` waits and how the lab is reached afterwards (the LaunchSpec says what to launch)."""

    profile: str | None = None
    wait: bool = True  # until the instance runs, its fingerprints are read and SSH answers
    wait_timeout: float = 900.0
    host_key_timeout: float = 240.0
    ssh_timeout: float = 600.0
    ssh_wait: bool = True  # with wait: SSH too (tests against moto's made-up addresses turn it off)
    keep_on_failure: bool = False
    ssh_host: str | None = None  # reach the lab at another address (a VPN, a forwarded port)
    ssh_port: int | None = None
    ssh_user: str | None = None
    accept_new_host_key: bool = False


@dataclass(frozen=True)
class UpRequest:
    """`tflab up` as asked: what to launch (the CLI's options as given) and how to wait (settings)."""

    name: str
    instance_type: str = "g4dn.xlarge"
    spot: bool = False
    nodes: int = 1
    placement: str = "cluster"
    disk_gb: int = 100
    ami: str | None = None
    ami_parameter: str | None = None
    ssh_cidr: str | None = None
    subnet_id: str | None = None
    idle_stop: str = "60m"
    max_lifetime: str = "12h"
    idle_action: str | None = None
    settings: UpSettings = UpSettings()


def up_lab(request: UpRequest, provider_of: Callable[[LabState | None], object], store: StateStore,
           console: Console, *, confirm: Confirm) -> tuple[LabState, str]:
    """`tflab up` whole: the request checked before any AWS call, the provider made (provider_of, given the lab's
    state if it has one), the watchdog's policy and the SSH range said, then up() with the LaunchSpec."""
    from infra.provider import DEFAULT_AMI_PARAMETER, LaunchSpec
    from tflab.autostop import LaunchPolicy

    r, settings = request, request.settings
    check_name(r.name)
    check_launch_options(instance_type=r.instance_type, ami=r.ami, ami_parameter=r.ami_parameter,
                         subnet_id=r.subnet_id, ssh_host=settings.ssh_host, ssh_port=settings.ssh_port,
                         ssh_user=settings.ssh_user,
                         timeouts={"--wait-timeout": settings.wait_timeout,
                                   "--host-key-timeout": settings.host_key_timeout,
                                   "--ssh-timeout": settings.ssh_timeout})
    autostop = LaunchPolicy.of(r.idle_stop, r.max_lifetime, r.idle_action, r.spot)
    provider = provider_of(store.load(r.name))
    autostop.announce(console)
    cidr = ssh_cidr(r.ssh_cidr)
    if r.ssh_cidr is None:  # detected: say which, since a proxy or a multi-exit NAT makes it wrong
        console.info(f"SSH will be let in from {cidr} only: this machine's address as checkip.amazonaws.com sees "
                     "it (behind a proxy or a NAT with several exits, pass --ssh-cidr with yours)")
    spec = LaunchSpec(lab=r.name, ssh_cidr=cidr, instance_type=r.instance_type, disk_gb=r.disk_gb, spot=r.spot,
                      ami=r.ami, ami_parameter=r.ami_parameter or DEFAULT_AMI_PARAMETER, subnet_id=r.subnet_id,
                      user_data=packed_user_data(boot_user_data(settings.ssh_user or "ubuntu",
                                                                autostop=autostop.document)),
                      shutdown_behavior=autostop.behavior, nodes=r.nodes, placement=r.placement)
    return up(provider, store, spec, console, confirm=confirm, settings=settings)


def up(provider: Provider, store: StateStore, spec: LaunchSpec, console: Console, *, confirm: Confirm,
       settings: UpSettings = UpSettings()) -> tuple[LabState, str]:
    """Make the lab (or find and reuse it); returns its state and "created" | "reused" | "started".

    With settings.wait, it returns once SSH answers with the host key pinned from the console output
    (or, with accept_new_host_key, trusted on first use). An instance this `up` launched that does not
    answer SSH in time is removed with the rest of what it created (kept with keep_on_failure); an existing
    lab's instance that `up` started is kept (and said so): `down` removes it.
    """
    from infra.errors import LabBusy, PermissionDenied
    from infra.provider import Created

    name = check_name(spec.lab)
    profile, wait, wait_timeout = settings.profile, settings.wait, settings.wait_timeout
    ssh_wait, ssh_timeout, accept_new_host_key = settings.ssh_wait, settings.ssh_timeout, settings.accept_new_host_key
    host_key_timeout, keep_on_failure = settings.host_key_timeout, settings.keep_on_failure
    overrides = {"ssh_host": settings.ssh_host, "ssh_port": settings.ssh_port, "ssh_user": settings.ssh_user}
    with store.lock(name):
        with console.waiting(f"checking AWS credentials for {provider.region}") as update:
            who = provider.whoami()
            update(who)
            existing = provider.find_instances(name)
        previous = store.load(name)
        check_same_place(store, previous, provider, name, "up")
        if existing:
            return _reuse(provider, store, spec, console, settings, existing, previous)

        spec, image, itype, placement = _preflight(provider, spec, console, settings)
        many = f"{spec.nodes} x " if spec.nodes > 1 else ""
        if not confirm(f"Launch {many}{itype.name} for lab '{name}' in {provider.region}?"):
            raise Cancelled("cancelled; nothing was created")

        created = Created()
        try:
            with console.waiting(f"creating the key pair, security group and instance of lab '{name}'") as update:
                store.write_key(name, provider.create_key_pair(name, created, own_key_fingerprint(store, name)))
                update(f"key pair {created.key_pair} (private key in {store.key_path(name)})")
                members = spec.nodes > 1
                group = provider.ensure_security_group(name, spec.ssh_cidr, spec.subnet_id, created, members=members)
                update(f"security group {group}: SSH from {spec.ssh_cidr} only"
                       + ("; every port between the lab's nodes" if members else ""))
                group_name = provider.ensure_placement_group(name, created) if placement else None
                if group_name:
                    update(f"placement group {group_name} (cluster: the nodes close together)")
                nodes = provider.launch(spec, image, group, created.key_pair, created, update, group_name)
            inst = nodes[0]
            store.save(_state_from(name, provider, inst, previous, store, profile, nodes=nodes,
                                   placement_group=group_name, **overrides))
            console.info(f"launched {', '.join(i.id for i in nodes)} in {inst.zone}")
            prints: list[dict] = [{} for _ in nodes]
            if wait:
                with console.waiting(f"waiting for {', '.join(i.id for i in nodes)} to run"
                                     + ("" if settings.ssh_host else " with a public address")) as update:
                    nodes = [provider.wait_running(i.id, wait_timeout, update, public=not settings.ssh_host)
                             for i in nodes]
                inst = nodes[0]
                with console.waiting("reading the SSH host key fingerprints from the console output") as update:
                    deadline = time.monotonic() + host_key_timeout  # one wait for them all
                    try:
                        prints = [provider.host_key_fingerprints(i.id, max(0.0, deadline - time.monotonic()),
                                                                 update) for i in nodes]
                    except PermissionDenied as exc:  # a look-up the lab does without: said
                        denied = f"the console output was not read (no permission for {exc.action}): the " \
                                 "host keys are checked when tflab first connects"
                    else:
                        denied = None
                if denied:
                    console.note(denied)
                elif not all(prints):
                    console.note("the host key fingerprints are not in the console output yet; "
                                 "they are read again when tflab first connects")
            state = _state_from(name, provider, inst, previous, store, profile, prints[0], nodes=nodes,
                                node_prints=prints, placement_group=group_name, **overrides)
            store.save(state)
            reached = [wait_ssh(store, state, console, ssh_timeout, accept_new_host_key, node=index,
                                provider=provider)
                       for index in range(max(1, len(state.nodes)))] if wait and ssh_wait else []
        except KeyboardInterrupt:
            console.warn(f"interrupted; `tflab down --name {name}` removes what was created")
            raise
        except LabBusy:  # another `up` holds the lab: this one made nothing, and must not remove the other's
            raise
        except Exception as exc:  # any failure: remove what this `up` made (its Created record), then re-raise
            _remove_after_failure(provider, store, name, created, exc, console, keep_on_failure)
            raise
        if reached and state.nodes and all(reached):  # else run-lab tells them, once it has verified every node
            tell_peers(state, lambda index: node_target(store, state.name, index), console)
        return state, "created"


def _reuse(provider: Provider, store: StateStore, spec: LaunchSpec, console: Console, settings: UpSettings,
           existing: list, previous: LabState | None) -> tuple[LabState, str]:
    """`up` of a lab whose instances exist: started where stopped, waited for, its state refreshed ("reused" or
    "started"); --nodes is not applied to it (said)."""
    name = spec.lab
    overrides = {"ssh_host": settings.ssh_host, "ssh_port": settings.ssh_port, "ssh_user": settings.ssh_user}
    wait, wait_timeout = settings.wait, settings.wait_timeout
    nodes = by_node(existing)
    if len(nodes) > 1 and any(i.node is None for i in nodes):  # not one lab of nodes: two `up`s raced
        raise InputError(f"lab '{name}' has {len(nodes)} instances that are not its nodes "
                         f"({', '.join(i.id for i in nodes)})",
                         hint=f"`tflab down --name {name}` removes them all; then `tflab up` again")
    if spec.nodes != len(nodes):
        console.note(f"lab '{name}' exists with {len(nodes)} node(s); --nodes {spec.nodes} is not applied "
                     f"(`tflab down --name {name}` first to change it)")
    action = "reused"
    for inst in nodes:
        if inst.state == "stopping":
            raise InputError(f"lab '{name}' ({inst.id}) is stopping", hint="wait a minute, then `tflab up` again")
    stopped = [i for i in nodes if i.state == "stopped"]
    for inst in stopped:
        console.info(f"lab '{name}' exists ({inst.id}, {inst.state}); starting it")
        provider.start(inst.id)
        action = "started"
    if not stopped:
        console.info(f"lab '{name}' exists already ({', '.join(f'{i.id} {i.state}' for i in nodes)}); "
                     "reusing it")
    if wait or action == "started":
        reached_at = settings.ssh_host or (previous.ssh_host if previous else None)  # e.g. a VPN
        with console.waiting(f"waiting for {', '.join(i.id for i in nodes)} to run") as update:
            nodes = [provider.wait_running(i.id, wait_timeout, update, public=not reached_at)
                     for i in nodes]
    if not store.key_path(name).exists():
        console.warn(f"the private key of lab '{name}' is not on this machine ({store.key_path(name)}); "
                     "SSH to it needs that key")
    state = _state_from(name, provider, nodes[0], previous, store, settings.profile, nodes=nodes,
                        **overrides)
    store.save(state)
    if wait and settings.ssh_wait:
        for index in range(max(1, len(state.nodes))):
            wait_ssh(store, state, console, settings.ssh_timeout, settings.accept_new_host_key, node=index,
                     provider=provider)
    return state, action


def _preflight(provider: Provider, spec: LaunchSpec, console: Console, settings: UpSettings):
    """Before a launch: the image, the instance type and the vCPU quota checked, what the lab will cost said, the
    placement and the subnet's route to the internet decided. Returns (spec, image, type, placement)."""
    from infra.errors import AmiError
    from infra.pricing import PUBLIC_IPV4_USD_PER_HOUR, dlami_unsupported, on_demand

    name = spec.lab
    with console.waiting("checking the image, the instance type and the vCPU quota") as update:
        image = provider.resolve_image(spec)
        update(f"image {image.id} ({image.name or 'no name'}) from {image.source}")
        itype = provider.describe_type(spec.instance_type)
        if image.architecture not in itype.architectures:
            raise AmiError(f"the image {image.id} is {image.architecture}, but {itype.name} runs "
                           f"{'/'.join(itype.architectures)}",
                           hint="choose a matching --instance-type or another --ami / --ami-parameter")
        quota = provider.check_quota(itype, spec.spot, spec.nodes)
    console.info(f"image: {image.id} {image.name} ({image.source})")
    if dlami_unsupported(itype.name):  # allowed with --ami / --ami-parameter only (check_launch_options)
        console.note(f"the Deep Learning Base OSS AMIs do not support {itype.name}'s GPU "
                     f"({dlami_unsupported(itype.name)}): TensorFlow uses it only if {image.id} does")
    many = f"{spec.nodes} x " if spec.nodes > 1 else ""
    each = " each" if spec.nodes > 1 else ""
    console.info(f"instance: {many}{itype.name}, {itype.vcpus} vCPUs{each}, GPUs{each}: {itype.gpus or 'none'}")
    if quota.value is None:
        console.note(f"vCPU quota '{quota.name}' not checked: {quota.note}")
    else:
        console.info(f"quota: {quota.name} = {quota.value:g} vCPUs, this lab needs {quota.needed}")
    listed = on_demand(itype.name, provider.region)
    if listed:  # each node also holds a public IPv4 address, which AWS charges since 2024-02-01
        price = spec.nodes * (listed.usd_per_hour + PUBLIC_IPV4_USD_PER_HOUR)
        cost = (f"about ${price:.3f}/hour on demand ({many}{itype.name} ${listed.usd_per_hour:.3f} + public IPv4 "
                f"${PUBLIC_IPV4_USD_PER_HOUR:.3f}{each}; {listed.source}) + disk")
    else:
        cost = f"unknown ({itype.name} is not in the bundled price list)"
    if spec.spot:
        cost += "; spot usually costs less, and AWS may reclaim the instance"
    console.info(f"estimated cost: {cost}, until `tflab down --name {name}`")
    placement = spec.nodes > 1 and spec.placement == "cluster" and "cluster" in itype.placement_strategies
    if spec.nodes > 1 and spec.placement == "cluster" and not placement:
        console.note(f"{itype.name} cannot join a cluster placement group: the nodes are launched in one zone "
                     "without one")
    if spec.subnet_id:  # a public address reaches the lab only where the subnet routes to an internet gateway
        reaches = provider.subnet_reaches_internet(spec.subnet_id)
        if reaches is False and not settings.ssh_host:
            raise InputError(f"subnet {spec.subnet_id} has no route to an internet gateway (0.0.0.0/0 to an "
                             "igw-): a public address there would not reach the lab",
                             hint="pass --subnet-id of a public subnet (or leave it out: the default VPC's), or "
                                  "--ssh-host with the address you reach the lab at (a VPN to the subnet)")
        if reaches is False:  # reached over a VPN: no public address to pay for, none to wait for
            import dataclasses

            spec = dataclasses.replace(spec, public_address=False)
            console.info(f"subnet {spec.subnet_id} has no route to an internet gateway: no public address; "
                         f"the lab is reached at {settings.ssh_host}")
        elif reaches is None:
            console.note(f"the route tables of subnet {spec.subnet_id} could not be read (no permission for "
                         "ec2:DescribeRouteTables): a public address is asked for, which reaches the lab only "
                         "if the subnet routes to an internet gateway")
    return spec, image, itype, placement


def _remove_after_failure(provider: Provider, store: StateStore, name: str, created, exc: Exception,
                          console: Console, keep_on_failure: bool) -> None:
    """A failed `up` removes what it created (its Created record: never by tag, since another `up` of the lab,
    on another machine, may have made the rest), or keeps it with --keep-on-failure; an instance that never
    answered SSH is then one UnreachableError saying what was removed. The caller re-raises exc otherwise."""
    from infra.errors import InfraError
    from tflab.errors import UnreachableError

    if keep_on_failure:
        console.warn(f"up failed; kept what it created (--keep-on-failure): `tflab down --name {name}` removes it")
    elif created.key_pair or created.security_group or created.placement_group or created.instances:
        # Never by tag: another `up` of the lab (another machine) may have made the rest.
        console.warn(f"up failed ({getattr(exc, 'unanswered', None) or exc}); removing what it created")
        try:
            with console.waiting(f"removing what this `up` of lab '{name}' created") as update:
                removed = provider.remove_created(created, update)
            if created.key_pair:  # the private key this `up` wrote is of the key pair just deleted
                store.delete(name)
        except (InfraError, OSError) as cleanup_error:
            console.warn(f"could not remove everything ({cleanup_error}); run `tflab down --name {name}`")
        else:
            if getattr(exc, "unanswered", None):  # SSH never answered: nothing is left to come back to
                raise UnreachableError(
                    f"{exc.unanswered}; removed what this `up` created ({', '.join(removed) or 'nothing'})",
                    hint="SSH is let in from --ssh-cidr only (else the address detected for this machine, "
                         "shown above): behind a proxy or a NAT with several exits that may not be yours, so "
                         "`tflab up --ssh-cidr <your address>/32`; a slow image: a longer --ssh-timeout; "
                         "--keep-on-failure keeps the instance to look at") from exc


def own_key_fingerprint(store: StateStore, name: str) -> str | None:
    """EC2's fingerprint of the lab's private key on this machine (None without one): a key pair of the lab
    with it was left by an `up` from here, never by another machine's."""
    from infra.aws import ed25519_fingerprint

    try:
        text = store.key_path(name).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return ed25519_fingerprint(text)


def check_same_place(store: StateStore, state: LabState | None, provider: Provider, name: str,
                     command: str) -> None:
    """Refuse (an InputError, exit 3, the files kept) to act on lab `name` in another region or with another
    profile than the local state's: there this command would find nothing of the lab, and `down` would delete
    the live lab's state and private key, `up` make a second lab and overwrite them."""
    if state is None:
        return
    where = []
    if state.region and state.region != provider.region:
        where.append(f"region {state.region}, not {provider.region}")
    used = getattr(provider, "profile", None)
    if state.profile and used and state.profile != used:
        where.append(f"profile {state.profile}, not {used}")
    if not where:
        return
    again = f"`tflab {command} --name {name}" + (f" --region {state.region}" if state.region else "") \
        + (f" --profile {state.profile}" if state.profile else "") + "`"
    raise InputError(f"lab '{name}' on this machine is in {' and '.join(where)}; its state and private key "
                     f"({store.lab_dir(name)}) are kept", hint=f"{again} (the lab's own); for another lab, use "
                                                              "another --name")


INSTANCE_LOOK_EVERY = 15.0  # seconds between looks at the instance while waiting for its SSH


def wait_ssh(store: StateStore, state: LabState, console: Console, timeout: float, accept_new: bool,
             node: int = 0, provider: Provider | None = None) -> bool:
    """Wait until the lab (its node `node`) answers SSH with its pinned (or, if asked, first-seen) host key;
    False when its key cannot be verified yet, so nothing was tried. With provider, the instance is looked at
    every INSTANCE_LOOK_EVERY s meanwhile: one that stopped (its own shutdown, a spot reclaim) ends the wait at
    once with InstanceStopped, instead of the whole timeout on an address nothing answers."""
    from tflab.errors import InstanceStopped, UnreachableError
    from tflab.ssh import wait_for_ssh

    target = node_target(store, state.name, node, accept_new)
    if not target.pinned and not accept_new and not __import__("os").path.exists(target.known_hosts):
        console.note("the SSH host key cannot be verified yet (no fingerprints in the console output): "
                     "run-lab and ssh check it when they connect (or add --accept-new-host-key)")
        return False
    instance_id = state.node(node)["instance_id"] if provider else None
    try:
        with console.waiting(f"waiting for SSH on {target.display}") as update:
            connection = wait_for_ssh(target, timeout=timeout, progress=update,
                                      alive=_still_up(provider, state.name, instance_id) if instance_id else None)
    except InstanceStopped:
        raise
    except UnreachableError as exc:
        kept = UnreachableError(f"{exc.message}; the instance runs and is kept",
                               hint=f"`tflab up --name {state.name}` waits again; `tflab down --name {state.name}` "
                                    "removes it. SSH is let in from --ssh-cidr only (else the address detected for "
                                    "this machine, shown above): behind a proxy or a NAT with several exits that "
                                    f"may not be yours, so `tflab down --name {state.name}` and `tflab up --ssh-cidr "
                                    "<your address>/32`")
        kept.unanswered = exc.message  # a failed `up` that removes the instance says so instead
        raise kept from exc
    if connection.host_key_note:
        console.note(f"host key of {target.display} {connection.host_key_note}")
    connection.close()
    return True


def _still_up(provider: Provider, name: str, instance_id: str, hint: str | None = None) -> Callable[[], None]:
    """alive() for a wait on the instance's SSH: every INSTANCE_LOOK_EVERY s, InstanceStopped once it is neither
    pending nor running (with hint [default: where its console says why]). A look-up that fails is no reason to
    stop waiting."""
    from tflab.errors import InstanceStopped

    next_look = [time.monotonic() + INSTANCE_LOOK_EVERY]

    def alive() -> None:
        if time.monotonic() < next_look[0]:
            return
        next_look[0] = time.monotonic() + INSTANCE_LOOK_EVERY
        inst = _stopped_one(provider, name, [instance_id])
        if inst is not None:
            raise InstanceStopped(
                f"lab '{name}' ({instance_id}) is {inst.state} while tflab waited for its SSH{_because(inst)}",
                hint=hint or f"its console output says why: `aws ec2 get-console-output --latest --instance-id "
                             f"{instance_id}` (a failed `up` removes what it made; `tflab up --keep-on-failure` "
                             "keeps it to look at)")
    return alive


def _stopped_one(provider: Provider, name: str, instance_ids: list[str]):
    """The first of the lab's instance_ids that is neither pending nor running (one look for them all); None
    while they come up or run, or when they cannot be found (EC2's listing lags a launch) or looked at."""
    from infra.errors import InfraError

    try:
        found = {i.id: i for i in provider.find_instances(name, live_only=False)}
    except (InfraError, OSError) as exc:
        log.info("could not look at lab %s's instances: %s", name, exc)
        return None
    return next((found[i] for i in instance_ids if i in found and not found[i].coming_up), None)


def _because(inst) -> str:
    why = stop_reason(inst)
    return f": {why}" if why else ""


EXPLAIN_LOOKS, EXPLAIN_LOOK_EVERY = 3, 4.0  # an instance powering off still says "running" for a few seconds


def run_watch(provider: Provider, name: str, state: LabState) -> tuple[Callable[[int], Callable[[], None]],
                                                                        Callable[[TflabError], TflabError | None]]:
    """What run-lab learns from a lab's instances (made by `up`) besides SSH. At once: InstanceStopped when one
    does not run (its services cannot run, and its SSH would be waited for in vain). Then alive_of(node), for
    that node's SSH wait: the same once it stops meanwhile. And explain(error): an UnreachableError raised later
    (SSH dropped), as the same error ending with the instance's state when it no longer runs (the watchdog
    powered it off, it was stopped from outside, a spot reclaim), else None. A look-up that fails is no reason
    to refuse: SSH answers or not."""
    from tflab.errors import InstanceStopped, UnreachableError

    ids = [state.node(i)["instance_id"] for i in range(max(1, len(state.nodes)))]
    again = f"`tflab up --name {name}` starts it again (its disk keeps the model, the notebooks and the logs)"
    inst = _stopped_one(provider, name, ids)
    if inst is not None:
        raise InstanceStopped(f"lab '{name}' ({inst.id}) is {inst.state}{_because(inst)}: its services cannot run",
                              hint=f"{again}, then `tflab run-lab --name {name}`")

    def alive_of(node: int) -> Callable[[], None]:
        return _still_up(provider, name, ids[node], again)

    def explain(error: TflabError) -> TflabError | None:
        if not isinstance(error, UnreachableError) or isinstance(error, InstanceStopped):  # said already
            return None
        for look in range(EXPLAIN_LOOKS):
            if look:
                time.sleep(EXPLAIN_LOOK_EVERY)
            inst = _stopped_one(provider, name, ids)
            if inst is not None:
                return InstanceStopped(f"{error.message}: its instance {inst.id} is {inst.state} now{_because(inst)}",
                                       hint=again)
        return None
    return alive_of, explain


def describe(state: LabState | None, instances: list, name: str, region: str | None = None) -> dict:
    """The status document of a lab: its state, address, uptime, cost so far and ports."""
    from infra.pricing import hourly

    ordered = lab_instances(instances)
    inst = ordered[0] if ordered else None  # the chief of a lab of several
    doc: dict = {"name": name, "region": state.region if state else None, "exists": inst is not None}
    if inst is not None:
        hours = _age_hours(inst.launch_time) if inst.state == "running" else None
        running = [i for i in ordered if i.state == "running"]
        each = hourly(inst.instance_type, region or (state.region if state else None))
        price = each * len(running or ordered) if each else None
        doc.update(instance_id=inst.id, state=inst.state, instance_type=inst.instance_type, spot=inst.spot,
                   public_ip=inst.public_ip, zone=inst.zone, launched_at=inst.launch_time,
                   uptime_hours=round(hours, 3) if hours is not None else None, hourly_usd_estimate=price,
                   cost_so_far_usd_estimate=round(hours * price, 2) if hours is not None and price else None)
        if len(ordered) > 1:
            doc["nodes"] = [{"index": i.node, "instance_id": i.id, "state": i.state, "public_ip": i.public_ip,
                             "private_ip": i.private_ip, "zone": i.zone} for i in ordered]
    if state is not None:
        doc.update(ssh_user=state.ssh_user, ssh_address=f"{state.ssh_host or state.public_ip}:{state.ssh_port}",
                   key_path=state.key_path, host_key_fingerprints=state.host_key_fingerprints)
    doc["ports"] = {k: {"host": h, "local": loc} for k, (h, loc) in LAB_PORTS.items()}
    return doc


def lab_instances(instances: list) -> list:
    """A lab's instances, the one that speaks for it first: by node for a lab of several, else running first."""
    if len(instances) > 1 and all(i.node is not None for i in instances):
        return by_node(instances)
    return sorted(instances, key=lambda i: i.state != "running")


def costs(provider: Provider, instances: list, lab: str) -> dict:
    """What the lab costs: the price charged now for its instances (the spot price in their zone for a
    spot lab, else the bundled on-demand estimate), its volumes, and the cost since they last started."""
    from infra.pricing import GP3_USD_PER_GB_HOUR, PUBLIC_IPV4_USD_PER_HOUR, on_demand

    from infra.errors import PermissionDenied

    inst = lab_instances(instances)[0]
    notes = []  # look-ups `up` never needed may be denied: the status degrades, and says how
    try:
        spot = provider.spot_price(inst.instance_type, inst.zone) if inst.spot and inst.zone else None
    except PermissionDenied as exc:
        spot = None
        notes.append(f"spot price not read (no permission for {exc.action}): the on-demand price instead")
    listed = on_demand(inst.instance_type, provider.region)
    each = spot if spot is not None else (listed.usd_per_hour if listed else None)
    running = [i for i in instances if i.state == "running"]
    price = each * len(running or instances) if each is not None else None  # what bills now, or when started
    try:
        gb = provider.volume_gb(lab)
    except PermissionDenied as exc:
        gb = 0
        notes.append(f"disk not counted (no permission for {exc.action})")
    hours = _age_hours(inst.launch_time) or 0.0
    instance_cost = sum((_age_hours(i.launch_time) or 0.0) * each for i in running) \
        if running and each is not None else None
    disk_cost = hours * gb * GP3_USD_PER_GB_HOUR
    # A running instance holds its public IPv4 address, charged since 2024-02-01; a stopped one gave it back.
    addressed = [i for i in running if i.public_ip]
    ipv4_cost = sum((_age_hours(i.launch_time) or 0.0) * PUBLIC_IPV4_USD_PER_HOUR for i in addressed)
    source = f"spot price in {inst.zone} now" if spot is not None else \
        (listed.source if listed else "not in the bundled price list")
    return {"hourly_usd": price, "price_source": source,
            "public_ipv4_hourly_usd": round(len(addressed) * PUBLIC_IPV4_USD_PER_HOUR, 4),
            "volume_gb": gb, "disk_hourly_usd": round(gb * GP3_USD_PER_GB_HOUR, 4),
            "since": inst.launch_time,
            "cost_usd_estimate": {"instance": round(instance_cost, 2) if instance_cost is not None else None,
                                  "public_ipv4": round(ipv4_cost, 2), "disk": round(disk_cost, 2),
                                  "total": round((instance_cost or 0.0) + ipv4_cost + disk_cost, 2)},
            "notes": notes}


def stop_reason(inst) -> str:
    """Why an instance that is not coming up stopped, in words (EC2's state reason when tflab has none)."""
    reason = inst.state_reason or ""
    if "InstanceInitiatedShutdown" in reason:
        return "it shut itself down (the idle watchdog, or a shutdown on the host)"
    if "UserInitiated" in reason or "User initiated" in reason:
        return "stopped from outside (the console or the API)"
    return reason


def stopped_why(inst) -> str | None:
    """Why a stopped instance stopped and what starts it again (`status`); None while it is coming up."""
    if inst.coming_up:
        return None
    why = stop_reason(inst)
    return f"{why}; `tflab up` starts it again" if why and why != inst.state_reason else why or None


def watchdog_view(store: StateStore, name: str, state: LabState) -> dict:
    """The lab's watchdog view (tflab.autostop.view_of); {"error": ...} when it cannot be had."""
    from tflab.autostop import view_of

    try:
        target = node_target(store, name)
    except (TflabError, OSError) as exc:
        return {"error": str(exc)}
    return view_of(target)


def status(provider: Provider, store: StateStore, name: str, ask_host: bool = True) -> dict:
    """The lab's status from the cloud (and the local state when there is one): what it costs, and
    (ask_host) its watchdog's view, asked over SSH while it runs. A damaged state file is its one-line
    error (DamagedStateError), before any AWS call: `down` is what works from the tags alone."""
    state = store.load(check_name(name))
    instances = provider.find_instances(name)
    if not instances and state is None:
        raise NotFoundError(f"no lab named '{name}' in {provider.region}",
                            hint="`tflab list` shows the labs in a region; `tflab up` makes one")
    doc = describe(state, instances, name, provider.region)
    doc["region"] = provider.region
    if doc["exists"]:
        inst = next(i for i in instances if i.id == doc["instance_id"])
        doc |= costs(provider, instances, name)
        doc["stopped_why"] = stopped_why(inst)
        if ask_host and inst.state == "running" and state is not None:
            doc["watchdog"] = watchdog_view(store, name, state)
    return doc


def list_labs(provider: Provider, store: StateStore) -> list[dict]:
    """Every tflab lab in the provider's region, found by tags."""
    by_lab: dict[str, list] = {}
    for inst in provider.find_instances(None):
        by_lab.setdefault(inst.lab or "?", []).append(inst)
    rows = []
    for name, instances in sorted(by_lab.items()):
        problem = None
        try:  # the list comes from the cloud's tags; a lab's damaged or unreadable state does not stop it
            state = store.load(name) if check_name_ok(name) else None
        except InputError as exc:
            log.info("no local state for lab %s: %s", name, exc)
            state, problem = None, exc.message
        row = describe(state, instances, name, provider.region) | {"region": provider.region,
                                                                   "local_state": state is not None}
        if problem:
            row["local_state_error"] = problem
        rows.append(row | costs(provider, instances, name))
    return rows


def check_name_ok(name: str) -> bool:
    try:
        check_name(name)
    except InputError:
        return False
    return True


def stop_host_services(store: StateStore, name: str, console: Console) -> None:
    """Stop the services run-lab left on the lab's host (best effort: terminating stops them too)."""
    from tflab.state import DamagedStateError

    try:
        state = store.load(name)
    except DamagedStateError:  # down said so; terminating stops them
        return
    if state is None or not state.workdir or not (state.ssh_host or state.public_ip):
        return
    from tflab.ssh import Connection
    from tflab.sshhost import SshHost

    try:
        target = node_target(store, name)
        with Connection(target, connect_timeout=10) as connection:
            SshHost(connection).stop_all_services(f"{state.workdir}/services")
        console.info(f"stopped the lab's services on {target.display}")
    except (TflabError, OSError) as exc:
        console.note(f"could not stop the services on the host ({exc}); terminating the instance stops them")


def down(provider: Provider, store: StateStore, name: str, console: Console, *, confirm: Confirm) -> dict:
    """Stop the lab's services, remove everything tagged with the lab, then check that nothing is
    left; returns a report."""
    from infra.errors import CloudError

    from tflab.state import DamagedStateError

    check_name(name)
    with store.lock(name):
        damaged = None
        try:  # the README promises that down works from the tags alone, whatever the state file holds
            check_same_place(store, store.load(name), provider, name, "down")
        except DamagedStateError as exc:
            damaged = exc
            console.warn(f"{exc.message}; looking for lab '{name}' by its AWS tags in {provider.region}")
        before = provider.leftovers(name)
        if before.empty:
            report = {"name": name, "region": provider.region, "removed": [], "left": [], "clean": True}
            if damaged:  # its region is unreadable: the lab may be in another one, so the file is kept
                console.warn(f"nothing tagged with lab '{name}' in {provider.region}; kept {damaged.path}: if the "
                             f"lab is in another region, `tflab down --name {name} --region R`; else remove the "
                             f"file (rm -r {store.lab_dir(name)})")
                return report | {"state_kept": str(damaged.path)}
            store.delete(name)
            console.info(f"lab '{name}' in {provider.region}: nothing to remove")
            return report
        if not confirm(f"Remove lab '{name}' in {provider.region} ({before.describe()})?"):
            raise Cancelled("cancelled; nothing was removed")
        stop_host_services(store, name, console)
        with console.waiting(f"removing lab '{name}'") as update:
            removed = provider.teardown(name, update)
        with console.waiting(f"checking that nothing tagged with lab '{name}' is left"):
            left = provider.leftovers(name)
        if not left.empty:
            raise CloudError(f"lab '{name}' still has: {left.describe()}", code="Leftovers",
                             hint=f"run `tflab down --name {name}` again; if it stays, remove them in the console")
        store.delete(name)
        console.info(f"lab '{name}' removed: {', '.join(removed)}; nothing tagged with it is left")
        for unchecked in left.unchecked:  # denied look-ups of what bills nothing, or went with the instances
            console.note(f"{unchecked}: the instances are gone, and their volumes with them (deleted on "
                         "termination); key pairs and placement groups bill nothing")
            if unchecked.startswith("key pairs") and hasattr(provider, "key_name"):  # its tag unread: kept
                console.note(f"the key pair {provider.key_name(name)} was not deleted (without its tags, tflab "
                             f"cannot tell it is the lab's): `aws ec2 delete-key-pair --key-name "
                             f"{provider.key_name(name)} --region {provider.region}` removes it if it is")
        return {"name": name, "region": provider.region, "removed": removed, "left": [], "clean": True,
                "unchecked": list(left.unchecked)}
