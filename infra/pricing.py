"""A small bundled table of on-demand prices for the common GPU types: an estimate only.

US East (N. Virginia) Linux on-demand list prices, USD per hour; other regions and spot
differ. Used to print the hourly cost before launching and the cost so far in `status`.
"""

from __future__ import annotations

PRICES_USD_PER_HOUR = {
    "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g4dn.4xlarge": 1.204, "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912, "g4dn.16xlarge": 4.352,
    "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.4xlarge": 1.624, "g5.8xlarge": 2.448, "g5.12xlarge": 5.672,
    "g6.xlarge": 0.805, "g6.2xlarge": 0.978, "g6.4xlarge": 1.323, "g6e.xlarge": 1.861,
    "p3.2xlarge": 3.06, "p3.8xlarge": 12.24, "p4d.24xlarge": 32.77, "p5.48xlarge": 98.32,
    "t3.medium": 0.0416, "t3.large": 0.0832, "m5.large": 0.096,
}
PRICE_SOURCE = "bundled estimate: us-east-1 on-demand list price"
# gp3 storage, us-east-1: $0.08 per GB-month; AWS prices a month as 730 hours.
GP3_USD_PER_GB_HOUR = 0.08 / 730


def hourly(instance_type: str) -> float | None:
    """The estimated on-demand price per hour, or None when the type is not in the table."""
    return PRICES_USD_PER_HOUR.get(instance_type)
