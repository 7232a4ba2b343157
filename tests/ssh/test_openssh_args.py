"""One place builds the system `ssh`'s options (tflab.ssh.openssh_options): the interactive `tflab ssh`,
the tunnels' `ssh -N -L` and `tflab ssh-config` all carry them, and OpenSSH itself reads them as meant
(`ssh -G` prints the options it would use, without connecting)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import pytest

from tflab.ssh import SshTarget, openssh_argv, openssh_config, openssh_options, openssh_value
from tflab.tunnels import _OpenSsh

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="no OpenSSH client on PATH")


@pytest.fixture
def odd_folder(tmp_path):
    """A folder whose path has a space and a '%' (ssh would read '%c' as a token)."""
    folder = tmp_path / "my keys %c dir"
    folder.mkdir()
    return folder


def _cli():
    """tflab.cli, imported here: typer 0.24 imports names that click 8.5 deprecates (a warning, not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from tflab import cli
    return cli


def effective(argv: list[str]) -> dict[str, str]:
    """What `ssh -G` says it would use for this argv (the first value of each keyword)."""
    proc = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        seen.setdefault(key, value)
    return seen


def test_values_are_escaped_and_quoted_only_when_they_need_it():
    assert openssh_value("/home/me/.ssh/known_hosts") == "/home/me/.ssh/known_hosts"
    assert openssh_value("/a b/%h") == '"/a b/%%h"'
    assert openssh_value('/x"y') == '"/x\\"y"'
    assert openssh_value("") == '""'


@needs_ssh
def test_the_interactive_shell_execs_ssh_with_the_shared_options(monkeypatch, odd_folder):
    known, key = odd_folder / "known hosts", odd_folder / "id key"
    executed: list[list[str]] = []

    class FakeConnection:
        host_key_note = None

        def __init__(self, target):
            self.target = target

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def open(self):
            return self

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("tflab.ssh.Connection", FakeConnection)
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr("shutil.which", lambda program: SSH)
    monkeypatch.setattr("os.execv", lambda program, argv: executed.append([program, *argv]))
    _cli().ssh(command=None, name="lab", host="me@127.0.0.1:2222", identity=str(key), known_hosts=str(known),
            accept_new_host_key=False)

    [(program, *argv)] = executed
    assert program == SSH and argv[:3] == [SSH, "-F", "none"] and argv[-2:] == ["--", "127.0.0.1"]
    for option in ("StrictHostKeyChecking=yes", "GlobalKnownHostsFile=/dev/null", "UpdateHostKeys=no",
                   "IdentitiesOnly=yes", f'UserKnownHostsFile="{str(known).replace("%", "%%")}"',
                   f'IdentityFile="{str(key).replace("%", "%%")}"'):
        assert option in argv
    said = effective(argv)
    assert said["stricthostkeychecking"] == "true"
    assert said["userknownhostsfile"] == str(known)  # the space kept, '%c' not expanded
    assert said["globalknownhostsfile"] == "/dev/null"
    assert (said["user"], said["hostname"], said["port"]) == ("me", "127.0.0.1", "2222")


@needs_ssh
def test_the_tunnels_carry_the_same_options_plus_their_own(odd_folder):
    target = SshTarget("127.0.0.1", "me", 2222, identity=str(odd_folder / "id"), known_hosts=str(odd_folder / "kh"))
    client = _OpenSsh(SSH, target, [("127.0.0.1", 18000, 8888)], tunnels=None)
    try:
        argv = client.argv()
    finally:
        shutil.rmtree(client._folder, ignore_errors=True)
    assert argv[:3] == [SSH, "-F", "none"] and argv[-2:] == ["--", "127.0.0.1"]
    assert "-N" in argv and argv[argv.index("-L") + 1] == "127.0.0.1:18000:127.0.0.1:8888"
    for key, value in openssh_options(target).items():
        assert f"{key}={value}" in argv
    assert "BatchMode=yes" in argv and "ExitOnForwardFailure=yes" in argv
    said = effective(argv)
    assert said["stricthostkeychecking"] == "true" and said["batchmode"] == "yes"
    assert said["userknownhostsfile"] == str(odd_folder / "kh")
    assert said["localforward"] == "[127.0.0.1]:18000 [127.0.0.1]:8888"


@needs_ssh
def test_the_config_block_means_what_the_command_line_means(tmp_path, odd_folder):
    target = SshTarget("127.0.0.1", "me", 2222, identity=str(odd_folder / "id"), known_hosts=str(odd_folder / "kh"))
    config = tmp_path / "config"
    config.write_text("\n".join(openssh_config("tflab-x", target)) + "\n")
    from_config = effective([SSH, "-F", str(config), "tflab-x"])
    from_argv = effective(openssh_argv(SSH, target))
    for key in ("hostname", "user", "port", "identityfile", "identitiesonly", "userknownhostsfile",
                "globalknownhostsfile", "stricthostkeychecking", "updatehostkeys", "checkhostip", "connecttimeout",
                "serveraliveinterval", "serveralivecountmax"):
        assert from_config[key] == from_argv[key], key
    assert from_config["userknownhostsfile"] == str(odd_folder / "kh")
