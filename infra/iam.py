"""The least-privilege IAM policy tflab needs (infra/iam-policy.json), whole or for the labs one makes.

Every action tflab calls, and no other (tests/e2e/test_iam_policy.py runs the CLI as a user holding exactly
this policy, then without each action in turn). sts:GetCallerIdentity needs no permission ("No permissions
are required to perform this operation", STS API Reference). Its statements, by Sid:

- TflabEveryLab: `up`, `status`, `list`, `down` of any lab (the tags on create need ec2:CreateTags too);
- TflabSayWhichPermissionIsMissing: where EC2's denial names no action, its encoded message is decoded
  (sts:DecodeAuthorizationMessage) so that the error names the one missing (else: the call's own);
- TflabLabsOfSeveralNodes: `up --nodes N` (N > 1) makes and `down` removes a cluster placement group;
- TflabSpotPrice: `status` and `list` of a spot lab read the spot price (without it: the on-demand price);
- TflabSpotServiceLinkedRoleOnce: the first `up --spot` of an account creates the Spot service-linked
  role (AuthFailure.ServiceLinkedRoleCreationNotPermitted without it; or create it once:
  `aws iam create-service-linked-role --aws-service-name spot.amazonaws.com`).
"""

from __future__ import annotations

import json
from pathlib import Path

POLICY_PATH = Path(__file__).with_name("iam-policy.json")
NODES_SIDS = frozenset({"TflabLabsOfSeveralNodes"})
SPOT_SIDS = frozenset({"TflabSpotPrice", "TflabSpotServiceLinkedRoleOnce"})


def iam_policy(nodes: bool = True, spot: bool = True) -> dict:
    """The policy document: everything, or without the statements labs of several nodes (nodes=False)
    or spot labs (spot=False) need."""
    policy = json.loads(POLICY_PATH.read_text())
    left_out = (set() if nodes else NODES_SIDS) | (set() if spot else SPOT_SIDS)
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] not in left_out]
    return policy


def actions(policy: dict) -> set[str]:
    """Every action the policy allows."""
    found: set[str] = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        found |= {listed} if isinstance(listed, str) else set(listed)
    return found
