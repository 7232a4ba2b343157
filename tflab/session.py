"""A person's session with a lab: a shell or a command there (`tflab ssh`), its tunnels held open with its URLs
(`tflab tunnel`), and the one command to come back to a lab (`tflab open`): its services brought back where
they are down, then the same tunnels.

`open` brings the services back with run-lab's own code (tflab.lab.LabRun.resume, over the Host tflab.labs
makes for the lab): the model server over the lab's models folder (TensorFlow Serving's default policy
serves the highest version: the last one exported), TensorBoard over its logs, JupyterLab over its
notebooks (left as they are), and nothing trained. On a lab made by `up`, they are brought back by `open`
rather than at boot by units the bootstrap writes: the one code path for both kinds of lab, with the
command lines run-lab uses, and a restarted instance nobody comes back to runs nothing but its watchdog.
A stopped `up` lab is not started here (that bills, and `up` asks first): `open` says how.
"""

from __future__ import annotations

import logging
from typing import Callable

from tflab.console import Console
from tflab.errors import NotFoundError, UnreachableError

log = logging.getLogger(__name__)

BROWSER_URLS = ("jupyter", "tensorboard")  # the ones a browser shows (REST's /v1/models and gRPC are for clients)


def forward_lab(connection, console: Console, *, key: str, workdir: str | None, extra: list | tuple = (),
                lab_ports: bool = True, tries: int = 8, client: str | None = None,
                on_urls: Callable[[dict], None] | None = None) -> None:
    """Forward the lab's services (and extra forwards) until Ctrl-C, to the ports they chose on the host
    (<workdir>/services/ports.json), from the local ports the lab last used (tflab.labs: its URLs stay the
    same), printing its URLs with Jupyter's token read from the host (never written here); reconnects when
    SSH drops. on_urls(urls) is called each time the forwards are up."""
    from tflab import labs
    from tflab.tunnels import (choose_client, forward_until_interrupted, host_jupyter_token, host_ports,
                               lab_forwards, lab_urls)

    chosen = host_ports(connection, workdir) if workdir and lab_ports else {}
    token = host_jupyter_token(connection, workdir) if workdir and lab_ports else None
    forwards = lab_forwards(chosen, console, labs.remembered_local_ports(key)) if lab_ports else []

    def up(local: dict) -> None:
        labs.remember_local_ports(key, local)
        if on_urls is not None:
            on_urls(lab_urls({f.name: local[f.name] for f in forwards}, token))

    forward_until_interrupted(connection, forwards + list(extra), console, tries, choose_client(client), on_up=up,
                              jupyter_token=token)


def browser_opener(console: Console, open_url: Callable[[str], bool] | None = None) -> Callable[[dict], None]:
    """An on_urls that opens Jupyter and TensorBoard in the user's browser (Python's webbrowser) the first
    time the tunnels are up; not again when they come back after a drop (the tabs are open)."""
    if open_url is None:
        import webbrowser

        open_url = webbrowser.open_new_tab
    opened = []

    def on_urls(urls: dict) -> None:
        if opened:
            return
        opened.append(True)
        for name in BROWSER_URLS:
            if urls.get(name) and not open_url(urls[name]):
                console.note(f"no browser could be opened here for {name}: open the URL above yourself")
    return on_urls


def check_running(name: str, cloud_status: Callable[[], dict]) -> None:
    """Refuse to open a lab made by `up` whose instance does not run (cloud_status: tflab.cloud.status's
    document), saying how to start it: `open` does not start what bills."""
    doc = cloud_status()
    if not doc.get("exists"):
        raise NotFoundError(f"lab '{name}' has no instance in {doc.get('region')}",
                            hint=f"`tflab up --name {name}` makes one; `tflab down --name {name}` forgets the lab")
    if doc.get("state") != "running":
        why = f" ({doc['stopped_why']})" if doc.get("stopped_why") else ""
        raise UnreachableError(f"lab '{name}' is {doc.get('state')}{why}: its services cannot run",
                               hint=f"`tflab up --name {name}` starts it again (its disk keeps the model, the "
                                    f"notebooks and the logs), then `tflab open --name {name}`")


def open_lab(name: str, console: Console, *, provider_of: Callable, browser: bool = False, tries: int = 8,
             client: str | None = None, open_url: Callable[[str], bool] | None = None) -> None:
    """`tflab open`: bring the lab's services back where they are down (no training), then forward them until
    Ctrl-C with its URLs. A lab made by `up` must run (its status asked of the provider provider_of(state)
    makes); a host lab calls nothing on AWS. Raises NotFoundError (no such lab, or run-lab never ran it),
    UnreachableError (a stopped lab, a host that does not answer)."""
    from tflab import labs
    from tflab.ssh import Connection
    from tflab.state import StateStore, check_name

    store = StateStore()
    state = store.load(check_name(name))
    if state is not None:
        from tflab.cloud import status

        provider = provider_of(state)
        check_running(name, lambda: status(provider, store, name, ask_host=False))
    elif labs.host_lab(name, store) is None:
        raise NotFoundError(f"no lab named '{name}' on this machine",
                            hint="`tflab list` shows the labs; `tflab up` makes one on AWS, `tflab run-lab --host "
                                 "user@address --name N` one on any machine")
    workdir = labs.recorded_workdir(name)
    if not workdir:
        raise NotFoundError(f"lab '{name}' has not run the lab yet: there is nothing to serve",
                            hint=f"`tflab run-lab --name {name}` runs it (trains, exports, serves)")
    with labs.resume_run(name, console, workdir, provider_of=provider_of) as run:
        served = run.resume()
    what = ", ".join(f"{service} {how}" for service, how in served["services"].items())
    console.info(f"the lab is back: {served['model']} version {served['version']} served, nothing trained ({what})")
    on_urls = browser_opener(console, open_url) if browser else None
    forward_lab(Connection(labs.resolve_target(name, None)), console, key=name, workdir=served["workdir"],
                tries=tries, client=client, on_urls=on_urls)


def ssh_session(target, command: list[str] | None, console: Console) -> int | None:
    """`tflab ssh`: the host key verified (and a pinned or accepted one recorded) by tflab's own connection, then
    the command run there with its output streamed (its exit status returned), or an interactive shell:
    paramiko's (its status returned) where there is no system ssh, else the system's ssh exec'd in this
    process's place (None is returned only where execv is not what it is, in tests)."""
    import os
    import shlex
    import shutil
    import sys

    from tflab.errors import InputError
    from tflab.ssh import Connection, interactive_shell, openssh_argv

    with Connection(target) as connection:
        connection.open()
        if connection.host_key_note:
            console.note(f"host key of {target.display} {connection.host_key_note}")
        if command:
            def emit(kind: str, line: str) -> None:
                stream = sys.stdout if kind == "out" else sys.stderr
                stream.write(line + "\n")
                stream.flush()

            return connection.run(shlex.join(command), step="ssh", on_line=emit, check=False, timeout=24 * 3600,
                                  shell="login").status
        if not sys.stdin.isatty():
            raise InputError("an interactive shell needs a terminal", hint="give a command after --")
        client = shutil.which("ssh")
        if client is None:
            return interactive_shell(connection)
    os.execv(client, openssh_argv(client, target))


def ssh_config_block(name: str, target, console: Console) -> str:
    """`tflab ssh-config`: the OpenSSH config block for the lab (Host tflab-<name>), forwarding its services
    from the local ports its tunnels last used to the ports they chose on the host (read over SSH where the
    host key is known here; else, said in a note, the lab's own ports)."""
    from pathlib import Path

    from tflab.errors import TflabError
    from tflab.labs import recorded_workdir, remembered_local_ports
    from tflab.ssh import Connection, openssh_config
    from tflab.tunnels import host_ports, lab_forwards

    known = Path(target.known_hosts).exists()
    if not known:
        console.note(f"{target.known_hosts} does not exist yet: run `tflab ssh --name {name} -- true` once to pin "
                     "the host key, or ssh refuses the host (StrictHostKeyChecking)")
    chosen: dict[str, int] = {}
    workdir = recorded_workdir(name)
    if workdir and known:
        try:
            with Connection(target) as connection:
                chosen = host_ports(connection, workdir)
        except TflabError as exc:
            console.note(f"could not read the ports the lab's services use on its host ({exc.message}); "
                         "the lab's own ports are forwarded")
    lines = openssh_config(f"tflab-{name}", target)
    lines += [f"  LocalForward 127.0.0.1:{f.local_port} 127.0.0.1:{f.remote_port}"
              for f in lab_forwards(chosen, console, remembered_local_ports(name))]
    return "\n".join(lines)
