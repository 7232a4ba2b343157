"""The lab's key pair is its claim (infra/aws.py create_key_pair): an `up` that finds it taken by another `up`
makes nothing and removes nothing of the other's; one left long ago by a half-done `up` is deleted by its id only."""

from __future__ import annotations

import datetime

import pytest

from infra import tags
from infra.errors import LabBusy
from tests.infra.conftest import up_lab
from tflab.errors import ExitCode, exit_code_for


def other_up_in_progress(aws, lab: str = "lab") -> dict:
    """What another `up` of the lab has made so far, from another machine: its key pair and security group."""
    pair = aws.ec2.create_key_pair(KeyName=f"tflab-{lab}", KeyType="ed25519",
                                   TagSpecifications=tags.tag_specifications(lab, "key-pair"))
    vpc = aws.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = aws.ec2.create_security_group(GroupName=f"tflab-{lab}-other", Description="the other up's", VpcId=vpc,
                                          TagSpecifications=tags.tag_specifications(lab, "security-group"))
    aws.faults.calls.clear()
    return {"key": pair["KeyPairId"], "group": group["GroupId"]}


def test_an_up_that_finds_the_claim_taken_makes_nothing_and_removes_nothing(aws):
    other = other_up_in_progress(aws)
    with pytest.raises(LabBusy) as busy:
        up_lab(aws)
    assert busy.value.message.startswith("another `tflab up` of lab 'lab' in us-west-2 is under way (it claimed "
                                         "the lab's key pair tflab-lab at ")
    assert "this one launched nothing" in busy.value.message and exit_code_for(busy.value) == ExitCode.INPUT
    calls = aws.faults.calls
    assert "RunInstances" not in calls and "CreateSecurityGroup" not in calls
    assert not {"TerminateInstances", "DeleteSecurityGroup", "DeleteKeyPair"} & set(calls)  # the other's stays
    assert [k["KeyPairId"] for k in aws.ec2.describe_key_pairs()["KeyPairs"]] == [other["key"]]
    assert other["group"] in [g["GroupId"] for g in aws.ec2.describe_security_groups()["SecurityGroups"]]
    assert not aws.store.key_path("lab").exists() and aws.store.load("lab") is None


def test_a_claim_left_long_ago_is_deleted_by_its_id_never_by_its_name(aws):
    other = other_up_in_progress(aws)
    deletes: list[dict] = []
    aws.session.events.register("provide-client-params.ec2.DeleteKeyPair",
                                lambda params, **kw: deletes.append(dict(params)))
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    answer = {"KeyPairs": [{"KeyPairId": other["key"], "KeyName": "tflab-lab", "CreateTime": old,
                            "Tags": tags.tag_specifications("lab", "key-pair")[0]["Tags"]}]}
    aws.faults.respond("DescribeKeyPairs", answer, times=2)
    # On AWS the delete by id frees the name and the claim is made again; moto deletes key pairs by name only,
    # so here the name stays taken and the `up` says what is left, without deleting anything by name.
    with pytest.raises(LabBusy) as busy:
        up_lab(aws)
    assert deletes == [{"KeyPairId": other["key"]}]
    assert busy.value.stale and "left by an earlier `tflab up`" in busy.value.message
    assert "`tflab down --name lab` removes what that `up` left" in busy.value.hint
    assert "RunInstances" not in aws.faults.calls


def test_after_down_the_claim_is_free_again(aws):
    up_lab(aws)
    from tflab import cloud

    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    state, action = up_lab(aws)
    assert action == "created" and state.key_name == "tflab-lab"
