"""AWS's documented limits on the values tflab sends, in one table, and the helpers that keep
tflab's values within them.

moto does not enforce these limits; real AWS refuses a request that breaks one (a 26-character lab
name once made RunInstances' ClientToken 70 characters long). Every value tflab derives from the lab
name or from the user's input goes through `fit` (names that may be shortened) and `require` (a last
check before the call), and tests/infra/test_limits.py checks the requests themselves.

| value                                | limit                                      | source |
|--------------------------------------|--------------------------------------------|--------|
| RunInstances ClientToken             | 64 ASCII characters                        | [1] |
| CreateKeyPair KeyName                | 255 ASCII characters                       | [2] |
| CreateSecurityGroup GroupName        | 255 characters of SG_CHARS, not "sg-..."   | [3] |
| CreateSecurityGroup Description      | 255 characters of SG_CHARS                 | [3] |
| IpRange Description (a rule's)       | 255 characters of SG_CHARS                 | [4] |
| tag key                              | 127 characters, not "aws:..."              | [5] (the tagging guide [6] says 128; EC2's API reference says 127: the smaller) |
| tag value                            | 256 characters (and not "aws:...", [6])    | [5], [6] |
| SSM parameter name                   | 1011 characters of a-zA-Z0-9_.-/ (":" for a version, label or ARN) | [7] |
| RunInstances UserData                | 16 KB (16384 bytes) before base64          | [8] |

SG_CHARS: a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*   (no quote, no apostrophe)

[1] RunInstances ClientToken, "Constraints: Maximum 64 ASCII characters":
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html (as generated into
    https://docs.aws.amazon.com/sdk-for-kotlin/api/latest/ec2/aws.sdk.kotlin.services.ec2.model/-run-instances-request/client-token.html)
[2] CreateKeyPair KeyName, "Constraints: Up to 255 ASCII characters":
    https://docs.aws.amazon.com/sdkfornet/v4/apidocs/items/EC2/MCreateKeyPairRequestctorString.html
[3] CreateSecurityGroup GroupName ("Up to 255 characters in length. Can't start with sg-") and Description
    ("Up to 255 characters in length"), both "Valid characters: a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*":
    https://docs.aws.amazon.com/sdkfornet/v4/apidocs/items/EC2/MCreateSecurityGroupRequestctorStringString.html
[4] IpRange Description: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpRange.html
[5] EC2 Tag, "Tag keys ... accept a maximum of 127 Unicode characters. May not begin with aws:", values
    "a maximum of 256 Unicode characters": https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Tag.html
[6] Tag restrictions (128 / 256 Unicode characters; aws: is reserved as a prefix of keys and values):
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions
[7] SSM parameter names: "a-zA-Z0-9_.-" and "/" for hierarchies; of the reported 2048 characters, 1037
    are reserved, so a name may have 1011:
    https://docs.aws.amazon.com/sdk-for-kotlin/api/latest/ssm/aws.sdk.kotlin.services.ssm.model/-put-parameter-request/name.html
[8] "User data is limited to 16 KB, in raw form, before it is base64-encoded":
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from infra.errors import InputError

SG_CHARS = r"a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*"


@dataclass(frozen=True)
class Limit:
    """What AWS accepts for one kind of value."""

    what: str
    max_len: int
    unit: str = "characters"  # "characters", "ASCII characters" or "bytes" (UTF-8)
    allowed: str | None = None  # a regex character class (without brackets) of the allowed characters
    reserved_prefixes: tuple[str, ...] = ()  # refused at the start (compared case-insensitively)
    min_len: int = 1

    def length(self, value: str | bytes) -> int:
        if isinstance(value, bytes):
            return len(value)
        return len(value.encode()) if self.unit == "bytes" else len(value)

    def problems(self, value: str) -> list[str]:
        """Why AWS would refuse the value (empty when it would not)."""
        found = []
        if self.length(value) > self.max_len:
            found.append(f"longer than {self.max_len} {self.unit} ({self.length(value)})")
        if self.length(value) < self.min_len:
            found.append("empty")
        if self.unit == "ASCII characters" and not value.isascii():
            found.append("not ASCII")
        if self.allowed is not None:
            bad = sorted(set(re.sub(f"[{self.allowed}]", "", value)))
            if bad:
                found.append(f"has characters AWS does not accept here ({''.join(bad)!r})")
        for prefix in self.reserved_prefixes:
            if value.lower().startswith(prefix.lower()):
                found.append(f"starts with the reserved {prefix!r}")
        return found


CLIENT_TOKEN = Limit("the RunInstances client token", 64, "ASCII characters")
KEY_NAME = Limit("the key pair name", 255, "ASCII characters")
GROUP_NAME = Limit("the security group name", 255, allowed=SG_CHARS, reserved_prefixes=("sg-",))
GROUP_DESCRIPTION = Limit("the security group description", 255, allowed=SG_CHARS)
RULE_DESCRIPTION = Limit("the security group rule description", 255, allowed=SG_CHARS, min_len=0)
TAG_KEY = Limit("a tag key", 127, reserved_prefixes=("aws:",))
TAG_VALUE = Limit("a tag value", 256, reserved_prefixes=("aws:",), min_len=0)
SSM_PARAMETER_NAME = Limit("the SSM parameter name", 1011, allowed=r"a-zA-Z0-9_.\-/:")
USER_DATA = Limit("the instance user data", 16 * 1024, "bytes", min_len=0)
# CreatePlacementGroup, GroupName: "Constraints: Up to 255 ASCII characters" (EC2 API Reference).
PLACEMENT_GROUP_NAME = Limit("the placement group name", 255, "ASCII characters")

ALL = (CLIENT_TOKEN, KEY_NAME, GROUP_NAME, GROUP_DESCRIPTION, RULE_DESCRIPTION, TAG_KEY, TAG_VALUE,
       SSM_PARAMETER_NAME, USER_DATA, PLACEMENT_GROUP_NAME)


def fit(limit: Limit, value: str) -> str:
    """The value, or when it is too long a shortened one that stays distinct: its start, '-' and 8 hex
    digits of its SHA-256 (the same value always gives the same result)."""
    if limit.length(value) <= limit.max_len:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    keep = value
    while limit.length(keep) + 9 > limit.max_len:
        keep = keep[:-1]
    return f"{keep}-{digest}"


def require(limit: Limit, value: str, hint: str = "check the options given to tflab") -> str:
    """The value if AWS accepts it as `limit`; else an InputError before anything is sent."""
    problems = limit.problems(value)
    if problems:
        raise InputError(f"{limit.what} {value[:80]!r} cannot be sent to AWS: {'; '.join(problems)}", hint=hint)
    return value


def client_token(lab: str) -> str:
    """A fresh idempotency token for one RunInstances attempt, within 64 ASCII characters: the lab's
    name (shortened if need be) for whoever reads CloudTrail, and at least 96 random bits."""
    prefix = fit(Limit("", CLIENT_TOKEN.max_len - 25), f"tflab-{lab}".encode("ascii", "replace").decode()) + "-"
    return require(CLIENT_TOKEN, prefix + uuid.uuid4().hex[: CLIENT_TOKEN.max_len - len(prefix)])
