"""A failed or refused `up` touches only what is its own (review of issues 18/23's claim, items 4, 5, 7, 8, 11, 13).

Another `up` of the lab (from another machine) may hold the lab's claim and resources at any moment: an `up`
that fails removes exactly what it created (infra/provider.py Created), never what the lab's tag finds; the
claim's age is read on AWS's clock; a key pair is deleted only with the lab's tag on it; a lab is acted on only
in the region (and profile) its local state names.
"""

from __future__ import annotations

import datetime
import subprocess

import boto3
import pytest

from infra import tags
from infra.aws import AwsProvider, ed25519_fingerprint
from infra.errors import CloudError, InputError, LabBusy, QuotaError
from tests.infra.conftest import up_lab
from tests.infra.test_claim import other_up_in_progress
from tflab import cloud
from tflab.errors import ExitCode, exit_code_for
from tflab.errors import InputError as LocalInputError


def key_pair_ids(aws) -> list[str]:
    return [k["KeyPairId"] for k in aws.ec2.describe_key_pairs()["KeyPairs"]]


def live(aws) -> list[str]:
    return [i.id for i in aws.provider.find_instances("lab")]


# ---------------------------------------------------------------- 4. a failed up removes only what it created

def test_a_claim_that_cannot_be_read_removes_nothing_of_the_other_up(aws):
    other = other_up_in_progress(aws)  # another machine's `up`: its key pair (the claim) and group
    aws.faults.fail("DescribeKeyPairs", "RequestLimitExceeded", status=503, message="Request limit exceeded.")
    with pytest.raises(CloudError) as failed:
        up_lab(aws)
    assert failed.value.code == "RequestLimitExceeded"
    assert not {"TerminateInstances", "DeleteSecurityGroup", "DeleteKeyPair"} & set(aws.faults.calls)
    assert key_pair_ids(aws) == [other["key"]]
    assert other["group"] in [g["GroupId"] for g in aws.ec2.describe_security_groups()["SecurityGroups"]]


def test_a_launch_that_fails_removes_its_own_and_leaves_the_instance_another_up_launched(aws):
    # Another `up` of the lab (its claim judged stale by both, say) launches while this one runs: by the
    # time this one fails, an instance tagged with the lab is not this `up`'s.
    others: list[str] = []
    outside = boto3.Session(region_name=aws.provider.region).client("ec2")  # no fault hook: another machine

    def other_launches(**kwargs):
        if not others:
            others.append(outside.run_instances(
                ImageId=aws.image, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1,
                TagSpecifications=tags.tag_specifications("lab", "instance"))["Instances"][0]["InstanceId"])

    aws.provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances", other_launches)
    aws.faults.fail("RunInstances", "InternalError", status=500, times=10)
    with pytest.raises(CloudError) as failed:
        up_lab(aws)
    assert others and live(aws) == others, (failed.value, aws.faults.calls)  # the other's instance runs on
    mine = [g for g in aws.ec2.describe_security_groups()["SecurityGroups"] if tags.lab_of(g.get("Tags") or []) == "lab"]
    assert not mine and not key_pair_ids(aws)  # this `up`'s group and key pair are gone
    assert "TerminateInstances" not in aws.faults.calls
    assert aws.store.load("lab") is None and not aws.store.key_path("lab").exists()


def test_a_failure_after_launch_removes_exactly_what_this_up_created(aws):
    # The wait for the launched instance fails (DescribeInstances of its id): this `up` removes its instance,
    # group and key pair.
    failed: list[str] = []

    def fail_wait(model, params, **kw):
        wanted = params["body"].get("InstanceId.1")  # the request as sent: the wait's DescribeInstances
        if wanted and not failed:
            failed.append(wanted)
            from botocore.awsrequest import AWSResponse
            return AWSResponse("https://injected", 500, {}, None), {
                "Error": {"Code": "InternalError", "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 500}}
        return None

    aws.provider.ec2.meta.events.register_first("before-call.ec2.DescribeInstances", fail_wait)
    with pytest.raises(CloudError):
        up_lab(aws)
    assert failed and not live(aws) and aws.provider.leftovers("lab").empty
    assert "removing what it created" in aws.err.getvalue()
    assert aws.store.load("lab") is None and not aws.store.key_path("lab").exists()


# ---------------------------------------------------------------- 5. the claim's age on AWS's clock

class _AnyDatetime(type):
    def __instancecheck__(cls, obj):  # AWS's times (botocore's datetimes) are still datetimes
        return isinstance(obj, datetime.datetime)


class FastClock(datetime.datetime, metaclass=_AnyDatetime):
    """This machine's clock 12 minutes ahead of AWS's: within the 15 minutes AWS lets a request be off."""

    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.now(tz) + datetime.timedelta(minutes=12)


def test_a_fresh_claim_is_not_stale_to_a_machine_whose_clock_is_12_minutes_fast(aws, monkeypatch):
    other = other_up_in_progress(aws)
    monkeypatch.setattr("infra.aws.datetime", FastClock)
    assert FastClock.now(datetime.timezone.utc) - datetime.datetime.now(datetime.timezone.utc) > \
        datetime.timedelta(minutes=11)
    with pytest.raises(LabBusy) as busy:
        up_lab(aws)
    assert not busy.value.stale and "is under way" in busy.value.message
    assert "DeleteKeyPair" not in aws.faults.calls and key_pair_ids(aws) == [other["key"]]


def test_without_aws_date_a_claim_must_be_older_than_the_allowed_clock_skew_too(aws):
    other = other_up_in_progress(aws)
    made = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)  # 20 min on this clock
    answer = {"KeyPairs": [{"KeyPairId": other["key"], "KeyName": "tflab-lab", "CreateTime": made,
                            "Tags": tags.tag_specifications("lab", "key-pair")[0]["Tags"]}]}  # no Date header
    aws.faults.respond("DescribeKeyPairs", answer)
    with pytest.raises(LabBusy) as busy:
        up_lab(aws)
    assert not busy.value.stale and "DeleteKeyPair" not in aws.faults.calls


# ---------------------------------------------------------------- 13. only the lab's own key pair is deleted

def test_an_old_key_pair_of_the_lab_name_without_the_lab_tag_is_never_deleted(aws):
    pair = aws.ec2.create_key_pair(KeyName="tflab-lab", KeyType="ed25519")  # someone's own, by hand
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=3)
    aws.faults.respond("DescribeKeyPairs", {"KeyPairs": [{"KeyPairId": pair["KeyPairId"], "KeyName": "tflab-lab",
                                                          "CreateTime": old, "Tags": []}]})
    aws.faults.calls.clear()
    with pytest.raises(InputError) as refused:
        up_lab(aws)
    assert "is not tflab's lab 'lab'" in refused.value.message and "delete-key-pair" in refused.value.hint
    assert exit_code_for(refused.value) == ExitCode.INPUT
    assert not {"DeleteKeyPair", "RunInstances", "CreateSecurityGroup"} & set(aws.faults.calls)
    assert key_pair_ids(aws) == [pair["KeyPairId"]]


# ---------------------------------------------------------------- 8. this machine's own leftover claim

def test_this_machines_own_leftover_claim_is_replaced_not_blamed_on_another_up(aws):
    from tflab.cloud import UpSettings

    aws.faults.fail("RunInstances", "InternalError", status=500, times=10)
    with pytest.raises(CloudError):
        cloud.up(aws.provider, aws.store, aws.spec, aws.console, confirm=lambda q: True,
                 settings=UpSettings(host_key_timeout=0, ssh_wait=False, keep_on_failure=True))
    left = key_pair_ids(aws)
    key = aws.store.key_path("lab")
    assert len(left) == 1 and key.exists()  # kept: the key pair (the claim) and its private key here
    # EC2's KeyFingerprint of that key pair, as OpenSSH computes it (moto gives another digest): with padding.
    printed = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True, check=True).stdout
    ec2_print = printed.split()[1].removeprefix("SHA256:") + "="
    assert ed25519_fingerprint(key.read_text()).rstrip("=") == ec2_print.rstrip("=")

    def as_ec2(parsed, **kw):
        for pair in parsed.get("KeyPairs", []):
            pair["KeyFingerprint"] = ec2_print
    events = aws.provider.ec2.meta.events  # the provider's client is made: hook it
    events.register("after-call.ec2.DescribeKeyPairs", as_ec2)
    ids = {left[0]: "tflab-lab"}  # EC2 deletes by KeyPairId; moto only by name: the same key pair
    events.register("provide-client-params.ec2.DeleteKeyPair",
                                lambda params, **kw: params.update(KeyName=ids[params.pop("KeyPairId")])
                                if "KeyPairId" in params else None)
    aws.faults.rules.clear()
    aws.faults.calls.clear()
    state, action = up_lab(aws)  # within a minute of the first: another machine's claim would be LabBusy
    assert action == "created" and "DeleteKeyPair" in aws.faults.calls
    assert key_pair_ids(aws) != left and len(key_pair_ids(aws)) == 1
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)


# ---------------------------------------------------------------- 7. another region: refused, files kept

def test_down_and_up_in_another_region_keep_the_labs_state_and_key(aws):
    state, _ = up_lab(aws)
    key = aws.store.key_path("lab").read_text()
    elsewhere = AwsProvider(boto3.Session(region_name="eu-west-1"), poll=0.01)
    for command in (lambda: cloud.down(elsewhere, aws.store, "lab", aws.console, confirm=lambda q: True),
                    lambda: cloud.up(elsewhere, aws.store, aws.spec, aws.console, confirm=lambda q: True,
                                     settings=cloud.UpSettings(host_key_timeout=0, ssh_wait=False))):
        with pytest.raises(LocalInputError) as refused:
            command()
        assert "is in region us-west-2, not eu-west-1" in refused.value.message
        assert "--region us-west-2" in refused.value.hint and exit_code_for(refused.value) == ExitCode.INPUT
        assert aws.store.load("lab") == state and aws.store.key_path("lab").read_text() == key
    assert not elsewhere.find_instances(None)  # no second lab
    assert live(aws) == [state.instance_id]
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)


# ---------------------------------------------------------------- 11. the quota hint's count

def test_a_vcpu_refusal_at_launch_names_what_the_nodes_need(aws):
    aws.faults.fail("RunInstances", "VcpuLimitExceeded", status=400, times=10,
                    message="You have requested more vCPU capacity than your current vCPU limit of 4 allows")
    with pytest.raises(QuotaError) as refused:
        up_lab(aws, nodes=3)  # g4dn.xlarge: 4 vCPUs each
    assert refused.value.needed == 12 and "needs 12" in refused.value.message
    assert "--desired-value 12" in refused.value.hint
