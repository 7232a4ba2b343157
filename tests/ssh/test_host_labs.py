"""A lab run on any SSH machine is a name (issue 22): `run-lab --host ... --name N` remembers it under N, and
`tflab status`, `list` and `down` work for it as for a lab made by `up`, with no AWS call (AWS is a
tripwire here): status says where it is and whether each service runs and answers; down stops its services
and forgets it, touching nothing else on the machine; a lab forgotten by down is gone from list.

The tests run in order on one lab: status, then list and down, which forgets it."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import moto_server as moto_endpoint, tflab, wait_until
from tests.ssh.conftest import HOST_LAB

pytestmark = pytest.mark.slow


def status(lab) -> dict:
    proc = tflab("status", "--name", HOST_LAB, "--json", env=lab.env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_run_lab_names_the_host_lab_and_status_says_where_it_is_and_what_answers(host_lab, sshd, aws):
    lab = host_lab
    assert lab.report["tunnel"] == f"tflab tunnel --name {HOST_LAB}"
    assert (lab.tmp / "home" / "labs" / HOST_LAB / "host.json").is_file()
    doc = status(lab)
    assert (doc["kind"], doc["address"], doc["workdir"]) == ("host", f"{sshd.user}@127.0.0.1:{sshd.port}",
                                                             str(lab.workdir))
    served = {name: port for name, port in lab.report["host"]["ports"].items() if port}
    assert doc["services"] == {name: {"port": port, "running": True, "answers": True} for name, port in served.items()}
    text = tflab("status", "--name", HOST_LAB, env=lab.env)
    assert text.returncode == 0, text.stderr
    assert f"lab {HOST_LAB} (host {sshd.user}@127.0.0.1:{sshd.port}): 4 of 4 services answer" in text.stdout
    pid = int((lab.workdir / "services" / "tensorboard.pid").read_text())  # the host is this machine
    os.killpg(pid, signal.SIGKILL)  # TensorBoard dies (as a crash would): status says which service
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2],
               30, what="TensorBoard to end")
    doc = status(lab)
    assert doc["services"]["tensorboard"] == {"port": served["tensorboard"], "running": False, "answers": False}
    assert all(s["running"] and s["answers"] for n, s in doc["services"].items() if n != "tensorboard")
    text = tflab("status", "--name", HOST_LAB, env=lab.env).stdout
    assert "3 of 4 services answer" in text and "not running, does not answer" in text
    assert aws.connections == 0


def test_a_name_of_a_lab_made_by_up_is_refused_for_a_host(host_lab, sshd):
    from tests.ssh.conftest import host_args
    from tflab.state import LabState, StateStore

    StateStore(host_lab.tmp / "home").save(LabState(name="cloudy", region="us-west-2"))
    proc = tflab("run-lab", *host_args(sshd, host_lab.tmp), "--name", "cloudy", env=host_lab.env)
    assert proc.returncode == 3 and "--name cloudy is a lab made by `tflab up`" in proc.stderr
    assert not (host_lab.tmp / "home" / "labs" / "cloudy" / "host.json").exists()
    StateStore(host_lab.tmp / "home").delete("cloudy")


def test_list_shows_the_host_lab_and_down_stops_its_services_and_forgets_it(host_lab, sshd, aws):
    lab = host_lab
    with moto_endpoint("/test/host-labs/ami-id") as endpoint:  # list asks AWS for the region's labs: none here
        listing = {**lab.env, "AWS_ENDPOINT_URL": endpoint}
        listed = tflab("list", "--json", env=listing)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)["labs"]
        assert rows == [{"name": HOST_LAB, "kind": "host", "address": f"{sshd.user}@127.0.0.1:{sshd.port}",
                         "workdir": str(lab.workdir)}]
        text = tflab("list", env=listing).stdout.splitlines()
        assert text[0].split()[:2] == ["LAB", "KIND"] and text[1].split()[:2] == [HOST_LAB, "host"]

        # run-lab left its services running; down stops them all, and only them
        assert any((lab.workdir / "services").glob("*.pid"))
        refused = tflab("down", "--name", HOST_LAB, env=lab.env)  # no terminal, no --yes: nothing changes
        assert refused.returncode == 3 and "refusing to remove a lab without --yes" in refused.stderr
        assert (lab.tmp / "home" / "labs" / HOST_LAB / "host.json").is_file()
        down = tflab("down", "--name", HOST_LAB, "--yes", "--json", env=lab.env)
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout)["forgotten"] is True
        assert not list((lab.workdir / "services").glob("*.pid"))  # every service of the lab stopped
        assert sorted(p.name for p in (lab.workdir / "models" / "nn").iterdir()) == ["1"]  # nothing else touched
        assert (lab.workdir / "notebooks").is_dir() and (lab.workdir / "logs").is_dir()
        assert not (lab.tmp / "home" / "labs" / HOST_LAB).exists()
        assert json.loads(tflab("list", "--json", env=listing).stdout)["labs"] == []
    assert aws.connections == 0
