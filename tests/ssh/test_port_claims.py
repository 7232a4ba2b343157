"""Two labs on one machine choosing their ports at once (remote/choose_ports.py): a port one lab chose is claimed
until its service binds it, so another lab choosing meanwhile takes another port instead of the same free one
(whose readiness check would then answer from the first lab's server). A claim lasts as long as the SSH session
that made it (on a host) or the tflab process (on this machine), and never makes a choice fail."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REMOTE, wait_until
from tflab import ports
from tflab.console import Console
from tflab.ssh import Connection
from tflab.sshhost import SshHost


def chooser(folder):
    """remote/choose_ports.py, imported as tflab imports it, with its claims in folder."""
    from tflab.paths import remote_module

    module = remote_module("choose_ports")
    return lambda wanted, claimant, avoid=(): module.choose(wanted, avoid, claimant=claimant, folder=str(folder))


@pytest.fixture
def claimant():
    """A process that lives until the test ends it: a lab's claimant."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_port_claimed_by_a_live_lab_is_not_chosen_again_until_its_claimant_ends(tmp_path, claimant):
    choose = chooser(tmp_path / "claims")
    port = ports.free_port()
    assert choose({"serving": port}, claimant.pid) == {"serving": port}
    other = choose({"serving": port}, os.getpid())["serving"]
    assert other != port and ports.is_free(port)  # free, and still not given: the first lab binds it soon
    assert choose({"serving": port}, claimant.pid) == {"serving": port}  # a lab's own claim is its own
    claimant.kill()
    claimant.wait()
    assert choose({"serving": port}, os.getpid()) == {"serving": port}
    assert not any(name.startswith(f"{os.getuid()}.{claimant.pid}.") for name in os.listdir(tmp_path / "claims"))


@pytest.mark.parametrize("damage", ["garbage", "fifo", "huge", "other-users-dead-claimant"])
def test_claims_that_cannot_be_read_are_ignored(tmp_path, damage):
    folder = tmp_path / "claims"
    folder.mkdir(mode=0o1777)
    port = ports.free_port()
    path = folder / f"{os.getuid()}.{os.getpid()}.0.json"
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "fifo":
        os.mkfifo(path)
    elif damage == "huge":
        path.write_text(json.dumps({"ports": [port] * 100000}))
    else:  # a claimant that ended, of another user: its file stays (the folder is sticky), its claim does not
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        (folder / f"{os.getuid() + 1}.{dead}.0.json").write_text(json.dumps({"ports": [port]}))
    assert chooser(folder)({"serving": port}, os.getpid() + 0) == {"serving": port}


@pytest.mark.parametrize("folder_is", ["a-file", "writable-by-all-without-the-sticky-bit", "locked-by-another"])
def test_a_claims_folder_that_cannot_be_trusted_or_is_locked_leaves_the_choice_as_without_claims(tmp_path, folder_is,
                                                                                                    monkeypatch):
    folder = tmp_path / "claims"
    port = ports.free_port()
    if folder_is == "a-file":
        folder.write_text("")
    else:
        folder.mkdir()
        os.chmod(folder, 0o777 if folder_is.startswith("writable") else 0o1777)
        (folder / "9.1.0.json").write_text(json.dumps({"ports": [port]}))  # pid 1 lives: this claim holds
    holder = None
    if folder_is == "locked-by-another":
        from tflab.paths import remote_module

        monkeypatch.setattr(remote_module("choose_ports"), "LOCK_SECONDS", 0.2)
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(folder / 'lock')!r}, os.O_RDONLY | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)""")],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
    try:
        assert chooser(folder)({"serving": port}, os.getpid()) == {"serving": port}
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


def test_a_host_lab_claims_its_ports_for_its_ssh_session(target, tmp_path):
    """run-lab's choice on a host (SshHost.choose_ports, the script over SSH) holds while that lab's SSH session
    lives: a second lab choosing meanwhile gets another port; once the first session closed, the port is given."""
    port = ports.free_port()
    console = Console(err=io.StringIO())
    first = Connection(target)
    try:
        got = SshHost(first, workdir=str(tmp_path / "first")).choose_ports({"serving": port}, console)
        assert got == {"serving": port}
        with Connection(target) as second:
            moved = SshHost(second, workdir=str(tmp_path / "second")).choose_ports({"serving": port}, console)
        assert moved["serving"] != port and ports.is_free(port)
        assert f"port {port} (model server gRPC) is taken" in console.err.getvalue()
    finally:
        first.close()

    def given() -> bool:
        with Connection(target) as third:
            return SshHost(third, workdir=str(tmp_path / "third")).choose_ports({"serving": port}, console) == \
                {"serving": port}
    wait_until(given, 30, interval=0.5, what=f"port {port} given again once the first lab's session ended")


def test_a_local_lab_and_its_tunnels_claim_their_ports_for_the_tflab_process(tmp_path):
    """On this machine the claimant is the tflab process: another process choosing meanwhile (a second lab's
    choose_ports.py) moves; this process choosing again does not."""
    port = ports.free_port()
    assert ports.choose({"serving": port}) == {"serving": port}
    assert ports.choose({"serving": port}) == {"serving": port}
    script = subprocess.run([sys.executable, str(REMOTE / "choose_ports.py"), json.dumps({"serving": port, "rest": 0}),
                             str(tmp_path / "services"), "[]"], capture_output=True, text=True, check=True)
    chosen = json.loads(script.stdout)["ports"]
    assert chosen["serving"] != port and chosen["rest"] == 0
