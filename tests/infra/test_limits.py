"""Every value `up` sends to AWS stays within AWS's documented limits, for the longest lab name.

moto does not check these limits (a 70-character ClientToken or an apostrophe in a rule description
pass there, and real AWS refuses them), so the requests themselves are read at the client, before
they are sent, and each value is checked against the documented number written out here (the table
in infra/limits.py cites the documentation for each).
"""

from __future__ import annotations

import copy
import re

import boto3
import pytest
from moto import mock_aws

from infra import limits
from infra.aws import AwsProvider, translated
from infra.errors import CloudError, InputError
from tests.infra.conftest import REGION, up_lab
from tflab import cloud
from tflab.errors import ExitCode, exit_code_for

LONGEST = "lab-" + "abcdefghij0123456789-abcdef"  # 31 characters, the longest valid lab name
SG_CHARS = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*")  # CreateSecurityGroup / IpRange (documented)
SSM_NAME = re.compile(r"[a-zA-Z0-9_.\-/:]+")


class Requests:
    """Every request's parameters as the client is about to send them."""

    def __init__(self, session):
        self.seen: list[tuple[str, dict]] = []
        session.events.register("before-parameter-build.*.*", self.record)

    def record(self, params, model, **kwargs):
        self.seen.append((model.name, copy.deepcopy(params)))

    def of(self, operation: str) -> list[dict]:
        return [params for name, params in self.seen if name == operation]


def all_tags(params: dict) -> list[dict]:
    return [tag for spec in params.get("TagSpecifications", []) for tag in spec.get("Tags", [])]


def test_the_longest_lab_name_gives_requests_within_aws_limits(aws):
    assert cloud.check_name(LONGEST) == LONGEST and len(LONGEST) == 31
    requests = Requests(aws.session)
    policy = {"enabled": True, "idle_seconds": 3600, "max_lifetime_seconds": 43200, "keep_until": None}
    state, action = up_lab(aws, lab=LONGEST, user_data=cloud.packed_user_data(cloud.boot_user_data("ubuntu", autostop=policy)))  # as `up`
    assert action == "created"

    (run,) = requests.of("RunInstances")
    token = run["ClientToken"]
    assert len(token) <= 64 and token.isascii(), (len(token), token)  # EC2: "Maximum 64 ASCII characters"
    assert token.startswith(f"tflab-{LONGEST}-")
    assert isinstance(run["UserData"], bytes) and len(run["UserData"]) <= 16 * 1024  # "16 KB, in raw form, before base64"
    assert len(run["KeyName"]) <= 255 and run["KeyName"].isascii()

    (pair,) = requests.of("CreateKeyPair")
    assert len(pair["KeyName"]) <= 255 and pair["KeyName"].isascii()  # "Up to 255 ASCII characters"
    assert pair["KeyName"] == f"tflab-{LONGEST}" == run["KeyName"]

    (group,) = requests.of("CreateSecurityGroup")
    for value in (group["GroupName"], group["Description"]):  # "Up to 255 characters", SG characters only
        assert len(value) <= 255 and SG_CHARS.fullmatch(value), value
    assert not group["GroupName"].lower().startswith("sg-")  # "Cannot start with sg-"

    (ingress,) = requests.of("AuthorizeSecurityGroupIngress")
    for permission in ingress["IpPermissions"]:
        for ip_range in permission["IpRanges"]:
            description = ip_range.get("Description", "")
            assert len(description) <= 255 and SG_CHARS.fullmatch(description), description

    for (parameter,) in [requests.of("GetParameter")]:  # names: a-zA-Z0-9_.-/, 1011 characters
        assert len(parameter["Name"]) <= 1011 and SSM_NAME.fullmatch(parameter["Name"])

    tagged = [params for _, params in requests.seen if params.get("TagSpecifications")]
    assert {name for name, params in requests.seen if params.get("TagSpecifications")} == \
        {"CreateKeyPair", "CreateSecurityGroup", "RunInstances"}
    for params in tagged:
        for tag in all_tags(params):  # EC2 Tag: keys 127 characters, values 256; "aws:" is reserved
            assert 1 <= len(tag["Key"]) <= 127 and not tag["Key"].lower().startswith("aws:"), tag
            assert len(tag["Value"]) <= 256 and not tag["Value"].lower().startswith("aws:"), tag
        assert {"Key": "tflab:lab", "Value": LONGEST} in all_tags(params)  # found by its full name

    # And the lab is whole, found by its tags, and removed by them.
    assert aws.provider.find_instances(LONGEST)[0].id == state.instance_id
    cloud.down(aws.provider, aws.store, LONGEST, aws.console, confirm=lambda q: True)
    assert aws.provider.leftovers(LONGEST).empty


def test_each_attempt_gets_its_own_token_within_the_limit():
    tokens = {limits.client_token(LONGEST) for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) <= 64 and t.isascii() and t.startswith(f"tflab-{LONGEST}-") for t in tokens)
    # Even a name longer than tflab allows still gives a token within the limit, and a distinct one.
    long_token = limits.client_token("x" * 300)
    assert len(long_token) <= 64 and len(long_token.rsplit("-", 1)[1]) >= 24


def test_the_limits_table_says_what_the_documentation_says():
    documented = {"CLIENT_TOKEN": 64, "KEY_NAME": 255, "GROUP_NAME": 255, "GROUP_DESCRIPTION": 255,
                  "RULE_DESCRIPTION": 255, "TAG_KEY": 127, "TAG_VALUE": 256, "SSM_PARAMETER_NAME": 1011,
                  "USER_DATA": 16384}
    assert {name: getattr(limits, name).max_len for name in documented} == documented
    assert limits.GROUP_NAME.problems("sg-lab") and limits.TAG_KEY.problems("aws:lab")
    assert limits.RULE_DESCRIPTION.problems("the lab's user")  # no apostrophe in a rule description
    assert limits.KEY_NAME.problems("tflab-läb") and not limits.KEY_NAME.problems("tflab-lab")
    assert limits.USER_DATA.problems("é" * 8193) and not limits.USER_DATA.problems("e" * 16384)


def test_fit_shortens_only_what_is_too_long_and_keeps_names_apart():
    assert limits.fit(limits.KEY_NAME, "tflab-lab") == "tflab-lab"
    a, b = (limits.fit(limits.KEY_NAME, "tflab-" + "x" * 300 + end) for end in "ab")
    assert len(a) == len(b) == 255 and a != b
    assert limits.fit(limits.KEY_NAME, "tflab-" + "x" * 300 + "a") == a  # the same name each time
    with pytest.raises(InputError, match="the key pair name .* not ASCII"):
        limits.require(limits.KEY_NAME, "tflab-läb")


# ---------------------------------------------------------------- botocore's own refusals, translated


def test_botocore_parameter_validation_is_an_input_error(aws):
    with pytest.raises(InputError, match="ec2:DescribeImages refused before sending") as caught:
        with translated("ec2:DescribeImages"):
            aws.ec2.describe_images(ImageIds="ami-12345678")  # a string where a list belongs
    assert exit_code_for(caught.value) == ExitCode.INPUT and caught.value.hint
    with pytest.raises(InputError, match="not an SSM parameter name|cannot be sent to AWS"):
        aws.provider.resolve_image(aws.spec.__class__(lab="lab", ssh_cidr="203.0.113.7/32", ami_parameter=""))
    assert "GetParameter" not in aws.faults.calls  # refused here, not sent


def test_a_region_botocore_refuses_is_an_input_error():
    with mock_aws():
        provider = AwsProvider(boto3.Session(region_name="a b"))
        with pytest.raises(InputError, match="'a b' is not an AWS region name") as caught:
            provider.find_instances(None)
    assert exit_code_for(caught.value) == ExitCode.INPUT and "--region" in caught.value.hint


def test_an_answer_botocore_cannot_parse_is_a_cloud_error(aws):
    from botocore.parsers import ResponseParserError

    def garbage(**kwargs):
        raise ResponseParserError("Unable to parse response (syntax error: line 1, column 0), invalid XML received")

    aws.session.events.register("before-call.ec2.DescribeInstances", garbage)
    with pytest.raises(CloudError, match="the answer was not AWS's") as caught:
        aws.provider.find_instances("lab")
    assert caught.value.code == "BadResponse" and "AWS_ENDPOINT_URL" in caught.value.hint


def test_a_malformed_endpoint_setting_is_an_input_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    with mock_aws():
        provider = AwsProvider(boto3.Session(region_name=REGION))
        with pytest.raises(InputError, match="Invalid endpoint: not a url") as caught:
            provider.find_instances(None)
    assert "AWS_ENDPOINT_URL" in caught.value.hint


def test_a_value_error_in_tflab_itself_is_not_taken_for_bad_input():
    with pytest.raises(ValueError, match="a bug"):
        with translated("anything"):
            raise ValueError("a bug")
