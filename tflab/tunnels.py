"""Named local port forwards to a lab host, over the one verified SSH connection.

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
import socket
import socketserver
import threading
import time
from dataclasses import dataclass

from tflab import ports
from tflab.console import Console
from tflab.errors import InputError, UnreachableError
from tflab.ssh import Connection

log = logging.getLogger(__name__)
CHUNK = 65536


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


class Tunnels:
    """Named forwards over one Connection: start() binds them, stop() releases them (idempotent)."""

    def __init__(self, connection: Connection, forwards: list[Forward], bind: str = "127.0.0.1"):
        self.connection = connection
        self.forwards = forwards
        self.bind = bind
        self.local_ports: dict[str, int] = {}
        self.moved: dict[str, tuple[int, int]] = {}  # name: (wanted, got)
        self.errors: list[str] = []
        self._forwarder = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Tunnels":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record_error(self, remote_port: int, exc: Exception) -> None:
        names = [f.name for f in self.forwards if f.remote_port == remote_port]
        message = (f"{names[0] if names else 'a tunnel'}: nothing answers on port {remote_port} of "
                   f"{self.connection.target.display} ({exc})")
        with self._lock:
            self.errors.append(message)
        log.warning(message)

    def start(self) -> "Tunnels":
        """Bind every forward's local port (a free one when the wanted port is taken)."""
        taken: set[int] = set()
        local_binds, remote_binds = [], []
        for f in self.forwards:
            port = ports.pick(f.local_port, taken, self.bind) if f.local_port else ports.free_port(self.bind)
            if f.local_port and port != f.local_port:
                self.moved[f.name] = (f.local_port, port)
            taken.add(port)
            self.local_ports[f.name] = port
            local_binds.append((self.bind, port))
            remote_binds.append(("127.0.0.1", f.remote_port))
        self.connection.open()
        self._forwarder = _forwarder_class()(self.connection, self, remote_binds, local_binds)
        self._forwarder.start()
        return self

    def stop(self) -> None:
        """Close the listeners (open connections end); the SSH connection stays open."""
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None

    def url(self, name: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.local_ports[name]}{path}"


def forward_until_interrupted(connection: Connection, forwards: list[Forward], console: Console, tries: int) -> None:
    """Forward until Ctrl-C (KeyboardInterrupt), saying where; when SSH drops, reconnect with bounded
    backoff and forward the same local ports again. Closes everything on the way out."""
    target = connection.target
    tunnels = Tunnels(connection, forwards).start()
    try:
        for name, (wanted, got) in tunnels.moved.items():
            console.note(f"local port {wanted} ({name}) is in use; using {got} instead")
        for f in forwards:
            console.info(f"{f.name:<13} 127.0.0.1:{tunnels.local_ports[f.name]:<6} -> {target.display} port {f.remote_port}")
        console.info("forwarding until Ctrl-C")
        seen_errors = 0
        while True:
            time.sleep(0.5)
            for message in tunnels.errors[seen_errors:]:
                console.warn(message)
            seen_errors = len(tunnels.errors)
            if connection.is_open:
                continue
            console.warn(f"the SSH connection to {target.display} dropped; reconnecting")
            tunnels.stop()
            tunnels = _reconnect(connection, forwards, tunnels.local_ports, tries, console)
            seen_errors = 0
            console.info(f"reconnected to {target.display}; the same local ports forward again")
    except KeyboardInterrupt:
        pass
    finally:
        tunnels.stop()
        connection.close()


def _reconnect(connection: Connection, forwards: list[Forward], local_ports: dict, tries: int,
               console: Console) -> Tunnels:
    """Reopen the connection with bounded backoff and forward the same local ports again."""
    delay = 1.0
    for attempt in range(1, tries + 1):
        try:
            connection.open()
            same = [Forward(f.name, f.remote_port, local_ports.get(f.name, f.local_port)) for f in forwards]
            return Tunnels(connection, same).start()
        except UnreachableError as exc:
            console.info(f"  reconnect {attempt}/{tries} failed ({exc}); next try in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise UnreachableError(f"could not reconnect to {connection.target.display} after {tries} tries",
                           hint="check that the host runs (`tflab status`), then `tflab tunnel` again")
