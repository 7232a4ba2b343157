"""moto-backed AWS for the cloud layer: an injected boto3 session, errors injected at the client."""

from __future__ import annotations

import io

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from moto import mock_aws

from infra.aws import AwsProvider
from infra.provider import LaunchSpec
from tflab.console import Console
from tflab.state import StateStore

REGION = "us-west-2"
AMI_PARAMETER = "/test/dlami/ami-id"
CIDR = "203.0.113.7/32"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-"  # + x86_64 | arm64


class Faults:
    """A before-call hook on a session: records every AWS call and fails the ones asked for.

    Errors are injected at the client (before-call), so moto never runs the failed call.
    """

    def __init__(self):
        self.calls: list[str] = []
        self.rules: list[dict] = []

    def fail(self, operation: str | None = None, code: str = "InternalError", *, status: int = 400,
             times: int = 1, at_index: int | None = None, message: str = "injected by the test") -> None:
        self.rules.append({"op": operation, "code": code, "status": status, "left": times, "index": at_index,
                           "message": message})

    def respond(self, operation: str, parsed: dict, times: int = 1) -> None:
        """Answer a call with this parsed response instead of moto's."""
        self.rules.append({"op": operation, "parsed": parsed, "left": times, "index": None})

    def hook(self, model, params, **kwargs):
        index = len(self.calls)
        self.calls.append(model.name)
        for rule in self.rules:
            if rule["left"] <= 0:
                continue
            if rule["index"] is not None and rule["index"] != index:
                continue
            if rule["op"] is not None and rule["op"] != model.name:
                continue
            rule["left"] -= 1
            if "parsed" in rule:
                return AWSResponse("https://injected", 200, {}, None), rule["parsed"]
            error = {"Error": {"Code": rule["code"], "Message": rule["message"]},
                     "ResponseMetadata": {"HTTPStatusCode": rule["status"]}}
            return AWSResponse("https://injected", rule["status"], {}, None), error
        return None


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """moto, a session, a seeded DLAMI parameter, a provider, a state store in tmp and a quiet console."""
    monkeypatch.setenv("TFLAB_HOME", str(tmp_path / "home"))
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        faults = Faults()
        session.events.register("before-call.*.*", faults.hook)
        ec2 = session.client("ec2")
        # moto has no Deep Learning AMI parameter: seed one under another name with one of moto's images.
        ssm = session.client("ssm")
        image = ssm.get_parameter(Name=AL2023 + "x86_64")["Parameter"]["Value"]
        ssm.put_parameter(Name=AMI_PARAMETER, Value=image, Type="String", DataType="aws:ec2:image")
        faults.calls.clear()
        provider = AwsProvider(session, poll=0.01, config=Config(retries={"max_attempts": 1, "mode": "standard"}))
        err = io.StringIO()
        yield type("Aws", (), {
            "session": session, "ec2": ec2, "faults": faults, "provider": provider, "image": image,
            "store": StateStore(), "console": Console(err=err, out=io.StringIO()), "err": err,
            "spec": LaunchSpec(lab="lab", ssh_cidr=CIDR, ami_parameter=AMI_PARAMETER),
        })


def up_lab(aws, *, lab: str = "lab", host_key_timeout: float = 0.0, **spec_changes):
    """`tflab up` as the CLI calls it, against the fixture's moto account; returns (state, action).

    No SSH wait: moto's instances have made-up public addresses, which a test must never contact.
    """
    import dataclasses

    from tflab import cloud

    spec = dataclasses.replace(aws.spec, lab=lab, **spec_changes)
    return cloud.up(aws.provider, aws.store, spec, aws.console, confirm=lambda q: True,
                    settings=cloud.UpSettings(host_key_timeout=host_key_timeout, ssh_wait=False))
