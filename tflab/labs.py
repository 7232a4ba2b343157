"""What a lab name (or --host) resolves to on this machine, and what tflab remembers for it locally.

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

from tflab.ports import LAB_PORTS
from tflab.state import NAME, StateStore

log = logging.getLogger(__name__)

LOCAL_PORTS_FILE = "local-ports.json"
MAX_LOCAL_PORTS_BYTES = 4096  # a handful of names and numbers


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


def remembered_local_ports(key: str, store: StateStore | None = None) -> dict[str, int]:
    """The local ports the lab's tunnels last used, by service name ({} when none are remembered, or
    when the file is not a small regular JSON file of port numbers: then the lab's defaults apply)."""
    store = store or StateStore()
    path = store.lab_dir(key) / LOCAL_PORTS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, MAX_LOCAL_PORTS_BYTES + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_LOCAL_PORTS_BYTES else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("ignoring %s: not the local ports of a lab", path)
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
    """The command that opens the lab's tunnels again (at the same local ports, where free)."""
    if host is None:
        return f"tflab tunnel --name {name}"
    import shlex

    return f"tflab tunnel --host {host}" + (f" --workdir {shlex.quote(workdir)}" if workdir not in (None, "~/tflab")
                                            else "")
