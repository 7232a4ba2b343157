"""The boot-time bootstrap counts as activity for the idle watchdog (issue 19): `up`'s user data starts
`bash <folder>/remote/bootstrap.sh <folder>` (tflab/cloud.py boot_user_data) while the instance boots, and an
instance still installing its venv (minutes of pip on a first boot) is never stopped as idle, also once run-lab
has told the watchdog that the lab lives in another folder (--workdir: autostop/lab-dir). The watchdog is the
real script checking five times a second; the bootstrap is a real bash running a script at the path the user
data writes it to; the lab's service is a sleep of this test's own, which the watchdog's action stops."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import wait_until
from tests.remote.test_watchdog_failsafe import Host, alive

pytestmark = pytest.mark.slow
IDLE = 1.0  # seconds: many checks pass this while the bootstrap runs


@pytest.fixture
def host(tmp_path):
    made = Host(tmp_path)
    yield made
    made.close()


def boot_bootstrap(folder) -> subprocess.Popen:
    """The bootstrap as the user data starts it: `nohup bash <folder>/remote/bootstrap.sh <folder>`, here a
    script at that path that waits (as pip does) in a child of its own."""
    script = folder / "remote" / "bootstrap.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("#!/bin/bash\nsleep 600 &\nwait\n")
    return subprocess.Popen(["nohup", "bash", str(script), str(folder)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("lab_elsewhere", [False, True], ids=["lab in the watchdog's folder", "run-lab --workdir"])
def test_an_instance_still_bootstrapping_is_never_idle(host, tmp_path, lab_elsewhere):
    service = host.sleep("serving")
    if lab_elsewhere:  # run-lab put the lab in another folder and said so; the boot-time bootstrap is in ours
        lab = tmp_path / "elsewhere"
        (lab / "services").mkdir(parents=True)
        (host.services / "serving.pid").rename(lab / "services" / "serving.pid")
        (host.services / "serving.id").rename(lab / "services" / "serving.id")
        (host.folder / "lab-dir").write_text(str(lab))
    bootstrap = boot_bootstrap(host.workdir)
    host.procs.append(bootstrap)
    host.policy(idle_seconds=IDLE)
    host.start()
    # Well past the idle time, check after check: the bootstrap is the activity, and nothing is stopped.
    wait_until(lambda: host.view().get("idle_seconds") == 0 and host.view().get("checked_at", 0) - host.view().get(
        "started_at", 1e18) > 4 * IDLE, 60, what="checks well past the idle time")
    view = host.view()
    assert view["active"] == ["step"], view
    assert view["sources"]["step"]["detail"] == f"bootstrap.sh (pid {bootstrap.pid})", view["sources"]["step"]
    assert view["acted"] is None and alive(service.pid) and host.watchdog.poll() is None
    os.killpg(bootstrap.pid, signal.SIGKILL)  # the bootstrap is done: the lab is idle now, and stopped
    bootstrap.wait(10)
    out = host.acted(timeout=60)
    assert f"idle for {IDLE:g} s" in out, out
    wait_until(lambda: not alive(service.pid), 30, what="the lab's service to be stopped")
