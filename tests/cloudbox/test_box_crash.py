"""The box itself killed without its cleanup (kill -9): its containers power off (a parent-death signal), and the
next box removes whatever else the dead one left (mounts, network namespaces, veths, layers, the bridge)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.cloudbox.box import leftovers
from tests.cloudbox.conftest import REPO, SSH_CIDR, read_line, stop_box, tflab

pytestmark = [pytest.mark.cloudbox, pytest.mark.timeout(1800)]


def start_box() -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.cloudbox"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, json.loads(read_line(proc, 1800, "ready line"))


def test_a_box_killed_hard_is_swept_by_the_next(tmp_path):
    from tests.cloudbox.__main__ import missing

    why = missing()
    if why:
        pytest.skip(why)
    first, ready = start_box()
    try:
        up = tflab("up", "--name", "crash", "--yes", "--json", *SSH_CIDR, timeout=600,
                   env={**ready["env"], "TFLAB_HOME": str(tmp_path)})
        assert up.returncode == 0, up.stderr
        instance = json.loads(up.stdout)["instance_id"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    left = leftovers([instance])
    assert left["netns"] and left["layers"], left  # what only the box's cleanup removes
    second, _ = start_box()
    try:
        assert leftovers([instance]) == {"containers": [], "netns": [], "links": [], "mounts": [], "layers": []}
    finally:
        stop_box(second)
    assert not any(leftovers().values()), leftovers()
