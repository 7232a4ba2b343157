"""A lab whose state file is damaged, through the real CLI against a moto server: `list` still shows every lab
and one line for the damaged file, `status` is one clear error, `down` removes the lab by its tags (as the
README promises) and then the file."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.conftest import moto_server as moto_endpoint, tflab
from tests.tflab.test_state_hostile import bad_json, deep, fifo, folder, huge, wrong_types

pytestmark = pytest.mark.slow  # many CLI calls against AWS's API: seconds each (not in scripts/test.sh --quick)

PARAMETER = "/test/damaged/ami-id"
UP = ["up", "--ssh-cidr", "203.0.113.7/32", "--ami-parameter", PARAMETER, "--host-key-timeout", "0",
      "--ssh-host", "127.0.0.1", "--ssh-port", "1", "--ssh-timeout", "1", "--no-wait", "--yes"]


@pytest.fixture(scope="module")
def endpoint():
    with moto_endpoint(PARAMETER) as url:
        yield url


@pytest.fixture
def cli(endpoint, tmp_path):
    env = {"AWS_ENDPOINT_URL": endpoint, "TFLAB_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-west-2"}

    def run(*args):
        return tflab(*args, env=env, timeout=120)

    run.home = tmp_path / "home"
    run.ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint)
    return run


def live_instances(ec2, lab: str) -> list[str]:
    f = [{"Name": "tag:tflab:lab", "Values": [lab]}]
    return [i["InstanceId"] for r in ec2.describe_instances(Filters=f)["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]


@pytest.mark.parametrize("damage", [deep, huge, fifo, folder, bad_json, wrong_types], ids=lambda f: f.__name__)
def test_list_status_and_down_with_a_damaged_state_file(cli, damage):
    lab, other = f"dmg-{damage.__name__.replace('_', '-')}", f"ok-{damage.__name__.replace('_', '-')}"
    for name in (lab, other):
        assert cli(*UP, "--name", name).returncode == 0
    path = cli.home / "labs" / lab / "state.json"
    path.unlink()
    damage(path)

    listed = cli("list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith(other) for line in lines) and any(line.startswith(lab + " ") for line in lines)
    assert any(f"damaged state file {path}" in line and f"`tflab down --name {lab}`" in line for line in lines)
    doc = json.loads(cli("list", "--json").stdout)
    assert {row["name"] for row in doc["labs"]} >= {lab, other}
    assert [d["name"] for d in doc["damaged_states"]] == [lab]

    status = cli("status", "--name", lab)
    assert status.returncode == 3 and "Traceback" not in status.stderr
    assert f"tflab: error: the state file {path} is damaged: " in status.stderr
    assert f"hint: `tflab down --name {lab}` removes the lab by its AWS tags" in status.stderr

    down = cli("down", "--name", lab, "--yes")
    assert down.returncode == 0 and "Traceback" not in down.stderr, down.stderr
    assert f"the state file {path} is damaged" in down.stderr and "by its AWS tags in us-west-2" in down.stderr
    assert live_instances(cli.ec2, lab) == [] and not (cli.home / "labs" / lab).exists()
    assert len(live_instances(cli.ec2, other)) == 1 and cli("status", "--name", other).returncode == 0
    assert cli("down", "--name", other, "--yes").returncode == 0


def test_a_damaged_state_of_a_lab_not_in_this_region_is_kept(cli):
    (cli.home / "labs" / "elsewhere").mkdir(parents=True)
    bad_json(cli.home / "labs" / "elsewhere" / "state.json")
    down = cli("down", "--name", "elsewhere", "--yes")
    assert down.returncode == 0 and "nothing tagged with lab 'elsewhere' in us-west-2" in down.stderr
    assert "--region R" in down.stderr and (cli.home / "labs" / "elsewhere" / "state.json").exists()
