"""tflab's user data, decoded as cloud-init decodes it and run as cloud-init runs it, in a sandbox: a container
(systemd-nspawn, not booted) over a throwaway layer of the box's image, so nothing it does reaches this machine.

cloud-init's own code (cloudinit.user_data.UserDataProcessor, in the image) turns the gzip'd bytes into its
parts, as at boot; the shell part runs as root with no HOME, as scripts-user runs it, with `systemctl`,
`shutdown` and `sudo` replaced by stubs that record their calls (no systemd runs in the sandbox).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REMOTE

pytestmark = [pytest.mark.cloudbox, pytest.mark.timeout(1800)]

LIMIT = 16 * 1024  # EC2: "User data is limited to 16 KB, in raw form, before it is base64-encoded"

DECODE = """\
import sys
from cloudinit.helpers import Paths
from cloudinit.user_data import UserDataProcessor

message = UserDataProcessor(Paths({})).process(open("/sandbox/user-data", "rb").read())
parts = [p for p in message.walk() if not p.is_multipart()]
for part in parts:
    print(part.get_content_type())
    if part.get_content_type() == "text/x-shellscript":
        open("/sandbox/part-001", "wb").write(part.get_payload(decode=True))
"""

STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> /sandbox/calls\n'

RUN = """\
set -e
useradd -m -s /bin/bash -G sudo ubuntu   # cloud-init's users-groups module, before scripts-user
python3 /sandbox/decode.py > /sandbox/types
mkdir -p /run/systemd/system             # as under systemd: the watchdog goes in as a unit
chmod 700 /sandbox/part-001
cd / && env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /sandbox/part-001
"""


@pytest.fixture
def sandbox(tmp_path):
    from tests.cloudbox.__main__ import missing
    from tests.cloudbox import image

    why = missing()
    if why:
        pytest.skip(why)
    root = image.image()
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for path in (upper, work, merged):
        path.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={root},upperdir={upper},workdir={work}",
                    str(merged)], check=True, timeout=30)
    try:
        (merged / "sandbox").mkdir()
        for stub in ("systemctl", "shutdown", "sudo"):
            path = merged / "usr/local/sbin" / stub
            path.write_text(STUB)
            path.chmod(0o755)
        (merged / "sandbox/decode.py").write_text(DECODE)
        (merged / "sandbox/run.sh").write_text(RUN)
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], timeout=30)
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_in(merged, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--private-network",
                           "--link-journal=no", "--timezone=off", "-D", str(merged), "bash", "/sandbox/run.sh"],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_user_data_decodes_and_runs_as_cloud_init_runs_it(sandbox):
    from remote import watchdog
    from tflab import cloud

    policy = dict(watchdog.DEFAULT_POLICY)
    packed = cloud.packed_user_data(cloud.boot_user_data("ubuntu", autostop=policy))
    assert packed[:2] == b"\x1f\x8b" and len(packed) <= LIMIT, len(packed)
    (sandbox / "sandbox/user-data").write_bytes(packed)
    ran = run_in(sandbox)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # cloud-init saw one part, a shell script (it decompressed the gzip itself)
    assert (sandbox / "sandbox/types").read_text().split() == ["text/x-shellscript"]
    home = sandbox / "home/ubuntu/tflab"
    assert (home / "remote/bootstrap.sh").read_bytes() == (REMOTE / "bootstrap.sh").read_bytes()
    assert json.loads((home / "autostop/policy.json").read_text()) == policy
    carried = home / "remote/watchdog.py"
    compile(carried.read_text(), str(carried), "exec")  # the watchdog arrives as a whole Python program
    unit = (sandbox / "etc/systemd/system/tflab-watchdog.service").read_text()
    # root's copy runs (the lab user's `rm -rf ~/tflab` does not reach it), and is restarted whatever ends it
    assert "ExecStart=/usr/bin/python3 /var/lib/tflab/watchdog.py run --workdir /home/ubuntu/tflab " \
           "--action shutdown --state /var/lib/tflab" in unit and "Restart=always" in unit
    assert (sandbox / "var/lib/tflab/watchdog.py").read_bytes() == carried.read_bytes()
    assert os.stat(sandbox / "var/lib/tflab/watchdog.py").st_uid == 0
    calls = (sandbox / "sandbox/calls").read_text().splitlines()
    assert "systemctl daemon-reload" in calls and "systemctl enable --now tflab-watchdog.service" in calls
    assert "sudo -u ubuntu -H nohup bash /home/ubuntu/tflab/remote/bootstrap.sh /home/ubuntu/tflab" in calls
    assert not [c for c in calls if c.startswith("shutdown")]
    # everything under the lab's folder belongs to the lab's user (uid 1000 in the sandbox), none to root
    owners = {str(p.relative_to(home)): os.stat(p).st_uid for p in [home, *home.rglob("*")]}
    assert set(owners.values()) == {1000}, {path: uid for path, uid in owners.items() if uid != 1000}


def test_the_user_data_fits_ec2s_limit_with_room(sandbox):
    """The longest user name, every autostop setting: the gzip'd script stays within 16 KB (it does not grow with
    --nodes: the nodes learn each other over SSH)."""
    from tflab import cloud

    policy = {"enabled": True, "idle_seconds": 86400.0, "max_lifetime_seconds": 2592000.0, "keep_until": 1.0e9}
    script = cloud.boot_user_data("u" * 32, workdir="tflab", autostop=policy)
    packed = cloud.packed_user_data(script)
    assert len(packed) <= LIMIT * 0.8, (len(script), len(packed))  # a fifth of EC2's limit left at least
    (sandbox / "sandbox/user-data").write_bytes(packed)
    (sandbox / "sandbox/run.sh").write_text(RUN.replace("ubuntu", "u" * 32))
    ran = run_in(sandbox)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_carried_python_is_the_same_program():
    """The watchdog rides without its comments and docstrings: the same syntax tree, docstrings aside."""
    import ast

    from tflab import cloud

    def tree(source: str) -> str:
        module = ast.parse(source)
        for node in ast.walk(module):
            body = getattr(node, "body", None)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and len(body) > 1 \
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]
        return ast.dump(module)

    for name in ("watchdog.py", "steps.py", "model_server.py"):
        source = (REMOTE / name).read_text()
        carried = cloud.without_comments(source)
        assert tree(carried) == tree(source) and len(carried) < len(source), name
        assert carried.startswith("#!") == source.startswith("#!")
    # a blank line or a '#' inside a string is the program's, and stays
    odd = 'x = """a\n\n# b"""  # c\n\n\ndef f():\n    """doc"""\n    return x  # d\n'
    assert cloud.without_comments(odd) == 'x = """a\n\n# b"""\ndef f():\n    return x\n'
