"""remote/bootstrap.sh chooses how to serve the way tflab then runs it.

No Docker engine or GPU runs here, so `nvidia-smi`, `docker` and `sudo` are small programs on PATH
that behave as on a Deep Learning AMI whose Docker needs (or does not need) sudo; the bootstrap
itself, and the command tflab.serving builds from what it recorded, are the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REMOTE
from tflab.host import LocalHost
from tflab.serving import server_command

FAKES = {
    "nvidia-smi": 'echo "GPU 0: Tesla T4 (UUID: GPU-fake)"',
    # Docker answers root only (as when the user is not in the docker group), or everyone.
    "docker": 'echo "docker $*" >> "$FAKE_LOG"\n'
              'if [ "${FAKE_DOCKER_OPEN:-0}" = 1 ] || [ "${FAKE_AS_ROOT:-0}" = 1 ]; then exit 0; fi\n'
              'echo "permission denied while trying to connect to the Docker daemon socket" >&2; exit 1',
    "sudo": '[ "$1" = -n ] && shift\nFAKE_AS_ROOT=1 exec "$@"',
}


def bootstrap(tmp_path: Path, docker_open: bool) -> tuple[str, str]:
    """Run the real bootstrap with the fake GPU host on PATH; returns (recorded serving kind, docker log)."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, body in FAKES.items():
        (fakes / name).write_text("#!/bin/sh\n" + body + "\n")
        (fakes / name).chmod(0o755)
    workdir, log = tmp_path / "work", tmp_path / "docker.log"
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_DOCKER_OPEN": "1" if docker_open else "0"}
    # /bin/true stands in for a Python that has everything (the interpreter is not what is tested here).
    proc = subprocess.run(["bash", str(REMOTE / "bootstrap.sh"), str(workdir), "/bin/true"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (workdir / "serving").read_text().strip(), log.read_text()


@pytest.mark.parametrize("docker_open, kind, prefix", [(True, "docker-gpu", "docker"),
                                                       (False, "docker-gpu-sudo", "sudo -n docker")])
def test_docker_is_probed_and_run_the_same_way(tmp_path, docker_open, kind, prefix):
    recorded, calls = bootstrap(tmp_path, docker_open)
    assert recorded == kind
    assert "docker pull -q tensorflow/serving:latest-gpu" in calls
    command = server_command(LocalHost(), model_base_path="/m/nn", port=9000, rest_port=8501, kind=recorded)
    script = command.argv[-1]
    # The server is started with the same docker as the probe, and published on loopback only.
    assert script.startswith(f"{prefix} rm -f tflab-serving") and f"exec {prefix} run --rm" in script
    assert "-p 127.0.0.1:9000:8500 -p 127.0.0.1:8501:8501" in script
    assert command.listen == "127.0.0.1" and command.exposure() is None


def test_the_real_binary_is_said_to_listen_on_every_interface(tmp_path):
    class WithBinary(LocalHost):
        def which(self, program):
            return "/usr/bin/tensorflow_model_server" if program == "tensorflow_model_server" else None

    binary = server_command(WithBinary(), model_base_path="/m/nn", port=9000, rest_port=8501)
    assert binary.kind == "tensorflow_model_server" and binary.listen == "0.0.0.0"
    assert "every interface" in binary.exposure() and "9000 and 8501" in binary.exposure()
    assert "gRPC 0.0.0.0:9000" in binary.describe()
    builtin = server_command(WithBinary(), model_base_path="/m/nn", port=9000, prefer_builtin=True)
    assert builtin.kind == "builtin" and builtin.exposure() is None and "--host=127.0.0.1" in builtin.argv


APT_FAKES = {
    # apt-get records each call and whether the dpkg lock was free when it ran (dpkg's own check: lockf).
    "apt-get": 'python3 -c \'import fcntl, sys\nf = open(sys.argv[1], "a")\n'
               'try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print("free")\n'
               'except OSError:\n    print("locked")\' "$TFLAB_DPKG_LOCK" >> "$FAKE_LOG"\necho "apt-get $*" >> "$FAKE_LOG"',
    "apt-cache": 'echo "tensorflow-model-server:\n  Installed: (none)\n  Candidate: 2.16.1"',
}


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """A process holding dpkg's lock as dpkg holds it (an fcntl write lock) for seconds; it prints once held."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\ntime.sleep(float(sys.argv[2]))", str(path), str(seconds)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def bootstrap_with_apt(tmp_path: Path, lock: Path, wait: int) -> tuple[subprocess.CompletedProcess, str, str]:
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, body in APT_FAKES.items():
        (fakes / name).write_text("#!/bin/sh\n" + body + "\n")
        (fakes / name).chmod(0o755)
    workdir, log = tmp_path / "work", tmp_path / "apt.log"
    log.touch()
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "TFLAB_DPKG_LOCK": str(lock), "TFLAB_APT_LOCK_WAIT": str(wait)}
    env.pop("SUDO_USER", None)
    proc = subprocess.run(["bash", str(REMOTE / "bootstrap.sh"), str(workdir), "/bin/true"], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, (workdir / "bootstrap.log").read_text(), log.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="apt runs as root (the bootstrap's sudo -n otherwise)")
def test_apt_waits_for_the_dpkg_lock_and_says_so(tmp_path):
    lock = tmp_path / "lock-frontend"
    holder = hold_lock(lock, 3)  # unattended-upgrades at first boot, for a few seconds
    try:
        proc, said, calls = bootstrap_with_apt(tmp_path, lock, wait=60)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"the dpkg lock ({lock}) is held" in said and "waiting for it, at most 60 s" in said
    assert "the dpkg lock is free (after" in said
    # apt-get ran once the lock was free, and installed the serving package
    assert calls.splitlines()[:2] == ["free", "apt-get -o DPkg::Lock::Timeout=60 install -y -qq tensorflow-model-server"]
    assert (tmp_path / "work" / "serving").read_text().strip() == "binary"


@pytest.mark.skipif(os.geteuid() != 0, reason="apt runs as root (the bootstrap's sudo -n otherwise)")
def test_apt_waits_for_the_dpkg_lock_within_a_limit(tmp_path):
    lock = tmp_path / "lock-frontend"
    holder = hold_lock(lock, 60)
    try:
        proc, said, calls = bootstrap_with_apt(tmp_path, lock, wait=2)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the stand-in serves instead
    assert "error: the dpkg lock is still held after 2 s; not run: apt-get install -y -qq tensorflow-model-server" \
        in said
    assert calls == ""  # apt-get never ran while the lock was held
    assert (tmp_path / "work" / "serving").read_text().strip() == "builtin"
