"""What a lab name, --local, --host or --hosts resolves to on this machine: the lab's state, its SSH
targets (a lab's host key fingerprints read from the cloud when it has none yet), its Hosts, the run of
the pipeline over them (open_run), and what tflab remembers for a lab locally. The pipeline itself
(tflab.lab) never asks which kind of host it has: it gets Hosts from here.

A lab made by `up` is its name. A lab run on any SSH machine (`run-lab --host user@address[:port]`)
is, until it is given one, the name derived from its address (`host_lab_name`). Either way, the lab's
folder in the state home (TFLAB_HOME/labs/<name>/) holds what this machine remembers for it; here, the
local ports its tunnels last used (local-ports.json), so that a URL printed once (by run-lab, tunnel or
open) keeps working whenever the lab is tunnelled again, as long as those ports are free here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tflab.errors import TflabError
from tflab.ports import LAB_PORTS
from tflab.state import NAME, StateStore

if TYPE_CHECKING:
    from tflab.console import Console
    from tflab.lab import LabOptions, LabRun

log = logging.getLogger(__name__)

LOCAL_PORTS_FILE = "local-ports.json"
MAX_LOCAL_PORTS_BYTES = 4096  # a handful of names and numbers
HOST_FILE = "host.json"  # a --host lab: where it is (no state.json: it has nothing on AWS)


def host_lab_name(address: str, port: int = 22) -> str:
    """The lab name derived from a host's address and SSH port: lowercase letters, digits and dashes,
    at most 31 characters (a valid --name), e.g. 10.0.0.5:2222 -> host-10-0-0-5-2222."""
    text = re.sub(r"[^a-z0-9]+", "-", address.lower()).strip("-") or "host"
    name = f"host-{text}" + ("" if port == 22 else f"-{port}")
    if len(name) > 31:  # long DNS names: keep the end (the port, the distinctive part of an address)
        name = "host-" + name[-26:].lstrip("-")
    assert NAME.fullmatch(name), name
    return name


def lab_key(name: str, host: str | None, target=None) -> str:
    """The name under which this machine remembers a lab: `name` for a lab made by `up` (no --host),
    else the name derived from the --host's target (an SshTarget: its host and port)."""
    if host is None or target is None:
        return name
    return host_lab_name(target.host, target.port)


def _read_small_json(path) -> dict | None:
    """A small regular JSON file's object (bounded, never blocking, no link followed); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, MAX_LOCAL_PORTS_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_LOCAL_PORTS_BYTES else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("ignoring %s: not what tflab wrote there", path)
        return None
    return data


def remembered_local_ports(key: str, store: StateStore | None = None) -> dict[str, int]:
    """The local ports the lab's tunnels last used, by service name ({} when none are remembered, or
    when the file is not a small regular JSON file of port numbers: then the lab's defaults apply)."""
    store = store or StateStore()
    data = _read_small_json(store.lab_dir(key) / LOCAL_PORTS_FILE)
    if data is None:
        return {}
    return {name: port for name, port in data.items()
            if name in LAB_PORTS and isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536}


def remember_local_ports(key: str, local_ports: dict[str, int], store: StateStore | None = None) -> None:
    """Remember the local ports the lab's tunnels use now (merged over the ones remembered before, so a
    service forwarded this time only does not forget the others). Never fails the command: a state
    home it cannot write is logged."""
    from tflab.errors import InputError

    store = store or StateStore()
    ports = remembered_local_ports(key, store) | {n: int(p) for n, p in local_ports.items() if n in LAB_PORTS}
    try:
        store.write_lab_file(key, LOCAL_PORTS_FILE, json.dumps(ports, sort_keys=True) + "\n")
    except InputError as exc:
        log.warning("could not remember the lab's local ports: %s", exc.message)


def wanted_local_ports(key: str, store: StateStore | None = None) -> dict[str, int]:
    """The local ports to ask for: the ones the lab last used, else the lab's own (LAB_PORTS)."""
    return {name: local for name, (_, local) in LAB_PORTS.items()} | remembered_local_ports(key, store)


def tunnel_command(name: str, host: str | None, workdir: str | None = None) -> str:
    """The command that opens the lab's tunnels again (at the same local ports, where free): --name for a
    lab made by `up` or a --host lab remembered under its name, else --host (and --workdir)."""
    if host is None:
        return f"tflab tunnel --name {name}"
    import shlex

    return f"tflab tunnel --host {host}" + (f" --workdir {shlex.quote(workdir)}" if workdir not in (None, "~/tflab")
                                            else "")


def remember_host_lab(key: str, target, workdir: str, store: StateStore | None = None) -> None:
    """Remember a --host lab under its name: the address, user, port, identity and known_hosts file it was
    reached with, and run-lab's workdir there (where its services, their ports and the watchdog are)."""
    from tflab.errors import InputError

    store = store or StateStore()
    record = {"host": target.host, "user": target.user, "port": target.port, "identity": target.identity,
              "known_hosts": target.known_hosts, "workdir": workdir}
    try:
        store.write_lab_file(key, HOST_FILE, json.dumps(record, indent=2) + "\n")
    except InputError as exc:
        log.warning("could not remember the lab on %s: %s", target.display, exc.message)


def host_lab(name: str, store: StateStore | None = None) -> dict | None:
    """What run-lab --host remembered of the lab `name` (see remember_host_lab), or None: none, or a
    record that is not one (then the name resolves as before)."""
    store = store or StateStore()
    data = _read_small_json(store.lab_dir(name) / HOST_FILE)
    if data is None:
        return None
    fields = {"host": str, "user": str, "port": int, "workdir": str, "known_hosts": str}
    if not all(isinstance(data.get(k), t) for k, t in fields.items()) or not 0 < data["port"] < 65536 \
            or not isinstance(data.get("identity"), (str, type(None))):
        log.warning("ignoring the record of lab %s: not what run-lab wrote", name)
        return None
    return data


def resolve_target(name: str, host: str | None, identity: str | None = None, known_hosts: str | None = None,
                   accept_new: bool = False):
    """The SSH target a command means: --host; else the lab --name made by `up` (its state); else the
    --host lab run-lab remembered under that name (no AWS call for it)."""
    from tflab.state import check_name

    store = StateStore()
    if host is None and store.load(check_name(name)) is None:
        record = host_lab(name, store)
        if record is not None:
            from tflab.ssh import SshTarget

            port = record["port"]
            return SshTarget(host=record["host"], user=record["user"], port=port,
                             identity=identity or record["identity"], known_hosts=known_hosts or record["known_hosts"],
                             accept_new=accept_new,
                             label=f"lab '{name}' ({record['user']}@{record['host']}" + (f":{port})" if port != 22
                                                                                          else ")"))
    return lab_target(name=name, host=host, identity=identity, known_hosts=known_hosts, accept_new=accept_new)


def lab_target(*, name: str | None, host: str | None = None, identity: str | None = None,
               known_hosts: str | None = None, accept_new: bool = False,
               store: StateStore | None = None, node: int = 0):
    """tflab.targets.resolve_target for a command line: a lab's missing fingerprints are read from
    its console output once more (tflab.cloud.refresh_fingerprints)."""
    from tflab.cloud import refresh_fingerprints
    from tflab.targets import resolve_target

    return resolve_target(name=name, host=host, identity=identity, known_hosts=known_hosts, accept_new=accept_new,
                          store=store, refresh=refresh_fingerprints, node=node)


def recorded_workdir(name: str) -> str | None:
    """run-lab's workdir on the lab's host: as the lab's state has it (`up`), or its --host record."""
    state = StateStore().load(name)
    if state is not None:
        return state.workdir
    record = host_lab(name)
    return record["workdir"] if record is not None else None


def is_host_lab(name: str, store: StateStore | None = None) -> bool:
    """Whether name is a lab run-lab --host remembered (and no lab made by `up`)."""
    store = store or StateStore()
    return store.load(name) is None and host_lab(name, store) is not None


def autostop_lab(name: str, host: str | None, console: Console, *, identity: str | None = None,
                 known_hosts: str | None = None, accept_new: bool = False, workdir: str | None = None,
                 off: bool = False, on: bool = False, idle: float | None = None, max_lifetime: float | None = None,
                 keep: float | None = None) -> tuple[dict, str]:
    """`tflab autostop`: change the watchdog's policy of the lab --name (or of --host) where given, and return its
    view with where it was asked. The watchdog is in ~/tflab on a lab made by `up` (whatever run-lab's --workdir),
    in run-lab's workdir on a --host lab (its record's, else workdir, else ~/tflab). On a lab of several
    instances every node's watchdog gets the same policy."""
    from tflab.autostop import WATCHDOG_DIR, autostop as change
    from tflab.ssh import Connection

    target = resolve_target(name, host, identity, known_hosts, accept_new)
    store = StateStore()
    if workdir is None:
        workdir = (recorded_workdir(name) if host is None and is_host_lab(name, store) else None) or WATCHDOG_DIR
    changes = {"off": off, "on": on, "idle": idle, "max_lifetime": max_lifetime, "keep": keep}
    with Connection(target) as connection:
        view = change(connection, workdir, **changes)
    state = store.load(name) if host is None else None
    if state is not None and any(v not in (None, False) for v in changes.values()):
        for node in state.nodes[1:]:
            node_target = lab_target(name=name, identity=identity, known_hosts=known_hosts, accept_new=accept_new,
                                     node=node["index"])
            with Connection(node_target) as connection:
                change(connection, workdir, **changes)
            console.info(f"node {node['index']} ({node_target.display}): the same policy")
    return view, target.display


def open_run(options: LabOptions, console: Console, *, local: bool = False, name: str = "lab",
             host: str | None = None, identity: str | None = None, known_hosts: str | None = None,
             accept_new: bool = False, python: str | None = None, workdir: str = "~/tflab",
             ssh_timeout: float | None = None, out: Path | None = None, hosts: list[str] | None = None,
             host_name: str | None = None, provider_of: Callable | None = None) -> LabRun:
    """The run of the pipeline (a tflab.lab.LabRun) on this machine (local), on any SSH machine (host), on
    several (hosts: the first is the chief, and each trains as one worker), or on the lab `name` made by `up`.
    A --host lab is remembered under host_name [default: the name derived from its address].

    Results go to out [default: ./tflab-results/<local | lab | host-port>]. A lab made by `up` may
    still be booting: its SSH is waited for up to 600 s; a --host is tried once unless ssh_timeout. With
    provider_of(state) (its Provider), a lab made by `up` whose instance does not run is refused at once, and
    one that stops during the run ends it with an error that says so (tflab.cloud.run_watch).
    Raises NotFoundError (no such lab), InputError (a bad --host, key or folder), InstanceStopped.
    """
    from tflab.host import Host, LocalHost
    from tflab.lab import LabRun, across

    if options.workers > 1:  # one seed for every worker
        options = across(options, options.workers)
    if local:
        results = (out or Path.cwd() / "tflab-results" / "local").resolve()
        return LabRun(LocalHost(workdir=results), options, console, results)
    from tflab.autostop import peers_token, tell_lab_dir, write_peers
    from tflab.errors import NotFoundError
    from tflab.ssh import Connection
    from tflab.sshhost import SshHost
    from tflab.state import LabState

    store = StateStore()
    if hosts:
        host = hosts[0]
    if host is None and store.load(name) is None:
        raise NotFoundError(f"no lab named '{name}' on this machine",
                            hint="`tflab up` makes one; --host user@address runs on any SSH machine; "
                                 "--local runs the lab here")
    target = lab_target(name=name, host=host, identity=identity, known_hosts=known_hosts, accept_new=accept_new,
                        store=store)
    label = name if host is None else re.sub(r"[^A-Za-z0-9.-]+", "_", f"{target.host}-{target.port}")
    results = (out or Path.cwd() / "tflab-results" / label).resolve()
    if ssh_timeout is None:
        ssh_timeout = 600.0 if host is None else 0.0
    state = store.load(name) if host is None else None
    lab_nodes = state.nodes if state is not None else []  # a lab of several instances: private addresses
    alive_of, explain = (lambda node: None), (lambda error: None)
    if state is not None and provider_of is not None:
        from infra.errors import InfraError
        from tflab.cloud import run_watch

        try:  # SSH is what run-lab needs: a profile gone since `up` only takes away what the instance's state adds
            provider = provider_of(state)
        except (TflabError, InfraError) as exc:  # CredentialsError (a profile gone) is an InfraError
            log.info("the lab's instances are not looked at: %s", exc)
        else:
            alive_of, explain = run_watch(provider, name, state)
    # A --host machine is not ours to power off: its watchdog stops the lab's services. A lab made by
    # `up` has its own, started at boot, that powers the instance off.
    ssh_host = SshHost(Connection(target), workdir=workdir, python=python, ssh_timeout=ssh_timeout,
                       watchdog="stop-services" if host is not None else None, booted=host is None,
                       peer=lab_nodes[0].get("private_ip") if lab_nodes else None, alive=alive_of(0))

    def remember_workdir(prepared: Host) -> None:
        """`down` stops the services it finds there; the lab's watchdog (in ~/tflab, from the boot
        script) watches the lab there too."""
        state = store.load(name)
        if state is not None and state.workdir != prepared.workdir:
            store.save(LabState.from_dict(state.to_dict() | {"workdir": prepared.workdir}))
        tell_lab_dir(ssh_host.connection, prepared.workdir)
        if state is not None and state.nodes:  # a lab of several stops as one: each watchdog knows the others
            token = peers_token(state)  # and the lab's token, which only its own nodes' answers carry
            for index, node in enumerate([ssh_host, *others]):
                write_peers(node.connection, state, index, token)  # the token on stdin, never in a command line

    others = []
    for spec in (hosts or [])[1:]:  # the other nodes: they train; the chief serves and has the watchdog
        node = lab_target(name=name, host=spec, identity=identity, known_hosts=known_hosts, accept_new=accept_new,
                          store=store)
        others.append(SshHost(Connection(node), workdir=workdir, python=python, ssh_timeout=ssh_timeout))
    for entry in lab_nodes[1:]:
        node = lab_target(name=name, identity=identity, known_hosts=known_hosts, accept_new=accept_new, store=store,
                          node=entry["index"])
        others.append(SshHost(Connection(node), workdir=workdir, python=python, ssh_timeout=ssh_timeout,
                              peer=entry.get("private_ip"), booted=True, alive=alive_of(entry["index"])))
    if others:
        options = across(options, len(others) + 1)
    key = host_name or lab_key(name, host, target)
    return LabRun(ssh_host, options, console, results, on_prepared=remember_workdir if host is None else
                  (lambda prepared: remember_host_lab(key, target, prepared.workdir, store)), others=others,
                  local_ports=wanted_local_ports(key, store),
                  on_forwarded=lambda local: remember_local_ports(key, local, store),
                  reopen=tunnel_command(key, None), explain=explain)  # a --host lab is remembered under key


def resume_run(name: str, console: Console, workdir: str, provider_of: Callable | None = None) -> LabRun:
    """The run that serves the lab `name` again (LabRun.resume): a lab made by `up`, or a --host lab
    remembered under that name, reached as run-lab reached it (open_run, with provider_of), its services in
    workdir. Raises NotFoundError when there is no such lab."""
    from tflab.lab import LabOptions

    store = StateStore()
    record = host_lab(name, store) if store.load(name) is None else None
    if record is None:
        return open_run(LabOptions(), console, name=name, workdir=workdir, provider_of=provider_of)
    address = f"[{record['host']}]" if ":" in record["host"] else record["host"]
    return open_run(LabOptions(), console, host=f"{record['user']}@{address}:{record['port']}",
                    identity=record["identity"], known_hosts=record["known_hosts"], workdir=workdir, host_name=name)
