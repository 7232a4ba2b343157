"""tflab's side of the idle watchdog against a hostile or damaged host (a real sshd on 127.0.0.1): every view
it reads is bounded and checked (one `tflab: error:` line, exit 3, for a damaged one), every call has a
deadline (a watchdog that never answers is an UnreachableError), and the services run-lab starts carry the
record that lets the watchdog prove them before it signals anything."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REMOTE, tflab, wait_until
from tflab.autostop import autostop
from tflab.errors import InputError, UnreachableError
from tflab.ssh import Connection
from tflab.sshhost import SshHost

sys.path.insert(0, str(REMOTE))
import watchdog  # noqa: E402  (remote/ scripts import as plain modules, as on a lab host)

NESTED = "[" * 100_000 + "]" * 100_000


def host_args(sshd, tmp: Path) -> list[str]:
    return ["--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity", str(sshd.user_key),
            "--known-hosts", str(tmp / "known_hosts"), "--accept-new-host-key"]


def a_lab(tmp: Path, program: str | None = None) -> Path:
    """A lab folder on the host with the real watchdog, or a stand-in program in its place."""
    workdir = tmp / "lab"
    (workdir / "remote").mkdir(parents=True)
    if program is None:
        shutil.copy(REMOTE / "watchdog.py", workdir / "remote" / "watchdog.py")
    else:
        (workdir / "remote" / "watchdog.py").write_text(program)
    return workdir


def printing(line: str) -> str:
    """A stand-in watchdog that prints line as its view."""
    return f"import sys\nsys.stdout.write(open({str(line)!r}).read())\n"


GOOD = {"policy": {"enabled": True, "idle_seconds": 3600, "max_lifetime_seconds": None, "keep_until": None},
        "action": "stop-services", "now": 1.8e9, "checked_at": 1.8e9, "idle_seconds": 12.0, "active": [],
        "acts_at": 1.8e9 + 3600, "acts_because": "idle for 3600 s", "acted": None, "problems": []}


@pytest.mark.parametrize("view, what", [
    ('{"policy": {"enabled": true, "keep_until": 1e300}}', "policy.keep_until is 1e+300"),
    ('{"policy": {"enabled": true, "keep_until": Infinity}}', "policy.keep_until is inf"),
    ('{"policy": {"enabled": true, "idle_seconds": NaN}}', "policy.idle_seconds is nan"),
    (json.dumps(GOOD | {"checked_at": -5}), "checked_at is -5"),
    (json.dumps(GOOD | {"acted": {"what": "stop-services", "at": 1e300, "why": "x"}}), "acted.at is 1e+300"),
    (json.dumps(GOOD | {"active": "everything"}), "active is everything"),
    ('{"policy": "off"}', "the policy is off"),
    (NESTED[:40_000], "nested deeper than 16"),
    ("{" + '"x": "' + "a" * 1_000_000 + '"}', "not JSON"),  # cut to its last 256 KB on the host
    ("Traceback (most recent call last):", "not JSON"),
])
def test_a_damaged_view_is_one_error_line_naming_what(sshd, target, tmp_path, view, what):
    """`tflab autostop` on a host whose watchdog shows a hostile view (keep_until 1e300 was an OverflowError):
    one error line, exit 3, no traceback."""
    (tmp_path / "view.txt").write_text(view + "\n")
    workdir = a_lab(tmp_path, printing(str(tmp_path / "view.txt")))
    with Connection(target) as connection, pytest.raises(InputError) as info:
        autostop(connection, str(workdir))
    assert f"the watchdog's view on test host:{workdir} is damaged: {what}" in str(info.value)
    if what.startswith("policy.keep_until is 1e"):  # the same through the CLI, as a user sees it
        proc = tflab("autostop", *host_args(sshd, tmp_path), "--workdir", str(workdir), timeout=120)
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith("tflab: error: the watchdog's view on ") and "Traceback" not in proc.stderr
        assert lines[-1].strip().startswith("hint: ") and len(lines) == 2, lines


def test_a_good_view_from_a_stand_in_is_shown(target, tmp_path):
    """The checks refuse damage, not views: the same stand-in with a sound view is shown as it is."""
    (tmp_path / "view.txt").write_text(json.dumps(GOOD) + "\n")
    workdir = a_lab(tmp_path, printing(str(tmp_path / "view.txt")))
    with Connection(target) as connection:
        assert autostop(connection, str(workdir)) == GOOD


def test_a_hostile_policy_on_the_host_is_refused_there_and_said(sshd, tmp_path):
    """The real watchdog with keep_until 1e300 in its policy file: refused there (it keeps the last good
    value), and `tflab autostop` shows the policy and the problem."""
    workdir = a_lab(tmp_path)
    (workdir / "autostop").mkdir()
    (workdir / "autostop" / "policy.json").write_text('{"enabled": true, "idle_seconds": 60, "keep_until": 1e300}')
    proc = tflab("autostop", *host_args(sshd, tmp_path), "--workdir", str(workdir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "policy     idle 60 s, max lifetime off;" in proc.stdout
    assert "problem    policy.json: keep_until 1e+300 is out of range; kept None" in proc.stdout


def test_a_watchdog_that_never_answers_is_given_up_on_at_the_deadline(target, tmp_path):
    """A watchdog that hangs (its view a FIFO for an old one, or anything else): the call ends at its
    deadline with an UnreachableError, and the command on the host ends with it."""
    marker = f"hang-{os.getpid()}-{tmp_path.name}"
    workdir = a_lab(tmp_path, f"import time  # {marker}\ntime.sleep(600)\n")
    with Connection(target) as connection, pytest.raises(UnreachableError) as info:
        autostop(connection, str(workdir), timeout=2)
    assert str(info.value) == "the watchdog on test host did not answer within 2 s"

    def hung() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if str(workdir / "remote" / "watchdog.py") in Path(f"/proc/{pid}/cmdline").read_text():
                    found.append(pid)
            except OSError:
                pass
        return found

    wait_until(lambda: not hung(), 30, what="the hung watchdog on the host to end with the call")


def test_a_service_run_lab_starts_is_recorded_so_the_watchdog_can_prove_it(target, tmp_path):
    """SshHost.start_service records the service's identity (<name>.id) as it starts it: the watchdog proves
    the pid against /proc and stops it; stopping it from tflab removes the record with the pid file."""
    folder = tmp_path / "services"
    with Connection(target) as connection:
        host = SshHost(connection)
        service = host.start_service("sleeper", ["sleep", "600"], log_path=str(folder / "sleeper.log"))
        record = json.loads((folder / "sleeper.id").read_text())
        assert record["pid"] == service.pid and record["argv"] == ["sleep", "600"]
        assert watchdog.service(str(folder / "sleeper"))[:2] == (service.pid, service.pid)  # its own group
        done = watchdog.stop_services(str(folder))
        assert done == {"stopped": [f"sleeper (pid {service.pid})"], "ignored": []}
        wait_until(lambda: not host.service_alive(service), 30, what="its zombie to be reaped")
        again = host.start_service("sleeper", ["sleep", "600"], log_path=str(folder / "sleeper.log"))
        host.stop_all_services(str(folder))
        wait_until(lambda: not host.service_alive(again), 30, what="its zombie to be reaped")
        assert not (folder / "sleeper.pid").exists() and not (folder / "sleeper.id").exists()



@pytest.mark.parametrize("text, signalled", [("1", False), ("0", False), ("-1", False), ("", False),
                                             ("1 2", False), ("$(echo 1)", False), ("4242", True)])
def test_tflab_itself_never_signals_pid_1_or_its_own_group_from_a_pid_file(tmp_path, text, signalled):
    """`down` and a restarted service stop what a pid file names (sshhost.stop_pid_file): a damaged one naming
    pid 1 (every process the user may signal), 0 (the caller's own group) or anything but a pid is left alone.
    The shell's kill is replaced by a function that only writes down what it was asked (nothing is signalled)."""
    from tflab.sshhost import stop_pid_file

    pid_file, asked = tmp_path / "svc.pid", tmp_path / "asked"
    pid_file.write_text(text)
    spy = f'kill() {{ echo "$*" >> {asked}; [ "$1" != -0 ]; }}; '  # -0: "is it alive", answered no
    subprocess.run(["sh", "-c", spy + stop_pid_file(str(pid_file))], check=True, timeout=30)
    said = asked.read_text().splitlines() if asked.exists() else []
    assert said == (["-TERM -4242", "-0 4242"] if signalled else []), said
    assert not pid_file.exists()


def start_the_old_way(connection, folder: Path, name: str, argv: list[str]) -> int:
    """A service started as tflab did before identity records (sshhost.start_service before 4b2aa91): its
    command and pid files, no <name>.id."""
    from tflab.sshhost import command_line

    inner = "exec " + command_line(argv)
    base = folder / name
    connection.run(f"mkdir -p {folder}; printf %s {shlex.quote(inner)} > {base}.cmd; "
                   f"nohup setsid sh -c {shlex.quote(inner)} >>{base}.log 2>&1 </dev/null & echo $! > {base}.pid",
                   step="old start")
    return int((folder / f"{name}.pid").read_text())


def test_a_service_started_without_a_record_gets_one_when_kept_and_the_watchdog_can_stop_it(target, tmp_path,
                                                                                           caplog):
    """A service an older tflab started has no identity record, so the watchdog leaves it alone. run-lab keeps
    it (same command, still running) and, /proc proving it is that service, writes its record: the watchdog's
    stop-services then stops it."""
    folder = tmp_path / "services"
    argv = ["sleep", "611"]
    with Connection(target) as connection:
        pid = start_the_old_way(connection, folder, "old", argv)
        wait_until(lambda: watchdog.runs(argv, watchdog.proc_identity(pid)["cmdline"]), 30, what="its exec")
        assert watchdog.stop_services(str(folder))["stopped"] == []  # nothing proves it yet
        assert watchdog.service(str(folder / "old"))[2].endswith("nothing recorded when it started, so nothing "
                                                                 "proves it is the lab's")
        with caplog.at_level("INFO", logger="tflab.sshhost"):
            service = SshHost(connection).start_service("old", argv, log_path=str(folder / "old.log"))
        assert service.kept and service.pid == pid
        assert "/proc proves it is the service" in caplog.text
        record = json.loads((folder / "old.id").read_text())
        assert record["pid"] == pid and record["argv"] == argv and record["uid"] == os.getuid()
        assert watchdog.service(str(folder / "old")) == (pid, pid, "")
        assert watchdog.stop_services(str(folder)) == {"stopped": [f"old (pid {pid})"], "ignored": []}
        wait_until(lambda: not watchdog.runs(argv, _cmdline(pid)), 30, what="the old service to end")


def _cmdline(pid: int) -> list[str]:
    try:
        return watchdog.proc_identity(pid)["cmdline"]
    except (OSError, IndexError, ValueError):
        return []


@pytest.mark.parametrize("stranger", ["reused pid", "no session of its own"])
def test_a_kept_pid_that_cannot_be_proved_gets_no_record_and_is_said_in_one_line(target, tmp_path, caplog,
                                                                                 stranger):
    """A pid file (no record) naming a live process of the same command that is not the service run-lab
    started: one started after the pid file was written (a pid reused since), or one not in a session of its
    own. run-lab keeps it as before but writes no record and says so in one line; the watchdog leaves it."""
    folder = tmp_path / "services"
    folder.mkdir()
    argv = ["sleep", "612"]
    inner = "exec " + " ".join(argv)
    (folder / "odd.cmd").write_text(inner)
    (folder / "odd.pid").write_text("")
    os.utime(folder / "odd.pid", (1e9, 1e9))  # written long before the process below started
    proc = subprocess.Popen(argv, start_new_session=stranger == "reused pid")
    try:
        (folder / "odd.pid").write_text(str(proc.pid))
        if stranger == "reused pid":
            os.utime(folder / "odd.pid", (1e9, 1e9))
        with Connection(target) as connection, caplog.at_level("INFO", logger="tflab.sshhost"):
            service = SshHost(connection).start_service("odd", argv, log_path=str(folder / "odd.log"))
        assert service.kept and service.pid == proc.pid
        assert not (folder / "odd.id").exists()
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        why = ("started" if stranger == "reused pid" else "is not in a session of its own")
        assert f"odd on test host (pid {proc.pid}) has no identity record and none could be made (pid " \
               f"{proc.pid} {why}" in warnings[0]
        assert watchdog.stop_services(str(folder))["stopped"] == []
        assert proc.poll() is None  # the stranger still runs
    finally:
        proc.kill()
        proc.wait(10)


def test_a_watchdog_an_older_tflab_started_is_restarted_with_the_code_just_pushed(target, tmp_path):
    """A watchdog started by an older tflab runs that version's code (one that trusted pid files) with the same
    command: run-lab does not keep it but restarts it, so the code it pushed is what runs, with its record;
    the next run keeps the new one."""
    workdir = a_lab(tmp_path)
    folder = workdir / "services"

    class Quiet:
        def info(self, text):
            self.said = text

    with Connection(target) as connection:
        host = SshHost(connection, workdir=str(workdir))
        port = connection.output('echo "${SSH_CONNECTION##* }"').strip()
        old_argv = ["python3", str(workdir / "remote" / "watchdog.py"), "run", "--workdir", str(workdir),
                    "--action", "stop-services", "--ssh-port", port]
        old = start_the_old_way(connection, folder, "watchdog", old_argv)
        console = Quiet()
        try:
            host.start_watchdog("stop-services", console)
            new = int((folder / "watchdog.pid").read_text())
            assert new != old and console.said.startswith("started the idle watchdog")
            wait_until(lambda: not watchdog.runs(old_argv, _cmdline(old)), 30, what="the old watchdog to end")
            assert json.loads((folder / "watchdog.id").read_text())["pid"] == new
            assert "TFLAB_WATCHDOG_CODE=" in (folder / "watchdog.cmd").read_text()
            again = Quiet()
            host.start_watchdog("stop-services", again)
            assert not hasattr(again, "said") and int((folder / "watchdog.pid").read_text()) == new
        finally:
            host.stop_all_services(str(folder))
