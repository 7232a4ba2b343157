"""Tunnels over the verified connection to a real sshd: integrity, concurrency, half-close, dead ports."""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tflab import ports
from tflab.errors import InputError
from tflab.ssh import Connection
from tflab.tunnels import Forward, Tunnels, parse_forward


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _CountThenReply(socketserver.BaseRequestHandler):
    """Reads to EOF, then answers how many bytes came: needs the client's half-close to pass through."""

    def handle(self):
        total = 0
        while data := self.request.recv(65536):
            total += len(data)
        self.request.sendall(f"got {total}".encode())


@pytest.fixture(scope="module")
def servers():
    made = {}
    for name, handler in (("echo", _Echo), ("count", _CountThenReply)):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made[name] = server
    yield {name: s.server_address[1] for name, s in made.items()}
    for s in made.values():
        s.shutdown()
        s.server_close()


@pytest.fixture
def tunnels(target, servers):
    dead = ports.free_port()
    conn = Connection(target)
    with Tunnels(conn, [Forward("echo", servers["echo"], 0), Forward("count", servers["count"], 0),
                        Forward("dead", dead, 0)]) as t:
        yield t
    conn.close()


def connect(t: Tunnels, name: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", t.local_ports[name]), timeout=20)


def test_ten_mib_of_random_bytes_arrive_intact(tunnels):
    payload = os.urandom(10 * 1024 * 1024)
    with connect(tunnels, "echo") as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = s.recv(1 << 20)
            assert chunk, "the tunnel closed early"
            received += chunk
        sender.join()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_a_hundred_concurrent_connections(tunnels):
    def one(i: int) -> bool:
        message = f"hello {i} ".encode() * 50
        with connect(tunnels, "echo") as s:
            s.sendall(message)
            got = b""
            while len(got) < len(message):
                got += s.recv(65536)
        return got == message

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    assert results == [True] * 100


def test_a_half_close_passes_through(tunnels):
    with connect(tunnels, "count") as s:
        s.sendall(b"x" * 100_000)
        s.shutdown(socket.SHUT_WR)  # "that is all": the server answers only after it sees EOF
        reply = b""
        while chunk := s.recv(1024):
            reply += chunk
    assert reply == b"got 100000"


def test_nodelay_is_set_on_the_transport_socket(tunnels):
    # Small SSH messages (window adjusts, EOF, CLOSE) must not wait for delayed ACKs; bench/tunnels.py
    # measures what that saves on new connections.
    transport_sock = tunnels.connection.transport.sock
    assert transport_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_dead_remote_port_closes_at_once_with_a_clear_error(tunnels):
    started = time.monotonic()
    with connect(tunnels, "dead") as s:
        s.settimeout(10)
        assert s.recv(10) == b""  # EOF, not a hang
    assert time.monotonic() - started < 5  # no hang
    deadline = time.monotonic() + 5
    while not tunnels.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tunnels.errors and "dead: nothing answers on port" in tunnels.errors[0]


def test_a_taken_local_port_moves_and_stop_releases_everything(target, servers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        conn = Connection(target)
        t = Tunnels(conn, [Forward("echo", servers["echo"], busy)]).start()
        got = t.local_ports["echo"]
        assert got != busy and t.moved == {"echo": (busy, got)}
        with connect(t, "echo") as s:
            s.sendall(b"hi")
            assert s.recv(2) == b"hi"
        before = threading.active_count()
        started = time.monotonic()
        t.stop()
        t.stop()  # idempotent
        assert time.monotonic() - started < 5.0  # no hang
        assert ports.is_free(got)
        assert conn.is_open  # the connection is the caller's, still usable
        assert threading.active_count() <= before
        conn.close()


@pytest.mark.parametrize("spec, ok", [("8080:80", Forward("port 80", 80, 8080)), ("9000", Forward("port 9000", 9000, 9000))])
def test_parse_forward(spec, ok):
    assert parse_forward(spec) == ok


def test_parse_forward_refuses_garbage():
    with pytest.raises(InputError):
        parse_forward("a:b")
