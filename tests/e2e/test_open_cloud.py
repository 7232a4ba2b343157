"""`tflab open` and `tflab list` for labs made by `up`, against a moto server (AWS_ENDPOINT_URL): a lab whose
instance is stopped is not started behind the user's back (that bills, and `up` asks first): open says so and
how to start it; list shows the labs made by `up` and the labs run on any machine, each with its kind."""

from __future__ import annotations

import json

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
