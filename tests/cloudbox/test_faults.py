"""Faults on the cloud path, in the EC2 in a box: an instance whose sshd never comes up, a user data that fails
before it starts the bootstrap, and an instance that dies under a running `run-lab`. Each is said in one clear
line, within its limit, and nothing is left (`up`'s own cleanup, or `down`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.cloudbox.box import leftovers
from tests.cloudbox.conftest import SSH_CIDR, ec2, instances, wait_for

pytestmark = [pytest.mark.cloudbox, pytest.mark.timeout(1800)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tflab: error:")]


def test_an_instance_without_sshd_fails_up_within_its_limit_and_leaves_nothing(box, cli):
    """An `up` whose instance never answers SSH (sshd masked in its layer) fails after --ssh-timeout with one
    error line naming the address and what it removed: the instance (its container, netns, veth, layer), the
    security group and the key pair this `up` made, and the lab's local state: nothing left to bill or to
    `down` (issue 19, fault 1)."""
    assert box.send("mask-sshd") == {"mask-sshd": "next launch"}
    up = cli("up", "--name", "nossh", "--yes", *SSH_CIDR, "--ssh-timeout", "45", timeout=600)
    assert up.returncode == 5, up.stderr  # a host that did not answer in time
    (error,) = error_lines(up.stderr)
    assert "198.51.100." in error and "did not answer SSH within 45 s" in error, up.stderr
    assert "; removed what this `up` created (instance i-" in error and "kept" not in error, error
    assert "security group sg-" in error and "key pair tflab-nossh" in error, error
    assert "  hint: SSH is let in from --ssh-cidr only" in up.stderr
    (instance,) = instances(box, "nossh")
    assert instance["State"]["Name"] == "terminated"
    client = ec2(box)
    assert client.describe_key_pairs(Filters=[{"Name": "tag:tflab:lab", "Values": ["nossh"]}])["KeyPairs"] == []
    assert client.describe_security_groups(Filters=[{"Name": "tag:tflab:lab", "Values": ["nossh"]}])[
        "SecurityGroups"] == []
    assert leftovers([instance["InstanceId"]]) == {"containers": [], "netns": [], "links": [], "mounts": [],
                                                   "layers": []}
    status = cli("status", "--name", "nossh", timeout=120)
    assert status.returncode == 7, status.stdout + status.stderr  # no such lab: nothing to come back to
    assert not (cli.home / "labs" / "nossh").exists()


def up_then_run_lab(box, cli, lab: str):
    """`tflab up --name lab`, then `tflab run-lab --name lab` in the background, its stderr read as it comes:
    (the instance's id, the run-lab process, its stderr lines so far, their reader)."""
    up = cli("up", "--name", lab, "--yes", "--json", *SSH_CIDR, timeout=600)
    assert up.returncode == 0, up.stderr
    instance = json.loads(up.stdout)["instance_id"]
    run = subprocess.Popen([sys.executable, "-m", "tflab", "run-lab", "--name", lab], cwd=cli.home,
                           env={**os.environ, **box.env, "TFLAB_HOME": str(cli.home)}, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)
    reader.start()
    return instance, run, lines, reader


def test_an_instance_killed_under_run_lab_ends_it_with_one_clear_error(box, cli):
    instance, run, lines, reader = up_then_run_lab(box, cli, "doomed")
    try:
        # run-lab is on the instance: it waits for the boot-time bootstrap (its log shown)
        wait_for(lambda: any("bootstrap |" in line for line in lines) or run.poll() is not None, 300,
                 "run-lab showing the bootstrap's log", interval=1)
        assert run.poll() is None, "".join(lines)
        assert not any("did not start the bootstrap" in line for line in lines), "".join(lines)  # it did start
        assert box.send(f"kill {instance}") == {"killed": instance}
        run.wait(300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    reader.join(30)
    stderr = "".join(lines)
    assert run.returncode == 5, stderr[-3000:]  # the host stopped answering
    (error,) = error_lines(stderr)
    assert "doomed" in error or "198.51.100." in error, stderr[-3000:]
    assert f"its instance {instance} is stopped now" in error, stderr[-3000:]  # EC2's state, looked at on the drop
    assert "hint: `tflab up --name doomed` starts it again" in stderr, stderr[-3000:]
    down = cli("down", "--name", "doomed", "--yes", timeout=600)
    assert down.returncode == 0, down.stderr
    assert leftovers([instance]) == {"containers": [], "netns": [], "links": [], "mounts": [], "layers": []}


def test_a_user_data_that_fails_to_start_the_bootstrap_is_said_by_run_lab(box, cli):
    """The instance's user data fails before it starts the bootstrap (the box makes tflab's own script exit 1 on
    its second line): `up` works (SSH and the host keys come from the image and cloud-init), and `run-lab` says
    in one line that the boot-time bootstrap never started, with what cloud-init says of the boot, then runs
    the bootstrap itself (issue 19, fault 2)."""
    assert box.send("fail-user-data") == {"fail-user-data": "next launch"}
    instance, run, lines, reader = up_then_run_lab(box, cli, "nobootstrap")
    try:
        wait_for(lambda: any("bootstrap |" in line for line in lines) or run.poll() is not None, 420,
                 "run-lab running the bootstrap itself", interval=1)
        assert run.poll() is None, "".join(lines)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(120)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
    reader.join(30)
    said = [line for line in lines if "user data did not start the bootstrap at boot" in line]
    assert len(said) == 1, "".join(lines)[-3000:]
    print(said[0])  # what a user reads (shown with -s)
    assert "(cloud-init: status error" in said[0] and "run-lab runs it now" in said[0], said[0]
    assert "its output ends: cloudbox fault: the user data fails before it starts anything)" in said[0], said[0]
    assert "/var/log/cloud-init-output.log" in said[0], said[0]
    down = cli("down", "--name", "nobootstrap", "--yes", timeout=600)
    assert down.returncode == 0, down.stderr
    assert leftovers([instance]) == {"containers": [], "netns": [], "links": [], "mounts": [], "layers": []}
