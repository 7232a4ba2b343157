"""EC2 placement groups for moto, which does not implement them (its CreatePlacementGroup raises
NotImplementedError): three actions added to moto's EC2 responses, so that both the in-process moto and
the moto server of the CLI tests answer them. Added only where moto lacks them (a newer moto's own win).

Their behaviour follows the EC2 API Reference:
- CreatePlacementGroup: GroupName "must be unique within the scope of your account for the region",
  "up to 255 ASCII characters"; a taken name is InvalidPlacementGroup.Duplicate; TagSpecifications tag it.
- DescribePlacementGroups: Filters tag:<key>, tag-key, group-name, strategy, state.
- DeletePlacementGroup: an unknown group is InvalidPlacementGroup.Unknown; "you must terminate all
  instances in the placement group before you can delete it" (else InvalidPlacementGroup.InUse).
- RunInstances with Placement.GroupName: an unknown group is InvalidPlacementGroup.Unknown. Which
  instances went into a group is recorded (moto's own answer leaves Placement.GroupName empty).
"""

from __future__ import annotations

import uuid
from collections import defaultdict

GROUPS: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)  # (account, region) -> name -> group
MEMBERS: dict[tuple[str, str, str], list[str]] = defaultdict(list)  # (account, region, name) -> instance ids


def install() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses import EC2Response

    if getattr(EC2Response, "_tflab_placement", False) or hasattr(EC2Response, "create_placement_group"):
        return  # added already, or moto has its own (its mixins included)

    def where(self) -> tuple[str, str]:
        return self.current_account, self.region

    def create_placement_group(self):
        name = self._get_param("GroupName") or ""
        if not name or len(name) > 255 or not name.isascii():
            raise EC2ClientError("InvalidParameterValue", f"Invalid value '{name}' for GroupName")
        groups = GROUPS[where(self)]
        if name in groups:
            raise EC2ClientError("InvalidPlacementGroup.Duplicate", f"The placement group '{name}' already exists.")
        tags = self._parse_tag_specification("placement-group").get("placement-group", {})
        groups[name] = {"GroupName": name, "State": "available", "Strategy": self._get_param("Strategy") or "cluster",
                        "GroupId": f"pg-{uuid.uuid4().hex[:17]}",
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        return ActionResult({"PlacementGroup": groups[name]})

    def describe_placement_groups(self):
        found = list(GROUPS[where(self)].values())
        names = self._get_param("GroupNames", [])
        if names:
            found = [g for g in found if g["GroupName"] in names]
        for key, values in self._filters_from_querystring().items():
            if key.startswith("tag:"):
                found = [g for g in found if any(t["Key"] == key[4:] and t["Value"] in values for t in g["Tags"])]
            elif key == "tag-key":
                found = [g for g in found if any(t["Key"] in values for t in g["Tags"])]
            elif key in ("group-name", "strategy", "state"):
                field = {"group-name": "GroupName", "strategy": "Strategy", "state": "State"}[key]
                found = [g for g in found if g[field] in values]
        return ActionResult({"PlacementGroups": found})

    def delete_placement_group(self):
        name = self._get_param("GroupName") or ""
        groups = GROUPS[where(self)]
        if name not in groups:
            raise EC2ClientError("InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        ids = MEMBERS[(*where(self), name)]
        live = [i.id for i in self.ec2_backend.all_instances() if i.id in ids and i.state != "terminated"]
        if live:
            raise EC2ClientError("InvalidPlacementGroup.InUse",
                                 f"The placement group '{name}' is in use and may not be deleted.")
        del groups[name]
        return ActionResult({})

    original_run = EC2Response.run_instances

    def run_instances(self):
        name = self._get_param("Placement.GroupName")
        if name and name not in GROUPS[where(self)]:
            raise EC2ClientError("InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        result = original_run(self)
        if name:
            MEMBERS[(*where(self), name)].extend(i.id for i in result.result.instances)
        return result

    EC2Response.create_placement_group = create_placement_group
    EC2Response.describe_placement_groups = describe_placement_groups
    EC2Response.delete_placement_group = delete_placement_group
    EC2Response.run_instances = run_instances
    EC2Response._tflab_placement = True


def reset() -> None:
    """Forget every group (moto's own state is reset per test by mock_aws)."""
    GROUPS.clear()
    MEMBERS.clear()
