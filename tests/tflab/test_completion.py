"""Shell completion as a shell asks for it: typer's bash protocol in a subprocess (the completion variable
_TFLAB_COMPLETE=complete_bash with COMP_WORDS and COMP_CWORD), lab names from the local state."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tflab.state import LabState, StateStore

HEAVY = ("tensorflow", "grpc", "boto3", "botocore", "paramiko", "sshtunnel", "numpy")


@pytest.fixture
def home(tmp_path):
    """A state home holding two labs (and a folder that is not a lab)."""
    store = StateStore(tmp_path / "home")
    for name in ("gpu-lab", "cpu-lab"):
        store.save(LabState(name=name, region="us-west-2"))
    (store.home / "labs" / "leftover").mkdir()  # no state file: not offered
    return store.home


def complete(line: str, home, *, importtime: bool = False) -> tuple[list[str], str]:
    """What `tflab` offers for the last word of line (bash's COMP_WORDS/COMP_CWORD), and its stderr."""
    words = line.split(" ")
    env = {**os.environ, "TFLAB_HOME": str(home), "_TFLAB_COMPLETE": "complete_bash",
           "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
    proc = subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "tflab"],
                          capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout.split(), proc.stderr


@pytest.mark.parametrize("command", ["ssh", "tunnel", "ssh-config", "status", "down", "up"])
def test_name_completes_the_labs_in_the_local_state(home, command):
    assert complete(f"tflab {command} --name ", home)[0] == ["cpu-lab", "gpu-lab"]
    assert complete(f"tflab {command} --name g", home)[0] == ["gpu-lab"]
    assert complete(f"tflab {command} --name x", home)[0] == []


def test_commands_and_options_complete_too(home):
    assert complete("tflab ssh-", home)[0] == ["ssh-config"]
    assert "--name" in complete("tflab down --n", home)[0]


def test_completion_imports_no_heavy_library(home):
    offered, stderr = complete("tflab status --name ", home, importtime=True)
    assert offered == ["cpu-lab", "gpu-lab"]
    imported = {m.group(1).strip().split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", stderr, re.M)}
    assert imported, "importtime printed nothing"
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_an_unusable_state_home_offers_nothing_quietly(tmp_path):
    (tmp_path / "a-file").write_text("")
    assert complete("tflab ssh --name ", tmp_path / "a-file") == ([], "")
    assert complete("tflab ssh --name ", tmp_path / "missing") == ([], "")


def test_show_and_install_completion_for_bash(tmp_path):
    # typer's own switch for tests: the shell is named instead of detected from the parent process
    env = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([sys.executable, "-m", "tflab", "--show-completion", "bash"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "_TFLAB_COMPLETE=complete_bash" in shown.stdout and re.search(r"complete .*\btflab\b", shown.stdout)
    installed = subprocess.run([sys.executable, "-m", "tflab", "--install-completion", "bash"], capture_output=True,
                               text=True, env=env, timeout=60)
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "tflab.sh"
    assert script.read_text().strip() == shown.stdout.strip()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()
