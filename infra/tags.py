"""The lab's tags and the filters that find its resources: the only place that knows the keys."""

from __future__ import annotations

from infra.limits import TAG_KEY, TAG_VALUE, fit, require

LAB_TAG = "tflab:lab"
MANAGED_TAG = "tflab:managed-by"
MANAGED_VALUE = "tflab"
NODE_TAG = "tflab:node"  # a lab's instances: each one's index (0 is the chief)


def lab_tags(lab: str) -> list[dict]:
    """The tags every resource of the lab carries, each within AWS's tag limits (infra/limits.py)."""
    tags = [{"Key": LAB_TAG, "Value": lab}, {"Key": "Name", "Value": fit(TAG_VALUE, f"tflab-{lab}")},
            {"Key": MANAGED_TAG, "Value": MANAGED_VALUE}]
    for tag in tags:
        require(TAG_KEY, tag["Key"])
        require(TAG_VALUE, tag["Value"], hint="choose another lab name (--name)")
    return tags


def tag_specifications(lab: str, *resource_types: str) -> list[dict]:
    """TagSpecifications for a create call."""
    return [{"ResourceType": rt, "Tags": lab_tags(lab)} for rt in resource_types]


def lab_filter(lab: str | None) -> list[dict]:
    """Filters for one lab's resources, or for every tflab lab when lab is None."""
    if lab is None:
        return [{"Name": "tag-key", "Values": [LAB_TAG]}]
    return [{"Name": f"tag:{LAB_TAG}", "Values": [lab]}]


def node_of(tags: list[dict] | None) -> int | None:
    """The node index from an instance's tags (None: not a node of a lab of several)."""
    for tag in tags or []:
        if tag.get("Key") == NODE_TAG and str(tag.get("Value", "")).isdigit():
            return int(tag["Value"])
    return None


def lab_of(tags: list[dict] | None) -> str | None:
    """The lab name from a resource's tags."""
    for tag in tags or []:
        if tag.get("Key") == LAB_TAG:
            return tag.get("Value")
    return None
