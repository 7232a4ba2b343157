"""The CLI as a user runs it: start-up cost, exit codes, one-line errors with hints."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import tflab
from tflab import ports

HEAVY = ("tensorflow", "grpc", "boto3", "botocore", "paramiko", "sshtunnel", "numpy", "moto")


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in
                                  ("run-lab", "serve", "predict", "up", "status", "list", "down",
                                                                "ssh", "tunnel", "ssh-config")])
def test_help_imports_no_heavy_library(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tflab", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "Usage: " in proc.stdout
    imported = {m.group(1).strip().split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", proc.stderr, re.M)}
    assert imported, "importtime printed nothing"
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_help_lists_the_commands_and_documents_the_exit_codes():
    proc = tflab("--help")
    for word in ("up", "run-lab", "down", "status", "list", "serve", "predict", "Exit codes", "130 interrupted"):
        assert word in proc.stdout


def assert_one_line_error(proc, code: int, *fragments: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("tflab: error: ")]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_run_lab_without_a_lab_says_what_to_do(tmp_path):
    proc = tflab("run-lab", cwd=tmp_path, env={"TFLAB_HOME": str(tmp_path / "home")})
    assert_one_line_error(proc, 7, "no lab named 'lab' on this machine", "`tflab up` makes one", "--local runs the lab here")
    assert not any(p.name != "home" for p in tmp_path.iterdir())


@pytest.mark.parametrize("args", [["--learning-rate", "0"], ["--steps", "0"], ["--num-examples", "1"], ["--bogus"]])
def test_bad_run_lab_options_are_usage_errors(tmp_path, args):
    proc = tflab("run-lab", "--local", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.parametrize("args, env", [(["--client", "putty"], {}), ([], {"TFLAB_TUNNEL_CLIENT": "putty"})])
def test_an_unknown_tunnel_client_is_a_usage_error(tmp_path, args, env):
    proc = tflab("tunnel", "--host", "me@127.0.0.1:1", *args, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "'putty' is not one of 'auto', 'openssh', 'paramiko'" in proc.stderr, proc.stderr


def test_predict_with_no_server_is_a_one_line_error():
    port = ports.free_port()
    proc = tflab("predict", "1", "--address", f"127.0.0.1:{port}", "--timeout", "2")
    assert_one_line_error(proc, 5, f"no answer from a model server at 127.0.0.1:{port}", "hint: start one with")


def test_serve_refuses_a_missing_folder_and_a_taken_port(tmp_path):
    proc = tflab("serve", "--model-base-path", str(tmp_path / "nope"))
    assert_one_line_error(proc, 3, "is not a folder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = tflab("serve", "--model-base-path", str(tmp_path), "--port", str(port), "--rest-port", "0")
    assert_one_line_error(proc, 3, f"port {port} for the model server is already in use", "--port")
