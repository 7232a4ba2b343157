"""`tflab list` against a moto server (AWS_ENDPOINT_URL): the labs made by `up` and the labs run on any machine,
each with its kind."""

from __future__ import annotations

import json

import pytest

from tests.conftest import moto_server as moto_endpoint, tflab
from tests.e2e.test_cloud_cli import UP as CLOUD_UP
from tflab.labs import remember_host_lab
from tflab.ssh import SshTarget
from tflab.state import StateStore


PARAMETER = "/test/open-cloud/ami-id"  # its own: moto servers in one process share one account
UP = [PARAMETER if arg == "/test/dlami/ami-id" else arg for arg in CLOUD_UP]


@pytest.fixture(scope="module")
def moto_server():
    with moto_endpoint(PARAMETER) as endpoint:
        yield endpoint


@pytest.fixture
def cli(moto_server, tmp_path):
    import boto3

    env = {"AWS_ENDPOINT_URL": moto_server, "TFLAB_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-west-2"}

    def run(*args):
        return tflab(*args, env=env, timeout=120)

    run.ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_server)
    run.home = tmp_path / "home"
    return run


def test_list_shows_both_kinds_of_lab(cli):
    up = cli(*UP, "--name", "cloud1", "--yes", "--json")
    assert up.returncode == 0, up.stderr
    box = SshTarget(host="10.0.0.5", user="ada", port=2222, identity=None, known_hosts=str(cli.home / "kh"))
    remember_host_lab("box1", box, "/srv/lab", StateStore(cli.home))  # as run-lab --host --name box1 does
    listed = json.loads(cli("list", "--json").stdout)["labs"]
    assert [(r["name"], r["kind"]) for r in listed] == [("cloud1", "up"), ("box1", "host")]
    assert listed[1]["address"] == "ada@10.0.0.5:2222" and listed[1]["workdir"] == "/srv/lab"
    text = cli("list").stdout.splitlines()
    assert text[0].split()[:2] == ["LAB", "KIND"]
    assert [line.split()[:2] for line in text[1:]] == [["cloud1", "up"], ["box1", "host"]]
    assert "ada@10.0.0.5:2222" in text[2]
    assert cli("down", "--name", "cloud1", "--yes").returncode == 0
