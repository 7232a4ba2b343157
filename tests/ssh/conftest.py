"""A real sshd on 127.0.0.1 for each test module, and targets for it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.conftest import cheap_to_repeat, wait_until
from tests.sshd import SSHD, Sshd
from tflab import ports
from tflab.ssh import SshTarget

if not __import__("os").path.exists(SSHD):  # scripts/install.sh --test installs openssh-server
    raise RuntimeError(f"{SSHD} is missing: run `bash scripts/install.sh --test`")


@pytest.fixture(scope="module")
@cheap_to_repeat
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"), ports.free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def target(sshd, tmp_path):
    """A target for the module's sshd that pins its host key (as a lab made by `up` does)."""
    kind, fp = sshd.host_fingerprint
    return SshTarget(host="127.0.0.1", port=sshd.port, user=sshd.user, identity=str(sshd.user_key),
                     known_hosts=str(tmp_path / "known_hosts"), pinned={kind: fp}, label="test host")


@pytest.fixture(scope="module")
@cheap_to_repeat
def aws():
    """AWS at a tripwire (AWS_ENDPOINT_URL): a test sees whether any AWS call was tried."""
    from tests.tflab.test_bad_input import Tripwire

    wire = Tripwire()
    yield wire
    wire.stop()


HOST_LAB = "mybox"


def ports_of_its_own(home, key: str) -> None:
    """Remember local ports for the lab `key` in the state home, as an earlier run of it would have: fresh ones
    from the system instead of the lab's defaults (8000, 6006, 9000, 8501), which every lab on this machine asks
    for. Labs run on the other workers at the same time: one may take a default port in the moment between two of
    this lab's tunnels, which then rightly move ("where free"), and a test that asserts the same URL twice would
    fail for a reason that is not tflab's."""
    from tflab.labs import remember_local_ports
    from tflab.state import StateStore

    remember_local_ports(key, {name: ports.free_port() for name in ports.LAB_PORTS}, StateStore(home))


@pytest.fixture(scope="module")
def host_lab(sshd, tmp_path_factory, aws):
    """`run-lab --host ... --name mybox --detach` with its own state home and AWS at the tripwire:
    .report (run-lab's JSON), .workdir (on the host, which is this machine), .tmp, .env."""
    from types import SimpleNamespace

    from tests.conftest import tflab

    tmp = tmp_path_factory.mktemp("hostlab")
    workdir = tmp / "host-workdir"
    env = {"TFLAB_HOME": str(tmp / "home"), "AWS_ENDPOINT_URL": aws.url, "AWS_MAX_ATTEMPTS": "1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-west-2"}
    lab = SimpleNamespace(report=None, workdir=workdir, tmp=tmp, env=env)
    ports_of_its_own(tmp / "home", HOST_LAB)
    try:
        proc = tflab("run-lab", *host_args(sshd, tmp), "--name", HOST_LAB, "--accept-new-host-key", "--python",
                     sys.executable, "--workdir", str(workdir), "--out", str(tmp / "results"), "--json", "--seed", "5",
                     "--steps", "20", "--detach", env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        lab.report = json.loads(proc.stdout)
        yield lab
    finally:
        stop_lab_services(lab, sshd)


def lab_connection(lab, sshd):
    """A Connection to the host lab's machine (the suite's sshd), made by the test itself."""
    from tflab.ssh import Connection

    return Connection(SshTarget("127.0.0.1", sshd.user, sshd.port, str(sshd.user_key), str(lab.tmp / "known_hosts")))


def stop_lab_services(lab, sshd) -> None:
    """What a host lab's idle watchdog (or a reboot) does: the lab's services stop; its files stay."""
    from tflab.sshhost import SshHost

    with lab_connection(lab, sshd) as conn:
        SshHost(conn).stop_all_services(f"{lab.workdir}/services")


def unpinned(target: SshTarget, **changes) -> SshTarget:
    return dataclasses.replace(target, pinned={}, **changes)


def host_args(sshd, tmp) -> list[str]:
    """`--host` options that reach the suite's sshd as its user, with a known_hosts file under tmp."""
    return ["--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity", str(sshd.user_key),
            "--known-hosts", str(tmp / "known_hosts")]


class TunnelProcess:
    """`tflab tunnel --json` (or another command that forwards until Ctrl-C: `open`) in the background, its
    JSON lines and its log read as they come."""

    def __init__(self, args: list[str], env: dict, command: str = "tunnel"):
        self.proc = subprocess.Popen([sys.executable, "-m", "tflab", command, *args, "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **env})
        self.events: list[dict] = []
        self.lines: list[str] = []
        self.readers = [threading.Thread(target=lambda: self.events.extend(json.loads(l) for l in self.proc.stdout),
                                         daemon=True),
                        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)]
        for reader in self.readers:
            reader.start()

    def forwards(self, timeout: float = 60) -> dict:
        wait_until(lambda: self.events or self.proc.poll() is not None, timeout, what="the tunnel's --json line")
        if not self.events:  # it exited: say why
            for reader in self.readers:
                reader.join(5)
            raise AssertionError(f"exited {self.proc.returncode}: " + "".join(self.lines))
        return self.events[0]["forwards"]

    def close(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        for reader in self.readers:
            reader.join(5)
        return self.proc.returncode
