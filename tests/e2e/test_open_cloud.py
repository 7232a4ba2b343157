"""`tflab open` and `tflab list` for labs made by `up`, against a moto server (AWS_ENDPOINT_URL): a lab whose
instance is stopped is not started behind the user's back (that bills, and `up` asks first): open says so and
how to start it; list shows the labs made by `up` and the labs run on any machine, each with its kind (the
latter also without AWS credentials)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.e2e.test_cloud_cli import UP, cli, moto_server  # noqa: F401 (the CLI against moto, as there)
from tflab.labs import remember_host_lab
from tflab.ssh import SshTarget
from tflab.state import StateStore


def test_open_says_how_to_start_a_stopped_lab_and_never_starts_it(cli):
    up = cli(*UP, "--name", "back1", "--yes", "--json")
    assert up.returncode == 0, up.stderr
    instance = json.loads(up.stdout)["instance_id"]
    never_run = cli("open", "--name", "back1")  # running, but run-lab never ran there: nothing to serve
    assert never_run.returncode == 7 and "lab 'back1' has not run the lab yet" in never_run.stderr
    assert "hint: `tflab run-lab --name back1`" in never_run.stderr
    cli.ec2.stop_instances(InstanceIds=[instance])
    stopped = cli("open", "--name", "back1")
    assert stopped.returncode == 5, stopped.stderr
    assert "tflab: error: lab 'back1' is stopp" in stopped.stderr  # stopping or stopped, as EC2 says it now
    assert "hint: `tflab up --name back1` starts it again" in stopped.stderr
    state = cli.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("stopping", "stopped")  # open did not start it
    assert cli("down", "--name", "back1", "--yes").returncode == 0


def test_run_lab_on_a_stopped_lab_says_so_at_once_and_never_starts_it(cli):
    """run-lab on a lab made by `up` whose instance is stopped (its watchdog powered it off, or the console):
    one look at the instance says so, instead of 600 s waiting for an SSH that cannot answer."""
    up = cli(*UP, "--name", "back2", "--yes", "--json")
    assert up.returncode == 0, up.stderr
    instance = json.loads(up.stdout)["instance_id"]
    cli.ec2.stop_instances(InstanceIds=[instance])
    run = cli("run-lab", "--name", "back2")  # bounded at 120 s; its SSH wait would be 600 s
    assert run.returncode == 5, run.stderr
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("tflab: error:")]
    assert error.startswith(f"tflab: error: lab 'back2' ({instance}) is stopp")  # stopping or stopped, as EC2 says
    assert error.endswith("stopped from outside (the console or the API): its services cannot run"), error
    assert "hint: `tflab up --name back2` starts it again" in run.stderr
    assert "then `tflab run-lab --name back2`" in run.stderr
    assert "waiting for SSH" not in run.stderr and "connecting to" not in run.stderr  # SSH was not tried
    state = cli.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("stopping", "stopped")  # run-lab did not start it
    assert cli("down", "--name", "back2", "--yes").returncode == 0


def test_run_lab_on_a_lab_whose_profile_is_gone_still_reaches_it_over_ssh(cli, tmp_path):
    """The lab's AWS profile was removed from ~/.aws/config since `up`: run-lab cannot look at the instance, and
    goes on over SSH, which is what it needs (here nothing answers: the SSH error, not the profile's)."""
    config = tmp_path / "aws-config"
    config.write_text("[profile gone]\nregion = us-west-2\naws_access_key_id = testing\n"
                      "aws_secret_access_key = testing\n")
    up = cli(*UP, "--name", "orphan", "--profile", "gone", "--yes", env={"AWS_CONFIG_FILE": str(config)})
    assert up.returncode == 0, up.stderr
    run = cli("run-lab", "--name", "orphan", "--ssh-timeout", "1")  # the profile is gone from the default config
    assert run.returncode == 5 and "Traceback" not in run.stderr, run.stderr
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("tflab: error:")]
    assert "127.0.0.1" in error and "gone" not in error, error
    assert cli("down", "--name", "orphan", "--yes", env={"AWS_CONFIG_FILE": str(config)}).returncode == 0


def test_list_shows_both_kinds_of_lab(cli):
    up = cli(*UP, "--name", "cloud1", "--yes", "--json")
    assert up.returncode == 0, up.stderr
    box = SshTarget(host="10.0.0.5", user="ada", port=2222, identity=None, known_hosts=str(cli.home / "kh"))
    remember_host_lab("box1", box, "/srv/lab", StateStore(cli.home))  # as run-lab --host --name box1 does
    listed = json.loads(cli("list", "--json").stdout)["labs"]
    assert [(r["name"], r["kind"]) for r in listed] == [("cloud1", "up"), ("box1", "host")]
    assert listed[1]["address"] == "ada@10.0.0.5:2222" and listed[1]["workdir"] == "/srv/lab"
    text = cli("list").stdout.splitlines()
    assert text[0].split()[:2] == ["LAB", "KIND"]
    assert [line.split()[:2] for line in text[1:]] == [["cloud1", "up"], ["box1", "host"]]
    assert "ada@10.0.0.5:2222" in text[2]
    assert cli("down", "--name", "cloud1", "--yes").returncode == 0


def test_list_without_aws_credentials_still_shows_the_host_labs(tmp_path):
    """A user of host labs only, with no AWS account set up: list shows them and says the AWS side is not
    listed; with no host lab either, the missing credentials are the error, as before."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_DEFAULT_REGION="us-west-2",
               AWS_EC2_METADATA_DISABLED="true", TFLAB_HOME=str(tmp_path / "home"))
    box = SshTarget(host="10.0.0.6", user="ada", port=22, identity=None, known_hosts=str(tmp_path / "kh"))
    remember_host_lab("box2", box, "/srv/lab", StateStore(tmp_path / "home"))

    def tflab_list(*args: str, home: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tflab", "list", *args], capture_output=True, text=True,
                              timeout=120, env={**env, "TFLAB_HOME": home}, stdin=subprocess.DEVNULL)

    listed = tflab_list("--json", home=str(tmp_path / "home"))
    assert listed.returncode == 0, listed.stderr
    assert [(r["name"], r["kind"]) for r in json.loads(listed.stdout)["labs"]] == [("box2", "host")]
    assert "the labs on AWS are not listed" in listed.stderr and "credentials" in listed.stderr.lower()
    text = tflab_list(home=str(tmp_path / "home"))
    assert text.returncode == 0 and text.stdout.splitlines()[1].split()[:2] == ["box2", "host"]
    nothing = tflab_list(home=str(tmp_path / "empty"))
    assert nothing.returncode == 3, nothing.stderr
    assert nothing.stderr.startswith("tflab: error:") and "credentials" in nothing.stderr.lower()
