"""A small bundled, dated table of on-demand prices for the instance types tflab offers: an estimate only.

Linux on-demand list prices, USD per hour. Used to print the hourly cost before launching and the
cost so far in `status` and `list`; a spot lab's own price is read from AWS (describe_spot_price_history).

Where the table has the region's own price it is used (g4dn.xlarge, g5.xlarge, g5.8xlarge, g6.12xlarge,
g6.16xlarge); elsewhere the us-east-1 price stands in and is said to be "estimated from us-east-1" (other
regions are mostly dearer: e.g. g4dn.xlarge is 0.526 in us-east-1, 0.587 in eu-west-1, 0.71 in ap-northeast-1).

Sources, checked on PRICES_CHECKED:
- the AWS Price List API (pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonEC2/...), as gathered
  per region in SkyPilot's catalog (github.com/skypilot-org/skypilot-catalog, catalogs/v7/aws/vms.csv);
- P4d and P5 after AWS's price cut of June 2025: "Announcing up to 45% price reduction for Amazon EC2
  NVIDIA GPU-accelerated instances" (aws.amazon.com/blogs/aws/, 2025-06-05): P5 about -44 % (98.32 ->
  55.04 in us-east-1), P4d about -33 % (32.77 -> 21.96). Catalog snapshots taken before the cut still
  list the old prices for every region, so outside us-east-1 these two are "estimated from us-east-1";
- public IPv4: since 2024-02-01 AWS charges $0.005 per hour for every public IPv4 address, attached or
  not ("New - AWS Public IPv4 Address Charge + Public IP Insights", AWS News Blog, 2023-07-28). A lab
  node has one (its auto-assigned public address) while it runs; a stopped instance gives it back;
- gp3 storage: $0.08 per GB-month in us-east-1 (a month is 730 hours in AWS's pricing).

P3 (and P2, G3) are not in the table: the Deep Learning Base OSS Nvidia Driver GPU AMIs, which `up`
launches, do not list them among their supported instances (their release notes' supported_ec2_instances:
G4dn, G5, G6, Gr6, G6e, G7, P4d, P4de, P5, P5e, P5en, P6-B200, P6-B300), so the lab's bootstrap would find
no working GPU and silently install the CPU build of TensorFlow. dlami_unsupported() names them.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_CHECKED = "2026-12-04"
REFERENCE_REGION = "us-east-1"

# us-east-1 (N. Virginia) Linux on-demand, USD per hour.
US_EAST_1 = {
    "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g4dn.4xlarge": 1.204, "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912, "g4dn.16xlarge": 4.352,
    "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.4xlarge": 1.624, "g5.8xlarge": 2.448, "g5.12xlarge": 5.672,
    "g6.xlarge": 0.805, "g6.2xlarge": 0.978, "g6.4xlarge": 1.323, "g6.12xlarge": 4.6016, "g6.16xlarge": 3.3968,
    "g6e.xlarge": 1.861,
    "p4d.24xlarge": 21.96, "p5.48xlarge": 55.04,  # after the June 2025 cut (see above)
    "t3.medium": 0.0416, "t3.large": 0.0832, "m5.large": 0.096,
}

# A region's own price where it is known (type -> region -> USD per hour); us-east-2 and us-west-2 mostly
# match us-east-1, the others do not.
BY_REGION = {
    "g4dn.xlarge": {
        "us-east-1": 0.526, "us-east-2": 0.526, "us-west-2": 0.526, "us-west-1": 0.631, "ca-central-1": 0.584,
        "eu-west-1": 0.587, "eu-west-2": 0.615, "eu-west-3": 0.615, "eu-central-1": 0.658, "eu-north-1": 0.558,
        "eu-south-1": 0.616, "me-south-1": 0.645, "ap-south-1": 0.579, "ap-northeast-1": 0.71,
        "ap-northeast-2": 0.647, "ap-northeast-3": 0.71, "ap-southeast-1": 0.736, "ap-southeast-2": 0.684,
    },
    "g5.xlarge": {
        "us-east-1": 1.006, "us-east-2": 1.006, "us-west-2": 1.006, "ca-central-1": 1.117, "eu-west-1": 1.123,
        "eu-west-2": 1.277, "eu-central-1": 1.258, "eu-north-1": 1.067, "me-central-1": 1.234, "ap-south-1": 1.208,
        "ap-northeast-1": 1.459, "ap-northeast-2": 1.237, "ap-southeast-2": 1.308, "ap-southeast-3": 1.408,
    },
    "g5.8xlarge": {
        "us-east-1": 2.448, "us-east-2": 2.448, "us-west-2": 2.448, "ca-central-1": 2.71811, "eu-west-1": 2.73271,
        "eu-west-2": 3.10745, "eu-central-1": 3.06122, "eu-north-1": 2.59644, "me-central-1": 3.00282,
        "ap-south-1": 2.93955, "ap-northeast-1": 3.55033, "ap-northeast-2": 3.01012, "ap-southeast-2": 3.18289,
        "ap-southeast-3": 3.42623,
    },
    "g6.12xlarge": {
        "us-east-1": 4.6016, "us-east-2": 4.6016, "us-west-2": 4.6016, "ca-central-1": 5.10933,
        "eu-central-1": 5.75429, "eu-north-1": 4.88062, "eu-west-2": 5.8412, "eu-west-3": 5.8412,
        "ap-south-1": 5.52558, "ap-northeast-1": 6.67369, "ap-northeast-2": 5.65823, "ap-southeast-2": 5.98299,
    },
    "g6.16xlarge": {
        "us-east-1": 3.3968, "us-east-2": 3.3968, "us-west-2": 3.3968, "ca-central-1": 3.7716,
        "eu-central-1": 4.24769, "eu-north-1": 3.60277, "eu-west-2": 4.31184, "eu-west-3": 4.31184,
        "ap-south-1": 4.07886, "ap-northeast-1": 4.92637, "ap-northeast-2": 4.17678, "ap-southeast-2": 4.41652,
    },
}

PUBLIC_IPV4_USD_PER_HOUR = 0.005
GP3_USD_PER_GB_HOUR = 0.08 / 730

# Instance families the Base OSS DLAMI does not support (see above): family -> what it has.
DLAMI_UNSUPPORTED = {"p2": "NVIDIA K80", "p3": "NVIDIA V100", "p3dn": "NVIDIA V100", "g3": "NVIDIA M60",
                     "g3s": "NVIDIA M60", "g4ad": "AMD Radeon Pro V520"}


@dataclass(frozen=True)
class Price:
    """An on-demand price per hour and where it comes from."""

    usd_per_hour: float
    region: str
    estimated: bool  # True when the region's own price is not in the table (us-east-1's stands in)

    @property
    def source(self) -> str:
        if self.estimated:
            return f"estimated from us-east-1, bundled list of {PRICES_CHECKED}"
        return f"{self.region} on-demand list price, bundled list of {PRICES_CHECKED}"


def on_demand(instance_type: str, region: str | None = None) -> Price | None:
    """The on-demand price of the type in the region, or None when the type is not in the table."""
    region = region or REFERENCE_REGION
    own = BY_REGION.get(instance_type, {}).get(region)
    if own is None and region == REFERENCE_REGION:
        own = US_EAST_1.get(instance_type)
    if own is not None:
        return Price(own, region, estimated=False)
    reference = US_EAST_1.get(instance_type)
    return Price(reference, region, estimated=True) if reference is not None else None


def hourly(instance_type: str, region: str | None = None) -> float | None:
    """The estimated on-demand price per hour (the region's own where known), or None when not in the table."""
    price = on_demand(instance_type, region)
    return price.usd_per_hour if price else None


def lab_hourly(instance_type: str, region: str | None, nodes: int = 1, public_ipv4: bool = True) -> float | None:
    """What a lab of `nodes` instances costs per hour while it runs: the instances and, with public_ipv4,
    one public IPv4 address each (the disk is counted apart)."""
    each = hourly(instance_type, region)
    if each is None:
        return None
    return nodes * (each + (PUBLIC_IPV4_USD_PER_HOUR if public_ipv4 else 0.0))


def dlami_unsupported(instance_type: str) -> str | None:
    """Why the Base OSS DLAMI cannot drive this type's GPU (e.g. "NVIDIA V100"), or None when it can or
    the type is not known to be unsupported."""
    return DLAMI_UNSUPPORTED.get(instance_type.split(".", 1)[0].lower())
