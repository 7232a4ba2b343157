"""The EC2 in a box for the tests: `python -m tests.cloudbox` started as a user starts it (its JSON line gives
the environment), and `tflab` run against it as a user types it. The box runs per test module; at its end
(also after a failed test or an interrupted run) it is stopped and nothing it made may be left."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, tflab

READY_TIMEOUT = 1800.0  # a cold cache builds the image (debootstrap) and the wheelhouse (pip download) first


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.cloudbox)


class RunningBox:
    def __init__(self, proc: subprocess.Popen, ready: dict, log: Path) -> None:
        self.proc, self.env, self.ami_parameter, self.log = proc, ready["env"], ready["ami_parameter"], log

    def send(self, line: str, timeout: float = 30.0) -> dict:
        """A control line to the box (tests' faults); its one-line JSON answer."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(read_line(self.proc, timeout, "the box's answer"))

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def read_line(proc: subprocess.Popen, timeout: float, what: str, stream=None) -> str:
    """One line of proc's stdout (or stream), at most timeout seconds."""
    stream = stream or proc.stdout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1.0)
        if ready:
            line = stream.readline()
            if line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited ({proc.returncode}) before {what}")
    raise TimeoutError(f"no {what} in {timeout:.0f} s")


def stop_box(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    from tests.cloudbox.__main__ import missing
    from tests.cloudbox.box import leftovers

    why = missing()
    if why:
        pytest.skip(why)
    log = tmp_path_factory.mktemp("cloudbox") / "box.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.cloudbox"], cwd=REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        ready = json.loads(read_line(proc, READY_TIMEOUT, "ready line"))
        yield RunningBox(proc, ready, log)
    finally:
        stop_box(proc)
        left = leftovers()
        assert not any(left.values()), f"the box left {left}; its log:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def cli(box, tmp_path_factory):
    """`tflab ...` against the box, with a state folder of its own for the module. Its labs' tunnels choose their
    local ports as a user's do (tflab.ports.choose: the lab's defaults where free and not claimed by the labs
    that other tests run on this machine at the same time)."""
    home = tmp_path_factory.mktemp("tflab-home")

    def run(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        return tflab(*args, timeout=timeout, cwd=home, env={**box.env, "TFLAB_HOME": str(home), **(env or {})})

    run.home = home
    return run


def ec2(box):
    import boto3

    return boto3.client("ec2", region_name=box.env["AWS_REGION"], endpoint_url=box.env["AWS_ENDPOINT_URL"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def instances(box, lab: str) -> list[dict]:
    found = ec2(box).describe_instances(Filters=[{"Name": "tag:tflab:lab", "Values": [lab]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def wait_for(check, timeout: float, what: str, interval: float = 3.0):
    """check() until it returns something truthy, at most timeout seconds (then an AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


SSH_CIDR = ["--ssh-cidr", "198.51.100.1/32"]  # this machine as the instances see it (the box's bridge)


def on_lab(cli, lab: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A shell command on the lab's host through `tflab ssh` (as a user types it)."""
    return cli("ssh", "--name", lab, "--", "bash", "-c", command, timeout=timeout)
