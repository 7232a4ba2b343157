"""Tunnels to a real sshd after the Connection verified its key, with each client (the system's
OpenSSH and paramiko/sshtunnel): integrity, concurrency, half-close, dead ports, and the choice
between the two (fallback, and never around a host key that ssh refuses)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.sshd import Sshd
from tflab import ports
from tflab.errors import InputError, UnreachableError
from tflab.ssh import Connection, HostKeyError, SshTarget
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
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 128  # a hundred connections at once: the default backlog, 5, drops SYNs
        server.server_bind()
        server.server_activate()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made[name] = server
    yield {name: s.server_address[1] for name, s in made.items()}
    for s in made.values():
        s.shutdown()
        s.server_close()


@pytest.fixture(params=["openssh", "paramiko"])
def tunnels(request, target, servers):
    dead = ports.free_port()
    conn = Connection(target)
    with Tunnels(conn, [Forward("echo", servers["echo"], 0), Forward("count", servers["count"], 0),
                        Forward("dead", dead, 0)], client=request.param) as t:
        assert t.client == request.param
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


def test_nodelay_is_set_on_the_paramiko_transport_socket(target, servers):
    # Small SSH messages (window adjusts, EOF, CLOSE) must not wait for delayed ACKs; bench/tunnels.py
    # measures what that saves on new connections.
    with Connection(target) as conn, Tunnels(conn, [Forward("echo", servers["echo"], 0)], client="paramiko"):
        assert conn.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


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


@pytest.mark.parametrize("client", ["openssh", "paramiko"])
def test_a_taken_local_port_moves_and_stop_releases_everything(target, servers, client):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        conn = Connection(target)
        t = Tunnels(conn, [Forward("echo", servers["echo"], busy)], client=client).start()
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


def echoes(t: Tunnels) -> bool:
    with connect(t, "echo") as s:
        s.sendall(b"hi")
        return s.recv(2) == b"hi"


def test_auto_prefers_the_system_ssh_and_takes_paramiko_without_one(target, servers, monkeypatch, tmp_path):
    with Connection(target) as conn:
        with Tunnels(conn, [Forward("echo", servers["echo"], 0)]) as t:
            assert t.client == "openssh" and t.notes == [] and echoes(t)
        monkeypatch.setenv("PATH", str(tmp_path))  # no ssh here
        with Tunnels(conn, [Forward("echo", servers["echo"], 0)]) as t:
            assert t.client == "paramiko" and echoes(t)
        with pytest.raises(InputError, match="no `ssh` client"):
            Tunnels(conn, [Forward("echo", servers["echo"], 0)], client="openssh").start()
        broken = tmp_path / "ssh"  # on PATH and executable, but not a program
        broken.write_bytes(b"")
        broken.chmod(0o755)
        with Tunnels(conn, [Forward("echo", servers["echo"], 0)]) as t:
            assert t.client == "paramiko" and echoes(t)
            assert t.notes and f"cannot run {broken}" in t.notes[0]


def test_tflab_tunnel_client_env_picks_the_client(target, servers, monkeypatch):
    monkeypatch.setenv("TFLAB_TUNNEL_CLIENT", "paramiko")
    with Connection(target) as conn, Tunnels(conn, [Forward("echo", servers["echo"], 0)]) as t:
        assert t.client == "paramiko" and echoes(t)
    monkeypatch.setenv("TFLAB_TUNNEL_CLIENT", "putty")
    with pytest.raises(InputError, match="unknown tunnel client 'putty'"):
        Tunnels(Connection(target), [])


def test_a_key_file_ssh_refuses_falls_back_to_paramiko_and_says_why(target, servers, tmp_path):
    # OpenSSH will not use a private key others can read; paramiko does: the forwards still come up.
    loose = tmp_path / "loose_key"
    loose.write_bytes(open(target.identity, "rb").read())
    loose.chmod(0o644)
    loose_target = dataclasses.replace(target, identity=str(loose))
    with Connection(loose_target) as conn:
        with Tunnels(conn, [Forward("echo", servers["echo"], 0)]) as t:
            assert t.client == "paramiko" and echoes(t)
            assert len(t.notes) == 1 and "the system's ssh could not forward" in t.notes[0]
            assert "Permission denied" in t.notes[0]
        with pytest.raises(UnreachableError, match="ssh could not forward"):
            Tunnels(conn, [Forward("echo", servers["echo"], 0)], client="openssh").start()
        # run-lab's way: ssh logs in while the caller goes on; the fallback keeps the local ports it said.
        t = Tunnels(conn, [Forward("echo", servers["echo"], 0)]).start(wait=False)
        said = dict(t.local_ports)
        try:
            assert t.ready().client == "paramiko" and t.local_ports == said and echoes(t)
        finally:
            t.stop()


def test_a_host_key_ssh_refuses_is_never_carried_by_paramiko_instead(target, servers):
    # The user's known_hosts marks the key @revoked: paramiko skips such lines, OpenSSH refuses the key.
    with Connection(target) as conn:
        conn.open()  # pins the key into known_hosts
        line = open(target.known_hosts).read().strip()
        with open(target.known_hosts, "a") as f:
            f.write(f"@revoked {line}\n")
        t = Tunnels(conn, [Forward("echo", servers["echo"], 0)])
        with pytest.raises(HostKeyError, match="ssh refused the host key"):
            t.start()
        assert t.client is None and ports.is_free(t.local_ports["echo"])


def test_the_system_ssh_takes_key_and_known_hosts_paths_with_spaces_and_percent_signs(target, servers, tmp_path):
    odd = tmp_path / "my keys %d 100%"
    odd.mkdir()
    key = odd / "id ed25519"
    key.write_bytes(open(target.identity, "rb").read())
    key.chmod(0o600)
    odd_target = dataclasses.replace(target, identity=str(key), known_hosts=str(odd / "known hosts"))
    with Connection(odd_target) as conn, Tunnels(conn, [Forward("echo", servers["echo"], 0)], client="openssh") as t:
        assert t.client == "openssh" and echoes(t)


@pytest.fixture(scope="module")
def no_forwarding(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("nofwd"), ports.free_port(), allow_forwarding=False).start()
    yield server
    server.stop()


@pytest.mark.parametrize("client", ["openssh", "paramiko"])
def test_a_host_that_does_not_forward_is_named_as_such(no_forwarding, servers, client, tmp_path):
    kind, fp = no_forwarding.host_fingerprint
    target = SshTarget("127.0.0.1", no_forwarding.user, no_forwarding.port, str(no_forwarding.user_key),
                       str(tmp_path / "known_hosts"), pinned={kind: fp}, label="hardened host")
    with Connection(target) as conn, Tunnels(conn, [Forward("echo", servers["echo"], 0)], client=client) as t:
        t.check()  # nothing known to be wrong yet
        with connect(t, "echo") as s:
            s.settimeout(10)
            assert s.recv(10) == b""  # closed at once, no hang
        deadline = time.monotonic() + 5
        while not t.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert t.errors and "echo: the SSH server of hardened host does not allow forwarding" in t.errors[0]
        with pytest.raises(UnreachableError, match="does not allow TCP forwarding") as info:
            t.check()
        assert "AllowTcpForwarding" in info.value.hint
