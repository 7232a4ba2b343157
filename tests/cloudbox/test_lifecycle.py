"""The cloud path for real, in the EC2 in a box: `up` boots an instance whose cloud-init runs tflab's user data,
`run-lab` waits for the boot-time bootstrap and runs the lab there, the watchdog stops the idle instance by
its own shutdown, `up` starts it again, `open` brings its services back without training, `down` leaves nothing. Through the real CLI, as a user types it.

The tests of this module share one lab, in order (each says what it adds); the box is stopped at the end and
must leave nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from tests.cloudbox.box import PUBLIC_NET, leftovers
from tests.cloudbox.conftest import SSH_CIDR, instances, on_lab, wait_for
from tests.ssh.conftest import TunnelProcess
from tflab.client import ServingClient

pytestmark = [pytest.mark.cloudbox, pytest.mark.timeout(2400)]
LAB = "box"


@pytest.fixture(scope="module")
def lab(cli):
    """`tflab up --name box --yes` against the box (no --ami-parameter: the default DLAMI parameter is the box's
    image; no --accept-new-host-key: the key is pinned from the console)."""
    up = cli("up", "--name", LAB, "--yes", "--json", *SSH_CIDR, timeout=900)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    yield state, up
    cli("down", "--name", LAB, "--yes", timeout=600)


def booted_at(cli) -> int:
    """The lab's instance's boot time, as its kernel says (/proc/stat's btime)."""
    return int(on_lab(cli, LAB, "awk '/^btime/ {print $2}' /proc/stat").stdout)


def test_up_boots_an_instance_that_runs_the_user_data(box, cli, lab):
    state, up = lab
    (instance,) = instances(box, LAB)
    assert instance["State"]["Name"] == "running" and state["instance_id"] == instance["InstanceId"]
    assert ipaddress.ip_address(instance["PublicIpAddress"]) in PUBLIC_NET
    # The host key was made by this instance's first boot, printed by cloud-init on its console, and pinned.
    assert "matches the fingerprint the instance printed" in up.stderr
    assert state["host_key_fingerprints"] and "--accept-new-host-key" not in up.args
    # cloud-init ran tflab's user data (the gzip'd script) without an error.
    status = on_lab(cli, LAB, "cloud-init status --wait --long")
    assert status.returncode == 0 and "status: done" in status.stdout, status.stdout + status.stderr
    # Its clock starts at its own boot, not at this machine's (the watchdog's maximum lifetime counts from it).
    assert booted_at(cli) >= instance["LaunchTime"].timestamp() - 5, instance["LaunchTime"]
    # The instance is at the private address EC2 reports.
    addresses = on_lab(cli, LAB, "ip -4 -o addr show eth0")
    assert f" {instance['PrivateIpAddress']}/" in addresses.stdout, addresses.stdout
    # The watchdog is a systemd unit, enabled and running under the instance's own systemd.
    unit = on_lab(cli, LAB, "systemctl is-enabled tflab-watchdog.service; systemctl is-active tflab-watchdog.service")
    assert unit.stdout.split() == ["enabled", "active"], unit.stdout + unit.stderr
    # The bootstrap started at boot, as the lab's user (run-lab waits for it).
    started = wait_for(lambda: "[bootstrap] started" in on_lab(cli, LAB, "cat ~/tflab/bootstrap.log").stdout, 120,
                       "the boot-time bootstrap's log")
    assert started
    owner = on_lab(cli, LAB, "stat -c %U ~/tflab/bootstrap.log")
    assert owner.stdout.strip() == "ubuntu"


def test_run_lab_waits_for_the_boot_time_bootstrap_and_runs_there(box, cli, lab):
    state, _ = lab
    run = cli("run-lab", "--name", LAB, "--json", timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout)
    host = report["host"]
    assert host["address"] == f"{state['public_ip']}:22" and host["workdir"] == "/home/ubuntu/tflab"
    assert host["python"] == "/home/ubuntu/tflab/venv/bin/python"  # the venv the bootstrap made at boot
    assert host["serving"] == "builtin"  # no GPU, no Docker, no tensorflow_model_server in the box
    # The predictions came through the tunnel from the model served on the instance.
    predictions = report["predictions"]
    assert [p["x"] for p in predictions] == [-1, 0, 1, 2, 3, 4, 5]
    for p in predictions:
        assert abs(p["predicted"] - p["noise_free"]) < 1.0, p
    # The bootstrap installed for real, from the box's package mirror (its log is on the instance).
    log = on_lab(cli, LAB, "cat ~/tflab/bootstrap.log").stdout
    assert "installing tensorflow" in log and "[bootstrap] done" in log and log.count("[bootstrap] started") == 1


def test_the_idle_instance_stops_itself_and_up_starts_it_again(box, cli, lab):
    state, _ = lab
    first_ip = state["public_ip"]
    # An idle lab: its boot-time bootstrap has finished (run-lab above waited for it; alone, this test waits).
    wait_for(lambda: on_lab(cli, LAB, "test -f ~/tflab/bootstrap.done").returncode == 0, 900,
             "the boot-time bootstrap to finish", interval=10)
    set_idle = cli("autostop", "--name", LAB, "--idle", "30s", timeout=120)
    assert set_idle.returncode == 0, set_idle.stderr

    def stopped():
        (inst,) = instances(box, LAB)
        return inst if inst["State"]["Name"] == "stopped" else None
    inst = wait_for(stopped, 300, "the watchdog's shutdown to stop the instance", interval=5)
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    status = cli("status", "--name", LAB, "--json", timeout=120)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["state"] == "stopped" and "shut itself down" in doc["stopped_why"]
    assert not any(leftovers([state["instance_id"]])[kind] for kind in ("containers", "netns", "links", "mounts"))
    assert leftovers([state["instance_id"]])["layers"]  # a stopped instance keeps its disk

    started = time.time()
    up = cli("up", "--name", LAB, "--yes", "--json", *SSH_CIDR, timeout=900)
    assert up.returncode == 0, up.stderr
    again = json.loads(up.stdout)
    assert booted_at(cli) >= started - 5  # a start is a new boot
    assert again["action"] == "started" and again["instance_id"] == state["instance_id"]
    assert again["public_ip"] != first_ip  # a new public address, as EC2 gives without an Elastic IP
    # The same host keys (they are on the disk): still pinned, no prompt.
    whoami = on_lab(cli, LAB, "whoami")
    assert whoami.returncode == 0 and whoami.stdout.strip() == "ubuntu", whoami.stderr
    # `tflab open` brings the lab back as the first run-lab left it: the services came down with the instance
    # and come up again serving the version exported before the stop, with no training.
    versions = on_lab(cli, LAB, "ls ~/tflab/models/nn").stdout.split()
    assert versions, "run-lab exported no version before the stop"
    opened = TunnelProcess(["--name", LAB], {**box.env, "TFLAB_HOME": str(cli.home)}, command="open")
    try:
        opened.forwards(timeout=600)
        urls = opened.events[0]["urls"]
        with ServingClient(urls["serving_grpc"], timeout=30) as client:
            result = client.predict([1.0], model="nn", signature="prediction")
        assert result.version == max(int(v) for v in versions)
        assert "/lab?token=" in urls["jupyter"] and urls["tensorboard"].startswith("http://127.0.0.1:")
    finally:
        assert opened.close() == 0, "".join(opened.lines)
    assert "nothing trained" in "".join(opened.lines), "".join(opened.lines)
    assert on_lab(cli, LAB, "ls ~/tflab/models/nn").stdout.split() == versions
    run = cli("run-lab", "--name", LAB, "--json", timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    assert json.loads(run.stdout)["host"]["address"] == f"{again['public_ip']}:22"
    log = on_lab(cli, LAB, "cat ~/tflab/bootstrap.log").stdout
    assert log.count("[bootstrap] started") == 1  # no second bootstrap: the venv was on the disk


def test_down_leaves_nothing(box, cli, lab):
    state, _ = lab
    down = cli("down", "--name", LAB, "--yes", timeout=600)
    assert down.returncode == 0, down.stderr
    assert "nothing tagged with it is left" in down.stderr
    # down waited for `terminated`, which the box says once the container is gone: nothing of it is left.
    assert leftovers([state["instance_id"]]) == {"containers": [], "netns": [], "links": [], "mounts": [], "layers": []}
