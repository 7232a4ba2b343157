"""`tflab up / status / list / down` as a user runs them, against a moto server (AWS_ENDPOINT_URL)."""

from __future__ import annotations

import base64
import gzip
import json
import re
from unittest import mock

import boto3
import pytest
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend

from tests.conftest import REMOTE, moto_server as moto_endpoint, tflab
from tflab import ports

@pytest.fixture(scope="module")
def moto_server():
    with moto_endpoint("/test/dlami/ami-id") as endpoint:
        yield endpoint


@pytest.fixture
def cli(moto_server, tmp_path):
    env = {"AWS_ENDPOINT_URL": moto_server, "TFLAB_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-west-2"}
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_server)

    def run(*args, **kwargs):
        return tflab(*args, env={**env, **kwargs.pop("env", {})}, timeout=120, **kwargs)

    run.ec2 = ec2
    run.home = tmp_path / "home"
    return run


# moto's instances have made-up public addresses: the lab is reached at 127.0.0.1 (nothing listens on
# port 1, and without console fingerprints `up` does not try SSH anyway), never at those addresses.
UP = ["up", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", "/test/dlami/ami-id", "--host-key-timeout", "0",
      "--ssh-host", "127.0.0.1", "--ssh-port", "1", "--ssh-timeout", "1"]


def lab_resources(ec2, lab: str) -> dict:
    f = [{"Name": "tag:tflab:lab", "Values": [lab]}]
    instances = [i["InstanceId"] for r in ec2.describe_instances(Filters=f)["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
    return {"instances": instances,
            "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=f)["Volumes"]],
            "groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]],
            "keys": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]]}


def test_up_status_list_down_with_the_cli(cli):
    up = cli(*UP, "--name", "cli1", "--yes", "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    assert state["action"] == "created" and state["instance_type"] == "g4dn.xlarge"
    assert "estimated cost: about $0.531/hour" in up.stderr
    made = lab_resources(cli.ec2, "cli1")
    # The host's bootstrap starts from the user data at boot, as ubuntu, overlapping with `up`'s waits.
    user_data = cli.ec2.describe_instance_attribute(InstanceId=state["instance_id"], Attribute="userData")
    packed = base64.b64decode(user_data["UserData"]["Value"])
    assert packed[:2] == b"\x1f\x8b"  # one gzip stream, which cloud-init decompresses before it reads it
    script = gzip.decompress(packed).decode()
    assert script.startswith("#!/bin/bash") and "/home/ubuntu/tflab/remote/bootstrap.sh" in script
    assert "sudo -u ubuntu -H nohup bash" in script
    carried = re.search(r"cat > /home/ubuntu/tflab/remote/bootstrap.sh <<'(\w+)'\n(.*?\n)\1\n", script, re.S).group(2)
    assert carried == (REMOTE / "bootstrap.sh").read_text()  # byte for byte
    assert made["instances"] == [state["instance_id"]] and made["groups"] and made["keys"] == ["tflab-cli1"]

    status = cli("status", "--name", "cli1", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert (doc["state"], doc["instance_id"], doc["region"]) == ("running", state["instance_id"], "us-west-2")
    text = cli("status", "--name", "cli1")
    assert "lab cli1 (us-west-2): running" in text.stdout and "ssh -i " in text.stdout

    listed = cli("list", "--json")
    assert "cli1" in [lab["name"] for lab in json.loads(listed.stdout)["labs"]]

    refused = cli("down", "--name", "cli1")  # no terminal and no --yes: refuse, change nothing
    assert refused.returncode == 3 and "refusing to remove a lab without --yes" in refused.stderr
    assert lab_resources(cli.ec2, "cli1") == made

    down = cli("down", "--name", "cli1", "--yes", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["clean"] is True
    assert "nothing tagged with it is left" in down.stderr
    assert lab_resources(cli.ec2, "cli1") == {"instances": [], "volumes": [], "groups": [], "keys": []}
    assert not (cli.home / "labs" / "cli1").exists()

    again = cli("down", "--name", "cli1", "--yes")
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    gone = cli("status", "--name", "cli1")
    assert gone.returncode == 7 and "no lab named 'cli1'" in gone.stderr


def test_up_refuses_to_launch_without_yes_off_a_terminal(cli):
    proc = cli(*UP, "--name", "cli2")
    assert proc.returncode == 3 and "refusing to launch an instance without --yes" in proc.stderr
    assert lab_resources(cli.ec2, "cli2") == {"instances": [], "volumes": [], "groups": [], "keys": []}


def test_a_quota_refusal_from_aws_is_one_line_with_what_to_request(cli):
    error = EC2ClientError("VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit")
    with mock.patch.object(EC2Backend, "run_instances", side_effect=error):  # reaches the CLI through the server
        proc = cli(*UP, "--name", "cli3", "--yes")
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tflab: error: the quota 'Running On-Demand G and VT instances' (L-DB2E81BA)" in proc.stderr
    assert "--quota-code L-DB2E81BA --desired-value 4" in proc.stderr
    assert lab_resources(cli.ec2, "cli3") == {"instances": [], "volumes": [], "groups": [], "keys": []}


def test_no_region_and_a_bad_name_are_clear_errors(cli):
    proc = cli("list", env={"AWS_DEFAULT_REGION": ""})
    assert proc.returncode == 3 and "no AWS region configured" in proc.stderr and "--region" in proc.stderr
    proc = cli("status", "--name", "Bad_Name")
    assert proc.returncode == 3 and "not a valid lab name" in proc.stderr


def test_up_installs_the_idle_watchdog_and_sets_the_shutdown_behaviour(cli):
    """The instance stops itself: the watchdog from the user data powers it off, and AWS's
    InstanceInitiatedShutdownBehavior (set at launch) makes that a stop, or for spot a terminate."""
    import gzip
    import re
    import shlex

    from tests.conftest import REMOTE

    up = cli(*UP, "--name", "auto1", "--yes", "--json", "--idle-stop", "30m", "--max-lifetime", "8h")
    assert up.returncode == 0, up.stderr
    assert "autostop: the instance stops itself after 30 min without activity, and after 8.0 h" in up.stderr
    instance = json.loads(up.stdout)["instance_id"]
    behavior = cli.ec2.describe_instance_attribute(InstanceId=instance, Attribute="instanceInitiatedShutdownBehavior")
    assert behavior["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"
    script = gzip.decompress(base64.b64decode(cli.ec2.describe_instance_attribute(
        InstanceId=instance, Attribute="userData")["UserData"]["Value"])).decode()
    # The watchdog itself (without its comments and docstrings: tests/cloudbox/test_user_data.py checks that it is
    # the same program), as a systemd unit started now and at every boot, with the policy.
    from tflab.cloud import without_comments

    code = re.search(r"cat > \S+/watchdog.py <<'(\w+)'\n(.*?\n)\1\n", script, re.S).group(2)
    assert code == without_comments((REMOTE / "watchdog.py").read_text())
    assert "systemctl daemon-reload && systemctl enable --now tflab-watchdog.service" in script
    assert "--workdir /home/ubuntu/tflab --action shutdown" in script
    policy = json.loads(shlex.split(re.search(r"\|\| printf %s ('[^']*')", script).group(1))[0])
    assert policy == {"enabled": True, "idle_seconds": 1800.0, "max_lifetime_seconds": 28800.0, "keep_until": None}

    spot = cli(*UP, "--name", "auto2", "--yes", "--json", "--spot")
    assert spot.returncode == 0, spot.stderr
    behavior = cli.ec2.describe_instance_attribute(InstanceId=json.loads(spot.stdout)["instance_id"],
                                                   Attribute="instanceInitiatedShutdownBehavior")
    assert behavior["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"  # a one-time spot cannot stop
    refused = cli(*UP, "--name", "auto3", "--yes", "--spot", "--idle-action", "stop")
    assert refused.returncode == 3 and "cannot be stopped, only terminated" in refused.stderr
    off = cli(*UP, "--name", "auto4", "--yes", "--idle-stop", "off", "--max-lifetime", "off")
    assert off.returncode == 0 and "warning: autostop is OFF" in off.stderr
    bad = cli(*UP, "--name", "auto5", "--yes", "--idle-stop", "soon")
    assert bad.returncode == 3 and "--idle-stop 'soon' is not a duration" in bad.stderr
    for lab in ("auto3", "auto5"):
        assert lab_resources(cli.ec2, lab) == {"instances": [], "volumes": [], "groups": [], "keys": []}
    for lab in ("auto1", "auto2", "auto4"):
        assert cli("down", "--name", lab, "--yes").returncode == 0


def test_status_and_list_show_what_the_lab_costs_and_why_it_stopped(cli):
    up = cli(*UP, "--name", "cost1", "--yes", "--json", "--spot", "--disk-gb", "200")
    assert up.returncode == 0, up.stderr
    instance = json.loads(up.stdout)["instance_id"]
    status = cli("status", "--name", "cost1", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    # A spot lab: the price charged now in its zone (describe_spot_price_history), and its 200 GiB disk.
    zone = doc["zone"]
    history = cli.ec2.describe_spot_price_history(InstanceTypes=["g4dn.xlarge"], AvailabilityZone=zone,
                                                  ProductDescriptions=["Linux/UNIX"])["SpotPriceHistory"]
    if history:
        assert doc["price_source"] == f"spot price in {zone} now"
        assert doc["hourly_usd"] in {float(h["SpotPrice"]) for h in history}
    assert doc["volume_gb"] == 200 and doc["disk_hourly_usd"] == round(200 * 0.08 / 730, 4)
    assert set(doc["cost_usd_estimate"]) == {"instance", "public_ipv4", "disk", "total"} and doc["stopped_why"] is None
    assert doc["watchdog"]["error"]  # its host (127.0.0.1:1 here) does not answer: said, not fatal
    listed = cli("list")
    assert listed.returncode == 0 and "COST" in listed.stdout.splitlines()[0] and "cost1" in listed.stdout

    cli.ec2.stop_instances(InstanceIds=[instance])
    stopped = json.loads(cli("status", "--name", "cost1", "--json").stdout)
    assert stopped["state"] in ("stopping", "stopped") and "stopped from outside" in stopped["stopped_why"]
    assert stopped["cost_usd_estimate"]["instance"] is None and "watchdog" not in stopped  # the disk still bills
    assert cli("down", "--name", "cost1", "--yes").returncode == 0


def test_a_lab_that_shut_itself_down_says_so():
    from infra.provider import Instance
    from tflab.cloud import stopped_why

    # EC2's StateReason for a shutdown from inside the instance (the watchdog's), per the API reference.
    inst = Instance("i-1", "stopped", "g4dn.xlarge", None, None, "us-west-2a", None, False, None, None,
                    state_reason="Client.InstanceInitiatedShutdown: Instance initiated shutdown")
    assert "shut itself down" in stopped_why(inst) and "`tflab up` starts it again" in stopped_why(inst)


def test_up_with_nodes_status_list_down_with_the_cli(cli):
    up = cli(*UP, "--name", "duo", "--nodes", "2", "--yes", "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    ids = [n["instance_id"] for n in state["nodes"]]
    assert len(ids) == 2 and state["instance_id"] == ids[0] and state["placement_group"].startswith("tflab-duo-")
    assert "instance: 2 x g4dn.xlarge, 4 vCPUs each" in up.stderr
    assert sorted(lab_resources(cli.ec2, "duo")["instances"]) == sorted(ids)
    status = cli("status", "--name", "duo", "--no-host")
    assert status.returncode == 0 and f"node 1     {ids[1]} running" in status.stdout, status.stderr
    listed = cli("list")
    assert "2 x g4dn.xlarge" in listed.stdout
    down = cli("down", "--name", "duo", "--yes", "--json")
    assert down.returncode == 0, down.stderr
    report = json.loads(down.stdout)
    assert report["clean"] and f"placement group {state['placement_group']}" in report["removed"]
    assert lab_resources(cli.ec2, "duo") == {"instances": [], "volumes": [], "groups": [], "keys": []}
    assert cli.ec2.describe_placement_groups()["PlacementGroups"] == []
