"""Named local port forwards to a lab host, after the host key is verified by tflab's Connection.

Two clients carry the forwards, chosen by measurement (bench/README.md):

- **openssh** (the default where `ssh` is on PATH): the system's `ssh -N -L ...`, given the target's
  key and the very known_hosts file the Connection verified (StrictHostKeyChecking=yes, no config
  files read). OpenSSH forwards in C: against paramiko it moves ~1.5x the bytes per second and opens
  a new connection in less than half the time. Its log (-v) tells which forward met a dead remote port.
- **paramiko** (the fallback, or TFLAB_TUNNEL_CLIENT=paramiko): sshtunnel's forward servers over
  the Connection's own transport (see below). Used when there is no `ssh`, or when it fails for a
  reason other than the host key (a key file it will not read, say); a host key it refuses is
  never retried with paramiko.

sshtunnel's forward servers (one threaded listener per forward, started and stopped by its
SSHTunnelForwarder) run over the transport of tflab's Connection instead of a second login, so
the host key is verified once and every forward shares it. The per-connection handler is
tflab's own, because sshtunnel's stock one
- leaves Nagle on (a new connection right after another closed waits ~44 ms for delayed ACKs),
- closes the whole connection when the client half-closes (shuts its write side),
- and turns a remote port with nothing listening into a logged exception.
Here every socket gets TCP_NODELAY, a half-close passes through as an SSH EOF (and back), and a
dead remote port closes the local connection at once and is recorded as a clear error.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass

from tflab import ports
from tflab.console import Console
from tflab.errors import InputError, UnreachableError
from tflab.host import tied_to_this_process
from tflab.ssh import Connection, HostKeyError, SshTarget, openssh_argv, openssh_value
from tflab.waiting import poll

log = logging.getLogger(__name__)
CHUNK = 65536
CLIENTS = ("auto", "openssh", "paramiko")
CLIENT_ENV = "TFLAB_TUNNEL_CLIENT"


@dataclass(frozen=True)
class Forward:
    """One forward: a local port on 127.0.0.1 to a port on the host's 127.0.0.1."""

    name: str
    remote_port: int
    local_port: int  # wanted; 0 for any


def parse_forward(spec: str) -> Forward:
    """'LOCAL:REMOTE' (or 'REMOTE') -> Forward."""
    local, _, remote = spec.rpartition(":")
    try:
        remote_port, local_port = int(remote), int(local or remote)
    except ValueError as exc:
        raise InputError(f"--forward {spec!r} is not LOCAL:REMOTE", hint="e.g. --forward 8080:80") from exc
    if not (0 < remote_port < 65536 and 0 <= local_port < 65536):
        raise InputError(f"--forward {spec!r} has a port out of range", hint="ports are 1-65535")
    return Forward(f"port {remote_port}", remote_port, local_port)


class _Handler(socketserver.BaseRequestHandler):
    """Carries one local connection over a direct-tcpip channel, half-closes included."""

    transport = None
    remote_address: tuple[str, int] = ("127.0.0.1", 0)
    tunnels: "Tunnels" = None

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            channel = self.transport.open_channel("direct-tcpip", self.remote_address, sock.getpeername(),
                                                  timeout=10)
        except Exception as exc:  # paramiko.ChannelException: nothing listens there
            self.tunnels.record_error(self.remote_address[1], exc)
            return
        try:
            self._pump(sock, channel)
        except OSError:
            pass  # a reset on either side ends the connection
        finally:
            channel.close()

    @staticmethod
    def _pump(sock, channel) -> None:
        """Two blocking loops, one per direction (a thread each): measured faster per message than one
        select() loop, which pays a pipe write and a wake-up for every packet from the transport."""

        def upstream() -> None:  # client -> host
            try:
                while data := sock.recv(CHUNK):
                    channel.sendall(data)
                channel.shutdown_write()  # the client half-closed: pass the EOF on, keep the answer coming
            except OSError:
                pass

        up = threading.Thread(target=upstream, name="tunnel-up", daemon=True)
        up.start()
        try:
            while data := channel.recv(CHUNK):  # host -> client
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the host half-closed (data read first: a close may follow it)
        except OSError:
            pass
        if channel.closed:  # closed for good: stop reading the client too
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        up.join(30)


def _forwarder_class():
    import sshtunnel

    class SharedTransportForwarder(sshtunnel.SSHTunnelForwarder):
        """sshtunnel's forward servers over an already verified, authenticated transport."""

        def __init__(self, connection: Connection, tunnels: "Tunnels", remote_binds, local_binds):
            self._connection = connection
            self._tunnels = tunnels
            target = connection.target
            super().__init__((target.host, target.port), ssh_username=target.user, ssh_config_file=None,
                             allow_agent=False, host_pkey_directories=[], ssh_pkey=None, ssh_password="unused",
                             remote_bind_addresses=remote_binds, local_bind_addresses=local_binds,
                             logger=logging.getLogger("tflab.tunnels.sshtunnel"), mute_exceptions=False)

        def _connect_to_gateway(self):
            self._transport = self._connection.transport

        def _make_ssh_forward_handler_class(self, remote_address_):
            return type("Handler", (_Handler,), {"transport": self._transport, "remote_address": remote_address_,
                                                 "tunnels": self._tunnels})

        def _stop_transport(self, force=False):
            """Stop the forward servers, all at once (each waits up to its 0.1 s poll); the transport
            belongs to the Connection and stays open."""
            stoppers = [threading.Thread(target=server.shutdown, daemon=True) for server in self._server_list]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(5)
            for server in self._server_list:
                server.server_close()
            self.is_alive = False
            self.__dict__.pop("_transport", None)  # not ours to close; and sshtunnel's __del__ then stays quiet

    return SharedTransportForwarder


def choose_client(client: str | None = None) -> str:
    """'auto', 'openssh' or 'paramiko': the argument, else $TFLAB_TUNNEL_CLIENT, else 'auto'."""
    value = (client or os.environ.get(CLIENT_ENV) or "auto").strip().lower()
    if value not in CLIENTS:
        raise InputError(f"unknown tunnel client '{value}'", hint=f"use one of {', '.join(CLIENTS)} ({CLIENT_ENV})")
    return value


class _Exited(Exception):
    """The system's ssh exited while tflab waited for its forwards."""


class ClientFailed(Exception):
    """The system's ssh exited before its forwards were up; carries what it printed."""

    def __init__(self, message: str, host_key: bool = False):
        super().__init__(message)
        self.host_key = host_key


class _OpenSsh:
    """The system's `ssh -N -L ...` as a child process, with the target's key and known_hosts only.

    Ready when its control socket appears: ssh binds every local forward before it listens there
    (with ExitOnForwardFailure a failed bind ends it first). Its -v log is read line by line to
    turn "channel N: open failed" into a named error: the "free" line of channel N names its port.
    """

    _OPEN_FAILED = re.compile(r"^channel (\d+): open failed: (.*)$")
    _FREED = re.compile(r"^debug1: channel (\d+): free: direct-tcpip: listening port (\d+) for \S+ port (\d+)")
    _HOST_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "REVOKED HOST KEY")

    def __init__(self, program: str, target: SshTarget, binds: list[tuple[str, int, int]], tunnels: "Tunnels"):
        self.program = program
        self.target = target
        self.binds = binds  # (bind address, local port, remote port)
        self.tunnels = tunnels
        self.proc: subprocess.Popen | None = None
        self.said: deque[str] = deque(maxlen=20)  # its last lines that are not debug chatter
        self._failed: dict[str, str] = {}  # channel: why, until its "free" line names the port
        self._reader: threading.Thread | None = None
        self.spawn_error = ""
        self._read_any = False
        # A short folder: the control socket's path (plus ssh's 17-character suffix) must fit in 104 bytes.
        self._folder = tempfile.mkdtemp(prefix="tflab-ssh-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.control = os.path.join(self._folder, "c")

    def argv(self) -> list[str]:
        """ssh -N -v with the target's options (tflab.ssh.openssh_argv), a control socket and the -L forwards."""
        extra = {"BatchMode": "yes",  # never prompt: fail, and let paramiko carry the forwards
                 "ExitOnForwardFailure": "yes", "ControlMaster": "yes", "ControlPath": openssh_value(self.control),
                 "ControlPersist": "no"}
        forwards = [arg for bind, local, remote in self.binds for arg in ("-L", f"{bind}:{local}:127.0.0.1:{remote}")]
        return openssh_argv(self.program, self.target, extra, ["-N", "-v", *forwards])

    def spawn(self) -> None:
        try:
            self.proc = subprocess.Popen(tied_to_this_process(self.argv()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, errors="replace")
        except OSError as exc:  # on PATH but not runnable: wait_ready() says so
            self.spawn_error = f"cannot run {self.program}: {exc.strerror or exc}"
            shutil.rmtree(self._folder, ignore_errors=True)
            return
        self._reader = threading.Thread(target=self._read, name="tunnel-ssh-log", daemon=True)
        self._reader.start()
        self._deadline = time.monotonic() + 40.0

    def wait_ready(self) -> None:
        """Until the forwards are up; raises ClientFailed (the process stopped) when ssh gives up."""
        if self.spawn_error:
            raise ClientFailed(self.spawn_error)

        def running() -> None:
            if self.proc.poll() is not None:
                raise _Exited()

        try:
            poll(lambda: True if os.path.exists(self.control) else None, timeout=self._deadline - time.monotonic(),
                 what="ssh's forwards", interval=0.005, alive=running)
            return
        except (_Exited, UnreachableError):  # ssh gave up, or its time is over
            pass
        timed_out = self.proc.poll() is None
        self.stop()
        said = list(self.said)
        host_key = [line.strip("@ ") for line in said if any(k in line for k in self._HOST_KEY)]
        why = [line for line in said if line.startswith("Load key")] + host_key[:1] + said[-1:]
        if timed_out:
            why = ["did not get its forwards up in time"]
        elif not self._read_any:  # ssh -v always speaks first: this was not ssh running
            why = [f"cannot run {self.program}: it exited with status {self.proc.returncode} "
                   "and said nothing"]
        raise ClientFailed("; ".join(dict.fromkeys(why)) or f"exited with status {self.proc.returncode}",
                           host_key=bool(host_key))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._read_any = True
            line = line.rstrip()
            if m := self._OPEN_FAILED.match(line):
                self._failed[m.group(1)] = m.group(2)
            elif m := self._FREED.match(line):
                why = self._failed.pop(m.group(1), None)
                if why is not None:
                    self.tunnels.record_error(int(m.group(3)), why, local_port=int(m.group(2)))
            elif not line.startswith("debug") and line:
                self.said.append(line)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def no_forwarding(display: str, why: str) -> UnreachableError:
    """The error of a host whose sshd forwards nothing: the lab's services can never be reached from here."""
    return UnreachableError(f"the SSH server of {display} does not allow TCP forwarding ({why}), so the tunnels "
                            "cannot reach the lab's services",
                            hint="set `AllowTcpForwarding yes` (or `local`) in its sshd_config, "
                                 "or run the lab there with `tflab run-lab --local`")


class Tunnels:
    """Named forwards to the Connection's host: start() binds them, stop() releases them (idempotent).

    client: 'auto' (OpenSSH where present, else paramiko), 'openssh' or 'paramiko'; None reads
    $TFLAB_TUNNEL_CLIENT. After start(), `client` says which one carries the forwards and `notes`
    says why when it is not the one asked for.
    """

    def __init__(self, connection: Connection, forwards: list[Forward], bind: str = "127.0.0.1",
                 client: str | None = None, avoid: set[int] = frozenset()):
        self.connection = connection
        self.forwards = forwards
        self.bind = bind
        self.avoid = set(avoid)  # local ports not to take (the host's own services', when it is this machine)
        self.wanted_client = choose_client(client)
        self.client: str | None = None
        self.local_ports: dict[str, int] = {}
        self.moved: dict[str, tuple[int, int]] = {}  # name: (wanted, got)
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.prohibited = ""  # why the host's sshd refused to forward (AllowTcpForwarding), once it did
        self._forwarder = None
        self._openssh: _OpenSsh | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Tunnels":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record_error(self, remote_port: int, why, local_port: int | None = None) -> None:
        """A forwarded connection the host would not open: nothing listens there, or its sshd
        does not forward at all (AllowTcpForwarding no: "administratively prohibited")."""
        names = [f.name for f in self.forwards if f.remote_port == remote_port
                 and (local_port is None or self.local_ports.get(f.name) == local_port)]
        display = self.connection.target.display
        if "prohibited" in str(why).lower():
            self.prohibited = f"{why}"
            what = f"the SSH server of {display} does not allow forwarding to port {remote_port}"
        else:
            what = f"nothing answers on port {remote_port} of {display}"
        message = f"{names[0] if names else 'a tunnel'}: {what} ({why})"
        with self._lock:
            self.errors.append(message)
        log.info(message)  # the caller shows the errors (tflab tunnel) or acts on them (check())

    def check(self) -> None:
        """Raise UnreachableError when the forwards cannot work any more: their SSH connection is gone,
        or the host's sshd refuses to forward."""
        display = self.connection.target.display
        if self.prohibited:
            raise no_forwarding(display, self.prohibited)
        if self.client is not None and not self.alive:
            raise UnreachableError(f"the SSH tunnels to {display} closed",
                                   hint="check that the host runs (`tflab status`), then run the command again")

    def start(self, wait: bool = True) -> "Tunnels":
        """Bind every forward's local port (a free one when the wanted port is taken). With wait=False
        the system's ssh logs in while the caller goes on, and ready() waits for it."""
        got = ports.choose(dict(enumerate(f.local_port for f in self.forwards)), self.avoid, self.bind)
        for i, f in enumerate(self.forwards):
            if f.local_port and got[i] != f.local_port:
                self.moved[f.name] = (f.local_port, got[i])
            self.local_ports[f.name] = got[i]
        self.connection.open()  # the host key is verified (and recorded) here, whichever client forwards
        program = shutil.which("ssh") if self.wanted_client != "paramiko" else None
        if self.wanted_client == "openssh" and program is None:
            raise InputError("no `ssh` client on PATH for the tunnels",
                             hint=f"install OpenSSH's client, or use the paramiko one ({CLIENT_ENV}=paramiko)")
        if program is None:
            return self._start_paramiko()
        self._openssh = _OpenSsh(program, self.connection.target, self._binds(), self)
        self._openssh.spawn()
        return self.ready() if wait else self

    def ready(self) -> "Tunnels":
        """Wait until the forwards are up; when the system's ssh fails for a reason other than the host
        key, 'auto' carries them with paramiko instead, on the same local ports."""
        if self.client is not None or self._openssh is None:
            return self
        try:
            self._openssh.wait_ready()
        except ClientFailed as exc:
            self._openssh = None
            target = self.connection.target
            if exc.host_key:  # never worked around: ssh's verdict on a host key stands
                raise HostKeyError(f"ssh refused the host key of {target.display}: {exc}",
                                   hint=f"check {target.known_hosts}") from exc
            if self.wanted_client == "openssh":
                raise UnreachableError(f"ssh could not forward to {target.display}: {exc}",
                                       hint=f"try the paramiko client: {CLIENT_ENV}=paramiko") from exc
            self.notes.append(f"the system's ssh could not forward ({exc}); forwarding with paramiko instead")
            return self._start_paramiko()
        self.client = "openssh"
        return self

    def _binds(self) -> list[tuple[str, int, int]]:
        return [(self.bind, self.local_ports[f.name], f.remote_port) for f in self.forwards]

    def _start_paramiko(self) -> "Tunnels":
        binds = self._binds()
        self._forwarder = _forwarder_class()(self.connection, self, [("127.0.0.1", r) for _, _, r in binds],
                                             [(b, local) for b, local, _ in binds])
        self._forwarder.start()
        self.client = "paramiko"
        return self

    @property
    def alive(self) -> bool:
        """Whether the forwards still run: the ssh child, or the Connection's transport."""
        if self._openssh is not None:
            return self._openssh.alive
        return self._forwarder is not None and self.connection.is_open

    def stop(self) -> None:
        """Close the listeners (open connections end); the SSH connection stays open."""
        if self._openssh is not None:
            self._openssh.stop()
            self._openssh = None
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None

    def url(self, name: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.local_ports[name]}{path}"


PORTS_FILE_LIMIT = 65536  # the most bytes of the host's ports.json read (run-lab writes well under 1 KB)


def host_ports(connection: Connection, workdir: str) -> dict[str, int]:
    """The ports the lab's services chose on the host, by name ({} when run-lab recorded none there).

    run-lab records them in <workdir>/services/ports.json on the host (where a port is taken there, its
    service moves to another). One command on the host; opens the connection."""
    import json
    import shlex

    from tflab.jsontext import nesting

    folder = '"$HOME"' + shlex.quote(workdir[1:]) if workdir.startswith("~/") else shlex.quote(workdir)
    # Bounded on the host (a link to /dev/zero, a huge file), and a regular file only (a FIFO would block).
    path = f"{folder}/services/ports.json"
    text = connection.open().output(f"[ -f {path} ] && head -c {PORTS_FILE_LIMIT + 1} {path} 2>/dev/null; true",
                                    timeout=30.0)
    deepest = nesting(text[:PORTS_FILE_LIMIT + 1])
    why = f"more than {PORTS_FILE_LIMIT} bytes" if len(text) > PORTS_FILE_LIMIT else \
        "nested deeper than 4" if deepest > 4 else None
    if why is None:
        try:
            recorded = json.loads(text or "{}")
        except (ValueError, RecursionError):
            why = f"not JSON: {text[:80]!r}"
    if why is not None:  # damaged: the lab's own ports, said in one line
        log.warning("the lab's services/ports.json on the host is damaged (%s); forwarding to the lab's own ports",
                    why)
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {name: port for name, port in recorded.items()
            if name in ports.LAB_PORTS and isinstance(port, int) and 0 <= port < 65536}


JUPYTER_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,256}")


def host_jupyter_token(connection: Connection, workdir: str) -> str | None:
    """Jupyter's token, read from the host each time (run-lab keeps it in <workdir>/jupyter-token, mode
    0600, and starts Jupyter with JUPYTER_TOKEN_FILE): never written here, nor logged. None when there is
    none (no Jupyter on the host yet), or it is not a token (a damaged file: no URL is better than a wrong
    one). One bounded command on a regular file; opens the connection."""
    import shlex

    folder = '"$HOME"' + shlex.quote(workdir[1:]) if workdir.startswith("~/") else shlex.quote(workdir)
    path = f"{folder}/jupyter-token"
    text = connection.open().output(f"[ -f {path} ] && head -c 257 {path} 2>/dev/null; true", timeout=30.0).strip()
    return text if JUPYTER_TOKEN.fullmatch(text) else None


def lab_forwards(chosen: dict[str, int], console: Console | None = None,
                 local_ports: dict[str, int] | None = None) -> list[Forward]:
    """The lab's forwards, to the ports its services chose on the host (host_ports) where it recorded
    them, else to the lab's own ports; a service it runs without (REST off: port 0) is not forwarded.
    Each from the local port in local_ports (the ones the lab last used: tflab.labs), else the lab's own."""
    forwards = []
    for name, (default, local) in ports.LAB_PORTS.items():
        local = (local_ports or {}).get(name, local)
        remote = chosen.get(name, default)
        if not remote:
            continue
        if remote != default and console is not None:
            console.note(f"{name}: port {default} was taken on the host, so the lab's service listens on {remote}")
        forwards.append(Forward(name, remote, local))
    return forwards


def forward_until_interrupted(connection: Connection, forwards: list[Forward], console: Console, tries: int,
                              client: str | None = None, on_up=None, jupyter_token: str | None = None) -> None:
    """Forward until Ctrl-C (KeyboardInterrupt), saying where; when SSH drops, reconnect with bounded
    backoff and forward the same local ports again. Closes everything on the way out. on_up(local_ports)
    is called each time the forwards are up (e.g. to remember the lab's local ports: tflab.labs). With
    jupyter_token, Jupyter's URL is printed with it (and is in the --json line): on the console only."""
    target = connection.target

    def started(tunnels: Tunnels) -> Tunnels:
        """What every (re)start does: drop the verifying connection when ssh holds its own, say the notes."""
        if tunnels.client == "openssh":
            connection.close()  # it verified the host key; ssh holds a connection of its own
        for note in tunnels.notes:
            console.note(note)
        if on_up is not None:
            on_up(dict(tunnels.local_ports))
        return tunnels

    tunnels = started(Tunnels(connection, forwards, client=client).start())
    try:
        for name, (wanted, got) in tunnels.moved.items():
            console.note(f"local port {wanted} ({name}) is in use; using {got} instead")
        for f in forwards:
            console.info(f"{f.name:<13} 127.0.0.1:{tunnels.local_ports[f.name]:<6} -> {target.display} port {f.remote_port}")
        for line in _url_lines(tunnels, jupyter_token):
            console.info(line)
        console.info(f"forwarding with {_CLIENT_NAMES[tunnels.client]} until Ctrl-C")
        console.event(_forwarding_event(tunnels, jupyter_token))
        seen_errors = 0
        while True:
            time.sleep(0.5)
            for message in tunnels.errors[seen_errors:]:
                console.warn(message)
            seen_errors = len(tunnels.errors)
            if tunnels.alive:
                continue
            console.warn(f"the SSH connection to {target.display} dropped; reconnecting")
            console.event({"event": "dropped", "host": target.display})
            tunnels.stop()
            connection.close()
            tunnels = started(_reconnect(connection, forwards, tunnels.local_ports, tries, console, client))
            seen_errors = 0
            console.info(f"reconnected to {target.display}; the same local ports forward again")
            console.event(_forwarding_event(tunnels, jupyter_token))
    except KeyboardInterrupt:
        pass
    finally:
        tunnels.stop()
        connection.close()


def lab_urls(local_ports: dict[str, int], jupyter_token: str | None = None) -> dict[str, str]:
    """The lab's URLs as this machine reaches them through its tunnels (Jupyter's with its token, when
    known: a secret, for the console only)."""
    urls = {}
    if "jupyter" in local_ports:
        urls["jupyter"] = f"http://127.0.0.1:{local_ports['jupyter']}/lab" + (f"?token={jupyter_token}"
                                                                              if jupyter_token else "")
    if "tensorboard" in local_ports:
        urls["tensorboard"] = f"http://127.0.0.1:{local_ports['tensorboard']}/"
    if "rest" in local_ports:
        urls["serving_rest"] = f"http://127.0.0.1:{local_ports['rest']}/v1/models"
    if "serving" in local_ports:
        urls["serving_grpc"] = f"127.0.0.1:{local_ports['serving']}"
    return urls


def _lab_local_ports(tunnels: Tunnels) -> dict[str, int]:
    return {f.name: tunnels.local_ports[f.name] for f in tunnels.forwards if f.name in ports.LAB_PORTS}


def _url_lines(tunnels: Tunnels, jupyter_token: str | None) -> list[str]:
    urls = lab_urls(_lab_local_ports(tunnels), jupyter_token)
    return [f"{name:<13} {url}" for name, url in urls.items()]


def _forwarding_event(tunnels: Tunnels, jupyter_token: str | None = None) -> dict:
    """What `tflab tunnel --json` prints (one line) each time the forwards are up: each forward, and the
    lab's URLs (Jupyter's with its token), when it forwards the lab's services."""
    event = {"event": "forwarding", "host": tunnels.connection.target.display, "client": tunnels.client,
             "forwards": {f.name: {"local": f"127.0.0.1:{tunnels.local_ports[f.name]}", "remote_port": f.remote_port}
                          for f in tunnels.forwards}}
    urls = lab_urls(_lab_local_ports(tunnels), jupyter_token)
    return event | {"urls": urls} if urls else event


_CLIENT_NAMES = {"openssh": "OpenSSH (ssh -N -L)", "paramiko": "paramiko (sshtunnel)"}


def _reconnect(connection: Connection, forwards: list[Forward], local_ports: dict, tries: int,
               console: Console, client: str | None) -> Tunnels:
    """Reopen the connection with bounded backoff and forward the same local ports again."""
    delay = 1.0
    for attempt in range(1, tries + 1):
        try:
            connection.open()
            same = [Forward(f.name, f.remote_port, local_ports.get(f.name, f.local_port)) for f in forwards]
            return Tunnels(connection, same, client=client).start()
        except UnreachableError as exc:
            console.info(f"  reconnect {attempt}/{tries} failed ({exc}); next try in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise UnreachableError(f"could not reconnect to {connection.target.display} after {tries} tries",
                           hint="check that the host runs (`tflab status`), then `tflab tunnel` again")
