"""Which SSH target a command means: a lab made by `up` (--name) or any machine (--host)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tflab.errors import InputError, NotFoundError
from tflab.ssh import SshTarget, parse_host
from tflab.state import LabState, StateStore, check_name

log = logging.getLogger(__name__)

# A host name (RFC 1123 letters, digits, dots and dashes; "_" as some internal names have), an IPv4
# address, or an IPv6 one (colons, and "%" before a zone). Never a leading "-": ssh would read an option.
ADDRESS = re.compile(r"[A-Za-z0-9_.:%-]{1,253}")


def check_address(address: str, what: str = "the address") -> str:
    """A host name or IP address to connect to; an InputError for anything else (spaces, a newline,
    a leading '-', a path...)."""
    if not ADDRESS.fullmatch(address or "") or address.startswith("-"):
        raise InputError(f"{what}: {address!r} is not a host name or IP address",
                         hint="give a host name such as lab.example.org, or an address such as 203.0.113.7")
    return address


def refresh_fingerprints(store: StateStore, state: LabState) -> LabState:
    """Read the instance's host key fingerprints from its console output once more (they appear
    a few minutes after boot); returns the state, updated and saved when they were found."""
    if not state.instance_id:
        return state
    try:
        from tflab.cloud import make_provider

        found = make_provider(state.region, state.profile).host_key_fingerprints(state.instance_id, 0, lambda s: None)
    except Exception as exc:  # no credentials here, no permission: SSH then refuses the unknown key
        log.info("could not read the console output of %s: %s", state.instance_id, exc)
        return state
    if not found:
        return state
    updated = LabState.from_dict(state.to_dict() | {"host_key_fingerprints": found})
    store.save(updated)
    return updated


def resolve_target(*, name: str | None, host: str | None, identity: str | None = None,
                   known_hosts: str | None = None, accept_new: bool = False,
                   store: StateStore | None = None) -> SshTarget:
    """The target of --host user@address[:port], else of the lab --name (default 'lab')."""
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
    address = state.ssh_host or state.public_ip
    if not address:
        raise InputError(f"lab '{name}' has no address yet", hint=f"`tflab status --name {name}` shows where it is")
    known = known_hosts or str(store.known_hosts_path(name))
    if not state.host_key_fingerprints and not Path(known).exists():
        state = refresh_fingerprints(store, state)
    key = identity or state.key_path
    if not key or not Path(key).expanduser().exists():
        raise InputError(f"the private key of lab '{name}' is not on this machine ({key or 'none recorded'})",
                         hint="pass --identity KEY, or `tflab down` and `tflab up` to make a new key pair")
    return SshTarget(host=address, user=state.ssh_user, port=state.ssh_port, identity=str(Path(key).expanduser()),
                     known_hosts=known, pinned=dict(state.host_key_fingerprints), accept_new=accept_new,
                     label=f"lab '{name}' ({state.ssh_user}@{address})")
