"""Every command that starts processes, or holds remote ones, ends them on SIGTERM, SIGHUP and Ctrl-C,
at any point: no descendant is left on this machine, every port it took is free again, and a remote
command it was running ends too. `kill -9` cannot be caught; the children still end (parent-death
signal).

Each command runs as a user runs it, with a mark in its environment that every process it starts
inherits, so that what is left can be found after the command is gone (orphans are re-parented).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REMOTE, wait_until
from tests.e2e.test_run_lab_local import processes_mentioning
from tests.sshd import Sshd
from tflab import ports
from tflab.ssh import Connection, SshTarget
from tflab.sshhost import SshHost

pytestmark = pytest.mark.slow
MARK = "TFLAB_TEST_MARK"


def marked(mark: str) -> list[str]:
    """Command lines of live processes whose environment carries the mark."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if f"{MARK}={mark}".encode() not in environ.split(b"\0"):
                continue
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if status == "Z":  # a zombie holds nothing; its parent (this test) reaps it
                continue
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


_started: list["Command"] = []


@pytest.fixture(autouse=True)
def nothing_left_by_a_failed_test():
    """A test that fails before it signals its command must not leave it running for the next ones."""
    yield
    while _started:
        cmd = _started.pop()
        if cmd.proc.poll() is None:
            cmd.proc.kill()  # its children follow (parent-death signal)
            cmd.proc.wait(10)


class Command:
    """`tflab ...` in its own process, its stderr read line by line as it comes."""

    def __init__(self, *args: str, stdin=subprocess.DEVNULL, env: dict | None = None):
        self.mark = uuid.uuid4().hex
        self.proc = subprocess.Popen([sys.executable, "-m", "tflab", *args], stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {}), MARK: self.mark})
        _started.append(self)
        self.lines: list[str] = []  # stdout's and stderr's, as they come
        self._readers = [threading.Thread(target=lambda s=s: self.lines.extend(s), daemon=True)
                         for s in (self.proc.stdout, self.proc.stderr)]
        for reader in self._readers:
            reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        wait_until(lambda: self.proc.poll() is not None or text in self.output, timeout, interval=0.05,
                   what=f"'{text}'")
        assert self.proc.poll() is None, f"exited {self.proc.returncode} before '{text}':\n{self.output[-3000:]}"

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        for reader in self._readers:
            reader.join(10)
        return self.proc.returncode

    def left_behind(self) -> list[str]:
        """What the command started that still runs (bounded wait: the parent-death signal is async)."""
        try:
            wait_until(lambda: not marked(self.mark), 10, interval=0.1, what="its processes to end")
        except AssertionError:
            pass
        return marked(self.mark)


def assert_free(*taken: int) -> None:
    for port in taken:
        wait_until(lambda: ports.is_free(port), 10, interval=0.1, what=f"port {port} to be free")


EXPECTED = {signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGINT: 130}


# ------------------------------------------------------------------ serve


@pytest.mark.parametrize("sig, when", [(signal.SIGTERM, "serving"), (signal.SIGHUP, "serving"),
                                       (signal.SIGTERM, "at once")])
def test_serve_ends_its_server_on_a_signal(lab_steps_run, sig, when):
    workdir, _, _ = lab_steps_run
    grpc, rest = ports.free_port(), ports.free_port()
    cmd = Command("serve", "--model-base-path", str(workdir / "models" / "nn"), "--port", str(grpc),
                  "--rest-port", str(rest))
    if when == "serving":
        cmd.wait_for("Running gRPC ModelServer")
    else:
        cmd.wait_for("serving 'nn'")  # the server process has just been started
    assert cmd.signal(sig) in (0, EXPECTED[sig])
    assert cmd.left_behind() == []
    assert_free(grpc, rest)


def test_serve_with_tensorflow_model_server_says_it_listens_everywhere_and_a_kill_9_still_ends_it(
        lab_steps_run, tmp_path):
    """The real binary's flags, served here by the stand-in under its name (no TF Serving build exists
    for this machine): tflab warns that it listens on every interface."""
    workdir, _, _ = lab_steps_run
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {REMOTE / 'model_server.py'} \"$@\"\n")
    fake.chmod(0o755)
    grpc = ports.free_port()
    os.environ["PATH"], saved = f"{tmp_path}:{os.environ['PATH']}", os.environ["PATH"]
    try:
        cmd = Command("serve", "--model-base-path", str(workdir / "models" / "nn"), "--port", str(grpc),
                      "--rest-port", "0")
    finally:
        os.environ["PATH"] = saved
    cmd.wait_for("Running gRPC ModelServer")
    assert "warning: tensorflow_model_server listens on every interface" in cmd.output
    assert cmd.signal(signal.SIGKILL) == -signal.SIGKILL
    assert cmd.left_behind() == []  # its child got SIGTERM as tflab died
    assert_free(grpc)


# ------------------------------------------------------------------ run-lab --local


@pytest.mark.parametrize("sig, when", [(signal.SIGHUP, "note:"), (signal.SIGTERM, "running the lab steps")])
def test_run_lab_local_ends_everything_on_a_signal(tmp_path, sig, when):
    taken = [ports.free_port() for _ in range(3)]
    cmd = Command("run-lab", "--local", "--out", str(tmp_path), "--port", str(taken[0]), "--rest-port",
                  str(taken[1]), "--tensorboard-port", str(taken[2]), "--builtin-server")
    if when == "note:":
        cmd.wait_for("started:")  # the first service is up, the rest starting
    else:
        cmd.wait_for(when)
        time.sleep(1.0)  # the steps' process is running TensorFlow
    assert cmd.signal(sig) == EXPECTED[sig]
    assert f"tflab: interrupted ({signal.Signals(sig).name})" in cmd.output
    assert cmd.left_behind() == [] and processes_mentioning(str(tmp_path)) == []
    assert_free(*taken)


# ------------------------------------------------------------------ on an SSH host


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals-host")
    server = Sshd(tmp / "sshd", ports.free_port()).start()
    args = ["--host", f"{server.user}@127.0.0.1:{server.port}", "--identity", str(server.user_key),
            "--known-hosts", str(tmp / "known_hosts"), "--accept-new-host-key"]
    yield server, args, tmp
    server.stop()


def ssh_folders(cmd: Command) -> set[str]:
    """The control-socket folders the command's own ssh children use (other tests may make theirs meanwhile)."""
    found = set()
    for line in marked(cmd.mark):
        found.update(re.findall(r"(/tmp/tflab-ssh-[^/\s]+)/", line))
    return found


def test_run_lab_on_a_host_ends_its_tunnel_and_the_remote_steps_on_sigterm(host):
    server, args, tmp = host
    workdir = tmp / "workdir"
    cmd = Command("run-lab", *args, "--python", sys.executable, "--workdir", str(workdir), "--out",
                  str(tmp / "out"), "--steps", "100000")
    try:
        cmd.wait_for("running the lab steps")
        wait_until(lambda: any("steps.py" in p for p in processes_mentioning(str(workdir))), 60,
                   what="the steps to run on the host")
        folders = wait_until(lambda: ssh_folders(cmd), 30, what="the tunnels' ssh child")
        assert cmd.signal(signal.SIGTERM) == 143
        assert cmd.left_behind() == []  # the ssh child carrying the tunnels too
        assert [f for f in folders if os.path.exists(f)] == []  # its control socket's folder is gone
        # The steps the run was running on the host ended with its channel; the services stay (asked for).
        wait_until(lambda: not any("steps.py" in p for p in processes_mentioning(str(workdir))), 15,
                   what="the remote steps to end")
        running = processes_mentioning(str(workdir))
        assert any("model_server.py" in p for p in running)
    finally:  # the lab's services, which the run leaves on its host by design
        target = SshTarget("127.0.0.1", server.user, server.port, str(server.user_key), str(tmp / "known_hosts"))
        with Connection(target) as connection:
            SshHost(connection).stop_all_services(f"{workdir}/services")
    assert processes_mentioning(str(workdir)) == []


def test_tunnel_ends_its_ssh_child_on_sighup_and_on_kill_9(host):
    server, args, tmp = host
    wanted = [ports.free_port(), ports.free_port()]
    for sig in (signal.SIGHUP, signal.SIGKILL):
        cmd = Command("tunnel", *args, "--no-lab-ports", "--forward", f"{wanted[0]}:22", "--forward",
                      f"{wanted[1]}:22")
        cmd.wait_for("until Ctrl-C")
        assert any(Path(p.split()[0]).name == "ssh" for p in marked(cmd.mark))  # the system's ssh carries them
        folders = ssh_folders(cmd)
        assert folders
        assert cmd.signal(sig) in (0, -signal.SIGKILL)
        assert cmd.left_behind() == []
        assert_free(*wanted)
        if sig != signal.SIGKILL:
            assert [f for f in folders if os.path.exists(f)] == []


def test_ssh_with_a_command_ends_the_remote_command_on_sigterm(host, tmp_path):
    _, args, _ = host
    marker = f"tflab-signal-{uuid.uuid4().hex[:8]}"
    cmd = Command("ssh", *args, "--", "sh", "-c", f"echo started; sleep 600 # {marker}")
    cmd.wait_for("started")  # the remote command runs
    assert cmd.signal(signal.SIGTERM) == 143
    assert cmd.left_behind() == []
    wait_until(lambda: not processes_mentioning(marker), 15, what="the remote command to end")
