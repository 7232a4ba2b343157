"""tflab's side of the idle watchdog against a hostile or damaged host (a real sshd on 127.0.0.1): every view
it reads is bounded and checked (one `tflab: error:` line, exit 3, for a damaged one), every call has a
deadline (a watchdog that never answers is an UnreachableError), and the services run-lab starts carry the
record that lets the watchdog prove them before it signals anything."""

from __future__ import annotations

import json
import os
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
