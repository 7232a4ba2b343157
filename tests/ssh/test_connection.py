"""Connections to a real OpenSSH server: host keys, waiting, commands, files, services."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import time

import pytest

from tests.ssh.conftest import unpinned
from tests.sshd import Sshd
from tflab import ports
from tflab.errors import LabStepError, UnreachableError
from tflab.ssh import Connection, HostKeyError, SshTarget, parse_host, wait_for_ssh
from tflab.sshhost import SshHost


def test_a_pinned_host_key_connects_and_is_recorded(target):
    with Connection(target) as conn:
        assert conn.output("echo hello") == "hello"
        assert "matches the fingerprint the instance printed" in conn.host_key_note
    known = open(target.known_hosts).read()
    assert known.startswith(f"[127.0.0.1]:{target.port} ssh-ed25519 ")
    # Next time the key comes from known_hosts, without the pins.
    with Connection(unpinned(target)) as conn:
        assert conn.output("echo again") == "again" and conn.host_key_note is None


def test_an_unknown_host_key_is_refused_with_its_fingerprint(target, sshd):
    kind, fp = sshd.host_fingerprint
    with pytest.raises(HostKeyError) as info:
        Connection(unpinned(target)).open()
    assert f"is not known: {kind} {fp}" in str(info.value)
    assert "--accept-new-host-key" in info.value.hint
    assert not os.path.exists(target.known_hosts)


def test_accept_new_records_the_key_trust_on_first_use(target):
    with Connection(unpinned(target, accept_new=True)) as conn:
        assert conn.output("echo ok") == "ok"
        assert "trusted on first use" in conn.host_key_note
    with Connection(unpinned(target)) as conn:  # known now
        assert conn.output("echo ok") == "ok"


def test_a_pin_that_does_not_match_is_refused(target):
    wrong = SshTarget(**{**target.__dict__, "pinned": {"ED25519": "SHA256:" + "A" * 43}})
    with pytest.raises(HostKeyError, match="does not match the fingerprints the instance printed"):
        Connection(wrong).open()
    assert not os.path.exists(target.known_hosts)


def test_a_changed_host_key_is_always_refused(tmp_path):
    server = Sshd(tmp_path / "sshd", ports.free_port()).start()
    try:
        first = SshTarget("127.0.0.1", server.user, server.port, str(server.user_key),
                          str(tmp_path / "known_hosts"), accept_new=True)
        with Connection(first) as conn:
            conn.output("true")
        server.stop()
        server.new_host_key()  # a second sshd on the same port with another host key
        server.start()
        kind, fp = server.host_fingerprint
        for accept_new in (False, True):
            with pytest.raises(HostKeyError, match=re.escape(f"CHANGED: it is now {kind} {fp}")):
                Connection(SshTarget(**{**first.__dict__, "accept_new": accept_new})).open()
    finally:
        server.stop()


def test_a_known_hosts_as_openssh_keeps_it_is_read_hashed_names_and_markers_too(target, tmp_path):
    with Connection(target) as conn:
        conn.output("true")  # pins the key
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", target.known_hosts], check=True, capture_output=True)
    assert open(target.known_hosts).read().startswith("|1|")  # names hashed
    ca = (tmp_path / "ca")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    with open(target.known_hosts, "a") as f:  # a marker line paramiko's own loader fails on
        f.write(f"@cert-authority *.example.com {ca.with_suffix('.pub').read_text()}")
    with Connection(unpinned(target)) as conn:
        assert conn.output("echo known") == "known" and conn.host_key_note is None


def test_a_host_key_marked_revoked_is_refused_even_when_pinned(target, sshd):
    # paramiko alone skips "@revoked" lines, and would take the key from its plain line.
    with Connection(target) as conn:
        conn.output("true")  # pins the key
    line = open(target.known_hosts).read().strip()
    with open(target.known_hosts, "a") as f:
        f.write(f"# an older key of another host\n@revoked other.example ssh-ed25519 {'A' * 68}\n@revoked {line}\n")
    kind, fp = sshd.host_fingerprint
    for t in (target, unpinned(target), unpinned(target, accept_new=True)):
        with pytest.raises(HostKeyError, match=re.escape(f"({kind} {fp}) is marked @revoked")):
            Connection(t).open()


def test_wait_for_ssh_rides_out_a_server_that_starts_late(tmp_path):
    server = Sshd(tmp_path / "late", ports.free_port())
    kind, fp = server.host_fingerprint
    target = SshTarget("127.0.0.1", server.user, server.port, str(server.user_key), str(tmp_path / "kh"),
                       pinned={kind: fp})
    starter = threading.Timer(1.5, server.start)
    starter.start()
    seen: list[str] = []
    try:
        with wait_for_ssh(target, timeout=30, progress=seen.append) as conn:
            assert conn.output("echo up") == "up"
        assert "waiting for the TCP connection" in seen and seen[-1] == "authentication"
    finally:
        starter.join()
        server.stop()


def test_wait_for_ssh_gives_up_at_its_limit_saying_where_it_was_stuck(target):
    dead = SshTarget(**{**target.__dict__, "port": ports.free_port()})
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="did not answer SSH within 2 s \\(stuck at the TCP connection"):
        wait_for_ssh(dead, timeout=2, progress=lambda s: None)
    assert time.monotonic() - started < 10


def test_run_streams_both_streams_in_order_and_returns_the_status(target):
    seen: list[tuple[str, str, float]] = []
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done; exit 3"
    with Connection(target) as conn:
        result = conn.run(script, on_line=lambda kind, line: seen.append((kind, line, time.monotonic())),
                          check=False)
        assert result.status == 3
        assert [line for kind, line, _ in seen if kind == "out"] == ["out1", "out2", "out3"]
        assert [line for kind, line, _ in seen if kind == "err"] == ["err1", "err2", "err3"]
        # streamed as they came, not all at the end
        outs = [t for kind, _, t in seen if kind == "out"]
        assert outs[2] - outs[0] > 0.4
        with pytest.raises(LabStepError) as info:
            conn.run("echo last words; exit 5", step="demo")
        assert info.value.status == 5 and "last words" in info.value.tail and "demo" in str(info.value)


def test_push_sends_changed_files_only_intact_with_their_modes(target, tmp_path):
    local = tmp_path / "local"
    (local / "sub" / "deeper").mkdir(parents=True)
    blobs = {"a.bin": os.urandom(300_000), "sub/b.py": b"print('b')\n", "sub/deeper/c.sh": b"#!/bin/sh\necho c\n",
             "empty": b""}
    for rel, data in blobs.items():
        (local / rel).write_bytes(data)
    os.chmod(local / "sub/deeper/c.sh", 0o755)
    remote = str(tmp_path / "remote-side")
    with Connection(target) as conn:
        first = conn.push(local, remote)
        assert sorted(first["sent"]) == sorted(blobs) and first["skipped"] == 0
        for rel, data in blobs.items():
            with conn.sftp.open(f"{remote}/{rel}", "rb") as f:
                assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest(), rel
        assert conn.sftp.stat(f"{remote}/sub/deeper/c.sh").st_mode & 0o777 == 0o755
        assert conn.sftp.stat(f"{remote}/sub/b.py").st_mode & 0o111 == 0
        assert conn.output(f"{remote}/sub/deeper/c.sh") == "c"
        second = conn.push(local, remote)
        assert second == {"sent": [], "skipped": len(blobs), "bytes": 0}
        (local / "sub/b.py").write_bytes(b"print('changed')\n")
        os.chmod(local / "a.bin", 0o700)
        third = conn.push(local, remote)
        assert sorted(third["sent"]) == ["a.bin", "sub/b.py"]
        fetched = conn.fetch(f"{remote}/a.bin", tmp_path / "back" / "a.bin")
        assert fetched.read_bytes() == blobs["a.bin"]


def test_a_service_outlives_the_ssh_session_until_stopped(target, tmp_path):
    log = str(tmp_path / "svc" / "sleeper.log")
    with Connection(target) as conn:
        host = SshHost(conn)
        service = host.start_service("sleeper", ["python3", "-c", "import time; print('started', flush=True); "
                                                 "time.sleep(120)"], log_path=log, cwd=str(tmp_path))
    with Connection(target) as conn:  # a new session: the service still runs
        host = SshHost(conn)
        assert host.service_alive(service)
        for _ in range(50):
            if "started" in host.read_log(service):
                break
            time.sleep(0.1)
        assert host.read_log(service).strip() == "started"
        assert open(tmp_path / "svc" / "sleeper.pid").read().strip() == str(service.pid)
        host.stop_service(service)
        assert not host.service_alive(service)


def test_a_dropped_connection_is_reopened(tmp_path):
    server = Sshd(tmp_path / "restart", ports.free_port()).start()
    kind, fp = server.host_fingerprint
    try:
        conn = Connection(SshTarget("127.0.0.1", server.user, server.port, str(server.user_key),
                                    str(tmp_path / "kh"), pinned={kind: fp}))
        assert conn.open().output("echo 1") == "1"
        server.stop()
        server.start()
        deadline = time.monotonic() + 10
        while conn.is_open and time.monotonic() < deadline:  # the old transport notices its peer is gone
            time.sleep(0.05)
        assert not conn.is_open
        assert conn.open().output("echo 2") == "2"
        conn.close()
        conn.close()  # idempotent
    finally:
        server.stop()


@pytest.mark.parametrize("spec, expected", [
    ("ubuntu@10.0.0.5", ("ubuntu", "10.0.0.5", 22)),
    ("root@127.0.0.1:2222", ("root", "127.0.0.1", 2222)),
    ("example.org", ("ubuntu", "example.org", 22)),
    ("me@[::1]:2200", ("me", "::1", 2200)),
])
def test_parse_host(spec, expected):
    assert parse_host(spec) == expected
