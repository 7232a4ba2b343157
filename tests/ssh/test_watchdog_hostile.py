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


DAMAGED_VIEWS = [
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
]


# ids: what is said, not the views (a view as an id made an environment too large for a child process)
@pytest.mark.parametrize("view, what", DAMAGED_VIEWS, ids=[what for _, what in DAMAGED_VIEWS])
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



def a_stranger(argv: list[str]) -> subprocess.Popen:
    """A live process of this test's own (the same user as the sshd's), in a session of its own as a service is."""
    proc = subprocess.Popen(argv, start_new_session=True)
    wait_until(lambda: watchdog.runs(argv, _cmdline(proc.pid)), 30, what="its exec")
    return proc


def test_down_stops_only_what_proc_proves_and_never_a_reused_pid(target, tmp_path, caplog):
    """tflab's own stop path (`down`: SshHost.stop_all_services) signals a pid file's process only when /proc
    proves it is the service started (the watchdog's proof, run on the host): a service whose pid was reused by
    another process (its record's pid, the start time another), a record-less pid file (an older tflab's) whose
    pid another process of the same command took later, and a record naming another pid are left running and
    said in one warning line each; the real services stop, an older tflab's record-less one too (its command,
    session and start time prove it), and every pid file and record is removed."""
    folder = tmp_path / "services"
    strangers = {name: a_stranger(["sleep", str(620 + i)]) for i, name in enumerate(("reused", "unrecorded", "moved"))}
    try:
        with Connection(target) as connection, caplog.at_level("INFO", logger="tflab.sshhost"):
            host = SshHost(connection)
            real = [host.start_service(n, ["sleep", "619"], log_path=str(folder / f"{n}.log")) for n in ("a", "b")]
            gone = host.start_service("reused", ["sleep", "618"], log_path=str(folder / "reused.log"))
            record = json.loads((folder / "reused.id").read_text())
            os.killpg(gone.pid, 9)  # it ended, and its pid went to another process (started later, as any reuse)
            wait_until(lambda: not host.service_alive(gone), 30, what="it to end")
            (folder / "reused.pid").write_text(str(strangers["reused"].pid))
            (folder / "reused.id").write_text(json.dumps(record | {"pid": strangers["reused"].pid}))
            (folder / "unrecorded.pid").write_text(str(strangers["unrecorded"].pid))  # as an older tflab's: no .id
            (folder / "unrecorded.cmd").write_text("exec sleep 621")  # the stranger's very command
            os.utime(folder / "unrecorded.pid", (1e9, 1e9))  # but written long before it started: a reused pid
            older = start_the_old_way(connection, folder, "older", ["sleep", "622"])  # no record: proved by /proc
            (folder / "moved.pid").write_text(str(strangers["moved"].pid))
            (folder / "moved.id").write_text((folder / "a.id").read_text())
            done = host.stop_all_services(str(folder))
            for service in real:
                wait_until(lambda: not host.service_alive(service), 30, what=f"{service.name} to end")
            wait_until(lambda: not watchdog.runs(["sleep", "622"], _cmdline(older)), 30, what="the older one to end")
        assert sorted(done["stopped"]) == [f"a (pid {real[0].pid})", f"b (pid {real[1].pid})", f"older (pid {older})"]
        for name, proc in strangers.items():
            assert proc.poll() is None, f"{name} was signalled"
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 3 and all("\n" not in w for w in warnings), warnings
        said = {w.split("/services/")[1].split(".pid")[0]: w for w in warnings}
        assert f"pid {strangers['reused'].pid} is another process now (it started at another time); not " \
               "signalled (its pid file removed)" in said["reused"]
        assert f"pid {strangers['unrecorded'].pid} is another process now (it started" in said["unrecorded"]
        assert "another pid" in said["moved"]
        assert all(w.startswith(f"left alone on test host: {folder}/") for w in warnings)
        assert sorted(p.name for p in folder.iterdir() if p.suffix in (".pid", ".id")) == []
    finally:
        for proc in strangers.values():
            proc.kill()
            proc.wait(10)


def test_a_restarted_service_never_signals_the_process_that_reused_its_pid(target, tmp_path, caplog):
    """run-lab restarts a service whose command changed, or whose pid file names a live process: the old one is
    stopped only when /proc proves it is the service; a pid reused by another process is left running (one
    warning line) and the service starts afresh with its own record; a proved old one is stopped."""
    folder = tmp_path / "services"
    stranger = a_stranger(["sleep", "630"])
    try:
        with Connection(target) as connection, caplog.at_level("INFO", logger="tflab.sshhost"):
            host = SshHost(connection)
            old = host.start_service("svc", ["sleep", "631"], log_path=str(folder / "svc.log"))
            record = json.loads((folder / "svc.id").read_text())
            os.killpg(old.pid, 9)
            wait_until(lambda: not host.service_alive(old), 30, what="it to end")
            (folder / "svc.pid").write_text(str(stranger.pid))
            (folder / "svc.id").write_text(json.dumps(record | {"pid": stranger.pid}))
            new = host.start_service("svc", ["sleep", "631"], log_path=str(folder / "svc.log"))
            assert not new.kept and new.pid != stranger.pid and host.service_alive(new)
            assert stranger.poll() is None
            warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
            assert len(warnings) == 1 and f"svc.pid: pid {stranger.pid} is another process now" in warnings[0]
            assert json.loads((folder / "svc.id").read_text())["pid"] == new.pid
            newer = host.start_service("svc", ["sleep", "632"], log_path=str(folder / "svc.log"))  # another command
            wait_until(lambda: not host.service_alive(new), 30, what="the proved old one to be stopped")
            assert "stopped svc (pid %d) on test host" % new.pid in caplog.text
            host.stop_service(newer)
            wait_until(lambda: not host.service_alive(newer), 30, what="it to end")
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(10)


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
