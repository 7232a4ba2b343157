"""`tflab run-lab` on a lab host over SSH (a real sshd on 127.0.0.1 stands in for the instance),
with `--host`, and on a lab made by `tflab up` under a moto server, end to end with the same CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from moto.server import ThreadedMotoServer

from tests.conftest import REMOTE, assert_valid_report, tflab, wait_until
from tests.sshd import Sshd
from tests.e2e.test_run_lab_local import processes_mentioning
from tflab import ports
from tflab.client import ServingClient
from tflab.lab import http_json
from tflab.ssh import Connection, SshTarget
from tflab.sshhost import SshHost
from tflab.tunnels import Forward, Tunnels
from tests.ssh.conftest import host_args

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def lab_host(sshd, tmp_path_factory):
    """Two runs of `run-lab --host` on one workdir: (first report, second report, stderrs, workdir, tmp)."""
    tmp = tmp_path_factory.mktemp("runlab")
    workdir = tmp / "host-workdir"
    args = ["run-lab", *host_args(sshd, tmp), "--accept-new-host-key", "--python", sys.executable,
            "--workdir", str(workdir), "--out", str(tmp / "results"), "--json", "--seed", "5", "--steps", "50"]
    first = tflab(*args, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    second = tflab(*args, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    yield json.loads(first.stdout), json.loads(second.stdout), (first.stderr, second.stderr), workdir, tmp
    target = SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(tmp / "known_hosts"))
    with Connection(target) as conn:
        SshHost(conn).stop_all_services(f"{workdir}/services")
    assert processes_mentioning(str(workdir)) == []


def test_run_lab_on_a_host_runs_every_step_and_serves_through_the_tunnel(lab_host, tf):
    report, _, (stderr, _), workdir, tmp = lab_host
    assert report["host"]["workdir"] == str(workdir) and report["host"]["serving"] == "builtin"
    assert report["host"]["tunnel_client"] == "openssh"  # the system's ssh carries the forwards here
    assert "tflab's stand-in server will serve" in stderr  # the host has no Docker or TF Serving: said so
    assert report["basics"]["variable"] == [[16.0], [16.0]]
    assert report["training"]["steps"] == 50 and report["server"]["version"] == 1
    # The report's predictions are the exported SavedModel's.
    loaded = tf.saved_model.load(report["remote_artifacts"]["saved_model"])
    xs = np.array([p["x"] for p in report["predictions"]], np.float32).reshape(-1, 1)
    expected = loaded.signatures["prediction"](input=tf.constant(xs))["output"].numpy().ravel()
    assert [p["predicted"] for p in report["predictions"]] == pytest.approx(expected.tolist(), rel=1e-6)
    # Results fetched back here, without the Jupyter token in the file.
    results = tmp / "results"
    assert (results / "run-1.png").read_bytes()[:4] == b"\x89PNG"
    saved = (results / "report.json").read_text()
    token = report["jupyter"]["url"].split("token=")[1]
    assert token not in saved and json.loads(saved)["predictions"] == report["predictions"]
    # Both the printed report and the saved one follow the published schema.
    assert_valid_report(report)
    assert_valid_report(json.loads(saved))
    # The host is this machine (reached over SSH): it is recognised, and the tunnels' local ports never
    # take the ports its services chose.
    host_ports = set(report["host"]["ports"].values())
    local_ports = {int(re.search(r"127\.0\.0\.1:(\d+)", url).group(1)) for url in report["urls"].values() if url}
    assert set(report["host"]["ports"]) == {"serving", "rest", "tensorboard", "jupyter"}
    assert not host_ports & local_ports, (host_ports, local_ports)
    host_logs = "".join(p.read_text(errors="replace") for p in (workdir / "services").glob("*.log"))
    assert "Jupyter" in host_logs and token not in host_logs  # shown to the user, never logged on the host
    assert report["jupyter"]["notebooks"] == ["1-basics.ipynb", "2-train.ipynb", "3-tensorboard.ipynb",
                                              "4-export.ipynb", "5-predict.ipynb"]


def test_the_services_keep_running_on_the_host_and_answer_through_tunnels(lab_host, sshd):
    _, report, _, workdir, tmp = lab_host
    target = SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(tmp / "known_hosts"))
    remote = report["host"]["ports"]
    with Connection(target) as conn, Tunnels(conn, [Forward(n, p, 0) for n, p in remote.items()]) as t:
        tags = http_json(t.url("tensorboard", "/data/plugin/scalars/tags"))
        histograms = http_json(t.url("tensorboard", "/data/plugin/histograms/tags"))
        assert "loss" in tags["run-2"] and "weights/summaries/mean" in tags["run-2"]
        assert {"y_error", "weights/summaries/histogram"} <= set(histograms["run-1"])
        token = report["jupyter"]["url"].split("token=")[1]
        assert "started" in http_json(t.url("jupyter", f"/api/status?token={token}"))
        with pytest.raises(OSError):  # no token, no entry
            http_json(t.url("jupyter", "/api/status"))
        listed = http_json(t.url("jupyter", f"/api/contents?token={token}"))
        assert len([c for c in listed["content"] if c["type"] == "notebook"]) == 5
        with ServingClient(f"127.0.0.1:{t.local_ports['serving']}") as client:
            result = client.predict([0.0, 1.0])
        t2 = report["training"]
        assert result.version == 2
        assert result.outputs == pytest.approx([t2["intercept"], t2["slope"] + t2["intercept"]], rel=1e-5)


def test_run_lab_starts_the_idle_watchdog_on_a_host_once(lab_host, sshd):
    _, _, (stderr1, stderr2), workdir, tmp = lab_host
    assert "started the idle watchdog (stop-services after an hour" in stderr1
    assert "started the idle watchdog" not in stderr2  # the second run keeps the one running
    pid = int((workdir / "services" / "watchdog.pid").read_text())
    os.kill(pid, 0)  # it runs
    proc = tflab("autostop", *host_args(sshd, tmp), "--workdir", str(workdir), "--json")
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["action"] == "stop-services" and view["policy"]["idle_seconds"] == 3600
    assert set(view["sources"]) >= {"ssh", "serving", "tensorboard", "jupyter", "gpu", "step", "keep"}
    text = tflab("autostop", *host_args(sshd, tmp), "--workdir", str(workdir), "--keep", "2h")
    assert text.returncode == 0, text.stderr
    assert "policy     idle 60 min, max lifetime off, kept until" in text.stdout


def test_a_second_run_skips_the_bootstrap_and_serves_version_2(lab_host):
    first, second, (stderr1, stderr2), _, _ = lab_host
    # the first run's bootstrap checked the interpreter and chose the server; the second found its mark and
    # did neither (what it saves is time, measured in bench/, not asserted here)
    first_steps = [line for line in stderr1.splitlines() if "bootstrap | " in line]
    second_steps = [line for line in stderr2.splitlines() if "bootstrap | " in line]
    assert any("bootstrap | using " in line for line in first_steps), stderr1
    assert any("bootstrap | done " in line for line in first_steps), stderr1
    assert len(second_steps) == 1 and "bootstrap | already done (" in second_steps[0], stderr2
    assert second["server"]["version"] == 2
    assert second["training"]["losses"] == pytest.approx(first["training"]["losses"], rel=1e-6)


def test_a_bootstrap_started_at_boot_is_waited_for(sshd, tmp_path):
    workdir = tmp_path / "boot"
    script = str(REMOTE / "bootstrap.sh")
    early = subprocess.Popen(["bash", script, str(workdir), sys.executable], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: (workdir / "bootstrap.log").exists(), 30, what="the first bootstrap")
    late = subprocess.run(["bash", script, str(workdir), sys.executable], capture_output=True, text=True, timeout=300)
    early.communicate(timeout=300)
    assert early.returncode == 0 and late.returncode == 0, late.stdout + late.stderr
    assert "another bootstrap is running" in late.stdout and "already done" in late.stdout
    assert (workdir / "serving").read_text().strip() == "builtin"


def test_a_python_without_tensorflow_is_refused_by_the_bootstrap(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    proc = subprocess.run(["bash", str(REMOTE / "bootstrap.sh"), str(tmp_path / "w"), str(tmp_path / "bare/bin/python")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "lacks one of: tensorflow" in proc.stdout
    assert not (tmp_path / "w" / "bootstrap.done").exists()


def test_up_run_lab_down_on_a_moto_lab_reached_at_the_local_sshd(sshd, tmp_path):
    """The whole mission with the CLI a user runs: AWS is a moto server, the instance is the local sshd."""
    port = ports.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    ssm = boto3.client("ssm", region_name="us-west-2", endpoint_url=endpoint)
    image = ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
    ssm.put_parameter(Name="/test/dlami", Value=image["Parameter"]["Value"], Type="String")
    home = tmp_path / "home"
    env = {"AWS_ENDPOINT_URL": endpoint, "TFLAB_HOME": str(home)}
    key = home / "labs" / "mission" / "id_ed25519"
    authorized = sshd.root / "authorized_keys"
    original = authorized.read_text()

    def authorize_the_lab_key():  # what the AMI does with the key pair at boot
        deadline = time.monotonic() + 120
        while not key.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        authorized.write_text(original + public.decode() + "\n")

    booting = threading.Thread(target=authorize_the_lab_key, daemon=True)
    booting.start()
    workdir = tmp_path / "mission-workdir"
    try:
        up = tflab("up", "--name", "mission", "--yes", "--json", "--ssh-cidr", "203.0.113.7/32",
                   "--ami-parameter", "/test/dlami", "--host-key-timeout", "0", "--ssh-host", "127.0.0.1",
                   "--ssh-port", str(sshd.port), "--ssh-user", sshd.user, "--accept-new-host-key",
                   "--ssh-timeout", "120", env=env, timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        assert "waiting for SSH on lab 'mission'" in up.stderr and "trusted on first use" in up.stderr
        booting.join(10)
        run = tflab("run-lab", "--name", "mission", "--python", sys.executable, "--workdir", str(workdir),
                    "--out", str(tmp_path / "results"), "--json", "--steps", "20", env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-4000:]
        report = json.loads(run.stdout)
        assert report["server"]["version"] == 1 and len(report["predictions"]) == 7
        assert processes_mentioning(str(workdir)) != []  # the services run on the host after run-lab
        down = tflab("down", "--name", "mission", "--yes", "--json", env=env, timeout=300)
        assert down.returncode == 0, down.stderr[-3000:]
        assert json.loads(down.stdout)["clean"] is True
        assert "stopped the lab's services" in down.stderr
        ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint)
        tagged = [{"Name": "tag:tflab:lab", "Values": ["mission"]}]
        live = [i for r in ec2.describe_instances(Filters=tagged)["Reservations"] for i in r["Instances"]
                if i["State"]["Name"] != "terminated"]
        assert live == [] and ec2.describe_security_groups(Filters=tagged)["SecurityGroups"] == []
        assert ec2.describe_key_pairs(Filters=tagged)["KeyPairs"] == []
        wait_until(lambda: processes_mentioning(str(workdir)) == [], 15, what="the lab's services to stop")
    finally:
        authorized.write_text(original)
        server.stop()


def test_a_failing_step_stops_the_run_and_leaves_the_services_up(sshd, tmp_path):
    workdir = tmp_path / "failing"
    (workdir / "steps-report.json").mkdir(parents=True)  # the steps cannot write their report
    proc = tflab("run-lab", *host_args(sshd, tmp_path), "--accept-new-host-key", "--python", sys.executable,
                 "--workdir", str(workdir), "--out", str(tmp_path / "out"), "--steps", "5", timeout=600)
    try:
        assert proc.returncode == 6, proc.stderr[-3000:]
        assert "tflab: error: lab steps: exited with status 1" in proc.stderr and "IsADirectoryError" in proc.stderr
        running = processes_mentioning(str(workdir))
        assert any("model_server.py" in p for p in running) and any("tensorboard" in p for p in running)
    finally:
        target = SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(tmp_path / "known_hosts"))
        with Connection(target) as conn:
            SshHost(conn).stop_all_services(f"{workdir}/services")
    assert processes_mentioning(str(workdir)) == []


def test_a_host_whose_sshd_does_not_forward_fails_at_once_and_says_why(tmp_path):
    hardened = Sshd(tmp_path / "sshd", ports.free_port(), allow_forwarding=False).start()
    workdir = tmp_path / "hardened"
    try:
        proc = tflab("run-lab", *host_args(hardened, tmp_path), "--accept-new-host-key", "--python", sys.executable,
                     "--workdir", str(workdir), "--out", str(tmp_path / "out"), "--steps", "5", timeout=600)
        assert proc.returncode == 5, proc.stderr[-3000:]
        # Said once connected, before anything is pushed or installed there (not after the bootstrap and the
        # training, when the tunnels are first used, nor after the serving wait's limit).
        assert "does not allow TCP forwarding" in proc.stderr and "AllowTcpForwarding yes" in proc.stderr
        assert "pushing remote/" not in proc.stderr and "bootstrap" not in proc.stderr, proc.stderr
        assert "within 120 s" not in proc.stderr and not workdir.exists()
    finally:
        target = SshTarget("127.0.0.1", hardened.user, hardened.port, str(hardened.user_key), str(tmp_path / "known_hosts"))
        with Connection(target) as conn:
            SshHost(conn).stop_all_services(f"{workdir}/services")
        hardened.stop()
    assert processes_mentioning(str(workdir)) == []


class _OnATerminal:
    """`tflab run-lab` on a pty (as a user runs it), read as it writes."""

    def __init__(self, lab_host, sshd, out: str):
        import pty

        _, _, _, workdir, tmp = lab_host
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "tflab", "run-lab", *host_args(sshd, tmp), "--python",
                                      sys.executable, "--workdir", str(workdir), "--out", str(tmp / out), "--steps", "5"],
                                     stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = bytearray()

    def read_until(self, text: bytes) -> bool:
        import select

        while text not in self.seen:
            exited = self.proc.poll() is not None  # then what it wrote last is still to be read
            if not select.select([self.master], [], [], 0 if exited else 0.5)[0]:
                return False
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the pty's other end is closed and drained
                return False
            if not chunk:
                return False
            self.seen.extend(chunk)
        return True

    def wait_for(self, text: bytes, timeout: float, what: str) -> None:
        wait_until(lambda: self.read_until(text), timeout, interval=0, what=what)

    def tensorboard_url(self) -> str:
        line = next(l for l in self.text.splitlines() if "tunnels open:" in l)
        return line.split("tensorboard ")[1].split(",")[0].strip()

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        os.close(self.master)


def test_on_a_terminal_the_tunnels_stay_open_until_ctrl_c(lab_host, sshd):
    run = _OnATerminal(lab_host, sshd, "tty-results")
    try:
        run.wait_for(b"Ctrl-C to close them", 300, what="run-lab to keep the tunnels open")
        tensorboard = run.tensorboard_url()
        assert "run-" in "".join(http_json(tensorboard + "data/runs"))  # still forwarding after the report
    finally:
        run.close()
    assert run.proc.returncode == 0, run.text[-2000:]
    port = int(tensorboard.rsplit(":", 1)[1].strip("/"))
    assert ports.is_free(port)  # the tunnel closed with the command


def test_on_a_terminal_a_dropped_tunnel_is_said_with_how_to_reach_the_services_again(lab_host, sshd):
    import signal

    run = _OnATerminal(lab_host, sshd, "tty-drop-results")
    try:
        run.wait_for(b"Ctrl-C to close them", 300, what="run-lab to keep the tunnels open")
        children = open(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children").read().split()
        ssh = [pid for pid in children if open(f"/proc/{pid}/comm").read().strip() == "ssh"]
        assert len(ssh) == 1, children  # the forwards run in the system's ssh (TFLAB_TUNNEL_CLIENT=auto)
        os.kill(int(ssh[0]), signal.SIGKILL)  # as when the network goes
        run.wait_for(b"dropped; the services keep running there", 30, what="run-lab to say the tunnels dropped")
        run.proc.wait(30)
        run.read_until(b"forwards them again")  # the rest of the line, written just before it exits
    finally:
        run.close()
    assert run.proc.returncode == 0, run.text[-2000:]
    assert "tflab tunnel" in run.text.split("dropped; the services keep running there")[1]  # how to reach them again
