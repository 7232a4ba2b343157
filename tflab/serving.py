"""Serving the exported model: the real `tensorflow_model_server` when a host has it, else
tflab's stand-in (remote/model_server.py), started with the same flags either way."""

from __future__ import annotations

import os
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tflab.host import Host

if TYPE_CHECKING:
    from tflab.console import Console

REAL_BINARY = "tensorflow_model_server"
BUILTIN = "builtin"
DOCKER_GPU = "tensorflow/serving:latest-gpu"
DOCKER_NAME = "tflab-serving"
# What remote/bootstrap.sh records in WORKDIR/serving for Docker, and how that Docker is run.
DOCKER_KINDS = {"docker-gpu": ["docker"], "docker-gpu-sudo": ["sudo", "-n", "docker"]}


@dataclass(frozen=True)
class ServerCommand:
    """Which server will serve, and the command line that starts it."""

    kind: str  # "tensorflow_model_server" | "tensorflow/serving:latest-gpu" | "builtin"
    argv: list[str]
    port: int
    rest_port: int
    model_name: str
    model_base_path: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def listen(self) -> str:
        """The address the server listens on, on its host. tensorflow_model_server has no option to bind
        to loopback: it listens on every interface (tensorflow_serving/model_servers/server.cc builds
        "0.0.0.0:" + grpc_port). Docker publishes on 127.0.0.1 and the stand-in binds there."""
        return "0.0.0.0" if self.kind == REAL_BINARY else "127.0.0.1"

    def describe(self) -> str:
        what = {REAL_BINARY: "TensorFlow Serving (tensorflow_model_server)",
                DOCKER_GPU: f"TensorFlow Serving on the GPU ({DOCKER_GPU} in Docker)"}.get(
            self.kind, "tflab's built-in stand-in server (tensorflow_model_server is not installed)")
        rest = f", REST {self.listen}:{self.rest_port}" if self.rest_port else ""
        return f"{what} serving '{self.model_name}' from {self.model_base_path} on gRPC {self.listen}:{self.port}{rest}"

    def exposure(self) -> str | None:
        """A warning when the server is reachable from other machines, else None."""
        if self.listen == "127.0.0.1":
            return None
        ports = f"{self.port}" + (f" and {self.rest_port}" if self.rest_port else "")
        return (f"{REAL_BINARY} listens on every interface of its host (it has no option to bind to 127.0.0.1): "
                f"whoever reaches that host on port {ports} can call the model; a lab made by `tflab up` lets "
                "only SSH through its security group, elsewhere close the ports with a firewall or use "
                "--builtin-server")


def server_command(host: Host, *, model_base_path: str, model_name: str = "nn", port: int = 9000,
                   rest_port: int = 0, poll_seconds: float = 1.0, prefer_builtin: bool = False,
                   kind: str | None = None) -> ServerCommand:
    """The command that serves model_base_path on host.

    kind is what the host's bootstrap found ("docker-gpu", "binary" or "builtin"); without it, the
    real binary when it is on PATH, else the stand-in.
    """
    flags = [f"--port={port}", f"--model_name={model_name}", f"--model_base_path={model_base_path}",
             f"--file_system_poll_wait_seconds={poll_seconds:g}"]
    if rest_port:
        flags.append(f"--rest_api_port={rest_port}")
    if kind in DOCKER_KINDS and not prefer_builtin:
        # The image serves gRPC on 8500 and REST on 8501; publish them on the host's loopback only.
        # Docker runs the way the bootstrap found it answers: as the user, or through `sudo -n`.
        docker = DOCKER_KINDS[kind]
        publish = ["-p", f"127.0.0.1:{port}:8500"] + (["-p", f"127.0.0.1:{rest_port}:8501"] if rest_port else [])
        run = [*docker, "run", "--rm", "--name", DOCKER_NAME, "--gpus", "all", *publish,
               "-v", f"{model_base_path}:/models/{model_name}", "-e", f"MODEL_NAME={model_name}", DOCKER_GPU,
               f"--file_system_poll_wait_seconds={poll_seconds:g}"]
        script = f"{shlex.join(docker)} rm -f {DOCKER_NAME} >/dev/null 2>&1; exec " + shlex.join(run)
        return ServerCommand(DOCKER_GPU, ["sh", "-c", script], port, rest_port, model_name, model_base_path)
    binary = None if prefer_builtin or kind == "builtin" else host.which(REAL_BINARY)
    if binary:
        return ServerCommand(REAL_BINARY, [binary, *flags], port, rest_port, model_name, model_base_path)
    script = posixpath.join(host.remote_dir, "model_server.py")
    return ServerCommand(BUILTIN, [host.python, script, *flags, "--host=127.0.0.1"], port, rest_port, model_name,
                         model_base_path)


def quiet_tensorflow_env() -> dict[str, str]:
    """Environment that keeps TensorFlow's C++ start-up chatter out of logs and consoles."""
    return {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), "PYTHONUNBUFFERED": "1"}


def serve_here(model_base_path: Path, *, model_name: str, port: int, rest_port: int, builtin: bool,
               extra: list[str], console: Console) -> None:
    """`tflab serve`: serve a SavedModel's version folders on this machine until Ctrl-C (TensorFlow Serving when
    installed, else the stand-in); extra flags go to the server as given. Checked first: the folder, the model's
    name, the ports (a taken one is PortInUseError)."""
    import re
    import signal
    import subprocess

    from tflab import ports
    from tflab.errors import InputError, PortInUseError, TflabError
    from tflab.host import LocalHost, tied_to_this_process

    if not str(model_base_path).strip() or str(model_base_path) == ".":
        raise InputError("--model-base-path is empty", hint="give the folder that holds the version folders, "
                                                             "e.g. tflab-results/local/models/nn")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model_name):
        raise InputError(f"--model-name {model_name!r} is not a model name",
                         hint="use letters, digits, '.', '_' and '-', e.g. nn")
    base = model_base_path.resolve()
    if not base.is_dir():
        raise InputError(f"{base} is not a folder", hint="give the folder that holds the version folders, e.g. .../models/nn")
    for p, option in ((port, "--port"), (rest_port, "--rest-port")):
        if p and not ports.is_free(p):
            raise PortInUseError(p, "the model server", option)
    command = server_command(LocalHost(), model_base_path=str(base), model_name=model_name, port=port,
                             rest_port=rest_port, prefer_builtin=builtin)
    versions = sorted(int(n.name) for n in base.iterdir() if n.name.isdigit())
    console.info(command.describe())
    if command.exposure():
        console.warn(command.exposure())
    if not versions:
        console.note(f"no version folder in {base} yet; the server will load the first one that appears")
    # The server is killed when tflab dies, however it dies (parent-death signal); a signal here stops it first.
    proc = subprocess.Popen(tied_to_this_process([*command.argv, *extra]), env={**os.environ, **quiet_tensorflow_env()})
    try:
        status = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return
    if status not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise TflabError(f"the model server exited with status {status}", hint="its output is above")
