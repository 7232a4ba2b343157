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
import math
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tflab.errors import InputError

# A state file is a few KB (a lab of 16 nodes with their fingerprints is under 20 KB) and 4 levels deep: anything
# beyond these bounds is damage, refused before it is parsed (a 100,000-deep file would exhaust the parser's recursion).
MAX_STATE_BYTES = 1 << 20
MAX_STATE_DEPTH = 16

# fullmatch, not match with "$": "$" also matches before a trailing newline ("lab\n" was a valid name).
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
# A user name on the host, as useradd(8) recommends ("[a-z_][a-z0-9_-]*[$]?", at most 32 characters) without
# the trailing "$" (Samba machine accounts): within POSIX's portable filename characters (POSIX.1-2017 3.437
# User Name), never starting with "-", and nothing a shell or ssh would read as syntax or an option.
SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class DamagedStateError(InputError):
    """A lab's state file cannot be read as a lab state: too big, too deep, not a file, not JSON, wrong types."""

    def __init__(self, path: Path, name: str, why: str):
        self.path, self.name, self.why = path, name, why
        super().__init__(f"the state file {path} is damaged: {why}",
                         hint=f"`tflab down --name {name}` removes the lab by its AWS tags and then this file; "
                              f"or move the file away, and `tflab list` finds the lab by its tags")


def json_depth(text: str, limit: int) -> int:
    """How deeply the JSON text nests arrays and objects, counting no further than limit + 1 (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constant(constant: str):
    raise ValueError(f"it holds {constant}, which is not a JSON number")


def check_name(name: str) -> str:
    """A lab name: lower-case letters, digits and dashes, up to 31 characters."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError(f"{name!r} is not a valid lab name",
                         hint="use lower-case letters, digits and dashes (up to 31, the first a letter or digit), "
                              "e.g. --name lab")
    return name


def check_ssh_user(user: str) -> str:
    """A user name for the lab host (it goes into the boot script run as root, and into ssh's command line)."""
    if not isinstance(user, str) or not SSH_USER.fullmatch(user):
        raise InputError(f"{user!r} is not a valid user name for the lab host",
                         hint="use lower-case letters, digits, '_' and '-' (up to 32, not starting with '-' or a "
                              "digit), as useradd(8) asks, e.g. --ssh-user ubuntu")
    return user


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
    # A lab of several instances (`up --nodes N`): each node's index, instance_id, public_ip, private_ip, zone
    # and host_key_fingerprints, the chief (0) first; the fields above are the chief's. Empty for one instance.
    nodes: list = field(default_factory=list)
    placement_group: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LabState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check(self) -> "LabState":
        """The state itself, if each field has its type (and the name, user and port are valid); a
        TypeError or ValueError saying which is not (a state file edited by hand, or damaged)."""
        kinds = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "dict": (dict,),
                 "list": (list,), "None": (type(None),)}
        for f in dataclasses.fields(self):
            parts = [part.strip() for part in str(f.type).split("|")]
            if not all(part in kinds for part in parts):  # a type this check does not know: not checked
                continue
            accepted = tuple(t for part in parts for t in kinds[part])
            value = getattr(self, f.name)
            if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
                raise TypeError(f"{f.name} is {value!r:.80}, not {f.type}")
            if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as inf
                raise ValueError(f"{f.name} is {value!r}, not a finite number")
        check_name(self.name)
        check_ssh_user(self.ssh_user)
        if not 1 <= self.ssh_port <= 65535:
            raise ValueError(f"ssh_port is {self.ssh_port}, not 1-65535")
        for i, node in enumerate(self.nodes):
            if not isinstance(node, dict) or node.get("index") != i or not isinstance(node.get("instance_id"), str):
                raise ValueError(f"nodes[{i}] is not node {i} of the lab")
        return self

    def node(self, index: int) -> dict:
        """Node index of a lab of several instances (0 is the chief; a lab of one has only node 0)."""
        if index == 0 and not self.nodes:
            return {"index": 0, "instance_id": self.instance_id, "public_ip": self.public_ip, "private_ip": None,
                    "zone": self.zone, "host_key_fingerprints": self.host_key_fingerprints}
        if not 0 <= index < len(self.nodes):
            raise IndexError(index)
        return self.nodes[index]


class StateStore:
    """The state home: lab state files, keys and locks."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home or os.environ.get("TFLAB_HOME") or Path.home() / ".tflab")

    def _unusable(self, path: Path, exc: OSError) -> InputError:
        return InputError(f"cannot use {path} for tflab's lab state: {exc.strerror or exc}",
                          hint="set TFLAB_HOME to a folder you can write (default ~/.tflab), or fix that path")

    def _private_dir(self, path: Path) -> Path:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise self._unusable(path, exc) from exc
        return path

    def lab_dir(self, name: str) -> Path:
        return self.home / "labs" / check_name(name)

    def key_path(self, name: str) -> Path:
        return self.lab_dir(name) / "id_ed25519"

    def known_hosts_path(self, name: str) -> Path:
        return self.lab_dir(name) / "known_hosts"

    def state_path(self, name: str) -> Path:
        return self.lab_dir(name) / "state.json"

    def load(self, name: str) -> LabState | None:
        """The lab's state, or None when there is none; a DamagedStateError (one line, naming the file and
        what to do) when the file is not a bounded, regular JSON file holding a lab state."""
        path = self.state_path(name)
        try:
            # O_NONBLOCK: a FIFO put in its place opens at once (and is refused below) instead of blocking.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == __import__("errno").ELOOP:
                raise DamagedStateError(path, name, "it is a symbolic link, not a file") from exc
            raise self._unusable(path, exc) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) \
                    else "a device or socket"
                raise DamagedStateError(path, name, f"it is {kind}, not a file")
            if info.st_size > MAX_STATE_BYTES:
                raise DamagedStateError(path, name, f"it is {info.st_size:,} bytes, more than a lab state's "
                                                    f"{MAX_STATE_BYTES:,}")
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except OSError as exc:
            raise self._unusable(path, exc) from exc
        finally:
            os.close(fd)
        if len(raw) > MAX_STATE_BYTES:  # grew while read
            raise DamagedStateError(path, name, f"it is more than {MAX_STATE_BYTES:,} bytes")
        try:
            text = raw.decode("utf-8")
            if json_depth(text, MAX_STATE_DEPTH) > MAX_STATE_DEPTH:
                raise ValueError(f"it nests more than {MAX_STATE_DEPTH} levels deep")
            data = json.loads(text, parse_constant=_no_constant)
            if not isinstance(data, dict):
                raise TypeError(f"it holds a JSON {type(data).__name__}, not an object")
            state = LabState.from_dict(data).check()
            if state.name != name:
                raise ValueError(f"it names lab {state.name!r}, not {name!r}")
            return state
        except (ValueError, TypeError, InputError, RecursionError) as exc:
            why = exc.message if isinstance(exc, InputError) else str(exc) or type(exc).__name__
            raise DamagedStateError(path, name, why[:200]) from exc

    def damaged(self) -> list[DamagedStateError]:
        """The labs here whose state file is damaged (what `list` shows as one line each)."""
        labs = self.home / "labs"
        try:
            names = sorted(p.name for p in labs.iterdir() if NAME.fullmatch(p.name)) if labs.is_dir() else []
        except OSError as exc:
            raise self._unusable(labs, exc) from exc
        found = []
        for name in names:
            try:
                self.load(name)
            except DamagedStateError as exc:
                found.append(exc)
        return found

    def names(self) -> list[str]:
        """The names of the labs with a state file here, sorted; no file is read (cheap: shell completion)."""
        labs = self.home / "labs"
        if not labs.is_dir():
            return []
        try:
            return sorted(p.name for p in labs.iterdir() if NAME.fullmatch(p.name) and (p / "state.json").is_file())
        except OSError as exc:
            raise self._unusable(labs, exc) from exc

    def all(self) -> list[LabState]:
        labs = self.home / "labs"
        if not labs.is_dir():
            return []
        try:
            names = sorted(p.name for p in labs.iterdir())
        except OSError as exc:
            raise self._unusable(labs, exc) from exc
        return [s for s in (self.load(n) for n in names if NAME.fullmatch(n)) if s]

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

    def write_lab_file(self, name: str, filename: str, text: str) -> Path:
        """Write another file of what this machine remembers for the lab (e.g. its local ports), atomically,
        mode 0600 in the lab's 0700 folder; removed with the lab's folder (delete)."""
        self._private_dir(self.home)
        self._private_dir(self.home / "labs")
        return self._write(self._private_dir(self.lab_dir(name)) / filename, text)

    def _write(self, path: Path, text: str) -> Path:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        except OSError as exc:
            raise self._unusable(path, exc) from exc
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._unusable(path, exc) from exc
            raise
        return path

    def delete(self, name: str) -> None:
        """Remove the lab's folder: state, key, known_hosts, and whatever a damaged state left there (a
        folder or a FIFO in the state file's place); symbolic links are removed, never followed."""
        folder = self.lab_dir(name)
        try:
            if folder.is_symlink():
                folder.unlink()
            elif folder.is_dir():
                for child in folder.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                folder.rmdir()
        except OSError as exc:
            raise self._unusable(folder, exc) from exc

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lab's lock; a second holder gets a clear error instead of waiting."""
        folder = self._private_dir(self._private_dir(self.home) / "locks")
        path = folder / f"{check_name(name)}.lock"
        try:  # never blocks on a FIFO put in its place, never follows a link
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._unusable(path, exc) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"the lock file {path} is not a file",
                             hint=f"remove it (rm -r {path}); tflab makes it again")
        with os.fdopen(fd, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise InputError(f"another tflab command is working on lab '{name}' right now",
                                 hint="wait for it to finish, then try again") from exc
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
