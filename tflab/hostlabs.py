"""Labs on any SSH machine, remembered by name (`run-lab --host`: TFLAB_HOME/labs/<name>/host.json, written
by tflab.labs): what `tflab list`, `status` and `down` say and do for them; and those three commands for any
lab name (status_any, list_all, down_any), which hand a lab made by `up` to tflab.cloud.

Nothing on AWS is called for a host lab. `status` asks the host over SSH which of the lab's services run
and whether each answers on its port (a connection through the SSH session, as a tunnel makes one);
`down` stops the lab's services there (their pid files in <workdir>/services: the model server,
TensorBoard, Jupyter, the idle watchdog) and forgets the lab here, and never touches the machine otherwise.
"""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING, Callable

from tflab.errors import NotFoundError
from tflab.ports import LAB_PORTS
from tflab.state import NAME, StateStore

if TYPE_CHECKING:
    from tflab.console import Console

log = logging.getLogger(__name__)

SERVICES = {"serving": "model-server", "rest": "model-server", "tensorboard": "tensorboard", "jupyter": "jupyter"}
WATCHDOG = "watchdog"


def host_lab_names(store: StateStore) -> list[str]:
    """The names of the host labs remembered here (a valid record, and no lab made by `up` of that name)."""
    from tflab.labs import HOST_FILE, host_lab

    labs = store.home / "labs"
    try:
        names = sorted(p.name for p in labs.iterdir() if NAME.fullmatch(p.name)) if labs.is_dir() else []
    except OSError as exc:
        log.warning("cannot read %s: %s", labs, exc)
        return []
    return [n for n in names if (labs / n / HOST_FILE).is_file() and not (labs / n / "state.json").exists()
            and host_lab(n, store) is not None]


def address(record: dict) -> str:
    return f"{record['user']}@{record['host']}" + (f":{record['port']}" if record["port"] != 22 else "")


def host_lab_rows(store: StateStore) -> list[dict]:
    """What `tflab list` shows of each host lab: from this machine's record only (no SSH, no AWS)."""
    from tflab.labs import host_lab

    rows = []
    for name in host_lab_names(store):
        record = host_lab(name, store)
        rows.append({"name": name, "kind": "host", "address": address(record), "workdir": record["workdir"]})
    return rows


def load(name: str, store: StateStore) -> dict:
    """The record of host lab `name`; NotFoundError when there is none."""
    from tflab.labs import host_lab

    record = host_lab(name, store) if store.load(name) is None else None
    if record is None:
        raise NotFoundError(f"no host lab named '{name}' on this machine",
                            hint="`tflab list` shows the labs; `tflab run-lab --host user@address --name N` makes one")
    return record


def status(name: str, store: StateStore) -> dict:
    """The host lab's status, over SSH only: its address and workdir, and for each of the lab's services
    whether its process runs and whether it answers on the port it chose there (services/ports.json).
    Raises UnreachableError naming the host when it does not answer (its address is in the message)."""
    from tflab.labs import resolve_target
    from tflab.ssh import Connection
    from tflab.tunnels import host_ports

    record = load(name, store)
    doc = {"name": name, "kind": "host", "address": address(record), "workdir": record["workdir"]}
    target = resolve_target(name, None)
    with Connection(target, connect_timeout=10) as connection:
        chosen = host_ports(connection, record["workdir"])
        running = running_services(connection, record["workdir"])
        services = {}
        for port_name, port in sorted(chosen.items()):
            if port and port_name in LAB_PORTS:
                services[port_name] = {"port": port, "running": running.get(SERVICES[port_name], False),
                                       "answers": answers(connection, port)}
    return doc | {"services": services, "watchdog_running": running.get(WATCHDOG, False)}


def running_services(connection, workdir: str) -> dict[str, bool]:
    """Which of the lab's services run on the host, by the pid files in <workdir>/services (one command): a
    process that ended and is not reaped yet (a zombie, state Z in /proc) does not run."""
    folder = '"$HOME"' + shlex.quote(workdir[1:]) if workdir.startswith("~/") else shlex.quote(workdir)
    text = connection.output(f"for f in {folder}/services/*.pid; do [ -f \"$f\" ] || continue; "
                             "p=$(head -c 32 \"$f\"); s=no; case $p in ''|*[!0-9]*) ;; *) "
                             "if kill -0 \"$p\" 2>/dev/null && [ \"$(sed 's/^.*) //' /proc/$p/stat 2>/dev/null "
                             "| cut -c1)\" != Z ]; then s=yes; fi;; esac; "
                             "echo \"$(basename \"$f\" .pid) $s\"; done; true", timeout=30.0)
    found = {}
    for line in text.splitlines():
        service, _, alive = line.rpartition(" ")
        if service:
            found[service] = alive == "yes"
    return found


def answers(connection, port: int, timeout: float = 5.0) -> bool:
    """Whether something accepts a connection on 127.0.0.1:port on the host, reached through the SSH session
    as a tunnel reaches it (Connection.probe)."""
    return connection.probe(port, timeout)[0]


def down(name: str, store: StateStore, console, *, confirm) -> dict:
    """Stop the host lab's services on its host and forget the lab here, once confirm(question) says yes.
    The machine is not touched otherwise (its files, the lab's workdir and its environment stay). A host
    that cannot be reached is an error, and the lab is kept (its services may still run there)."""
    from tflab.cloud import Cancelled
    from tflab.labs import resolve_target
    from tflab.ssh import Connection
    from tflab.sshhost import SshHost

    with store.lock(name):
        record = load(name, store)
        if not confirm(f"Stop lab '{name}''s services on {address(record)} and forget the lab here?"):
            raise Cancelled("cancelled; nothing was changed")
        target = resolve_target(name, None)
        with Connection(target, connect_timeout=10) as connection:
            folder = connection.absolute(record["workdir"]) + "/services"
            SshHost(connection).stop_all_services(folder)
        console.info(f"stopped the lab's services on {target.display} ({folder})")
        store.delete(name)
    return {"name": name, "kind": "host", "address": address(record), "workdir": record["workdir"],
            "services_stopped": True, "forgotten": True}


def status_any(name: str, provider_of: Callable, *, ask_host: bool = True) -> tuple[str, dict]:
    """`tflab status`: ("host", the host lab's status over SSH, no AWS call) or ("up", tflab.cloud.status's
    document). provider_of(state) makes the provider (the lab's own region and profile, unless given)."""
    from tflab.state import check_name

    from tflab.labs import is_host_lab

    store = StateStore()
    if is_host_lab(name, store):
        return "host", status(name, store)
    from tflab.cloud import status as cloud_status

    provider = provider_of(store.load(check_name(name)))  # a damaged state: its error, no AWS call
    return "up", cloud_status(provider, store, name, ask_host=ask_host)


def list_all(provider_of: Callable, console: Console) -> dict:
    """`tflab list`: the labs made by `up` in the region (by tags), then the host labs remembered here (no AWS
    call for those) and the damaged state files, one entry each. Without AWS credentials, the host labs are
    still listed (the labs on AWS are said not to be)."""
    from infra.errors import CredentialsError
    from tflab.cloud import list_labs

    store = StateStore()
    hosts = host_lab_rows(store)
    region = None
    try:
        provider = provider_of(None)
        region = provider.region
        rows = [row | {"kind": "up"} for row in list_labs(provider, store)]
    except CredentialsError as exc:
        if not hosts:
            raise
        console.warn(f"the labs on AWS are not listed: {exc}" + (f" ({exc.hint})" if getattr(exc, "hint", None)
                                                                   else ""))
        rows = []
    return {"region": region, "labs": rows + hosts,
            "damaged_states": [{"name": d.name, "path": str(d.path), "error": d.why} for d in store.damaged()]}


def down_any(name: str, provider_of: Callable, console: Console, *, confirm) -> tuple[str, dict]:
    """`tflab down`: a host lab's services stopped there and the lab forgotten here ("host"; no AWS call), or
    everything the lab made by `up` created removed by its tags ("up"; also when its state file is damaged)."""
    from tflab.labs import host_lab
    from tflab.state import DamagedStateError, check_name

    store = StateStore()
    try:
        state = store.load(check_name(name))
    except DamagedStateError:  # down works from the tags alone (it says why, and removes the file after)
        state = None
    else:
        if state is None and host_lab(name, store) is not None:
            return "host", down(name, store, console, confirm=confirm)
    from tflab.cloud import down as cloud_down

    return "up", cloud_down(provider_of(state), store, name, console, confirm=confirm)
