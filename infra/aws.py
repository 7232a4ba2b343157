"""The Provider on AWS EC2, with boto3. The session is injected (tests pass a moto-backed one)."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from infra import limits, tags
from infra.errors import (AmiError, CapacityError, CloudError, CredentialsError, InfraError, InputError, LabBusy,
                          PermissionDenied, QuotaError, WaitTimeout)
from infra.hostkeys import parse_fingerprints
from infra.provider import (Created, Image, Instance, InstanceType, LaunchSpec, Leftovers, Progress, Provider,
                            QuotaCheck)

log = logging.getLogger(__name__)

# No apostrophe: a rule description takes a-zA-Z0-9, spaces and ._-:/()#,@[]+=&;{}!$* only (infra/limits.py).
RULE_DESCRIPTION = limits.require(limits.RULE_DESCRIPTION, "tflab: SSH from the lab user only")
MEMBERS_DESCRIPTION = limits.require(limits.RULE_DESCRIPTION, "tflab: the lab nodes reach each other")
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# A lab's key pair (its claim, create_key_pair) older than this without a live instance was left by a half-done
# `up`: an `up` makes its instances seconds after its key pair, within one RunInstances per zone tried. The age
# is read on AWS's clock (the Date header of the DescribeKeyPairs answer), never this machine's alone.
CLAIM_STALE_SECONDS = 600
# Where AWS's answer carries no Date header, this machine's clock is used, which AWS lets be up to 15 minutes
# off (a request signed further away is refused: RequestExpired, "Common client error codes", EC2 API Reference):
# the age must then pass the threshold plus that, plus a margin.
CLOCK_SKEW_ALLOWED_SECONDS = 15 * 60 + 120
# (on-demand quota, spot quota) by instance family letter(s): "Running On-Demand G and VT instances" etc.
QUOTAS = {
    "g": (("L-DB2E81BA", "Running On-Demand G and VT instances"), ("L-3819A6DF", "All G and VT Spot Instance Requests")),
    "vt": (("L-DB2E81BA", "Running On-Demand G and VT instances"), ("L-3819A6DF", "All G and VT Spot Instance Requests")),
    "p": (("L-417A185B", "Running On-Demand P instances"), ("L-7212CCBC", "All P Spot Instance Requests")),
}
STANDARD_QUOTA = (("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
                  ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"))


def family_quota(instance_type: str, spot: bool) -> tuple[str, str]:
    """The vCPU quota (code, name) that limits launching this type."""
    family = instance_type.split(".")[0]
    letters = "".join(c for c in family if c.isalpha())
    for prefix in ("vt", "g", "p"):
        if letters.startswith(prefix):
            return QUOTAS[prefix][1 if spot else 0]
    return STANDARD_QUOTA[1 if spot else 0]


@contextmanager
def translated(action: str, **context) -> Iterator[None]:
    """Turn botocore failures into infra errors that say what to do."""
    import botocore.exceptions as bx

    try:
        yield
    except bx.NoCredentialsError as exc:
        raise CredentialsError("no AWS credentials found",
                               hint="run `aws configure` (or `aws sso login`), set AWS_PROFILE, or pass --profile") from exc
    except bx.NoRegionError as exc:
        raise CredentialsError("no AWS region configured",
                               hint="pass --region, set AWS_REGION, or run `aws configure`") from exc
    except bx.ProfileNotFound as exc:
        raise CredentialsError(str(exc), hint="check --profile / AWS_PROFILE against ~/.aws/config") from exc
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise CloudError(f"cannot reach AWS for {action}: {exc}", code="Unreachable",
                         hint="check your network connection and the region") from exc
    except bx.ClientError as exc:
        raise from_client_error(exc, action, **context) from exc
    except bx.InvalidRegionError as exc:
        raise InputError(f"{exc.kwargs.get('region_name', '')!r} is not an AWS region name",
                         hint="pass a region such as --region us-west-2 (`aws ec2 describe-regions` lists them), "
                              "or fix AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config") from exc
    except bx.ParamValidationError as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"{action} refused before sending: {detail}", hint="check the options given to tflab") from exc
    except (bx.PartialCredentialsError, bx.CredentialRetrievalError, bx.TokenRetrievalError, bx.SSOError) as exc:
        raise CredentialsError(f"your AWS credentials cannot be used: {exc}",
                               hint="run `aws configure` (or `aws sso login`), or check AWS_PROFILE / --profile") from exc
    except (bx.ConnectionError, bx.HTTPClientError) as exc:
        raise CloudError(f"cannot reach AWS for {action}: {exc}", code="Unreachable",
                         hint="check your network connection, the region and AWS_ENDPOINT_URL if set") from exc
    except bx.BotoCoreError as exc:  # the SDK's own refusals: its configuration, a credential source...
        raise InputError(f"{action}: {exc}", hint="check your AWS configuration: --region, --profile, ~/.aws/config "
                                                  "and the AWS_* environment variables") from exc
    except Exception as exc:
        from botocore.parsers import ResponseParserError

        if isinstance(exc, ResponseParserError):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CloudError(f"{action}: the answer was not AWS's ({first})", code="BadResponse",
                             hint="check --region and AWS_ENDPOINT_URL if set; try again") from exc
        if isinstance(exc, ValueError) and _raised_in_sdk(exc):  # e.g. a malformed AWS_ENDPOINT_URL
            raise InputError(f"{action}: {exc}", hint="check your AWS configuration: --region, AWS_ENDPOINT_URL "
                                                      "and the other AWS_* settings") from exc
        raise


def _raised_in_sdk(exc: BaseException) -> bool:
    """Whether the exception was raised inside boto3/botocore (not by tflab's own code)."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/botocore/" in name or "/boto3/" in name:
            return True
        tb = tb.tb_next
    return False


# The regions every account may use: those launched before 2019-03-20. Any later one is an opt-in region,
# disabled until the account enables it ("Enable or disable AWS Regions in your account", AWS Account
# Management Reference Guide); a request there with the account's keys fails as InvalidClientTokenId (STS),
# AuthFailure (EC2) or UnrecognizedClientException (JSON services), as if the keys were wrong.
DEFAULT_REGIONS = frozenset({
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
    "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "ap-southeast-1", "ap-southeast-2"})
# IAM's denial messages (IAM User Guide, "Troubleshoot access denied error messages"): "User: <arn> is not
# authorized to perform: <action> on resource: <arn> because no identity-based policy allows the <action>
# action", or "... with an explicit deny in a service control policy". EC2 puts this after its own "You are
# not authorized to perform this operation.", then "Encoded authorization failure message: ..." (decodable
# with `aws sts decode-authorization-message`).
DENIED_ACTION = re.compile(r"not authorized to perform:\s*([a-z0-9-]+:[A-Za-z0-9*]+)")
CLOCK_SKEW = ("RequestExpired", "RequestTimeTooSkewed", "RequestInTheFuture")
ENCODED = re.compile(r"Encoded authorization failure message:\s*(\S+)")
_REGION: contextvars.ContextVar[str | None] = contextvars.ContextVar("tflab_aws_region", default=None)
# How the provider of the call about to be made decodes an encoded authorization failure message (or None).
_DECODER: contextvars.ContextVar = contextvars.ContextVar("tflab_aws_decoder", default=None)


def opt_in_region(region: str | None) -> bool:
    """Whether the region is one an account must enable first (launched after 2019-03-20)."""
    return bool(region) and region not in DEFAULT_REGIONS and not region.startswith(("cn-", "us-gov-", "us-iso"))


def from_client_error(exc, action: str, **context) -> InfraError:
    """The infra error for an AWS error code."""
    err = exc.response.get("Error", {})
    code = err.get("Code", "")
    message = " ".join((err.get("Message", "") or str(exc)).split())
    # An XML error body where the service speaks JSON (botocore then gives the HTTP status as the code): seen
    # from proxies and from moto's IAM access control, which answers every service in XML. Read it anyway.
    if message.startswith("<?xml") and "<Message>" in message:
        code = re.search(r"<Code>([^<]*)</Code>", message).group(1) if "<Code>" in message else code
        message = message.split("<Message>", 1)[1].split("</Message>", 1)[0]
    region = context.get("region") or _REGION.get()
    if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "UnauthorizedException"):
        detail = message.split("Encoded authorization failure message")[0].strip(" .")
        named = DENIED_ACTION.search(detail)
        denied, explicit = (named.group(1) if named else action), "explicit deny" in detail.lower()
        encoded, decoder = ENCODED.search(message), _DECODER.get()
        if encoded and not named and decoder:  # EC2's text may not name it: its encoded message does
            decoded = decoder(encoded.group(1))
            if decoded:
                denied, explicit = decoded["action"], decoded["explicit"]
            else:
                return PermissionDenied(denied, detail, explicit=explicit, called=action).with_hint(
                    f"grant the permission {action} (or what it needs besides: `aws sts decode-authorization-"
                    "message` decodes AWS's message, which tflab could not) to your IAM user or role "
                    "(`tflab iam-policy` prints all that tflab needs), or use a profile that has it (--profile)")
        return PermissionDenied(denied, detail, explicit=explicit, called=action)
    if code == "AuthFailure.ServiceLinkedRoleCreationNotPermitted":
        # RunInstances with spot market options creates the Spot service-linked role on first use, which
        # needs iam:CreateServiceLinkedRole ("Service-linked role for Spot Instance requests", EC2 User Guide).
        return PermissionDenied("iam:CreateServiceLinkedRole", message, called=action).with_hint(
            "the first spot instance of an account needs the Spot service-linked role: create it once with "
            "`aws iam create-service-linked-role --aws-service-name spot.amazonaws.com` (as an administrator), "
            "or grant iam:CreateServiceLinkedRole for spot.amazonaws.com (`tflab iam-policy --spot`)")
    if code in CLOCK_SKEW or "signature expired" in message.lower():
        # "Signature expired: 20220127T001427Z is now earlier than 20220127T014428Z (... - 15 min.)": AWS
        # refuses a request signed more than 15 minutes away from its own time (Common Errors: RequestExpired).
        return CredentialsError(f"AWS refused the request's time ({code}: {message})",
                                hint="check the system clock (`date -u` against the real time; enable NTP, e.g. "
                                     "`timedatectl set-ntp true`); if it is right, your temporary credentials may "
                                     "have expired: refresh them")
    if code in ("ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"):
        return CredentialsError("your AWS credentials have expired",
                                hint="refresh them (`aws sso login`, or new temporary credentials) and try again")
    if code in ("AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                "InvalidAccessKeyId", "InvalidSignatureException"):
        if opt_in_region(region) and code != "SignatureDoesNotMatch":
            return CredentialsError(f"AWS did not accept your credentials in {region} ({code}: {message})",
                                    hint=f"{region} is an opt-in region: if your account has not enabled it, "
                                         f"enable it (`aws account enable-region --region-name {region}`, or the "
                                         "console's Account page; it takes minutes) or use another --region; "
                                         "else check the access key of your profile (`aws configure list`)")
        return CredentialsError(f"AWS did not accept your credentials ({code}: {message})",
                                hint="check the access key and secret of your profile (`aws configure list`)")
    if code in ("VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"):
        quota_code, quota_name = family_quota(context.get("instance_type", ""), context.get("spot", False))
        return QuotaError(quota_name, quota_code, context.get("region", "this region"), None,
                          context.get("vcpus", 0) or 4)
    if code.startswith("InvalidAMIID"):
        return AmiError(f"the image {context.get('image', '')} cannot be launched: {message}",
                        hint="pass another image with --ami, or let tflab resolve the current one (no --ami)")
    if code in ("InvalidInstanceType", "Unsupported") or code.startswith("InvalidParameter") or \
            code in ("InvalidSubnetID.NotFound", "InvalidSubnet"):
        return InputError(f"{action} refused: {message}", hint="check the options given to tflab")
    if code == "InsufficientInstanceCapacity":
        return CapacityError(context.get("instance_type", "?"), context.get("region", "?"), context.get("zones", []))
    return CloudError(f"{action} failed: {code}: {message}", code=code)


def _tags(resource: dict) -> list[dict]:
    return resource.get("Tags") or []


def aws_date(answer: dict) -> datetime | None:
    """AWS's time when it answered: the HTTP Date header of the response (RFC 7231), or None."""
    from email.utils import parsedate_to_datetime

    header = (answer.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
    try:
        when = parsedate_to_datetime(header) if header else None
    except (TypeError, ValueError):
        return None
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when


def ed25519_fingerprint(private_key: str) -> str | None:
    """The KeyFingerprint EC2 gives an ed25519 key pair: "the base64-encoded SHA-256 digest" of the public key
    (KeyPairInfo, EC2 API Reference), as OpenSSH's SHA256 fingerprint (the digest of the public key blob, as
    in `ssh-keygen -lf`). None where the text is not an OpenSSH ed25519 private key."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    except (ValueError, TypeError) as exc:
        log.info("not an OpenSSH private key: %s", exc)
        return None
    if not isinstance(key, Ed25519PrivateKey):
        return None
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def same_fingerprint(given: str | None, own: str) -> bool:
    """Whether a KeyFingerprint is this base64 SHA-256 one (with or without the padding and "SHA256:")."""
    def plain(text: str) -> str:
        return text.strip().removeprefix("SHA256:").rstrip("=")

    return bool(given) and plain(given) == plain(own)


def no_prompt_off_a_terminal(session) -> None:
    """A profile that assumes a role with mfa_serial makes botocore ask for the MFA code on the terminal
    (getpass). Off a terminal there is nobody to answer: say so, instead of blocking on /dev/tty or reading
    end-of-file (which click reports as an interrupt)."""
    import sys

    if sys.stdin is not None and sys.stdin.isatty():
        return
    try:
        assume_role = session._session.get_component("credential_provider").get_provider("assume-role")
    except Exception as exc:  # a session without botocore's resolver (or a future botocore): keep its own
        log.info("cannot replace the MFA prompt: %s", exc)
        return

    def refuse(prompt: str) -> str:
        serial = prompt.replace("Enter MFA code for", "").strip(" :")
        raise CredentialsError(f"your AWS profile asks for an MFA code ({serial}), and there is no terminal to "
                               "type it in",
                               hint="run tflab in a terminal (it asks for the code), or give it credentials "
                                    "that need no prompt: `eval \"$(aws configure export-credentials --profile "
                                    "<profile> --format env)\"` (the AWS CLI asks for the code once and caches "
                                    "the role's credentials)")

    assume_role._prompter = refuse


class AwsProvider(Provider):
    """Provider on EC2. Waits poll every `poll` seconds (tests use a short one)."""

    def __init__(self, session, *, poll: float = 2.0, config=None):
        self.session = session
        self.region = session.region_name
        if not self.region:
            raise CredentialsError("no AWS region configured", hint="pass --region, set AWS_REGION, or run `aws configure`")
        self.poll = poll
        self._config = config
        self._clients: dict[str, object] = {}
        self._vcpus_needed: dict[tuple[str, bool, int], int] = {}  # check_quota's count, for launch's errors
        self.profile = session.profile_name  # the profile the session uses ("default" when none is named)
        no_prompt_off_a_terminal(session)

    def client(self, service: str):
        """One client per service, made on first use."""
        _REGION.set(self.region)  # what an error of the call about to be made is told (opt-in regions)
        _DECODER.set(self.decode_authorization_message)
        if service not in self._clients:
            with translated(f"{service} client"):
                self._clients[service] = self.session.client(service, region_name=self.region, config=self._config)
        return self._clients[service]

    @property
    def ec2(self):
        return self.client("ec2")

    # ------------------------------------------------------------------ identity, image, type, quota

    def decode_authorization_message(self, encoded: str) -> dict | None:
        """{"action", "explicit"} from the encoded message of a denial (STS DecodeAuthorizationMessage: "the
        requested action", and "whether the request was denied due to an explicit deny"); None where it
        cannot be decoded (sts:DecodeAuthorizationMessage denied, or any other failure: the denial stands)."""
        import json

        try:
            sts = self.client("sts")
            decoded = json.loads(sts.decode_authorization_message(EncodedMessage=encoded)["DecodedMessage"])
            return {"action": str(decoded["context"]["action"]), "explicit": bool(decoded.get("explicitDeny"))}
        except Exception as exc:  # never worse than the denial itself
            log.info("could not decode the authorization failure message: %s", exc)
            return None

    def whoami(self) -> str:
        with translated("sts:GetCallerIdentity"):
            return self.client("sts").get_caller_identity()["Arn"]

    def resolve_image(self, spec: LaunchSpec) -> Image:
        image_id, source = spec.ami, "--ami"
        if not image_id:
            source = f"SSM parameter {spec.ami_parameter}"
            limits.require(limits.SSM_PARAMETER_NAME, spec.ami_parameter,
                           hint="--ami-parameter takes a parameter name such as "
                                "/aws/service/deeplearning/ami/x86_64/.../latest/ami-id")
            try:
                with translated("ssm:GetParameter"):
                    value = self.client("ssm").get_parameter(Name=spec.ami_parameter)["Parameter"]["Value"]
            except CloudError as exc:
                if exc.code == "ParameterNotFound":
                    raise AmiError(f"the SSM parameter {spec.ami_parameter} does not exist in {self.region}",
                                   hint="check the region, pass --ami-parameter with another parameter, or --ami") from exc
                raise
            image_id = (value or "").strip()
            if not image_id.startswith("ami-"):
                raise AmiError(f"the SSM parameter {spec.ami_parameter} holds no image id ({value!r})",
                               hint="pass --ami with an image id, or --ami-parameter with another parameter")
        with translated("ec2:DescribeImages", image=image_id):
            images = self.ec2.describe_images(ImageIds=[image_id])["Images"]
        if not images:
            raise AmiError(f"the image {image_id} does not exist in {self.region}", hint="check --ami and --region")
        img = images[0]
        if img.get("State", "available") != "available":
            raise AmiError(f"the image {image_id} is {img.get('State')}, not available", hint="pass another --ami")
        # The root volume cannot be smaller than the image's root snapshot: RunInstances would refuse it with
        # InvalidBlockDeviceMapping ("Volume of size N GB is smaller than snapshot ..., expect size >= M GB").
        root = img.get("RootDeviceName") or "/dev/sda1"
        snapshot_gb = next((m.get("Ebs", {}).get("VolumeSize") for m in img.get("BlockDeviceMappings") or []
                            if m.get("DeviceName") == root), None)
        if isinstance(snapshot_gb, int) and spec.disk_gb < snapshot_gb:
            raise InputError(f"--disk-gb {spec.disk_gb} is smaller than the root snapshot of the image {image_id} "
                             f"({snapshot_gb} GiB)", hint=f"pass --disk-gb {snapshot_gb} or more (the lab's "
                                                           "TensorFlow and its data need room beyond the image)")
        return Image(image_id, img.get("Name", ""), img.get("Architecture", "x86_64"),
                     img.get("RootDeviceName") or "/dev/sda1", source)

    def describe_type(self, instance_type: str) -> InstanceType:
        with translated("ec2:DescribeInstanceTypes", instance_type=instance_type):
            try:
                types = self.ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code.startswith("InvalidInstanceType") or code == "InvalidParameterValue":
                    raise InputError(f"{instance_type} is not an instance type in {self.region}",
                                     hint="check --instance-type (e.g. g4dn.xlarge, g5.xlarge)") from exc
                raise
        if not types:
            raise InputError(f"{instance_type} is not an instance type in {self.region}", hint="check --instance-type")
        t = types[0]
        gpus = ", ".join(f"{g.get('Count', 1)} x {g.get('Manufacturer', '')} {g.get('Name', '')} "
                         f"({g.get('MemoryInfo', {}).get('SizeInMiB', 0) // 1024} GiB)"
                         for g in t.get("GpuInfo", {}).get("Gpus", []))
        return InstanceType(instance_type, int(t["VCpuInfo"]["DefaultVCpus"]),
                            tuple(t.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"])), gpus,
                            tuple(t.get("PlacementGroupInfo", {}).get("SupportedStrategies", [])))

    def check_quota(self, itype: InstanceType, spot: bool, count: int = 1) -> QuotaCheck:
        code, name = family_quota(itype.name, spot)
        running = self._running_vcpus(code, spot)
        needed = itype.vcpus * count + running
        self._vcpus_needed[(itype.name, spot, count)] = needed  # what a RunInstances refusal then says
        try:
            with translated("servicequotas:GetServiceQuota"):
                value = self.client("service-quotas").get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except (PermissionDenied, CloudError) as exc:
            reason = exc.code if isinstance(exc, CloudError) else f"no permission for {exc.action}"
            return QuotaCheck(code, name, needed, None, note=f"could not read it ({reason})")
        if value < needed:
            raise QuotaError(name, code, self.region, value, needed)
        return QuotaCheck(code, name, needed, value)

    def _running_vcpus(self, quota_code: str, spot: bool) -> int:
        """vCPUs of running instances that count against the same quota."""
        total = 0
        with translated("ec2:DescribeInstances"):
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
            for page in pages:
                for r in page["Reservations"]:
                    for i in r["Instances"]:
                        if family_quota(i["InstanceType"], spot)[0] == quota_code and \
                                (i.get("InstanceLifecycle") == "spot") == spot:
                            total += self.describe_type(i["InstanceType"]).vcpus
        return total

    # ------------------------------------------------------------------ finding

    def _instance(self, raw: dict) -> Instance:
        launched = raw.get("LaunchTime")
        return Instance(
            id=raw["InstanceId"], state=raw["State"]["Name"], instance_type=raw["InstanceType"],
            public_ip=raw.get("PublicIpAddress"), private_ip=raw.get("PrivateIpAddress"),
            zone=raw.get("Placement", {}).get("AvailabilityZone"),
            launch_time=launched.isoformat() if hasattr(launched, "isoformat") else launched,
            spot=raw.get("InstanceLifecycle") == "spot", image_id=raw.get("ImageId"), key_name=raw.get("KeyName"),
            security_groups=tuple(g["GroupId"] for g in raw.get("SecurityGroups") or
                                  # (moto lists a launch's network interface groups there only)
                                  next(iter(raw.get("NetworkInterfaces") or []), {}).get("Groups", [])),
            lab=tags.lab_of(_tags(raw)),
            state_reason=raw.get("StateReason", {}).get("Message") or raw.get("StateTransitionReason") or None,
            node=tags.node_of(_tags(raw)))

    def find_instances(self, lab: str | None, live_only: bool = True) -> list[Instance]:
        filters = tags.lab_filter(lab)
        if live_only:
            filters = filters + [{"Name": "instance-state-name", "Values": LIVE_STATES}]
        found = []
        with translated("ec2:DescribeInstances"):
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for r in page["Reservations"]:
                    found += [self._instance(i) for i in r["Instances"]]
        return found

    def _describe_instance(self, instance_id: str) -> Instance:
        with translated("ec2:DescribeInstances"):
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return self._instance(reservations[0]["Instances"][0])

    # ------------------------------------------------------------------ making

    def key_name(self, lab: str) -> str:
        """The lab's key pair name: tflab-<lab>, within CreateKeyPair's limit (infra/limits.py)."""
        return limits.require(limits.KEY_NAME, limits.fit(limits.KEY_NAME, f"tflab-{lab}"))

    def create_key_pair(self, lab: str, created: Created, own_fingerprint: str | None = None) -> str:
        """Make the lab's key pair, which is also the lab's claim: two `up`s of one lab at once (from two
        machines, which no local lock sees) cannot both make it, as key pair names are unique in a region
        (CreateKeyPair answers InvalidKeyPair.Duplicate). The claim comes before anything else is made, so
        the `up` that loses has launched nothing and removes nothing (a LabBusy error).

        Not a RunInstances ClientToken derived from the lab's name: EC2 keeps a token after its instances
        are terminated and answers a repeated one with those instances (docs: "Ensuring idempotency in
        Amazon EC2 API requests"), so an `up` after a `down` would get the terminated lab back. Not a tag
        checked after launch: both racers would launch (and bill) before one terminated its own.

        A key pair older than CLAIM_STALE_SECONDS with no live instance is what a half-done `up` left (its
        private key is gone): it is deleted by its KeyPairId, never by name, so that a racer's fresh key
        pair of the same name is never deleted, and the claim is tried once more. Its age is measured on AWS's
        clock: the Date header of the DescribeKeyPairs answer against its CreateTime (this machine's clock may be
        up to 15 minutes off and still be let in); without that header, on this machine's clock with 17 minutes
        more (CLOCK_SKEW_ALLOWED_SECONDS). A key pair whose KeyFingerprint is own_fingerprint (the lab's private
        key on this machine: an `up` from here left it, after Ctrl-C or --keep-on-failure) is this machine's
        own, whatever its age: the caller holds the lab's local lock, so no `up` from here is under way; it
        is deleted by its id likewise. Nothing is deleted that does not carry the lab's tag."""
        name = self.key_name(lab)
        for attempt in range(2):
            try:
                with translated("ec2:CreateKeyPair"):
                    response = self.ec2.create_key_pair(KeyName=name, KeyType="ed25519",
                                                        TagSpecifications=tags.tag_specifications(lab, "key-pair"))
            except CloudError as exc:
                if exc.code != "InvalidKeyPair.Duplicate":
                    raise
                holder, aws_now = self._key_pair(name)
                if holder is None and attempt == 0:  # removed in between: try again
                    continue
                if holder is not None and tags.lab_of(_tags(holder)) != lab:  # not this lab's: never touched
                    raise InputError(f"a key pair named {name} exists in {self.region} and is not tflab's lab "
                                     f"'{lab}' (it has no tflab:lab={lab} tag); tflab leaves it alone",
                                     hint=f"use another --name, or if {name} is not needed, delete it yourself "
                                          f"(`aws ec2 delete-key-pair --key-name {name} --region {self.region}`)")
                made = holder.get("CreateTime") if holder else None
                if isinstance(made, datetime) and made.tzinfo is None:
                    made = made.replace(tzinfo=timezone.utc)
                if not isinstance(made, datetime):
                    age, limit = None, CLAIM_STALE_SECONDS
                elif aws_now is not None:
                    age, limit = (aws_now - made).total_seconds(), CLAIM_STALE_SECONDS
                else:
                    age = (datetime.now(timezone.utc) - made).total_seconds()
                    limit = CLAIM_STALE_SECONDS + CLOCK_SKEW_ALLOWED_SECONDS
                mine = bool(holder and own_fingerprint and
                            same_fingerprint(holder.get("KeyFingerprint"), own_fingerprint))
                stale = (mine or (age is not None and age > limit)) and not self.find_instances(lab)
                when = made.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if made else "an unknown time"
                if stale and attempt == 0 and holder.get("KeyPairId"):
                    log.info("key pair %s (%s) made %s by %s: deleting it", name, holder["KeyPairId"], when,
                             "an earlier up from this machine" if mine else "a half-done up")
                    with translated("ec2:DeleteKeyPair"):
                        self.ec2.delete_key_pair(KeyPairId=holder["KeyPairId"])
                    continue
                raise LabBusy(lab, self.region, name, when, stale) from exc
            created.key_pair = name
            return response["KeyMaterial"]
        raise AssertionError("unreachable")  # pragma: no cover

    def _key_pair(self, name: str) -> tuple[dict | None, datetime | None]:
        """The key pair of that name (or None), and AWS's time when it answered (its Date header, or None)."""
        try:
            with translated("ec2:DescribeKeyPairs"):
                answer = self.ec2.describe_key_pairs(KeyNames=[name])
        except CloudError as exc:
            if exc.code == "InvalidKeyPair.NotFound":
                return None, None
            raise
        pairs = answer.get("KeyPairs") or []
        return (pairs[0] if pairs else None), aws_date(answer)

    def _vpc_for(self, subnet_id: str | None) -> str:
        if subnet_id:
            with translated("ec2:DescribeSubnets"):
                subnets = self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
            return subnets[0]["VpcId"]
        with translated("ec2:DescribeVpcs"):
            vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise InputError(f"there is no default VPC in {self.region}", hint="pass --subnet-id of a public subnet")
        return vpcs[0]["VpcId"]

    def ensure_security_group(self, lab: str, ssh_cidr: str, subnet_id: str | None, created: Created,
                              members: bool = False) -> str:
        vpc = self._vpc_for(subnet_id)
        with translated("ec2:DescribeSecurityGroups"):
            groups = self.ec2.describe_security_groups(
                Filters=tags.lab_filter(lab) + [{"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        if groups:
            group_id = groups[0]["GroupId"]
        else:
            # A fresh suffix each time: names are unique per VPC, and one from an old lab may linger.
            name = limits.fit(limits.GROUP_NAME, f"tflab-{lab}-{uuid.uuid4().hex[:8]}")
            description = limits.fit(limits.GROUP_DESCRIPTION, f"tflab lab {lab}: SSH from one address only")
            with translated("ec2:CreateSecurityGroup"):
                group_id = self.ec2.create_security_group(
                    GroupName=limits.require(limits.GROUP_NAME, name), VpcId=vpc,
                    Description=limits.require(limits.GROUP_DESCRIPTION, description),
                    TagSpecifications=tags.tag_specifications(lab, "security-group"))["GroupId"]
            created.security_group = group_id
        rules = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                  "IpRanges": [{"CidrIp": ssh_cidr, "Description": RULE_DESCRIPTION}]}]
        if members:  # TF_CONFIG's ports, and the collectives' own (NCCL opens more): every protocol and port
            rules.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id,
                                                                    "Description": MEMBERS_DESCRIPTION}]})
        for rule in rules:  # one call each: a rule already there (a second `up`) does not stop the other
            try:
                with translated("ec2:AuthorizeSecurityGroupIngress"):
                    self.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[rule])
            except CloudError as exc:
                if exc.code != "InvalidPermission.Duplicate":
                    raise
        return group_id

    def ensure_placement_group(self, lab: str, created: Created) -> str:
        groups = self._lab_placement_groups(lab)
        if groups:
            return groups[0]
        name = limits.require(limits.PLACEMENT_GROUP_NAME,
                              limits.fit(limits.PLACEMENT_GROUP_NAME, f"tflab-{lab}-{uuid.uuid4().hex[:8]}"))
        with translated("ec2:CreatePlacementGroup"):
            self.ec2.create_placement_group(GroupName=name, Strategy="cluster",
                                            TagSpecifications=tags.tag_specifications(lab, "placement-group"))
        created.placement_group = name
        return name

    def _lab_placement_groups(self, lab: str) -> list[str]:
        with translated("ec2:DescribePlacementGroups"):
            found = self.ec2.describe_placement_groups(Filters=tags.lab_filter(lab))["PlacementGroups"]
        return [g["GroupName"] for g in found if g.get("State") not in ("deleting", "deleted")]  # on their way out

    def _subnets(self, spec: LaunchSpec) -> list[tuple[str | None, str | None]]:
        """(subnet, zone) pairs to try in turn: the given subnet, or the default subnet of each zone offering the type."""
        if spec.subnet_id:
            return [(spec.subnet_id, None)]
        with translated("ec2:DescribeInstanceTypeOfferings"):
            offered = {o["Location"] for o in self.ec2.describe_instance_type_offerings(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": [spec.instance_type]}])["InstanceTypeOfferings"]}
        with translated("ec2:DescribeSubnets"):
            subnets = self.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        pairs = sorted((s["AvailabilityZone"], s["SubnetId"]) for s in subnets
                       if not offered or s["AvailabilityZone"] in offered)
        if not pairs:
            if offered or not subnets:
                raise CapacityError(spec.instance_type, self.region, [])
        return [(subnet, zone) for zone, subnet in pairs] or [(None, None)]

    def launch(self, spec: LaunchSpec, image: Image, security_group: str, key_name: str, created: Created,
               progress: Progress, placement_group: str | None = None) -> list[Instance]:
        # MinCount = MaxCount: EC2 launches them all, or none (InsufficientInstanceCapacity), in one zone.
        params = {
            "ImageId": image.id, "InstanceType": spec.instance_type, "MinCount": spec.nodes, "MaxCount": spec.nodes,
            "InstanceInitiatedShutdownBehavior": spec.shutdown_behavior,
            "KeyName": key_name,
            "TagSpecifications": tags.tag_specifications(spec.lab, "instance", "volume"),
            "BlockDeviceMappings": [{"DeviceName": image.root_device, "Ebs": {
                "VolumeSize": spec.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
        }
        if spec.user_data:
            params["UserData"] = limits.require(limits.USER_DATA, spec.user_data,
                                                hint="the user data tflab builds is too long: please report it")
        if placement_group:
            params["Placement"] = {"GroupName": placement_group}
        if spec.spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        tried: list[str] = []
        context = {"instance_type": spec.instance_type, "region": self.region, "spot": spec.spot, "image": image.id,
                   "vcpus": self._launch_vcpus(spec)}
        for subnet, zone in self._subnets(spec):
            attempt = dict(params, ClientToken=limits.client_token(spec.lab))  # fresh per attempt, <= 64 chars
            # The public address asked for at launch, as SkyPilot does (sky/provision/aws/instance.py,
            # _create_instances): a subnet that does not auto-assign one (every non-default subnet, unless
            # MapPublicIpOnLaunch is set) would leave the lab unreachable. AssociatePublicIpAddress exists only
            # on a network interface, and then the subnet and security groups move there too (RunInstances API
            # Reference, SecurityGroupIds: "If you specify a network interface, you must specify any security
            # groups as part of the network interface instead of using this parameter"; SubnetId likewise).
            interface = {"DeviceIndex": 0, "Groups": [security_group], "DeleteOnTermination": True,
                         "AssociatePublicIpAddress": spec.public_address}
            if subnet:
                interface["SubnetId"] = subnet
            attempt["NetworkInterfaces"] = [interface]
            where = zone or subnet or self.region
            progress(f"launching {spec.nodes} x {spec.instance_type} in {where}" if spec.nodes > 1 else
                     f"launching {spec.instance_type} in {where}")
            try:
                with translated("ec2:RunInstances", zones=tried + [where], **context):
                    launched = self.ec2.run_instances(**attempt)["Instances"]
            except CapacityError:
                tried.append(where)
                log.info("no capacity for %d x %s in %s", spec.nodes, spec.instance_type, where)
                continue
            launched = sorted(launched, key=lambda raw: raw.get("AmiLaunchIndex", 0))
            created.instances.extend(raw["InstanceId"] for raw in launched)
            if spec.nodes > 1:  # each node's index: the chief is 0
                for index, raw in enumerate(launched):
                    node_tag = [{"Key": tags.NODE_TAG, "Value": str(index)}]
                    with translated("ec2:CreateTags"):
                        self.ec2.create_tags(Resources=[raw["InstanceId"]], Tags=node_tag)
                    raw["Tags"] = _tags(raw) + node_tag
            return [self._instance(raw) for raw in launched]
        raise CapacityError(spec.instance_type, self.region, tried)

    def _launch_vcpus(self, spec: LaunchSpec) -> int:
        """The vCPUs the quota must hold for this launch: check_quota's count (the nodes' and what already runs),
        else the nodes' own; 0 where the type cannot be read (the refusal then says so without a number)."""
        known = self._vcpus_needed.get((spec.instance_type, spec.spot, spec.nodes))
        if known is not None:
            return known
        try:
            return self.describe_type(spec.instance_type).vcpus * spec.nodes
        except InfraError as exc:
            log.info("could not read the vCPUs of %s: %s", spec.instance_type, exc)
            return 0

    def start(self, instance_id: str) -> None:
        with translated("ec2:StartInstances"):
            self.ec2.start_instances(InstanceIds=[instance_id])

    # ------------------------------------------------------------------ waiting

    def _poll(self, what: str, timeout: float, check, progress: Progress):
        deadline = time.monotonic() + timeout
        while True:
            value, status = check()
            if value is not None:
                return value
            progress(f"{what} ({status})")
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"gave up waiting for {what} after {timeout:.0f} s (last: {status})",
                                  hint="`tflab status` shows where it is; `tflab down` removes it")
            time.sleep(self.poll)

    def wait_running(self, instance_id: str, timeout: float, progress: Progress, public: bool = True) -> Instance:
        def check():
            inst = self._describe_instance(instance_id)
            if not inst.coming_up:
                raise CloudError(f"instance {instance_id} is {inst.state} instead of running",
                                 code="InstanceStopped",
                                 hint="spot capacity may have been reclaimed; `tflab down`, then try again")
            address = inst.public_ip if public else inst.private_ip
            if inst.state == "running" and address:
                return inst, inst.state
            return None, inst.state if inst.state != "running" else \
                f"running, no {'public' if public else 'private'} address yet"

        return self._poll(f"instance {instance_id} to run", timeout, check, progress)

    def subnet_reaches_internet(self, subnet_id: str) -> bool | None:
        """Whether the subnet routes 0.0.0.0/0 to an internet gateway (its own route table, else its VPC's
        main one: "Route tables", Amazon VPC User Guide): only there does a public address reach the
        instance. None where the route tables may not be read (ec2:DescribeRouteTables denied).
        SkyPilot decides a subnet is public the same way (sky/provision/aws/config.py, _is_subnet_public)."""
        try:
            with translated("ec2:DescribeSubnets"):
                subnets = self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
            vpc = subnets[0]["VpcId"]
            with translated("ec2:DescribeRouteTables"):
                tables = self.ec2.describe_route_tables(
                    Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])["RouteTables"]
                if not tables:  # no table of its own: the VPC's main route table applies
                    tables = self.ec2.describe_route_tables(
                        Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                 {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
        except PermissionDenied as exc:
            log.info("cannot read the route tables of %s: %s", subnet_id, exc)
            return None
        return any(route.get("DestinationCidrBlock") == "0.0.0.0/0" and
                   str(route.get("GatewayId", "")).startswith("igw-") and route.get("State", "active") == "active"
                   for table in tables for route in table.get("Routes", []))

    def host_key_fingerprints(self, instance_id: str, timeout: float, progress: Progress) -> dict[str, str]:
        def check():
            with translated("ec2:GetConsoleOutput"):
                output = self.ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
            found = parse_fingerprints(output)
            return (found or None), "not in the console output yet"

        try:
            return self._poll("the SSH host key fingerprints in the console output", timeout, check, progress)
        except (WaitTimeout, CloudError) as exc:  # the lab is fine; SSH reads them later (a denial: raised, said)
            log.info("no host key fingerprints for %s: %s", instance_id, exc)
            return {}

    # ------------------------------------------------------------------ removing

    def teardown(self, lab: str, progress: Progress, timeout: float = 900.0) -> list[str]:
        removed: list[str] = []
        instances = [i for i in self.find_instances(lab, live_only=False) if i.state != "terminated"]
        ids = [i.id for i in instances]
        if ids:
            progress(f"terminating {', '.join(ids)}")
            with translated("ec2:TerminateInstances"):
                self.ec2.terminate_instances(InstanceIds=ids)

            def all_terminated():
                states = {i.id: i.state for i in self.find_instances(lab, live_only=False) if i.id in ids}
                left = {k: v for k, v in states.items() if v != "terminated"}
                return (True if not left else None), ", ".join(f"{k} {v}" for k, v in left.items())

            self._poll("the instances to terminate", timeout, all_terminated, progress)
            removed += [f"instance {i}" for i in ids]
        # The look-ups below that `up` never made may be denied: the instances are gone by now, and what is
        # left bills nothing (key pairs, placement groups) or went with them (volumes: DeleteOnTermination).
        volumes, _ = self._optional_lookup(lambda: self._lab_volumes(lab), "volumes")
        for v in volumes or []:  # volumes are deleted with their instance; any left over go now
            if v.get("State") in ("available", "error"):
                with translated("ec2:DeleteVolume"):
                    self.ec2.delete_volume(VolumeId=v["VolumeId"])
                removed.append(f"volume {v['VolumeId']}")
        with translated("ec2:DescribeSecurityGroups"):
            groups = self.ec2.describe_security_groups(Filters=tags.lab_filter(lab))["SecurityGroups"]
        for g in groups:
            self._delete_group(g["GroupId"], timeout=min(timeout, 300), progress=progress)
            removed.append(f"security group {g['GroupId']}")
        # Only key pairs listed with the lab's tag: where the listing is denied, none is deleted (a key pair of
        # the lab's name may not be tflab's), and `down` says they were not checked (leftovers' unchecked).
        pairs, _ = self._optional_lookup(lambda: self._lab_key_pairs(lab), "key pairs")
        for name in pairs or []:
            with translated("ec2:DeleteKeyPair"):
                self.ec2.delete_key_pair(KeyName=name)
            removed.append(f"key pair {name}")
        placement, _ = self._optional_lookup(lambda: self._lab_placement_groups(lab), "placement groups")
        for name in placement or []:  # empty now: its instances are terminated
            try:
                with translated("ec2:DeletePlacementGroup"):
                    self.ec2.delete_placement_group(GroupName=name)
            except CloudError as exc:
                if exc.code != "InvalidPlacementGroup.Unknown":
                    raise
            removed.append(f"placement group {name}")
        return removed

    def remove_created(self, created: Created, progress: Progress, timeout: float = 900.0) -> list[str]:
        """Remove what one `up` made (its Created record), and nothing else: another `up` of the lab may have
        made the rest. Instances first (their volumes go with them), then the group, the placement group, the
        key pair."""
        removed: list[str] = []
        ids = list(created.instances)
        if ids:
            progress(f"terminating {', '.join(ids)}")
            with translated("ec2:TerminateInstances"):
                self.ec2.terminate_instances(InstanceIds=ids)

            def all_terminated():
                with translated("ec2:DescribeInstances"):
                    reservations = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
                left = {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]
                        if i["State"]["Name"] != "terminated"}
                return (True if not left else None), ", ".join(f"{k} {v}" for k, v in left.items())

            self._poll("the instances to terminate", timeout, all_terminated, progress)
            removed += [f"instance {i}" for i in ids]
        if created.security_group:
            self._delete_group(created.security_group, timeout=min(timeout, 300), progress=progress)
            removed.append(f"security group {created.security_group}")
        if created.placement_group:
            try:
                with translated("ec2:DeletePlacementGroup"):
                    self.ec2.delete_placement_group(GroupName=created.placement_group)
            except CloudError as exc:
                if exc.code != "InvalidPlacementGroup.Unknown":
                    raise
            removed.append(f"placement group {created.placement_group}")
        if created.key_pair:  # made by this `up` (CreateKeyPair answered it): the name is its own
            with translated("ec2:DeleteKeyPair"):
                self.ec2.delete_key_pair(KeyName=created.key_pair)
            removed.append(f"key pair {created.key_pair}")
        return removed

    def _delete_group(self, group_id: str, timeout: float, progress: Progress) -> None:
        """Delete a security group, retrying while AWS still sees it in use (DependencyViolation)."""
        def attempt():
            try:
                with translated("ec2:DeleteSecurityGroup"):
                    self.ec2.delete_security_group(GroupId=group_id)
            except CloudError as exc:
                if exc.code == "DependencyViolation":
                    return None, "still in use by a terminating instance"
                if exc.code == "InvalidGroup.NotFound":
                    return True, "gone"
                raise
            return True, "deleted"

        self._poll(f"security group {group_id} to be deletable", timeout, attempt, progress)

    def _optional_lookup(self, lookup, what: str):
        """(what lookup() found, None), or (None, a note) where the look-up is denied."""
        try:
            return lookup(), None
        except PermissionDenied as exc:
            log.info("could not look for the lab's %s: %s", what, exc)
            return None, f"{what} not checked (no permission for {exc.action})"

    def _lab_volumes(self, lab: str) -> list[dict]:
        with translated("ec2:DescribeVolumes"):
            return self.ec2.describe_volumes(Filters=tags.lab_filter(lab))["Volumes"]

    def _lab_key_pairs(self, lab: str) -> list[str]:
        with translated("ec2:DescribeKeyPairs"):
            pairs = self.ec2.describe_key_pairs(Filters=tags.lab_filter(lab))["KeyPairs"]
        return [p["KeyName"] for p in pairs]

    def volume_gb(self, lab: str) -> int:
        with translated("ec2:DescribeVolumes"):
            return sum(v.get("Size", 0) for v in self.ec2.describe_volumes(Filters=tags.lab_filter(lab))["Volumes"])

    def spot_price(self, instance_type: str, zone: str) -> float | None:
        """The newest price of describe_spot_price_history for Linux/UNIX in the zone."""
        import datetime

        with translated("ec2:DescribeSpotPriceHistory"):
            history = self.ec2.describe_spot_price_history(
                InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"], AvailabilityZone=zone,
                StartTime=datetime.datetime.now(datetime.timezone.utc), MaxResults=10)["SpotPriceHistory"]
        prices = sorted(history, key=lambda h: h.get("Timestamp") or 0, reverse=True)
        return float(prices[0]["SpotPrice"]) if prices else None

    def leftovers(self, lab: str) -> Leftovers:
        instances = tuple(i.id for i in self.find_instances(lab, live_only=False) if i.state != "terminated")
        with translated("ec2:DescribeSecurityGroups"):
            groups = tuple(g["GroupId"] for g in
                           self.ec2.describe_security_groups(Filters=tags.lab_filter(lab))["SecurityGroups"])
        volumes, no_volumes = self._optional_lookup(lambda: self._lab_volumes(lab), "volumes")
        pairs, no_pairs = self._optional_lookup(lambda: self._lab_key_pairs(lab), "key pairs")
        placement, no_placement = self._optional_lookup(lambda: self._lab_placement_groups(lab), "placement groups")
        return Leftovers(instances, tuple(v["VolumeId"] for v in volumes or []), groups, tuple(pairs or ()),
                         tuple(placement or ()), unchecked=tuple(n for n in (no_volumes, no_pairs, no_placement) if n))

