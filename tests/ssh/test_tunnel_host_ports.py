"""`tflab tunnel` and `tflab ssh-config` reach the lab's services on the ports the host chose for them
(run-lab's <workdir>/services/ports.json), not the lab's defaults: on a host where 9000 was taken, the
tunnel must not reach whatever else listens there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from tests.conftest import tflab, wait_until
from tflab.client import ServingClient
from tflab.ssh import Connection, SshTarget
from tflab.sshhost import SshHost
from tflab.state import LabState, StateStore
from tests.ssh.conftest import host_args

pytestmark = pytest.mark.slow

SQUATTER = """
import socket, time
from tflab import ports
deadline = time.monotonic() + 240  # another test's lab may hold 9000 meanwhile: it ends within that
while ports.choose({"squat": 9000}) != {"squat": 9000} and time.monotonic() < deadline:
    time.sleep(0.5)
s = socket.socket()
s.bind(("127.0.0.1", 9000))
s.listen()
print("listening", flush=True)
time.sleep(900)
"""


@pytest.fixture(scope="module")
def moved_lab(sshd, tmp_path_factory):
    """run-lab on a host where port 9000 is taken (by a listener that is not a model server):
    (report, workdir, tmp)."""
    tmp = tmp_path_factory.mktemp("moved")
    workdir = tmp / "host-workdir"
    # The squatter claims 9000 as a lab would before it listens: the labs of the tests running meanwhile on other
    # workers (remote/choose_ports.py) then neither take it from the squatter nor lose it to it.
    squatter = subprocess.Popen([sys.executable, "-c", SQUATTER], stdout=subprocess.PIPE, text=True)
    assert squatter.stdout.readline() == "listening\n"
    try:
        proc = tflab("run-lab", *host_args(sshd, tmp), "--accept-new-host-key", "--python", sys.executable,
                     "--workdir", str(workdir), "--out", str(tmp / "results"), "--json", "--seed", "3",
                     "--steps", "20", timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads(proc.stdout)
        assert report["host"]["ports"]["serving"] != 9000
        assert "port 9000 (model server gRPC) is taken" in proc.stderr
        yield report, workdir, tmp
    finally:
        target = SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(tmp / "known_hosts"))
        with Connection(target) as conn:
            SshHost(conn).stop_all_services(f"{workdir}/services")
        squatter.kill()
        squatter.wait()


def test_tunnel_forwards_to_the_port_the_hosts_model_server_really_uses(moved_lab, sshd):
    report, workdir, tmp = moved_lab
    chosen = report["host"]["ports"]
    proc = subprocess.Popen([sys.executable, "-m", "tflab", "tunnel", *host_args(sshd, tmp), "--workdir", str(workdir),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list[dict] = []
    lines: list[str] = []
    readers = [threading.Thread(target=lambda: events.extend(json.loads(line) for line in proc.stdout), daemon=True),
               threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: events, 60, what="the tunnel's --json line")
        forwards = events[0]["forwards"]
        assert {name: forwards[name]["remote_port"] for name in chosen if chosen[name]} == \
               {name: port for name, port in chosen.items() if port}
        assert any("port 9000 was taken on the host" in line for line in lines), lines
        local = forwards["serving"]["local"]
        with ServingClient(local, timeout=10.0) as client:  # the lab's model, not the listener on 9000
            result = client.predict([0.0, 1.0])
        t = report["training"]
        assert result.version == report["server"]["version"]
        assert result.outputs == pytest.approx([t["intercept"], t["slope"] + t["intercept"]], rel=1e-5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        for reader in readers:
            reader.join(5)
    assert proc.returncode == 0, "".join(lines)


def test_ssh_config_forwards_the_ports_the_labs_host_chose(moved_lab, sshd, tmp_path):
    report, workdir, _ = moved_lab
    home = tmp_path / "home"
    store = StateStore(home)
    kind, fp = sshd.host_fingerprint
    store.save(LabState(name="moved", region="us-west-2", instance_id=None, ssh_host="127.0.0.1",
                        ssh_port=sshd.port, ssh_user=sshd.user, key_path=str(sshd.user_key),
                        host_key_fingerprints={kind: fp}, workdir=str(workdir)))
    env = {"TFLAB_HOME": str(home)}
    before = tflab("ssh-config", "--name", "moved", env=env)  # no known_hosts yet: the lab's own ports, said so
    assert before.returncode == 0 and "LocalForward 127.0.0.1:9000 127.0.0.1:9000" in before.stdout
    assert tflab("ssh", "--name", "moved", "--", "true", env=env).returncode == 0  # pins the host key
    config = tflab("ssh-config", "--name", "moved", env=env)
    assert config.returncode == 0, config.stderr
    chosen = report["host"]["ports"]
    assert f"LocalForward 127.0.0.1:9000 127.0.0.1:{chosen['serving']}" in config.stdout
    assert f"LocalForward 127.0.0.1:8000 127.0.0.1:{chosen['jupyter']}" in config.stdout
    assert "127.0.0.1:9000 127.0.0.1:9000" not in config.stdout
