"""Throwaway users of this machine, so that two loopback sshd hosts are two users with their own homes
(as two machines would be): made with useradd(8), removed with userdel -r, and their processes first.

Their Python is this test run's packages in a venv of a system interpreter of the same version (the test
venv's own base interpreter may sit under a home other users cannot enter, as pyenv's does).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator

PREFIX = "tflabt"  # every test user's name starts with it


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can run path (every folder above it enterable, it executable)."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def shared_python() -> Path:
    """A Python other users can run, with this run's packages: a venv (in a new folder under /tmp, made
    enterable) of a system interpreter of the same version, which reads the test venv's site-packages (a
    .pth file), its Jupyter data files and a `jupyter-lab` command (what `python -m jupyter lab` looks
    for). Its folder is python.parents[2]."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [Path(sys._base_executable), Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    interpreter = next((c for c in candidates if c.exists() and _reachable_by_others(c)), None)
    if interpreter is None:
        raise RuntimeError(f"no Python {version} that other users can run (tried {', '.join(map(str, candidates))}): "
                           f"run `bash scripts/install.sh --test`, which installs Debian's python{version}")
    packages = Path(sysconfig.get_paths()["purelib"])
    if not _reachable_by_others(packages):
        raise RuntimeError(f"other users cannot read {packages}")
    folder = Path(tempfile.mkdtemp(prefix="tflab-nodes-"))  # new and root's: nobody can have planted it
    folder.chmod(0o755)
    venv = folder / "venv"
    subprocess.run([str(interpreter), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    own = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    (own / "tflab-test-packages.pth").write_text(f"{packages}\n")
    (venv / "share").mkdir(exist_ok=True)
    (venv / "share" / "jupyter").symlink_to(Path(sys.prefix) / "share" / "jupyter")
    lab = venv / "bin" / "jupyter-lab"
    lab.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom jupyterlab.labapp import main\nsys.exit(main())\n")
    lab.chmod(0o755)
    for path in [folder, *folder.rglob("*")]:  # what the venv module made follows the umask: open it to all
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or
                                                              path.stat().st_mode & stat.S_IXUSR else 0))
    return venv / "bin" / "python"


def remove_user(name: str) -> None:
    """End the user's processes, then remove the user and its home."""
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    for _ in range(50):
        if subprocess.run(["pgrep", "-u", name], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def stale_users() -> list[str]:
    """Test users an earlier, killed run left behind."""
    return [line.split(":", 1)[0] for line in Path("/etc/passwd").read_text().splitlines()
            if line.startswith(PREFIX + "-")]


@contextlib.contextmanager
def users(count: int) -> Iterator[list[str]]:
    """count new users, each with its own home and a login shell; removed afterwards, whatever happens."""
    if os.geteuid() != 0:
        raise RuntimeError("making test users needs root (CI runs the tests as root)")
    for name in stale_users():
        remove_user(name)
    names = [f"{PREFIX}-{i}-{secrets.token_hex(3)}" for i in range(count)]
    made: list[str] = []
    try:
        for name in names:
            # "*": no password to log in with, yet not locked ("!"), which sshd refuses even a key for
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", name],
                           check=True, capture_output=True, text=True)
            made.append(name)
        yield names
    finally:
        for name in made:
            remove_user(name)
