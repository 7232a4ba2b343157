"""A lab of two instances in the EC2 in a box: `up --nodes 2` boots two containers at different private addresses,
`run-lab` trains across them with TF_CONFIG at those addresses (MultiWorkerMirroredStrategy between the two
instances, over the box's network), `down` removes both."""

from __future__ import annotations

import json

import pytest

from tests.cloudbox.box import leftovers
from tests.cloudbox.conftest import SSH_CIDR, instances

pytestmark = [pytest.mark.cloudbox, pytest.mark.timeout(2400)]


def test_a_lab_of_two_instances_trains_across_their_private_addresses(box, cli):
    up = cli("up", "--name", "pair", "--nodes", "2", "--yes", "--json", *SSH_CIDR, timeout=900)
    assert up.returncode == 0, up.stderr
    found = sorted(instances(box, "pair"), key=lambda i: i["AmiLaunchIndex"])
    assert len(found) == 2 and all(i["State"]["Name"] == "running" for i in found)
    private = [i["PrivateIpAddress"] for i in found]
    assert private[0] != private[1]
    try:
        run = cli("run-lab", "--name", "pair", "--json", "--seed", "7", timeout=2000)
        assert run.returncode == 0, run.stderr[-4000:]
        training = json.loads(run.stdout)["training"]
        workers = training["workers"]
        assert [w["index"] for w in workers] == [0, 1]
        # each worker's TF_CONFIG address is its instance's private address, one per instance
        assert sorted(w["address"].rsplit(":", 1)[0] for w in workers) == sorted(private), workers
        # the all-reduce kept the two workers' weights equal, and they are the chief's (the report's)
        assert workers[0]["slope"] == workers[1]["slope"] == training["slope"]
        assert workers[0]["intercept"] == workers[1]["intercept"] == training["intercept"]
    finally:
        down = cli("down", "--name", "pair", "--yes", timeout=600)
    assert down.returncode == 0, down.stderr
    assert leftovers([i["InstanceId"] for i in found]) == {"containers": [], "netns": [], "links": [], "mounts": [],
                                                           "layers": []}
