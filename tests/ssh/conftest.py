"""A real sshd on 127.0.0.1 for each test module, and targets for it."""

from __future__ import annotations

import dataclasses

import pytest

from tests.sshd import SSHD, Sshd
from tflab import ports
from tflab.ssh import SshTarget

if not __import__("os").path.exists(SSHD):  # scripts/install.sh --test installs openssh-server
    raise RuntimeError(f"{SSHD} is missing: run `bash scripts/install.sh --test`")


@pytest.fixture(scope="module")
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


def unpinned(target: SshTarget, **changes) -> SshTarget:
    return dataclasses.replace(target, pinned={}, **changes)


def host_args(sshd, tmp) -> list[str]:
    """`--host` options that reach the suite's sshd as its user, with a known_hosts file under tmp."""
    return ["--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity", str(sshd.user_key),
            "--known-hosts", str(tmp / "known_hosts")]
