"""What a lab costs, said per region and with its public IPv4 address; the types and disks the image cannot take
refused before anything is made; the default image is the supported Ubuntu 24.04 Deep Learning AMI."""

from __future__ import annotations

import pytest

from infra import pricing
from infra.errors import InputError as InfraInputError
from infra.provider import DEFAULT_AMI_PARAMETER
from tests.infra.conftest import up_lab
from tflab.errors import InputError


def test_a_region_with_its_own_price_uses_it_and_others_say_they_are_estimated():
    tokyo = pricing.on_demand("g4dn.xlarge", "ap-northeast-1")
    assert (tokyo.usd_per_hour, tokyo.estimated) == (0.71, False)
    assert "ap-northeast-1 on-demand list price" in tokyo.source
    assert pricing.hourly("g4dn.xlarge", "eu-west-1") == 0.587  # not us-east-1's 0.526
    assert pricing.hourly("g5.xlarge", "eu-west-1") == 1.123 and pricing.hourly("g5.xlarge", "us-west-2") == 1.006
    guessed = pricing.on_demand("g6e.xlarge", "eu-west-1")
    assert (guessed.usd_per_hour, guessed.estimated) == (1.861, True)
    assert guessed.source.startswith("estimated from us-east-1") and pricing.PRICES_CHECKED in guessed.source
    assert pricing.on_demand("g6e.xlarge", "us-east-1").estimated is False
    assert pricing.on_demand("x9.nothing", "us-east-1") is None and pricing.hourly("x9.nothing") is None


def test_p4d_and_p5_carry_the_june_2025_price_cut():
    # AWS cut P5 by about 44 % and P4d by about 33 % on-demand in June 2025 (see infra/pricing.py).
    assert pricing.hourly("p5.48xlarge", "us-east-1") == 55.04 and 55.04 < 98.32 * 0.6
    assert pricing.hourly("p4d.24xlarge", "us-east-1") == 21.96 and 21.96 < 32.77 * 0.7


def test_the_public_ipv4_address_is_counted_per_node():
    assert pricing.PUBLIC_IPV4_USD_PER_HOUR == 0.005
    assert pricing.lab_hourly("g4dn.xlarge", "us-east-1") == pytest.approx(0.531)
    assert pricing.lab_hourly("g4dn.xlarge", "us-east-1", nodes=4) == pytest.approx(4 * 0.531)
    assert pricing.lab_hourly("g4dn.xlarge", "us-east-1", public_ipv4=False) == pytest.approx(0.526)


def test_p3_is_neither_priced_nor_offered_with_the_deep_learning_ami():
    from tflab.cloud import check_launch_options

    assert "p3.2xlarge" not in pricing.US_EAST_1 and pricing.dlami_unsupported("p3.2xlarge") == "NVIDIA V100"
    assert pricing.dlami_unsupported("g4dn.xlarge") is None and pricing.dlami_unsupported("p4d.24xlarge") is None
    common = dict(subnet_id=None, ssh_host=None, ssh_port=None, ssh_user=None, timeouts={})
    with pytest.raises(InputError) as refused:
        check_launch_options(instance_type="p3.2xlarge", ami=None, ami_parameter=None, **common)
    assert "p3.2xlarge (NVIDIA V100) is not supported by the Deep Learning Base OSS" in refused.value.message
    assert "--instance-type g4dn.xlarge" in refused.value.hint and "--ami" in refused.value.hint
    # An image of one's own may support it: allowed (and `up` says what it cannot promise).
    check_launch_options(instance_type="p3.2xlarge", ami="ami-0123456789abcdef0", ami_parameter=None, **common)


def test_the_default_image_is_the_ubuntu_24_04_base_oss_dlami():
    # Patched until 2029-04-30 (22.04: 2027-04-30) per the DLAMI support policy; the name follows AWS's rule
    # /aws/service/deeplearning/ami/$architecture/$ami_type/latest/ami-id (find-dlami-id.html).
    assert DEFAULT_AMI_PARAMETER == \
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


def test_up_says_the_regional_price_with_the_ipv4_address(aws):
    up_lab(aws, instance_type="g4dn.2xlarge")  # us-west-2's own price is not in the list for this one
    said = aws.err.getvalue()
    assert "estimated cost: about $0.757/hour on demand (g4dn.2xlarge $0.752 + public IPv4 $0.005; estimated " \
           "from us-east-1" in said


def test_up_with_another_image_on_an_unsupported_gpu_says_so(aws):
    up_lab(aws, lab="volta", instance_type="p3dn.24xlarge", ami=aws.image)  # moto knows p3dn, not p3
    said = aws.err.getvalue()
    assert "do not support p3dn.24xlarge's GPU (NVIDIA V100): TensorFlow uses it only if" in said
    assert "estimated cost: unknown (p3dn.24xlarge is not in the bundled price list)" in said


def test_a_disk_smaller_than_the_image_snapshot_is_refused_before_anything_is_made(aws):
    snapshot = aws.ec2.describe_images(ImageIds=[aws.image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"]
    with pytest.raises(InfraInputError) as refused:
        up_lab(aws, disk_gb=snapshot - 1)
    assert refused.value.message == (f"--disk-gb {snapshot - 1} is smaller than the root snapshot of the image "
                                     f"{aws.image} ({snapshot} GiB)")
    assert f"pass --disk-gb {snapshot} or more" in refused.value.hint
    assert "RunInstances" not in aws.faults.calls and "CreateKeyPair" not in aws.faults.calls
    state, _ = up_lab(aws, disk_gb=snapshot)  # exactly the snapshot's size is fine
    volumes = aws.ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [state.instance_id]}])
    assert [v["Size"] for v in volumes["Volumes"]] == [snapshot]


def test_status_counts_the_public_ipv4_address_while_the_lab_runs(aws):
    from tflab import cloud

    up_lab(aws)
    doc = cloud.status(aws.provider, aws.store, "lab", ask_host=False)
    assert doc["public_ipv4_hourly_usd"] == 0.005 and "us-west-2 on-demand list price" in doc["price_source"]
    assert set(doc["cost_usd_estimate"]) == {"instance", "public_ipv4", "disk", "total"}
    parts = doc["cost_usd_estimate"]
    assert parts["total"] == pytest.approx(parts["instance"] + parts["public_ipv4"] + parts["disk"], abs=0.011)
