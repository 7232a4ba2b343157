"""What a first run on a real AWS account meets, against moto with AWS's own errors injected at the client:
subnets without public addresses, look-ups `up` never needed, and errors said as AWS means them."""

from __future__ import annotations

import dataclasses

import pytest

from infra.errors import CredentialsError, PermissionDenied
from tests.conftest import tflab
from tests.infra.conftest import up_lab
from tflab import cloud
from tflab.errors import ExitCode, InputError, exit_code_for

# EC2's UnauthorizedOperation text: its own sentence, then IAM's (IAM User Guide, "Troubleshoot access denied
# error messages"), then the encoded message (`aws sts decode-authorization-message`).
USER = "arn:aws:iam::123456789012:user/lab"
TAG_ON_CREATE = (f"You are not authorized to perform this operation. User: {USER} is not authorized to perform: "
                 "ec2:CreateTags on resource: arn:aws:ec2:us-west-2:123456789012:instance/* because no "
                 "identity-based policy allows the ec2:CreateTags action. Encoded authorization failure message: "
                 "eyJhbGciOi-made-up")
SCP = (f"You are not authorized to perform this operation. User: {USER} is not authorized to perform: "
       "ec2:RunInstances on resource: arn:aws:ec2:us-west-2:123456789012:instance/* with an explicit deny in a "
       "service control policy. Encoded authorization failure message: eyJ-made-up")


def nothing_left(aws, lab="lab"):
    assert aws.provider.leftovers(lab).empty, aws.provider.leftovers(lab).describe()
    assert aws.store.load(lab) is None and not aws.store.key_path(lab).exists()


def vpc_subnet(aws, *, internet: bool) -> str:
    """A non-default subnet (MapPublicIpOnLaunch off, as every one AWS makes), with or without a route to an
    internet gateway in its own route table."""
    vpc = aws.ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = aws.ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24", AvailabilityZone="us-west-2a")["Subnet"]
    assert not subnet["MapPublicIpOnLaunch"]
    table = aws.ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    aws.ec2.associate_route_table(RouteTableId=table, SubnetId=subnet["SubnetId"])
    if internet:
        gateway = aws.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        aws.ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        aws.ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    else:  # a private subnet: out through a NAT at most
        aws.ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId="nat-0123456789abcdef0")
    return subnet["SubnetId"]


def up_in(aws, subnet: str, ssh_host: str | None = None, **settings):
    spec = dataclasses.replace(aws.spec, subnet_id=subnet)
    return cloud.up(aws.provider, aws.store, spec, aws.console, confirm=lambda q: True,
                    settings=cloud.UpSettings(host_key_timeout=0, ssh_wait=False, ssh_host=ssh_host,
                                              wait_timeout=5, **settings))


# ---------------------------------------------------------------- 1. subnets that give no public address

def test_a_public_subnet_that_does_not_auto_assign_still_gives_the_lab_a_public_address(aws):
    subnet = vpc_subnet(aws, internet=True)
    state, action = up_in(aws, subnet)  # waits for the public address (5 s at most): it is there at once
    assert action == "created" and state.public_ip
    (inst,) = [i for r in aws.ec2.describe_instances(InstanceIds=[state.instance_id])["Reservations"]
               for i in r["Instances"]]
    assert inst["SubnetId"] == subnet and inst["PublicIpAddress"] == state.public_ip
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    nothing_left(aws)


def test_a_subnet_without_an_internet_gateway_fails_before_anything_is_made(aws):
    subnet = vpc_subnet(aws, internet=False)
    aws.faults.calls.clear()
    with pytest.raises(InputError, match=f"subnet {subnet} has no route to an internet gateway") as info:
        up_in(aws, subnet)
    assert "--ssh-host" in info.value.hint and exit_code_for(info.value) == ExitCode.INPUT
    assert not {"CreateKeyPair", "CreateSecurityGroup", "RunInstances"} & set(aws.faults.calls)
    nothing_left(aws)


def test_over_a_vpn_a_private_subnet_launches_without_a_public_address_and_does_not_wait_for_one(aws):
    subnet = vpc_subnet(aws, internet=False)
    state, _ = up_in(aws, subnet, ssh_host="10.7.1.99")
    (inst,) = [i for r in aws.ec2.describe_instances(InstanceIds=[state.instance_id])["Reservations"]
               for i in r["Instances"]]
    assert "PublicIpAddress" not in inst and inst["PrivateIpAddress"]
    assert state.ssh_host == "10.7.1.99" and "no public address" in aws.err.getvalue()
    # Stopped (its watchdog), then started again by an `up` without --ssh-host: still reached over the VPN.
    aws.ec2.stop_instances(InstanceIds=[state.instance_id])
    again, action = up_in(aws, subnet)
    assert action == "started" and again.ssh_host == "10.7.1.99" and again.public_ip is None
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    nothing_left(aws)


def test_unreadable_route_tables_ask_for_a_public_address_and_say_so(aws):
    subnet = vpc_subnet(aws, internet=True)
    aws.faults.fail("DescribeRouteTables", "UnauthorizedOperation", status=403, times=5,
                    message=TAG_ON_CREATE.replace("ec2:CreateTags", "ec2:DescribeRouteTables"))
    state, _ = up_in(aws, subnet)
    assert state.public_ip and "no permission for ec2:DescribeRouteTables" in aws.err.getvalue()
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)


# ---------------------------------------------------------------- 2. down and status need no more than up

def test_down_without_the_look_ups_up_never_made_removes_the_lab_and_says_what_it_did_not_check(aws):
    state, _ = up_lab(aws)
    for action in ("DescribePlacementGroups", "DescribeVolumes", "DescribeKeyPairs"):
        aws.faults.fail(action, "UnauthorizedOperation", status=403, times=50,
                        message=TAG_ON_CREATE.replace("ec2:CreateTags", f"ec2:{action}"))
    report = cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    assert report["clean"] and f"instance {state.instance_id}" in report["removed"]
    # A key pair is deleted only where its tflab:lab tag was read (a key pair of that name may not be tflab's):
    # it stays, said with the command that removes it; it bills nothing.
    assert not any(r.startswith("key pair") for r in report["removed"])
    assert "aws ec2 delete-key-pair --key-name tflab-lab" in aws.err.getvalue()
    assert len(report["unchecked"]) == 3 and "no permission for ec2:DescribePlacementGroups" in aws.err.getvalue()
    aws.faults.rules.clear()
    assert [k["KeyName"] for k in aws.ec2.describe_key_pairs()["KeyPairs"]] == ["tflab-lab"]
    assert not aws.provider.find_instances("lab") and aws.store.load("lab") is None  # nothing bills
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)  # allowed to look: removed
    nothing_left(aws)


def test_status_of_a_spot_lab_without_the_spot_price_history_degrades_with_a_note(aws):
    up_lab(aws, spot=True)
    aws.faults.fail("DescribeSpotPriceHistory", "UnauthorizedOperation", status=403, times=5,
                    message=TAG_ON_CREATE.replace("ec2:CreateTags", "ec2:DescribeSpotPriceHistory"))
    aws.faults.fail("DescribeVolumes", "UnauthorizedOperation", status=403, times=5,
                    message=TAG_ON_CREATE.replace("ec2:CreateTags", "ec2:DescribeVolumes"))
    from infra.pricing import on_demand

    doc = cloud.status(aws.provider, aws.store, "lab", ask_host=False)
    listed = on_demand("g4dn.xlarge", aws.provider.region)
    assert doc["state"] == "running" and doc["hourly_usd"] == listed.usd_per_hour  # the list price, said so
    assert doc["price_source"] == listed.source and doc["volume_gb"] == 0
    assert doc["notes"] == ["spot price not read (no permission for ec2:DescribeSpotPriceHistory): the on-demand "
                            "price instead", "disk not counted (no permission for ec2:DescribeVolumes)"]
    aws.faults.rules.clear()
    cloud.down(aws.provider, aws.store, "lab", aws.console, confirm=lambda q: True)
    nothing_left(aws)


# ---------------------------------------------------------------- 4. the Spot service-linked role

def test_the_first_spot_launch_of_an_account_says_how_to_create_the_service_linked_role(aws):
    aws.faults.fail("RunInstances", "AuthFailure.ServiceLinkedRoleCreationNotPermitted", status=400,
                    message="The provided credentials do not have permission to create the service-linked role "
                            "for EC2 Spot Instances.")
    with pytest.raises(PermissionDenied) as info:
        up_lab(aws, spot=True)
    assert info.value.action == "iam:CreateServiceLinkedRole"
    assert "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com" in info.value.hint
    assert exit_code_for(info.value) == ExitCode.CLOUD
    nothing_left(aws)


# ---------------------------------------------------------------- 5. errors AWS really gives

@pytest.mark.parametrize("operation, code, message", [
    ("GetCallerIdentity", "SignatureDoesNotMatch",
     "Signature expired: 20220127T001427Z is now earlier than 20220127T014428Z (20220127T015928Z - 15 min.)"),
    ("DescribeInstances", "RequestExpired", "Request has expired."),
])
def test_clock_skew_keeps_aws_words_and_points_at_the_clock(aws, operation, code, message):
    aws.faults.fail(operation, code, status=400 if code == "RequestExpired" else 403, message=message)
    with pytest.raises(CredentialsError) as info:
        up_lab(aws)
    assert message in info.value.message and "check the system clock" in info.value.hint
    assert "access key" not in info.value.message
    nothing_left(aws)


def test_an_opt_in_region_not_enabled_says_to_enable_it(aws):
    import boto3

    from infra.aws import AwsProvider

    provider = AwsProvider(boto3.Session(region_name="ap-east-1"), poll=0.01)  # Hong Kong: opt-in (2019)
    provider.session.events.register("before-call.*.*", aws.faults.hook)
    aws.faults.fail("GetCallerIdentity", "InvalidClientTokenId", status=403,
                    message="The security token included in the request is invalid.")
    with pytest.raises(CredentialsError) as info:
        provider.whoami()
    assert "aws account enable-region --region-name ap-east-1" in info.value.hint
    aws.faults.fail("GetCallerIdentity", "InvalidClientTokenId", status=403, message="The security token ...")
    with pytest.raises(CredentialsError) as info:
        aws.provider.whoami()  # us-west-2 is enabled in every account: the key itself is wrong
    assert "enable-region" not in info.value.hint and "access key" in info.value.hint


def test_a_denial_names_the_action_aws_named(aws):
    aws.faults.fail("RunInstances", "UnauthorizedOperation", status=403, message=TAG_ON_CREATE)
    with pytest.raises(PermissionDenied) as info:
        up_lab(aws)
    assert info.value.action == "ec2:CreateTags"
    assert info.value.message.startswith("not authorized to perform ec2:CreateTags (needed by ec2:RunInstances)")
    assert "Encoded authorization failure message" not in info.value.message and "grant" in info.value.hint
    nothing_left(aws)


ENCODED_ONLY = "You are not authorized to perform this operation. Encoded authorization failure message: eyJ-made-up"


@pytest.mark.parametrize("explicit", [False, True])
def test_a_denial_that_names_no_action_is_decoded(aws, explicit):
    import json

    # DecodeAuthorizationMessage's answer (STS API Reference; the AWS CLI example's DecodedMessage).
    decoded = {"allowed": False, "explicitDeny": explicit, "matchedStatements": {"items": []},
               "failures": {"items": []}, "context": {"principal": {"id": "AIDAEXAMPLE", "arn": USER},
                                                      "action": "ec2:CreateTags",
                                                      "resource": "arn:aws:ec2:us-west-2:123456789012:instance/*",
                                                      "conditions": {"items": []}}}
    aws.faults.fail("RunInstances", "UnauthorizedOperation", status=403, message=ENCODED_ONLY)
    aws.faults.respond("DecodeAuthorizationMessage", {"DecodedMessage": json.dumps(decoded)})
    with pytest.raises(PermissionDenied) as info:
        up_lab(aws)
    assert info.value.action == "ec2:CreateTags" and info.value.explicit == explicit
    assert info.value.message == ("not authorized to perform ec2:CreateTags (needed by ec2:RunInstances): You are "
                                  "not authorized to perform this operation")
    assert ("administrator" in info.value.hint) == explicit
    nothing_left(aws)


def test_an_encoded_denial_that_cannot_be_decoded_names_the_call_and_how_to_decode_it(aws):
    aws.faults.fail("RunInstances", "UnauthorizedOperation", status=403, message=ENCODED_ONLY)
    aws.faults.fail("DecodeAuthorizationMessage", "AccessDenied", status=403,
                    message=f"User: {USER} is not authorized to perform: sts:DecodeAuthorizationMessage")
    with pytest.raises(PermissionDenied) as info:
        up_lab(aws)
    assert info.value.action == "ec2:RunInstances" and "aws sts decode-authorization-message" in info.value.hint
    assert "DecodeAuthorizationMessage" in aws.faults.calls
    nothing_left(aws)


def test_an_explicit_deny_sends_the_user_to_an_administrator(aws):
    aws.faults.fail("RunInstances", "UnauthorizedOperation", status=403, message=SCP)
    with pytest.raises(PermissionDenied) as info:
        up_lab(aws)
    assert info.value.explicit and info.value.action == "ec2:RunInstances"
    assert "administrator" in info.value.hint and "grant the permission" not in info.value.hint
    nothing_left(aws)


def test_an_mfa_profile_off_a_terminal_says_so_instead_of_interrupted(tmp_path):
    (tmp_path / "config").write_text(
        "[profile base]\nregion = us-west-2\n"
        "[profile mfa]\nregion = us-west-2\nrole_arn = arn:aws:iam::123456789012:role/lab\nsource_profile = base\n"
        "mfa_serial = arn:aws:iam::123456789012:mfa/alice\n")
    (tmp_path / "credentials").write_text("[base]\naws_access_key_id = AKIAEXAMPLE0000000000\n"
                                          "aws_secret_access_key = made-up\n")
    env = {"AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
           "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_SECURITY_TOKEN": "",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "TFLAB_HOME": str(tmp_path / "home")}
    proc = tflab("list", "--profile", "mfa", env=env, timeout=60)  # stdin is /dev/null
    assert proc.returncode == ExitCode.INPUT, proc.stderr
    assert "asks for an MFA code (arn:aws:iam::123456789012:mfa/alice)" in proc.stderr
    assert "no terminal" in proc.stderr and "interrupted" not in proc.stderr

