"""A real OpenSSH server for the tests: /usr/sbin/sshd on 127.0.0.1, throwaway keys, its own config.

No system file is touched; the server is stopped by its process group (its session children too).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "tflab-test", "-f", str(path)], check=True)
    return path


def fingerprint_of(public_key: Path) -> tuple[str, str]:
    """(type label, 'SHA256:...') as ssh-keygen -l prints them."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)], check=True,
                         capture_output=True, text=True).stdout.split()
    return out[-1].strip("()"), out[1]


class Sshd:
    """One sshd process; start() and stop() may be called again (same port, same or new host key)."""

    def __init__(self, root: Path, port: int, allow_forwarding: bool = True, sftp: bool = True,
                 user: str | None = None, user_key: Path | None = None):
        self.root = root
        self.port = port
        self.allow_forwarding = allow_forwarding  # False: as a hardened host (AllowTcpForwarding no)
        self.sftp = sftp  # False: no `Subsystem sftp`, as on hardened servers and minimal containers
        root.mkdir(parents=True, exist_ok=True)
        self.user = user or getpass.getuser()
        self.own_user = user is None
        self.user_key = user_key or keygen(root / "user_key")  # another server's: one key logs in to both
        public = Path(str(self.user_key) + ".pub").read_text()
        if user is None:  # this process's user
            self.authorized_keys = root / "authorized_keys"
            self.authorized_keys.write_text(public)
        else:  # another user (tests/users.py): sshd reads the file as that user, so it lives in its home
            self.authorized_keys = Path(os.path.expanduser(f"~{user}")) / ".ssh" / "authorized_keys"
            self.authorized_keys.parent.mkdir(mode=0o700, exist_ok=True)
            self.authorized_keys.write_text(public)
            for path in (self.authorized_keys.parent, self.authorized_keys):
                shutil.chown(path, user, user)
        self.host_key = keygen(root / "host_key")
        self.proc: subprocess.Popen | None = None

    def new_host_key(self) -> Path:
        for p in (self.root / "host_key", self.root / "host_key.pub"):
            p.unlink()
        self.host_key = keygen(self.root / "host_key")
        return self.host_key

    @property
    def host_fingerprint(self) -> tuple[str, str]:
        return fingerprint_of(Path(str(self.host_key) + ".pub"))

    def config(self) -> Path:
        path = self.root / "sshd_config"
        path.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}", f"PidFile {self.root / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            # Another user's server lets that user in only: the key file is theirs to write.
            *(["PermitRootLogin prohibit-password"] if self.own_user else ["PermitRootLogin no", f"AllowUsers {self.user}"]),
            f"AllowTcpForwarding {'yes' if self.allow_forwarding else 'no'}",
            *(["Subsystem sftp internal-sftp"] if self.sftp else []), "LogLevel ERROR", "MaxStartups 200", "MaxSessions 100",
            "ClientAliveInterval 0", "",
        ]))
        return path

    def start(self, timeout: float = 15.0) -> "Sshd":
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config())], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not answer in time")

    def children(self) -> list[int]:
        """The per-connection sshd processes, each session's privileged monitor and, for a user other than
        root, its unprivileged child holding the connection (they call setsid, so the group signal misses
        them); not the commands the sessions run."""
        parents: dict[int, int] = {}
        names: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    head, rest = open(f"/proc/{entry}/stat").read().rsplit(")", 1)
                except OSError:
                    continue
                parents[int(entry)] = int(rest.split()[1])
                names[int(entry)] = head.split("(", 1)[1]
        found: list[int] = []
        frontier = [self.proc.pid] if self.proc is not None else []
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and names[pid].startswith("sshd"):
                    found.append(pid)
                    frontier.append(pid)
        return found

    def stop(self) -> None:
        """Stop the server and every session it serves, as a reboot of the host would."""
        if self.proc is None:
            return
        for pid in self.children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
