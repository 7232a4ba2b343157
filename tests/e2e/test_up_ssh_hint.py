"""When SSH does not answer in time, `up` removes what it launched (nothing is left to bill; --keep-on-failure
keeps it) and its hint says why it may be: the security group lets in the one address given or detected, which
behind a proxy or a multi-exit NAT is not yours."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import moto_server as moto_endpoint, tflab

PARAMETER = "/test/ssh-hint/ami-id"


@pytest.fixture(scope="module")
def endpoint():
    with moto_endpoint(PARAMETER) as url:
        yield url


def stopped_while_waiting(args: list[str], env: dict, endpoint: str, lab: str, waiting: str) -> tuple[int, str, str]:
    """Run tflab with args until its stderr says `waiting`, stop the lab's instance (as the console would), and
    let it end within 120 s: (its exit status, its stderr, the instance)."""
    import boto3

    proc = subprocess.Popen([sys.executable, "-m", "tflab", *args], env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:  # until it waits for SSH (the instance runs)
            lines.append(line)
            if waiting in line:
                break
        ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        found = ec2.describe_instances(Filters=[{"Name": "tag:tflab:lab", "Values": [lab]}])["Reservations"]
        (instance,) = [i["InstanceId"] for r in found for i in r["Instances"]]
        ec2.stop_instances(InstanceIds=[instance])
        lines += proc.stderr.readlines()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines), instance


def test_the_ssh_timeout_hint_names_ssh_cidr(endpoint, tmp_path):
    from tflab import ports

    env = {"AWS_ENDPOINT_URL": endpoint, "TFLAB_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-west-2"}
    closed = ports.free_port()  # nothing listens there: SSH never answers (never moto's made-up address)
    up = tflab("up", "--name", "hint", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER,
               "--host-key-timeout", "0", "--ssh-host", "127.0.0.1", "--ssh-port", str(closed), "--ssh-timeout", "1",
               "--accept-new-host-key", "--yes", env=env, timeout=120)
    assert up.returncode == 5 and "Traceback" not in up.stderr, up.stderr
    (error,) = [line for line in up.stderr.splitlines() if line.startswith("tflab: error: ")]
    assert f"port {closed}" in error and "; removed what this `up` created (instance i-" in error, error
    assert "key pair" in error and "security group" in error and "kept" not in error, error
    hint = next(line for line in up.stderr.splitlines() if line.startswith("  hint: "))
    assert "SSH is let in from --ssh-cidr only" in hint and "`tflab up --ssh-cidr <your address>/32`" in hint
    status = tflab("status", "--name", "hint", env=env, timeout=120)  # nothing left: no state, no instance
    assert status.returncode == 7 and "Traceback" not in status.stderr, status.stdout + status.stderr
    assert not (tmp_path / "home" / "labs" / "hint").exists()
    kept = tflab("up", "--name", "kept", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER,
                 "--host-key-timeout", "0", "--ssh-host", "127.0.0.1", "--ssh-port", str(closed), "--ssh-timeout",
                 "1", "--accept-new-host-key", "--keep-on-failure", "--yes", env=env, timeout=120)
    assert kept.returncode == 5 and "the instance runs and is kept" in kept.stderr, kept.stderr
    assert tflab("down", "--name", "kept", "--yes", env=env, timeout=120).returncode == 0


def test_an_instance_that_stops_while_up_waits_for_ssh_ends_the_wait(endpoint, tmp_path):
    """An instance that stops before SSH answers (its own shutdown: a broken image, the watchdog; a spot reclaim)
    ends `up`'s wait with one line that says so, at the next look at the instance, not after --ssh-timeout on an
    address nothing answers; what `up` made is removed."""
    from tflab import ports

    env = {"AWS_ENDPOINT_URL": endpoint, "TFLAB_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-west-2"}
    closed = ports.free_port()
    returncode, stderr, instance = stopped_while_waiting(
        ["up", "--name", "stops", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER, "--host-key-timeout",
         "0", "--ssh-host", "127.0.0.1", "--ssh-port", str(closed), "--ssh-timeout", "600", "--accept-new-host-key",
         "--yes"], env, endpoint, "stops", "waiting for SSH on")  # far less than the 600 s of --ssh-timeout
    assert returncode == 5 and "Traceback" not in stderr, stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("tflab: error: ")]
    assert f"lab 'stops' ({instance}) is stopped while tflab waited for its SSH" in error, error
    assert error.endswith(": stopped from outside (the console or the API)"), error  # EC2's reason, in words
    print(error)  # what a user reads (shown with -s)
    assert "did not answer SSH" not in error, error
    hint = next(line for line in stderr.splitlines() if line.startswith("  hint: "))
    assert f"get-console-output --latest --instance-id {instance}" in hint, hint
    assert "removing what this `up` of lab 'stops' created" in stderr, stderr
    assert tflab("status", "--name", "stops", env=env, timeout=120).returncode == 7  # nothing left


def test_an_instance_that_stops_while_run_lab_waits_for_ssh_ends_the_wait(endpoint, tmp_path):
    """run-lab on a lab made by `up` waits up to 600 s for its SSH (it may still be booting); an instance that
    stops meanwhile (the watchdog, the console, a spot reclaim) ends that wait at the next look at it, with
    the command that starts it again."""
    from tflab import ports

    env = {"AWS_ENDPOINT_URL": endpoint, "TFLAB_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-west-2"}
    closed = ports.free_port()  # the lab's SSH: nothing answers there
    up = tflab("up", "--name", "waits", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER,
               "--host-key-timeout", "0", "--ssh-host", "127.0.0.1", "--ssh-port", str(closed), "--ssh-timeout", "1",
               "--accept-new-host-key", "--keep-on-failure", "--yes", env=env, timeout=120)
    assert up.returncode == 5 and "the instance runs and is kept" in up.stderr, up.stderr  # a running lab
    # run-lab waits for SSH once its first look found the instance running; far less than its 600 s
    returncode, stderr, instance = stopped_while_waiting(["run-lab", "--name", "waits", "--accept-new-host-key"], env,
                                                         endpoint, "waits", "connecting to")
    assert returncode == 5 and "Traceback" not in stderr, stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("tflab: error: ")]
    assert error == (f"tflab: error: lab 'waits' ({instance}) is stopped while tflab waited for its SSH: stopped "
                     "from outside (the console or the API)"), error
    assert "  hint: `tflab up --name waits` starts it again" in stderr, stderr
    assert tflab("down", "--name", "waits", "--yes", env=env, timeout=120).returncode == 0
