"""`tflab run-lab --hosts a,b`: the lab's training across two machines under MultiWorkerMirroredStrategy.

The two machines are two loopback sshd servers, each for its own user of this machine (tests/users.py),
so that each node has its own home, its own workdir and its own processes, as two instances would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_valid_report, tflab, wait_until
from tests.sshd import Sshd
from tests.users import shared_python, users
from tflab import ports
from tflab.ssh import Connection, SshTarget
from tflab.sshhost import SshHost

pytestmark = pytest.mark.slow


def user_processes(user: str) -> list[str]:
    """Whole command lines of the user's live processes (from /proc: ps would cut them)."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline:  # a zombie has none
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Two nodes: (sshd servers, their --hosts value, the common options, a folder)."""
    tmp = tmp_path_factory.mktemp("nodes")
    python = shared_python()
    try:
        with users(2) as names:
            servers = [Sshd(tmp / "a", ports.free_port(), user=names[0])]
            servers.append(Sshd(tmp / "b", ports.free_port(), user=names[1], user_key=servers[0].user_key))
            first, second = servers
            try:
                for server in servers:
                    server.start()
                spec = ",".join(f"{s.user}@127.0.0.1:{s.port}" for s in servers)
                common = ["--hosts", spec, "--identity", str(first.user_key), "--known-hosts", str(tmp / "known_hosts"),
                          "--accept-new-host-key", "--python", str(python)]
                yield (first, second), spec, common, tmp
            finally:
                for server in servers:  # the chief keeps its services (as any --host run): stopped here
                    target = SshTarget("127.0.0.1", server.user, server.port, str(first.user_key), str(tmp / "known_hosts"))
                    try:
                        with Connection(target) as conn:
                            SshHost(conn).stop_all_services(conn.absolute("~/tflab/services"))
                    except Exception as exc:  # the users' processes are killed with the users anyway
                        print(f"could not stop the services on {target.display}: {exc}")
                for server in servers:
                    server.stop()
    finally:
        shutil.rmtree(python.parents[2], ignore_errors=True)


@pytest.fixture(scope="module")
def across(nodes):
    """One run across both nodes, seed 7 (the seed of tests.conftest.lab_steps_run): (report, stderr)."""
    _, _, common, tmp = nodes
    proc = tflab("run-lab", *common, "--json", "--seed", "7", "--out", str(tmp / "results"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout), proc.stderr


def test_two_machines_train_to_the_weights_of_one_process(across, nodes, lab_steps_run):
    """Each node trains on its half of the points, the gradients summed across the nodes: the weights
    end where one process ends for the same seed and data."""
    report, stderr = across
    (first, second), _, _, _ = nodes
    _, single, _ = lab_steps_run  # remote/steps.py alone, seed 7, the same steps and points
    assert_valid_report(report)
    t, one = report["training"], single["training"]
    assert "training across 2 nodes (MultiWorkerMirroredStrategy)" in stderr
    assert [w["index"] for w in t["workers"]] == [0, 1]
    assert [w["host"] for w in t["workers"]] == [f"{s.user}@127.0.0.1:{s.port}" for s in (first, second)]
    for w in t["workers"]:
        assert w["address"].startswith("127.0.0.1:")  # where the other node reached it (its sshd's address)
        assert (w["slope"], w["intercept"]) == pytest.approx((one["slope"], one["intercept"]), rel=1e-5)
    assert len({w["address"] for w in t["workers"]}) == 2  # the nodes share a network here: two ports
    assert t["losses"] == pytest.approx(one["losses"], rel=1e-5)
    # The chief exported and serves; the predictions are its weights.
    assert report["predictions"][1]["predicted"] == pytest.approx(t["intercept"], rel=1e-5)


def test_each_node_ran_its_worker_in_its_own_home_and_nothing_is_left_on_the_worker_node(across, nodes):
    (first, second), _, _, _ = nodes
    home = Path(os.path.expanduser(f"~{second.user}"))
    log = home / "tflab" / "workers" / "worker-1.log"
    assert log.stat().st_uid == Path(home).stat().st_uid != 0  # written there by the node's own user
    assert (home / "tflab" / "workers" / "worker-1.json").exists()
    assert not (home / "tflab" / "models").exists()  # the chief alone exports, and serves
    chief_home = Path(os.path.expanduser(f"~{first.user}"))
    assert (chief_home / "tflab" / "models" / "nn" / "1").is_dir()
    # Once the run is over, the worker node runs nothing of the lab (the chief keeps its services).
    wait_until(lambda: user_processes(second.user) == [], 15, what=f"{second.user}'s processes to end")
    assert not any("steps.py" in p for p in user_processes(first.user))


def test_a_worker_killed_on_its_node_ends_the_run_naming_it(across, nodes):
    (first, second), spec, common, tmp = nodes
    home = Path(os.path.expanduser(f"~{second.user}"))
    pid_file = home / "tflab" / "workers" / "worker-1.pid"
    chief_log = Path(os.path.expanduser(f"~{first.user}")) / "tflab" / "workers" / "worker-0.log"
    pid_file.unlink(missing_ok=True)
    chief_log.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "tflab", "run-lab", *common, "--seed", "1", "--steps", "10000000",
                             "--out", str(tmp / "killed")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def training():  # the chief speaks once both workers are connected
            return pid_file.exists() and chief_log.exists() and "[basics]" in chief_log.read_text()

        wait_until(training, 300, interval=0.2, what="the workers to connect")
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 6, err[-3000:]
    assert f"tflab: error: worker-1 on {second.user}@127.0.0.1:{second.port}: ended without finishing" in err
    wait_until(lambda: not any("steps.py" in p for p in user_processes(first.user)), 15,
               what="the chief's worker to be stopped")
    wait_until(lambda: user_processes(second.user) == [], 15, what=f"{second.user}'s processes to end")


def test_a_node_that_cannot_be_reached_ends_the_run_naming_it(nodes):
    (first, _), _, common, tmp = nodes
    closed = ports.free_port()
    spec = f"{first.user}@127.0.0.1:{first.port},nobody@127.0.0.1:{closed}"
    args = [a if a != common[1] else spec for a in common]
    proc = tflab("run-lab", *args, "--out", str(tmp / "unreachable"), timeout=300)
    assert proc.returncode == 5, proc.stderr[-3000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("tflab: error:")]
    assert line and line[0].startswith(f"tflab: error: node-1 (nobody@127.0.0.1:{closed}): cannot reach"), line
    assert not any("steps.py" in p for p in user_processes(first.user))


def test_run_lab_on_a_lab_of_two_nodes_uses_both_with_their_private_addresses(nodes, tmp_path, aws):
    """A lab made by `up --nodes 2` (its state written here as `up` writes it, each node an sshd of its own
    user, reached at 127.0.0.1 which stands in for both the public and the private address). AWS is a
    tripwire: run-lab's look at the lab's instances fails, and a look that fails is no reason to refuse."""
    from tflab import autostop
    from tflab.state import LabState, StateStore

    (first, second), _, common, _ = nodes
    python = common[common.index("--python") + 1]
    home = tmp_path / "tflab-home"
    store = StateStore(home)
    key = store.write_key("duo", first.user_key.read_text())
    entries = [{"index": i, "instance_id": f"i-{i}", "public_ip": "127.0.0.1", "private_ip": "127.0.0.1",
                "zone": "us-west-2a", "host_key_fingerprints": dict([s.host_fingerprint]), "ssh_port": s.port,
                "ssh_user": s.user} for i, s in enumerate((first, second))]
    store.save(LabState(name="duo", region="us-west-2", instance_id="i-0", public_ip="127.0.0.1", ssh_user=first.user,
                        ssh_port=first.port, key_path=str(key), host_key_fingerprints=entries[0]["host_key_fingerprints"],
                        nodes=entries))
    proc = tflab("run-lab", "--name", "duo", "--python", python, "--json", "--seed", "7", "--steps", "20",
                 "--out", str(tmp_path / "results"), env={"TFLAB_HOME": str(home), "AWS_ENDPOINT_URL": aws.url,
                                                          "AWS_MAX_ATTEMPTS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = assert_valid_report(json.loads(proc.stdout))
    workers = report["training"]["workers"]
    assert [w["host"] for w in workers] == [f"lab 'duo' node {i} ({s.user}@127.0.0.1)"
                                            for i, s in enumerate((first, second))]
    assert all(w["address"].startswith("127.0.0.1:") for w in workers)  # the nodes' private addresses
    assert workers[0]["slope"] == pytest.approx(workers[1]["slope"], rel=1e-6)
    for server in (first, second):  # each node's watchdog now knows the other (the lab stops as one)
        peers = Path(os.path.expanduser(f"~{server.user}")) / "tflab" / "autostop" / "peers.json"
        told = json.loads(peers.read_text())  # with the lab's token, which only its nodes have (0600)
        assert told == {"token": autostop.peers_token(store.load("duo")), "peers": ["127.0.0.1"]}
        assert peers.stat().st_mode & 0o077 == 0
    assert store.load("duo").workdir == str(Path(os.path.expanduser(f"~{first.user}")) / "tflab")
    assert aws.connections >= 1  # it did look


def test_a_node_lost_mid_run_ends_the_run_naming_it_and_its_worker_ends_too(nodes):
    """The worker node's sshd goes away while the workers train (as a node that crashes or drops off the
    network): the run ends naming it, the chief's worker is stopped, and the lost node's worker ends with
    its SSH session (a tied service), so nothing of the run is left on either node."""
    (first, second), spec, common, tmp = nodes
    chief_log = Path(os.path.expanduser(f"~{first.user}")) / "tflab" / "workers" / "worker-0.log"
    chief_log.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "tflab", "run-lab", *common, "--seed", "2", "--steps", "10000000",
                             "--out", str(tmp / "lost")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: chief_log.exists() and "[basics]" in chief_log.read_text(), 300, interval=0.2,
                   what="the workers to connect")
        assert any("steps.py" in p for p in user_processes(second.user))
        second.stop()  # its sshd processes go, and the sessions' connections with them
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if second.proc is None:
            second.start()
    assert proc.returncode == 6, err[-3000:]
    assert f"tflab: error: worker-1 on {second.user}@127.0.0.1:{second.port}: cannot be reached" in err
    wait_until(lambda: not any("steps.py" in p for p in user_processes(first.user)), 15,
               what="the chief's worker to be stopped")
    wait_until(lambda: not any("steps.py" in p for p in user_processes(second.user)), 15,
               what="the lost node's worker to end with its session")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_training_ends_every_nodes_worker(nodes, sig, code):
    """SIGTERM or Ctrl-C while the workers train: tflab exits 128 + the signal and no worker is left on any
    node (their sessions close with tflab's connections)."""
    (first, second), spec, common, tmp = nodes
    chief_log = Path(os.path.expanduser(f"~{first.user}")) / "tflab" / "workers" / "worker-0.log"
    chief_log.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "tflab", "run-lab", *common, "--seed", "4", "--steps", "10000000",
                             "--out", str(tmp / f"signal-{sig}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: chief_log.exists() and "[basics]" in chief_log.read_text(), 300, interval=0.2,
                   what="the workers to connect")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == code, err[-3000:]
    assert "tflab: interrupted" in err
    for server in (first, second):
        wait_until(lambda: not any("steps.py" in p for p in user_processes(server.user)), 15,
                   what=f"{server.user}'s worker to end")
