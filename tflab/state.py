"""Lab state on this machine: one folder per lab under the state home, written atomically.

    $TFLAB_HOME (default ~/.tflab), mode 0700
      labs/<name>/state.json     what `up` made and how to reach it
      labs/<name>/id_ed25519     the lab's private key, mode 0600
      locks/<name>.lock          held while `up` or `down` works on the lab

The state is a convenience: `down` and `list` work from the cloud's tags without it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tflab.errors import InputError

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def check_name(name: str) -> str:
    """A lab name: lower-case letters, digits and dashes, up to 31 characters."""
    if not NAME.match(name or ""):
        raise InputError(f"'{name}' is not a valid lab name",
                         hint="use lower-case letters, digits and dashes (up to 31), e.g. --name lab")
    return name


@dataclass(frozen=True)
class LabState:
    """What tflab remembers about one lab."""

    name: str
    region: str
    profile: str | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    spot: bool = False
    image_id: str | None = None
    zone: str | None = None
    public_ip: str | None = None
    ssh_user: str = "ubuntu"
    ssh_host: str | None = None  # another address to reach it by (VPN, forwarded port); else public_ip
    ssh_port: int = 22
    key_name: str | None = None
    key_path: str | None = None
    security_group_id: str | None = None
    host_key_fingerprints: dict = field(default_factory=dict)
    hourly_usd: float | None = None
    launched_at: str | None = None
    workdir: str | None = None  # where run-lab put the lab on the host (its services' pid files are there)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LabState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class StateStore:
    """The state home: lab state files, keys and locks."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home or os.environ.get("TFLAB_HOME") or Path.home() / ".tflab")

    def _private_dir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        return path

    def lab_dir(self, name: str) -> Path:
        return self.home / "labs" / check_name(name)

    def key_path(self, name: str) -> Path:
        return self.lab_dir(name) / "id_ed25519"

    def known_hosts_path(self, name: str) -> Path:
        return self.lab_dir(name) / "known_hosts"

    def load(self, name: str) -> LabState | None:
        """The lab's state, or None when there is none."""
        path = self.lab_dir(name) / "state.json"
        try:
            return LabState.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise InputError(f"the state file {path} is damaged: {exc}",
                             hint=f"remove it; `tflab down --name {name}` still works from the cloud's tags") from exc

    def all(self) -> list[LabState]:
        labs = self.home / "labs"
        if not labs.is_dir():
            return []
        return [s for s in (self.load(p.name) for p in sorted(labs.iterdir()) if NAME.match(p.name)) if s]

    def save(self, state: LabState) -> Path:
        """Write the state atomically (a temporary file renamed over the old one)."""
        self._private_dir(self.home)
        folder = self._private_dir(self.lab_dir(state.name))
        return self._write(folder / "state.json", json.dumps(state.to_dict(), indent=2) + "\n")

    def write_key(self, name: str, private_key: str) -> Path:
        """Store the lab's private key with mode 0600 (folder 0700)."""
        self._private_dir(self.home)
        self._private_dir(self.lab_dir(name))
        return self._write(self.key_path(name), private_key if private_key.endswith("\n") else private_key + "\n")

    def _write(self, path: Path, text: str) -> Path:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def delete(self, name: str) -> None:
        """Remove the lab's folder: state, key, known_hosts."""
        folder = self.lab_dir(name)
        if folder.is_dir():
            for child in folder.iterdir():
                child.unlink()
            folder.rmdir()

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lab's lock; a second holder gets a clear error instead of waiting."""
        folder = self._private_dir(self._private_dir(self.home) / "locks")
        with open(folder / f"{check_name(name)}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise InputError(f"another tflab command is working on lab '{name}' right now",
                                 hint="wait for it to finish, then try again") from exc
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
