"""remote/bootstrap.sh chooses how to serve the way tflab then runs it.

No Docker engine or GPU runs here, so `nvidia-smi`, `docker` and `sudo` are small programs on PATH
that behave as on a Deep Learning AMI whose Docker needs (or does not need) sudo; the bootstrap
itself, and the command tflab.serving builds from what it recorded, are the real ones.
"""

from __future__ import annotations

import os
import subprocess
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
