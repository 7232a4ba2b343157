"""Hosts that are not the happy path: an sshd without SFTP, a host that writes no report, a name that
does not resolve, a port that refuses. Each is one clear line and exit code, never a traceback."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from tests.conftest import tflab
from tests.e2e.test_run_lab_local import processes_mentioning
from tests.sshd import Sshd
from tflab import ports
from tflab.errors import UnreachableError
from tflab.ssh import Connection, SshTarget, wait_for_ssh
from tflab.sshhost import SshHost


@pytest.fixture(scope="module")
def no_sftp(tmp_path_factory):
    """An sshd without `Subsystem sftp`, as hardened servers and minimal containers run."""
    server = Sshd(tmp_path_factory.mktemp("no-sftp"), ports.free_port(), sftp=False).start()
    yield server
    server.stop()


def target_of(server: Sshd, tmp_path) -> SshTarget:
    return SshTarget("127.0.0.1", server.user, server.port, str(server.user_key), str(tmp_path / "known_hosts"),
                     accept_new=True)


def test_push_fetch_and_read_work_without_sftp(no_sftp, tmp_path):
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    blobs = {"a.bin": os.urandom(200_000), "sub/run.sh": b"#!/bin/sh\necho ran\n", "empty": b""}
    for rel, data in blobs.items():
        (local / rel).write_bytes(data)
    os.chmod(local / "sub/run.sh", 0o755)
    remote = str(tmp_path / "remote side")  # a space, as a home folder may have
    with Connection(target_of(no_sftp, tmp_path)) as conn:
        first = conn.push(local, remote)
        assert "no SFTP subsystem" in conn.no_sftp_note
        assert sorted(first["sent"]) == sorted(blobs) and first["bytes"] == sum(map(len, blobs.values()))
        for rel, data in blobs.items():
            assert hashlib.sha256(conn.read_bytes(f"{remote}/{rel}")).digest() == hashlib.sha256(data).digest()
        assert conn.output(f"'{remote}/sub/run.sh'") == "ran"  # the mode travelled too
        assert conn.output(f"stat -c %a '{remote}/a.bin'") == "644"
        assert conn.push(local, remote) == {"sent": [], "skipped": len(blobs), "bytes": 0}
        (local / "sub/run.sh").write_bytes(b"#!/bin/sh\necho changed\n")
        assert conn.push(local, remote)["sent"] == ["sub/run.sh"]
        assert conn.read_text(f"{remote}/sub/run.sh").endswith("changed\n")
        assert conn.fetch(f"{remote}/a.bin", tmp_path / "back" / "a.bin").read_bytes() == blobs["a.bin"]
        with pytest.raises(FileNotFoundError):
            conn.read_text(f"{remote}/nothing-here")
        assert not list((tmp_path / "back").glob(".*partial"))


def test_run_lab_on_a_host_without_sftp_that_writes_no_report_is_a_step_error(no_sftp, tmp_path):
    # /bin/true "has everything" for the bootstrap's check, runs the steps, and writes nothing.
    workdir = tmp_path / "work"
    try:
        proc = tflab("run-lab", "--host", f"{no_sftp.user}@127.0.0.1:{no_sftp.port}", "--identity",
                     str(no_sftp.user_key), "--known-hosts", str(tmp_path / "known_hosts"), "--accept-new-host-key",
                     "--python", "/bin/true", "--workdir", str(workdir), "--out", str(tmp_path / "out"), timeout=300)
    finally:  # what the run left on the host by design (its watchdog, the services that started)
        with Connection(target_of(no_sftp, tmp_path)) as connection:
            SshHost(connection).stop_all_services(f"{workdir}/services")
    assert processes_mentioning(str(workdir)) == []
    assert proc.returncode == 6, proc.stderr[-3000:]
    assert "note: the SSH server of" in proc.stderr and "no SFTP subsystem" in proc.stderr
    assert "tflab: error: lab steps: exited with status 0 but wrote no report" in proc.stderr
    assert "hint: check that /bin/true is a Python with TensorFlow" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (workdir / "remote" / "steps.py").is_file()  # pushed over the tar stream


def test_a_host_that_refuses_fails_at_once_unless_asked_to_wait(tmp_path):
    port = ports.free_port()  # nothing listens there
    started = time.monotonic()
    proc = tflab("run-lab", "--host", f"someone@127.0.0.1:{port}", "--known-hosts", str(tmp_path / "kh"), timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert f"tflab: error: cannot reach someone@127.0.0.1:{port}: port {port}: Connection refused" in proc.stderr
    assert "--ssh-timeout" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30  # not the 600 s a booting lab gets
    waited = tflab("run-lab", "--host", f"someone@127.0.0.1:{port}", "--ssh-timeout", "2", timeout=60)
    assert waited.returncode == 5 and "did not answer SSH within 2 s" in waited.stderr


def test_a_name_that_does_not_resolve_is_said_as_such(monkeypatch):
    def no_such_name(*args, **kwargs):  # the resolver's answer for a name that does not exist
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    target = SshTarget("nowhere.invalid", "ubuntu", 22, known_hosts=os.devnull)
    with pytest.raises(UnreachableError, match="the name nowhere.invalid does not resolve"):
        wait_for_ssh(target, timeout=0, progress=lambda _: None)


def test_a_changed_host_key_has_its_own_exit_code(tmp_path):
    server = Sshd(tmp_path / "sshd", ports.free_port()).start()
    try:
        args = ["ssh", "--host", f"{server.user}@127.0.0.1:{server.port}", "--identity", str(server.user_key),
                "--known-hosts", str(tmp_path / "known_hosts")]
        assert tflab(*args, "--accept-new-host-key", "--", "true").returncode == 0
        server.stop()
        server.new_host_key()
        server.start()
        changed = tflab(*args, "--", "true")
        assert changed.returncode == 9, changed.stderr  # not 5: scripts can tell interception from an outage
        assert "CHANGED" in changed.stderr and "Traceback" not in changed.stderr
    finally:
        server.stop()
    unreachable = tflab(*args, "--", "true")
    assert unreachable.returncode == 5
