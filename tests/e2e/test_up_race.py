"""Two `tflab up --name X` at once from two machines (two state homes, so no local lock sees the other),
against one moto server: at most one lab, the loser says so in one line and removes nothing of the winner's.

The claim is the lab's key pair (infra/aws.py create_key_pair): key pair names are unique in a region, so of
two CreateKeyPair calls for tflab-<lab> one fails with InvalidKeyPair.Duplicate, before anything is launched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from tests.conftest import moto_server as moto_endpoint

pytestmark = pytest.mark.slow  # many CLI calls against AWS's API: seconds each (not in scripts/test.sh --quick)

PARAMETER = "/test/race/ami-id"
UP = ["up", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER, "--host-key-timeout", "0",
      "--ssh-host", "127.0.0.1", "--ssh-port", "1", "--ssh-timeout", "1", "--no-wait", "--yes", "--json"]
ROUNDS = 4


@pytest.fixture(scope="module")
def endpoint():
    """A moto server whose CreateKeyPair is atomic, as EC2's is: moto checks the name, makes the key, then stores
    it, and two requests in its server's threads can both pass the check (seen: 1 round in 10 made two labs).
    Only that check-and-store is made one step; everything else is moto's own."""
    import threading
    from unittest import mock

    from moto.ec2.models.key_pairs import KeyPairBackend

    original = KeyPairBackend.create_key_pair
    lock = threading.Lock()

    def atomic(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    with mock.patch.object(KeyPairBackend, "create_key_pair", atomic), moto_endpoint(PARAMETER) as url:
        yield url


def start(endpoint: str, home, *args: str) -> subprocess.Popen:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "TFLAB_HOME": str(home), "AWS_DEFAULT_REGION": "us-west-2"}
    return subprocess.Popen([sys.executable, "-m", "tflab", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"tflab did not finish: {err[-2000:]}")
    return proc.returncode, out, err


def live(ec2, lab: str) -> dict:
    f = [{"Name": "tag:tflab:lab", "Values": [lab]}]
    return {"instances": [i["InstanceId"] for r in ec2.describe_instances(Filters=f)["Reservations"]
                          for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")],
            "groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]],
            "keys": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]]}


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_ups_of_one_lab_at_once_make_at_most_one_lab(endpoint, tmp_path, round_):
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint)
    lab = f"race{round_}"
    homes = [tmp_path / "laptop", tmp_path / "desktop"]
    procs = [start(endpoint, home, *UP, "--name", lab) for home in homes]
    results = [finish(p) for p in procs]

    made = live(ec2, lab)
    assert len(made["instances"]) == 1, (made, [r[2][-1500:] for r in results])
    assert made["keys"] == [f"tflab-{lab}"] and len(made["groups"]) == 1
    created = [i for i, (code, out, _) in enumerate(results) if code == 0 and json.loads(out)["action"] == "created"]
    assert len(created) == 1, results
    winner, loser = created[0], 1 - created[0]
    assert json.loads(results[winner][1])["instance_id"] == made["instances"][0]
    code, out, err = results[loser]
    assert "Traceback" not in err
    if code == 0:  # it came after the instance existed: it reuses the one lab (without its private key)
        assert json.loads(out)["action"] == "reused" and json.loads(out)["instance_id"] == made["instances"][0]
    else:
        assert code == 3, err
        assert f"tflab: error: another `tflab up` of lab '{lab}' in us-west-2 is under way" in err
        assert "this one launched nothing" in err and "hint: wait for it" in err
        assert not (homes[loser] / "labs" / lab / "id_ed25519").exists()
    # The winner's key is the one in the lab's key pair, on the winner's machine only.
    assert (homes[winner] / "labs" / lab / "id_ed25519").exists()

    # `down` from the winner removes it all; then an `up` of the same name makes a new lab (the claim is gone,
    # and no idempotency token brings the terminated instance back).
    code, _, err = finish(start(endpoint, homes[winner], "down", "--name", lab, "--yes"))
    assert code == 0, err
    assert live(ec2, lab) == {"instances": [], "groups": [], "keys": []}
    code, out, err = finish(start(endpoint, homes[loser], *UP, "--name", lab))
    assert code == 0 and json.loads(out)["action"] == "created", err
    assert live(ec2, lab)["instances"] == [json.loads(out)["instance_id"]] != made["instances"]
    assert finish(start(endpoint, homes[loser], "down", "--name", lab, "--yes"))[0] == 0
