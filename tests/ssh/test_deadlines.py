"""Every remote call has a deadline (a real sshd on 127.0.0.1; the host is this machine): a command that should
be quick and never answers, a host whose SSH server stops answering (its sshd processes frozen with SIGSTOP, so
the TCP connection stays up and only the answers stop, as on a host that is swapping), end with one
UnreachableError (exit 5) naming the host and what it waited for, and leave nothing running on the host.
paramiko's own waits are an hour for a channel to open (Transport.channel_timeout) and unbounded for a
channel request and an exit status (Channel._wait_for_event, recv_exit_status)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tflab.errors import ExitCode, UnreachableError
from tflab.ssh import Connection
from tflab.sshhost import SshHost

# A bound on each call in these tests, far above its deadline: a call that ignored its deadline would wait
# paramiko's hour; the test fails instead of hanging.
GUARD = 60


def within(call):
    """call() run in a thread; its exception (or result) once it ends, failing if it has not ended by GUARD s."""
    outcome: list = []

    def target():
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 (handed back to the test)
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), f"the call did not end within {GUARD} s: its deadline did not hold"
    return outcome[0]


def group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of a process group on this machine."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry))
    return found


@pytest.mark.parametrize("how", ["run", "output"])
def test_a_command_that_never_answers_ends_at_its_deadline_and_leaves_no_process(target, tmp_path, how):
    """A quick command that hangs on the host: the call ends with UnreachableError (exit 5) naming the host and
    what it waited for, the command's whole process group on the host ends with it, and the connection still
    serves the next command."""
    group_file = tmp_path / "group"
    # the command's process group (/proc/self/stat field 5 of a child in it), then a wait that never ends
    command = f"cut -d' ' -f5 /proc/self/stat > {group_file}; sleep 600; true"
    with Connection(target) as connection:
        if how == "run":
            error = within(lambda: connection.run(command, step="a stuck check", timeout=2, quick=True))
            assert str(error) == "test host did not answer within 2 s (waiting for a stuck check to finish)"
        else:
            error = within(lambda: connection.output(command, timeout=2))
            assert str(error) == "test host did not answer within 2 s (waiting for cut to finish)"
        assert isinstance(error, UnreachableError) and error.exit_code == ExitCode.UNREACHABLE == 5
        assert error.hint and "tflab status" in error.hint
        group = int(group_file.read_text())
        assert group > 1
        wait_until(lambda: not group_members(group), 30, what=f"process group {group} on the host to end")
        assert connection.output("echo still here") == "still here"


def test_a_lab_step_past_its_limit_is_still_a_lab_step_failure(target):
    """A long step (not quick) that runs past its own limit stays what it was: a LabStepError with its output."""
    from tflab.errors import LabStepError

    with Connection(target) as connection:
        error = within(lambda: connection.run("echo working; sleep 600", step="lab steps", timeout=2))
    assert isinstance(error, LabStepError) and error.tail == "working"
    assert str(error) == "lab steps: did not finish within 2 s on test host"


@pytest.fixture
def frozen(sshd):
    """Freeze the sshd's per-connection processes on demand (SIGSTOP), and thaw them whatever happens."""
    stopped: list[int] = []

    def freeze() -> None:
        for pid in sshd.children():
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        assert stopped, "no sshd session process to freeze"

    yield freeze
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_host_whose_ssh_server_stops_answering_ends_each_call_at_its_deadline(target, tmp_path, frozen):
    """The SSH server stops answering with the connection up: opening a channel (run, exec_bytes, a tied
    service), a request on a channel already open (exec) and an SFTP read each end with an UnreachableError
    naming the host and what it waited for, within the connection's deadlines (not paramiko's hour)."""
    (tmp_path / "file").write_text("contents")
    with Connection(target, answer_timeout=1, sftp_timeout=1) as connection:
        assert connection.read_text(str(tmp_path / "file")) == "contents"  # SFTP is open before the freeze
        channel = connection.open_channel("a probe")
        frozen()
        error = within(lambda: connection.run("true", step="probe"))
        assert isinstance(error, UnreachableError), error
        assert str(error) == "test host did not open an SSH channel for probe within 1 s"
        error = within(lambda: connection.exec_bytes("cat", stdin=b"x"))
        assert str(error) == "test host did not open an SSH channel for cat within 1 s"
        error = within(lambda: connection.request(channel, "running true", lambda: channel.exec_command("true")))
        assert isinstance(error, UnreachableError), error
        assert str(error) == "test host did not answer the request for running true within 1 s"
        error = within(lambda: connection.read_text(str(tmp_path / "file")))
        assert isinstance(error, UnreachableError), error
        assert str(error) == (f"test host did not answer over SFTP within 1 s (waiting to read {tmp_path / 'file'})")
        error = within(lambda: SshHost(connection).start_service("sleeper", ["sleep", "600"], tied=True,
                                                                 log_path=str(tmp_path / "sleeper.log")))
        assert isinstance(error, UnreachableError) and error.exit_code == 5, error
        assert str(error) == "test host did not open an SSH channel for sleeper within 1 s"


def test_a_short_command_still_runs_under_its_deadlines(target, tmp_path):
    """The deadlines bound waiting for answers, not work: a command that prints for longer than answer_timeout
    is not cut, and files still go both ways over SFTP with short deadlines."""
    with Connection(target, answer_timeout=1, sftp_timeout=1) as connection:
        lines: list[str] = []
        result = connection.run("for i in 1 2 3; do echo $i; sleep 0.6; done", step="a long step", timeout=60,
                                on_line=lambda kind, line: lines.append(line))
        assert result.status == 0 and lines == ["1", "2", "3"]
        status, out, _ = connection.exec_bytes("sleep 1.5; cat", stdin=b"echoed", timeout=30)
        assert (status, out) == (0, b"echoed")
        (tmp_path / "local").mkdir()
        (tmp_path / "local" / "blob").write_bytes(os.urandom(2_000_000))
        connection.push(tmp_path / "local", str(tmp_path / "remote"))
        copy = connection.fetch(str(tmp_path / "remote" / "blob"), tmp_path / "back" / "blob")
        assert copy.read_bytes() == (tmp_path / "local" / "blob").read_bytes()
