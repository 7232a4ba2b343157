"""Which SSH target a command means: a lab made by `up` (--name) or any machine (--host).

SSH and the local lab state only: reading fingerprints from the cloud is tflab.cloud's, passed in
as `refresh` by the callers that may talk to AWS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tflab.errors import InputError, NotFoundError
from tflab.ssh import SshTarget, parse_host
from tflab.state import LabState, StateStore, check_name

Refresh = Callable[[StateStore, LabState, int], LabState]  # (store, state, node index) -> the state


def resolve_target(*, name: str | None, host: str | None, identity: str | None = None,
                   known_hosts: str | None = None, accept_new: bool = False,
                   store: StateStore | None = None, refresh: Refresh | None = None, node: int = 0) -> SshTarget:
    """The target of --host user@address[:port], else of the lab --name (default 'lab'): its chief, or
    its node `node` for a lab of several instances (`up --nodes N`).

    refresh(store, state, node) is called for a lab (node) with no host key fingerprints and no known_hosts yet
    (tflab.cloud.refresh_fingerprints reads them from the console output once more)."""
    for option, value in (("--identity", identity), ("--known-hosts", known_hosts)):
        if value is not None and not value.strip():
            raise InputError(f"{option} is empty", hint=f"give {option} a file, or leave it out")
    if host is not None:  # an empty --host is a mistake, not "no --host"
        if not host.strip():
            raise InputError("--host is empty", hint="give --host user@address[:port], or leave it out for the lab --name")
        user, address, port = parse_host(host)
        return SshTarget(host=address, user=user, port=port,
                         identity=str(Path(identity).expanduser()) if identity else None,
                         known_hosts=str(Path(known_hosts).expanduser()) if known_hosts else
                         str(Path.home() / ".ssh" / "known_hosts"),
                         accept_new=accept_new, label=f"{user}@{address}" + (f":{port}" if port != 22 else ""))
    store = store or StateStore()
    name = check_name("lab" if name is None else name)  # an empty --name is refused
    state = store.load(name)
    if state is None:
        raise NotFoundError(f"no lab named '{name}' on this machine",
                            hint="make one with `tflab up`, or reach any machine with --host user@address")
    try:
        entry = state.node(node)
    except IndexError:
        raise NotFoundError(f"lab '{name}' has no node {node}", hint=f"`tflab status --name {name}` lists its nodes")
    # The chief may be reached at another address (--ssh-host); each node's own may be given the same way.
    address = entry.get("ssh_host") or (state.ssh_host if node == 0 else None) or entry.get("public_ip")
    port = entry.get("ssh_port") or (state.ssh_port if node == 0 else 22)  # --ssh-port is the chief's
    if not address:
        raise InputError(f"lab '{name}' has no address yet", hint=f"`tflab status --name {name}` shows where it is")
    known = known_hosts or str(store.known_hosts_path(name))
    if refresh is not None and not entry.get("host_key_fingerprints") and (node > 0 or not Path(known).exists()):
        state = refresh(store, state, node)  # a node's key may appear in its console output after `up`
        entry = state.node(node)
    key = identity or state.key_path
    if not key or not Path(key).expanduser().exists():
        raise InputError(f"the private key of lab '{name}' is not on this machine ({key or 'none recorded'})",
                         hint="pass --identity KEY, or `tflab down` and `tflab up` to make a new key pair")
    user = entry.get("ssh_user") or state.ssh_user
    which = f"lab '{name}'" + (f" node {node}" if state.nodes else "")
    return SshTarget(host=address, user=user, port=port, identity=str(Path(key).expanduser()),
                     known_hosts=known, pinned=dict(entry.get("host_key_fingerprints") or {}), accept_new=accept_new,
                     label=f"{which} ({user}@{address})")
