"""up / status / list / down against moto, checked through describe calls."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from tests.infra.conftest import up_lab
from infra.errors import (AmiError, CapacityError, CredentialsError, InputError, PermissionDenied, QuotaError)
from infra.hostkeys import parse_fingerprints
from tflab import cloud
from tflab.cloud import Cancelled
from tflab.errors import ExitCode, NotFoundError, exit_code_for
from tflab.errors import InputError as TflabInputError

from tests.infra.conftest import AL2023, CIDR, REGION


def tagged(resource: dict) -> dict:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_up_makes_a_tagged_locked_down_lab(aws):
    state, action = up_lab(aws)
    assert action == "created"
    (reservation,) = aws.ec2.describe_instances(InstanceIds=[state.instance_id])["Reservations"]
    inst = reservation["Instances"][0]
    assert inst["State"]["Name"] == "running" and inst["InstanceType"] == "g4dn.xlarge"
    assert tagged(inst) == {"tflab:lab": "lab", "Name": "tflab-lab", "tflab:managed-by": "tflab"}
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["KeyName"] == "tflab-lab" and inst["ImageId"] == aws.image
    (volume,) = aws.ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                                   "Values": [state.instance_id]}])["Volumes"]
    assert (volume["Size"], volume["VolumeType"]) == (100, "gp3") and tagged(volume)["tflab:lab"] == "lab"
    (group,) = aws.ec2.describe_security_groups(GroupIds=[state.security_group_id])["SecurityGroups"]
    assert tagged(group)["tflab:lab"] == "lab"
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]], p.get("Ipv6Ranges"))
            for p in group["IpPermissions"]] == [("tcp", 22, 22, [CIDR], [])]
    # The private key: 0600 in a 0700 folder, and it is the key pair AWS holds.
    key = aws.store.key_path("lab")
    assert state.key_path == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (pair,) = aws.ec2.describe_key_pairs(KeyNames=["tflab-lab"], IncludePublicKey=True)["KeyPairs"]
    assert pair["PublicKey"].split()[:2] == public.decode().split()[:2]
    assert pair["KeyType"] == "ed25519" and tagged(pair)["tflab:lab"] == "lab"
    # The state remembers it, and the estimate is there.
    saved = aws.store.load("lab")
    assert saved == state and saved.public_ip == inst["PublicIpAddress"] and saved.hourly_usd == 0.526
    assert "estimated cost: about $0.531/hour on demand (g4dn.xlarge $0.526 + public IPv4 $0.005; us-west-2" \
           " on-demand list price" in aws.err.getvalue()


def test_a_second_up_reuses_the_lab_and_starts_a_stopped_one(aws):
    first, _ = up_lab(aws)
    again, action = up_lab(aws)
    assert action == "reused" and again.instance_id == first.instance_id
    aws.ec2.stop_instances(InstanceIds=[first.instance_id])
    started, action = up_lab(aws)
    assert action == "started" and started.instance_id == first.instance_id
    running = aws.provider.find_instances("lab")
    assert [(i.id, i.state) for i in running] == [(first.instance_id, "running")]


def test_a_lock_keeps_two_ups_apart(aws):
    with aws.store.lock("lab"):
        with pytest.raises(TflabInputError, match="another tflab command is working on lab 'lab'"):
            up_lab(aws)
    assert aws.provider.find_instances("lab") == []


def test_down_works_from_tags_without_state_and_twice(aws):
    state, _ = up_lab(aws)
    aws.store.delete("lab")
    assert aws.store.load("lab") is None
    report = cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert report["clean"] and f"instance {state.instance_id}" in report["removed"]
    assert aws.provider.leftovers("lab").empty
    (inst,) = [i for r in aws.ec2.describe_instances(InstanceIds=[state.instance_id])["Reservations"]
               for i in r["Instances"]]
    assert inst["State"]["Name"] == "terminated"
    assert aws.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["tflab-lab"]}])["KeyPairs"] == []
    again = cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert again["removed"] == [] and "nothing to remove" in aws.err.getvalue()


def test_down_asks_and_a_no_keeps_everything(aws):
    up_lab(aws)
    with pytest.raises(Cancelled):
        cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: False)
    assert not aws.provider.leftovers("lab").empty and aws.store.load("lab") is not None


def test_down_retries_while_the_security_group_is_still_in_use(aws):
    up_lab(aws)
    aws.faults.fail("DeleteSecurityGroup", "DependencyViolation", times=2, message="resource has a dependent object")
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert aws.faults.calls.count("DeleteSecurityGroup") == 3
    assert aws.provider.leftovers("lab").empty


def test_up_reads_and_keeps_the_host_key_fingerprints(aws):
    console = ("boot...\nec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
               "ec2: 256 SHA256:AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcd root@ip-10-0-0-1 (ECDSA)\n"
               "ec2: 256 SHA256:ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210+/zyxw root@ip-10-0-0-1 (ED25519)\n"
               "ec2: -----END SSH HOST KEY FINGERPRINTS-----\nmore\n")
    # EC2 sends the console output base64-encoded; boto3 decodes it after the call.
    aws.faults.respond("GetConsoleOutput", {"InstanceId": "i-x", "Output": base64.b64encode(console.encode()).decode()})
    state, _ = up_lab(aws, host_key_timeout=5)
    assert state.host_key_fingerprints == {"ECDSA": "SHA256:AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcd",
                                           "ED25519": "SHA256:ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210+/zyxw"}
    assert aws.store.load("lab").host_key_fingerprints == state.host_key_fingerprints


def test_missing_fingerprints_are_said_not_waited_for_forever(aws):
    state, _ = up_lab(aws, host_key_timeout=0.05)
    assert state.host_key_fingerprints == {}
    assert "host key fingerprints are not in the console output yet" in aws.err.getvalue()
    assert parse_fingerprints("no block here") == {}


def test_spot_launches_a_one_time_spot_instance(aws):
    state, _ = up_lab(aws, spot=True)
    inst = aws.ec2.describe_instances(InstanceIds=[state.instance_id])["Reservations"][0]["Instances"][0]
    assert inst.get("InstanceLifecycle") == "spot" and state.spot


def test_capacity_failover_tries_the_other_zones(aws):
    aws.faults.fail("RunInstances", "InsufficientInstanceCapacity", status=500)
    state, _ = up_lab(aws)
    assert aws.faults.calls.count("RunInstances") == 2
    assert state.zone == "us-west-2b"


def test_no_capacity_anywhere_names_the_zones_tried_and_leaves_nothing(aws):
    aws.faults.fail("RunInstances", "InsufficientInstanceCapacity", status=500, times=10)
    with pytest.raises(CapacityError) as info:
        up_lab(aws)
    assert info.value.zones == ["us-west-2a", "us-west-2b", "us-west-2c"]
    assert "zones tried: us-west-2a, us-west-2b, us-west-2c" in str(info.value)
    assert exit_code_for(info.value) == ExitCode.CLOUD
    assert aws.provider.leftovers("lab").empty and aws.store.load("lab") is None


def test_the_quota_is_checked_before_launching(aws):
    aws.faults.respond("GetServiceQuota", {"Quota": {"QuotaCode": "L-DB2E81BA", "Value": 0.0}})
    with pytest.raises(QuotaError) as info:
        up_lab(aws)
    err = info.value
    assert (err.quota_code, err.current, err.needed) == ("L-DB2E81BA", 0.0, 4)
    assert "Running On-Demand G and VT instances" in str(err)
    assert "--quota-code L-DB2E81BA --desired-value 4" in err.hint
    assert "RunInstances" not in aws.faults.calls and aws.provider.leftovers("lab").empty


def test_a_sufficient_quota_is_reported(aws):
    aws.faults.respond("GetServiceQuota", {"Quota": {"QuotaCode": "L-DB2E81BA", "Value": 64.0}})
    up_lab(aws)
    assert "quota: Running On-Demand G and VT instances = 64 vCPUs, this lab needs 4" in aws.err.getvalue()


@pytest.mark.parametrize("code, status, cls, text", [
    ("VcpuLimitExceeded", 400, QuotaError, "L-DB2E81BA"),
    ("UnauthorizedOperation", 403, PermissionDenied, "not authorized to perform ec2:RunInstances"),
    ("ExpiredToken", 400, CredentialsError, "your AWS credentials have expired"),
    ("InvalidAMIID.Malformed", 400, AmiError, "cannot be launched"),
])
def test_launch_failures_say_what_to_do_and_leave_nothing(aws, code, status, cls, text):
    aws.faults.fail("RunInstances", code, status=status)
    with pytest.raises(cls) as info:
        up_lab(aws)
    assert text in str(info.value) and info.value.hint
    assert aws.provider.leftovers("lab").empty and aws.store.load("lab") is None
    assert not aws.store.key_path("lab").exists()


def test_no_credentials_say_how_to_configure(aws, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var)
    import boto3

    from infra.aws import AwsProvider

    provider = AwsProvider(boto3.Session(region_name=REGION), poll=0.01)
    with pytest.raises(CredentialsError, match="no AWS credentials found") as info:
        provider.whoami()
    assert "aws configure" in info.value.hint and exit_code_for(info.value) == ExitCode.INPUT


@pytest.mark.parametrize("change, text", [
    ({"ami_parameter": "/test/nothing-here"}, "the SSM parameter /test/nothing-here does not exist"),
    ({"ami": "ami-0123456789abcdef0"}, "ami-0123456789abcdef0"),
])
def test_an_image_that_cannot_be_found_is_a_clear_error(aws, change, text):
    spec = dataclasses.replace(aws.spec, **change)
    with pytest.raises(AmiError, match=text):
        cloud.up(aws.provider, aws.store, spec, aws.console, confirm=lambda q: True,
                 settings=cloud.UpSettings(host_key_timeout=0, ssh_wait=False))
    assert aws.provider.leftovers("lab").empty


def test_an_empty_parameter_and_a_wrong_architecture_are_refused(aws):
    aws.session.client("ssm").put_parameter(Name="/test/empty", Value=" ", Type="String")
    with pytest.raises(AmiError, match="holds no image id"):
        up_lab(aws, ami_parameter="/test/empty")
    with pytest.raises(AmiError, match="is arm64, but g4dn.xlarge runs x86_64"):
        up_lab(aws, ami_parameter=AL2023 + "arm64")
    with pytest.raises(InputError, match="g99.mega is not an instance type"):
        up_lab(aws, instance_type="g99.mega")
    assert aws.provider.leftovers("lab").empty and "RunInstances" not in aws.faults.calls


def test_status_and_list(aws):
    state, _ = up_lab(aws)
    doc = cloud.status(aws.provider, aws.store, "lab")
    assert (doc["state"], doc["instance_id"], doc["public_ip"]) == ("running", state.instance_id, state.public_ip)
    assert doc["hourly_usd_estimate"] == 0.526 and doc["cost_so_far_usd_estimate"] is not None
    assert doc["ports"]["jupyter"] == {"host": 8888, "local": 8000}
    up_lab(aws, lab="other")
    labs = cloud.list_labs(aws.provider, aws.store)
    assert sorted(r["name"] for r in labs) == ["lab", "other"]
    with pytest.raises(NotFoundError, match="no lab named 'nope'"):
        cloud.status(aws.provider, aws.store, "nope")


@pytest.mark.parametrize("given", ["0.0.0.0/0", "10.0.0.0/8", "not-an-address", "2001:db8::/128"])
def test_ssh_is_never_opened_wide(given):
    with pytest.raises(TflabInputError):
        cloud.ssh_cidr(given)


def test_an_exact_address_becomes_a_32():
    assert cloud.ssh_cidr("198.51.100.4") == "198.51.100.4/32"


def test_state_files_are_private_and_written_atomically(aws):
    state, _ = up_lab(aws)
    path = aws.store.lab_dir("lab") / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert stat.S_IMODE(os.stat(aws.store.home).st_mode) == 0o700
