"""The IAM policy in the repo (infra/iam-policy.json, `tflab iam-policy`) is what tflab needs, all of it and
nothing more: the real CLI, run as an IAM user holding exactly that policy, against a moto server with its
IAM-like access control on (moto docs, "IAM-like Access Control": after INITIAL_NO_AUTH_ACTION_COUNT
unchecked requests, every request is authenticated and checked against the caller's policies); then with
each action removed in turn.

moto checks actions only: not the Resource and Condition elements, nor what AWS checks besides the
action (ec2:CreateTags for the tags given on create). The README says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import boto3
import pytest

from infra.iam import actions, iam_policy
from tests.conftest import moto_server

pytestmark = pytest.mark.slow  # many CLI calls against AWS's API: seconds each (not in scripts/test.sh --quick)

REGION = "us-west-2"
PARAMETER = "/test/dlami/iam-ami"
UP = ["--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER, "--host-key-timeout", "0",
      "--ssh-host", "127.0.0.1", "--ssh-port", "1", "--ssh-timeout", "1", "--yes"]
# What moto's flows cannot call: moto deletes a terminated instance's volumes itself (so no volume is left
# for DeleteVolume), it never creates the Spot service-linked role (so RunInstances never needs it), and its
# denials name their action in plain text, with no encoded message to decode (tests/infra/test_real_aws.py).
NOT_IN_MOTO = {"ec2:DeleteVolume", "iam:CreateServiceLinkedRole", "sts:DecodeAuthorizationMessage"}
# Look-ups a lab does without, saying so (the console output's host keys are then checked over SSH);
# DescribePlacementGroups only where the lab has one node (`up --nodes 2` needs it: tested below).
DEGRADES = {"servicequotas:GetServiceQuota", "ec2:GetConsoleOutput", "ec2:DescribeSpotPriceHistory",
            "ec2:DescribeVolumes", "ec2:DescribeKeyPairs", "ec2:DescribeRouteTables", "ec2:DescribePlacementGroups"}


class Account:
    """The moto server's account: an administrator, users with policies, and what each user called."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.calls: list[tuple[str, str]] = []  # (access key id, service:Action), as moto checks them
        iam = self.client("iam", testing=True)
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        self.admin = iam.create_access_key(UserName="admin")["AccessKey"]
        self.users: dict[str, dict] = {}
        # A public subnet that does not auto-assign public addresses, as every non-default subnet.
        ec2 = self.client("ec2", testing=True)
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        self.subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24",
                                        AvailabilityZone="us-west-2a")["Subnet"]["SubnetId"]
        gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=table, SubnetId=self.subnet)
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)

    def client(self, service: str, testing: bool = False):
        key = {} if testing else {"aws_access_key_id": self.admin["AccessKeyId"],
                                  "aws_secret_access_key": self.admin["SecretAccessKey"], "aws_session_token": None}
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint, **key)

    def user(self, name: str, policy: dict) -> dict:
        """A user holding exactly this policy (made while access control is off); its access key."""
        iam = self.client("iam", testing=True)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="tflab", PolicyDocument=json.dumps(policy))
        self.users[name] = iam.create_access_key(UserName=name)["AccessKey"]
        return self.users[name]

    def record(self, original):
        account = self

        def checked(response, iam_request_cls, resource="*"):
            authorization = response.headers.get("Authorization") or ""
            scope = authorization.partition("Credential=")[2].partition(",")[0].split("/")
            if len(scope) > 3:
                action = response._get_action()
                account.calls.append((scope[0], f"{scope[3]}:{action}"))
            return original(response, iam_request_cls, resource)

        return checked


@pytest.fixture(scope="module")
def account():
    from moto.core.authorization import ActionAuthenticatorMixin, enable_iam_authentication

    with moto_server(PARAMETER) as endpoint:
        moto_account = Account(endpoint)
        for name, policy in (("lab", iam_policy()), ("onenode", iam_policy(nodes=False, spot=False))):
            moto_account.user(name, policy)
        for removed in sorted(actions(iam_policy())):
            moto_account.user(f"without-{removed.replace(':', '-')}", without(iam_policy(), removed))
        original = ActionAuthenticatorMixin._authenticate_and_authorize_action
        with mock.patch.object(ActionAuthenticatorMixin, "_authenticate_and_authorize_action",
                               moto_account.record(original)), enable_iam_authentication():
            yield moto_account


def without(policy: dict, action: str) -> dict:
    statements = []
    for statement in policy["Statement"]:
        listed = [a for a in statement["Action"] if a != action]
        if listed:
            statements.append(dict(statement, Action=listed))
    return dict(policy, Statement=statements)


def run(account: Account, user: str, home, *args: str) -> subprocess.CompletedProcess:
    """The real CLI as the user (its access key only: no session token), against the moto server."""
    key = account.users[user] if user != "admin" else account.admin
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
               AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL=account.endpoint, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, TFLAB_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "tflab", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def billing(account: Account, lab: str) -> list[str]:
    """The lab's instances that bill (pending or running), as the administrator sees them."""
    found = account.client("ec2").describe_instances(Filters=[
        {"Name": "tag:tflab:lab", "Values": [lab]}, {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]


def stop(account: Account, lab: str) -> None:
    """Stop the lab from outside (as its watchdog would), so that `up` starts it again."""
    ec2 = account.client("ec2")
    ids = billing(account, lab)
    assert ids, f"lab {lab} has no instance to stop"
    ec2.stop_instances(InstanceIds=ids)
    ec2.get_waiter("instance_stopped").wait(InstanceIds=ids, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


# Each flow: (lab, steps); a step is the CLI's arguments, or "stop" (from outside).
FLOWS = {
    "one node, stopped and started again": ("solo", [
        ["up", "--name", "solo", *UP], ["status", "--name", "solo", "--no-host"], ["list"], "stop",
        ["up", "--name", "solo", *UP], ["status", "--name", "solo", "--no-host"], ["down", "--name", "solo", "--yes"]]),
    "two spot nodes": ("duo", [
        ["up", "--name", "duo", "--nodes", "2", "--spot", *UP], ["status", "--name", "duo", "--no-host"],
        ["list", "--json"], ["down", "--name", "duo", "--yes"]]),
    "a subnet of its own": ("net", [
        ["up", "--name", "net", "--subnet-id", "SUBNET", *UP], ["down", "--name", "net", "--yes"]]),
}


def run_flow(account: Account, user: str, home, flow: str, *, stop_at_failure: bool = False) -> list:
    """Run a flow's steps as the user; returns [(step, completed process)]."""
    lab, steps = FLOWS[flow]
    done = []
    for step in steps:
        if step == "stop":
            assert billing(account, lab), [(step, proc.returncode, proc.stderr[-2000:]) for step, proc in done]
            stop(account, lab)
            continue
        proc = run(account, user, home, *[account.subnet if a == "SUBNET" else a for a in step])
        done.append((step, proc))
        if proc.returncode != 0 and stop_at_failure:
            break
    return done


@pytest.fixture(scope="module")
def used(account, tmp_path_factory):
    """The actions each flow calls, run as the user holding the whole policy (each step must succeed)."""
    found = {}
    for flow in FLOWS:
        key = account.users["lab"]["AccessKeyId"]
        account.calls.clear()
        for step, proc in run_flow(account, "lab", tmp_path_factory.mktemp("home"), flow):
            assert proc.returncode == 0, f"{flow}: {step}: {proc.stderr}"
        found[flow] = [action for who, action in account.calls if who == key]
        assert not billing(account, FLOWS[flow][0])
    return found


def test_the_policy_file_is_what_tflab_iam_policy_prints(account, tmp_path):
    from infra.iam import POLICY_PATH

    printed = run(account, "admin", tmp_path, "iam-policy")
    assert printed.returncode == 0 and json.loads(printed.stdout) == json.loads(POLICY_PATH.read_text())
    narrow = json.loads(run(account, "admin", tmp_path, "iam-policy", "--no-nodes", "--no-spot").stdout)
    assert actions(json.loads(printed.stdout)) - actions(narrow) == {
        "ec2:CreatePlacementGroup", "ec2:DeletePlacementGroup", "ec2:DescribeSpotPriceHistory",
        "iam:CreateServiceLinkedRole"}


def test_a_user_with_exactly_the_policy_runs_every_flow_and_the_policy_holds_nothing_more(used):
    called = {a for flow in used.values() for a in flow} - {"sts:GetCallerIdentity"}  # needs no permission
    assert called == actions(iam_policy()) - NOT_IN_MOTO


def test_one_node_on_demand_labs_need_neither_placement_groups_nor_spot(account, tmp_path, used):
    done = run_flow(account, "onenode", tmp_path, "one node, stopped and started again")
    assert [proc.returncode for _, proc in done] == [0] * len(done), [proc.stderr for _, proc in done]
    assert not billing(account, "solo")


def shortest_flow_calling(used: dict, action: str) -> str:
    """The flow with the fewest steps that calls the action (each removal runs one flow: the suite's time)."""
    return min((flow for flow, called in used.items() if action in called), key=lambda flow: len(FLOWS[flow][1]))


@pytest.mark.parametrize("action", sorted(actions(iam_policy()) - NOT_IN_MOTO))
def test_without_one_action_the_denial_names_it_and_nothing_is_left_billing(account, used, tmp_path, action):
    user = f"without-{action.replace(':', '-')}"
    flow = shortest_flow_calling(used, action)
    lab = FLOWS[flow][0]
    done = run_flow(account, user, tmp_path, flow, stop_at_failure=True)
    step, proc = done[-1]
    try:
        if action in DEGRADES:  # every step succeeds; the ones that could not look say so
            assert proc.returncode == 0 and len(done) == len([s for s in FLOWS[flow][1] if s != "stop"]), \
                proc.stderr
            said = "".join(p.stdout + p.stderr for _, p in done)
            assert f"no permission for {action}" in said, said
        else:
            assert proc.returncode == 4, (step, proc.stderr)  # 4: the cloud refused (README's exit codes)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("tflab: error: ")]
            assert len(errors) == 1 and errors[0].startswith(f"tflab: error: not authorized to perform {action}")
            assert "Traceback" not in proc.stderr
            assert f"grant the permission {action}" in proc.stderr
        if action != "ec2:TerminateInstances":  # the one denial that leaves its instance: it is what removes it
            assert not billing(account, lab), f"{step}: {proc.stderr}"
    finally:  # the administrator removes what is left, for the next action's run
        if tagged(account, lab):
            cleanup = run(account, "admin", tmp_path, "down", "--name", lab, "--yes")
            assert cleanup.returncode == 0, cleanup.stderr


def tagged(account: Account, lab: str) -> list[str]:
    """What is tagged with the lab and not terminated: instances, security groups, key pairs."""
    ec2, by_lab = account.client("ec2"), [{"Name": "tag:tflab:lab", "Values": [lab]}]
    found = [i["InstanceId"] for r in ec2.describe_instances(Filters=by_lab)["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] != "terminated"]
    found += [g["GroupId"] for g in ec2.describe_security_groups(Filters=by_lab)["SecurityGroups"]]
    return found + [k["KeyName"] for k in ec2.describe_key_pairs(Filters=by_lab)["KeyPairs"]]


def test_a_lab_of_several_nodes_needs_the_placement_group_look_up_and_says_so(account, used, tmp_path):
    assert shortest_flow_calling(used, "ec2:DescribePlacementGroups") == "a subnet of its own"  # one node
    done = run_flow(account, "without-ec2-DescribePlacementGroups", tmp_path, "two spot nodes", stop_at_failure=True)
    (step, proc), = done
    assert proc.returncode == 4 and "tflab: error: not authorized to perform ec2:DescribePlacementGroups" in proc.stderr
    assert not billing(account, "duo")
    assert run(account, "admin", tmp_path, "down", "--name", "duo", "--yes").returncode == 0
