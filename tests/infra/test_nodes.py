"""`tflab up --nodes N` against moto: N instances in one zone that reach each other, a cluster placement
group, tags with each node's index, the quota for all of them, failover and removal of the whole set.

moto has no placement groups: tests/moto_placement.py adds them after the EC2 API Reference."""

from __future__ import annotations

import pytest

from infra.errors import CloudError, QuotaError
from tests import moto_placement
from tests.infra.conftest import CIDR, up_lab
from tflab import cloud


def tagged(resource: dict) -> dict:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def instances(aws, ids):
    return {i["InstanceId"]: i for r in aws.ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
            for i in r["Instances"]}


def test_up_with_two_nodes_makes_one_set_that_reaches_itself_in_one_zone(aws):
    state, action = up_lab(aws, nodes=2)
    assert action == "created" and [n["index"] for n in state.nodes] == [0, 1]
    ids = [n["instance_id"] for n in state.nodes]
    assert state.instance_id == ids[0]  # the chief speaks for the lab
    found = instances(aws, ids)
    assert {i["Placement"]["AvailabilityZone"] for i in found.values()} == {state.zone}
    for index, instance_id in enumerate(ids):
        inst = found[instance_id]
        assert tagged(inst) == {"tflab:lab": "lab", "Name": "tflab-lab", "tflab:managed-by": "tflab",
                                "tflab:node": str(index)}
        # Launched with a network interface (to ask for a public address): moto lists the groups there only.
        groups = inst["SecurityGroups"] or inst["NetworkInterfaces"][0]["Groups"]
        assert [g["GroupId"] for g in groups] == [state.security_group_id] and state.security_group_id
        assert state.nodes[index]["private_ip"] == inst["PrivateIpAddress"]  # TF_CONFIG's addresses
        assert state.nodes[index]["public_ip"] == inst["PublicIpAddress"]
    # SSH from the caller only; every port, but only from the group's own members.
    (group,) = aws.ec2.describe_security_groups(GroupIds=[state.security_group_id])["SecurityGroups"]
    rules = sorted(group["IpPermissions"], key=lambda p: p["IpProtocol"])
    assert [(p["IpProtocol"], [r["CidrIp"] for r in p["IpRanges"]], [g["GroupId"] for g in p["UserIdGroupPairs"]])
            for p in rules] == [("-1", [], [state.security_group_id]), ("tcp", [CIDR], [])]
    # One cluster placement group, tagged with the lab, holding both.
    (placement,) = aws.ec2.describe_placement_groups(Filters=[{"Name": "tag:tflab:lab", "Values": ["lab"]}])[
        "PlacementGroups"]
    assert placement["Strategy"] == "cluster" and state.placement_group == placement["GroupName"]
    assert moto_placement.MEMBERS[("123456789012", "us-west-2", placement["GroupName"])] == ids
    assert aws.faults.calls.count("RunInstances") == 1  # launched together: all or none
    assert "instance: 2 x g4dn.xlarge" in aws.err.getvalue()
    assert "estimated cost: about $1.062/hour on demand (2 x g4dn.xlarge $0.526 + public IPv4 $0.005 each" \
        in aws.err.getvalue()


def test_one_node_has_no_self_rule_and_no_placement_group(aws):
    state, _ = up_lab(aws)
    assert state.nodes == [] and state.placement_group is None
    (group,) = aws.ec2.describe_security_groups(GroupIds=[state.security_group_id])["SecurityGroups"]
    assert [p["IpProtocol"] for p in group["IpPermissions"]] == ["tcp"]
    assert aws.ec2.describe_placement_groups()["PlacementGroups"] == []


def test_a_type_that_cannot_join_a_cluster_group_gets_none_and_says_so(aws):
    state, _ = up_lab(aws, nodes=2, instance_type="t3.micro")
    assert len(state.nodes) == 2 and state.placement_group is None
    assert "t3.micro cannot join a cluster placement group" in aws.err.getvalue()
    assert aws.ec2.describe_placement_groups()["PlacementGroups"] == []


def test_the_quota_counts_every_node(aws):
    aws.faults.respond("GetServiceQuota", {"Quota": {"QuotaCode": "L-DB2E81BA", "Value": 6.0}})
    with pytest.raises(QuotaError) as info:
        up_lab(aws, nodes=2)
    assert (info.value.current, info.value.needed) == (6.0, 8)
    assert "RunInstances" not in aws.faults.calls and aws.provider.leftovers("lab").empty


def test_no_capacity_in_a_zone_moves_the_whole_set(aws):
    aws.faults.fail("RunInstances", "InsufficientInstanceCapacity", status=500)
    state, _ = up_lab(aws, nodes=3)
    assert aws.faults.calls.count("RunInstances") == 2
    found = instances(aws, [n["instance_id"] for n in state.nodes])
    assert {i["Placement"]["AvailabilityZone"] for i in found.values()} == {"us-west-2b"} == {state.zone}
    live = aws.provider.find_instances("lab")
    assert sorted(i.node for i in live) == [0, 1, 2]  # nothing from the zone that had no room


@pytest.mark.parametrize("operation", ["CreatePlacementGroup", "RunInstances", "CreateTags"])
def test_a_failure_at_any_step_of_a_set_removes_what_was_made(aws, operation):
    aws.faults.fail(operation, "InternalError", status=500)
    with pytest.raises(CloudError):
        up_lab(aws, nodes=2)
    assert aws.provider.leftovers("lab").empty  # instances, volumes, group, key pair, placement group
    assert aws.ec2.describe_placement_groups()["PlacementGroups"] == []
    assert aws.store.load("lab") is None


def test_status_and_list_show_the_nodes_and_down_removes_them_all(aws):
    state, _ = up_lab(aws, nodes=2)
    doc = cloud.status(aws.provider, aws.store, "lab", ask_host=False)
    assert [(n["index"], n["instance_id"]) for n in doc["nodes"]] == [(0, state.nodes[0]["instance_id"]),
                                                                      (1, state.nodes[1]["instance_id"])]
    assert doc["instance_id"] == state.nodes[0]["instance_id"] and doc["hourly_usd"] == pytest.approx(2 * 0.526)
    (row,) = cloud.list_labs(aws.provider, aws.store)
    assert len(row["nodes"]) == 2
    report = cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert report["clean"] is True
    assert sum(r.startswith("instance ") for r in report["removed"]) == 2
    assert f"placement group {state.placement_group}" in report["removed"]
    assert aws.provider.leftovers("lab").empty and aws.ec2.describe_placement_groups()["PlacementGroups"] == []


def test_a_second_up_reuses_and_starts_every_node(aws):
    state, _ = up_lab(aws, nodes=2)
    ids = [n["instance_id"] for n in state.nodes]
    aws.ec2.stop_instances(InstanceIds=ids)
    again, action = up_lab(aws, nodes=2)
    assert action == "started" and [n["instance_id"] for n in again.nodes] == ids
    assert {i["State"]["Name"] for i in instances(aws, ids).values()} == {"running"}
    assert aws.faults.calls.count("RunInstances") == 1
