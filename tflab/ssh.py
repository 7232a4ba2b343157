"""SSH to a lab host with paramiko: verified host keys, commands with streamed output, file push
and fetch over SFTP, and detached services.

A Connection opens lazily, is a context manager, closes idempotently and keeps one SFTP client
(Fabric's manner). Host keys are always verified: against the lab's known_hosts (pinned from the
fingerprints EC2 printed on the console) or the user's ~/.ssh/known_hosts. An unknown key is
refused unless the user asked to trust it on first use; a changed key is always refused.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import logging
import os
import posixpath
import shlex
import socket
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tflab.addresses import check_address
from tflab.errors import ExitCode, InputError, LabStepError, TflabError, UnreachableError
from tflab.host import CommandResult, LineSink
from tflab.paths import remote_script
from tflab.waiting import NotYet, poll

log = logging.getLogger(__name__)

_SLOW_HINT = "the host may be overloaded or its SSH server stuck; check it (`tflab status`), then try again"


class HostKeyError(TflabError):
    """The server's host key is unknown or does not match: the connection is refused."""

    exit_code = ExitCode.HOST_KEY


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key: 'SHA256:base64-without-padding'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_type_label(key) -> str:
    """'ED25519', 'ECDSA' or 'RSA', as cloud-init labels fingerprints."""
    name = key.get_name()
    if "ed25519" in name:
        return "ED25519"
    if "ecdsa" in name:
        return "ECDSA"
    if "rsa" in name:
        return "RSA"
    return name.upper()


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect, and which host keys to trust."""

    host: str
    user: str
    port: int = 22
    identity: str | None = None  # a private key file; None: the SSH agent and ~/.ssh keys
    known_hosts: str = field(default_factory=lambda: str(Path.home() / ".ssh" / "known_hosts"))
    pinned: dict = field(default_factory=dict)  # {"ED25519": "SHA256:..."} from the console output
    accept_new: bool = False  # trust an unknown key on first use (and record it)
    label: str = ""  # for messages: "lab 'x'" or "user@host"

    @property
    def host_key_name(self) -> str:
        """How known_hosts names this host (OpenSSH's [host]:port form off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def display(self) -> str:
        return self.label or f"{self.user}@{self.host}:{self.port}"


def parse_host(spec: str, default_user: str = "ubuntu") -> tuple[str, str, int]:
    """'user@address[:port]' -> (user, address, port); an InputError for anything else (an empty or odd
    address, a user that ssh would read as an option, a port outside 1-65535)."""
    usage = "use user@address[:port], e.g. ubuntu@10.0.0.5:22 (an IPv6 address in brackets: ubuntu@[2001:db8::1]:22)"
    user, _, rest = spec.rpartition("@")
    user = user or default_user
    if user.startswith("-") or any(c.isspace() or not c.isprintable() for c in user):
        raise InputError(f"--host {spec!r}: {user!r} is not a user name", hint=usage)
    host, p = rest, ""
    if rest.startswith("["):  # [ipv6]:port
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise InputError(f"--host {spec!r} is not user@[address]:port", hint=usage)
        p = tail[1:] if tail else ""
        if tail == ":":
            raise InputError(f"--host {spec!r} has an empty port", hint=usage)
    elif rest.count(":") == 1:
        host, _, p = rest.partition(":")
        if not p:
            raise InputError(f"--host {spec!r} has an empty port", hint=usage)
    if not host:
        raise InputError(f"--host {spec!r} names no host", hint=usage)
    check_address(host, f"--host {spec!r}")
    port = 22
    if p:
        if not (p.isascii() and p.isdigit()) or not 1 <= int(p) <= 65535:
            raise InputError(f"--host {spec!r} has a bad port ({p!r}; ports are 1-65535)", hint=usage)
        port = int(p)
    return user, host, port


def openssh_value(text: str) -> str:
    """A value for an OpenSSH option (`-o Key=value` or a config line): '%' escaped (ssh expands %-tokens in
    paths and host names), and double-quoted, with '\\' and '"' escaped, when it holds a space or a quote."""
    text = text.replace("%", "%%")
    if not text or any(c.isspace() or c in "\"'\\" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def openssh_options(target: SshTarget) -> dict[str, str]:
    """The options the system's `ssh` gets for a target: its key and known_hosts file only (the very file
    tflab's Connection verifies against), strict host key checking, no known_hosts of the system's, no
    host key updates from the server, keep-alives. Values are ready for `-o` and for config lines."""
    options = {"UserKnownHostsFile": openssh_value(target.known_hosts), "GlobalKnownHostsFile": "/dev/null",
               "StrictHostKeyChecking": "yes", "UpdateHostKeys": "no", "CheckHostIP": "no",
               "ConnectTimeout": "15", "ServerAliveInterval": "15", "ServerAliveCountMax": "3"}
    if target.identity:
        options |= {"IdentityFile": openssh_value(target.identity), "IdentitiesOnly": "yes"}
    return options


def openssh_argv(program: str, target: SshTarget, extra: dict[str, str] | None = None,
                 flags: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The system `ssh`'s argv for a target: no config file read (-F none), openssh_options() plus extra
    as -o options, flags (e.g. -N, -L ...), then `--` and the host (never read as an option)."""
    argv = [program, "-F", "none", *flags, "-p", str(target.port), "-l", target.user]
    for key, value in (openssh_options(target) | (extra or {})).items():
        argv += ["-o", f"{key}={value}"]
    return argv + ["--", target.host]


def openssh_config(alias: str, target: SshTarget) -> list[str]:
    """The lines of an OpenSSH config block (`Host alias`) with the same options as openssh_argv()."""
    lines = [f"Host {alias}", f"  HostName {openssh_value(target.host)}", f"  User {target.user}",
             f"  Port {target.port}"]
    return lines + [f"  {key} {value}" for key, value in openssh_options(target).items()]


class _VerifyPolicy:
    """paramiko's MissingHostKeyPolicy for a key not in known_hosts: pinned, trusted on first use, or refused."""

    def __init__(self, target: SshTarget, revoked: set[str] = frozenset()):
        self.target = target
        self.revoked = revoked  # keys (base64) that known_hosts marks @revoked
        self.recorded: str | None = None

    def missing_host_key(self, client, hostname, key) -> None:
        fp, kind = fingerprint(key), key_type_label(key)
        target = self.target
        if key.get_base64() in self.revoked:
            raise HostKeyError(f"the host key of {target.display} ({kind} {fp}) is marked @revoked in {target.known_hosts}",
                               hint="do not connect; ask the host's owner for its new key")
        if target.pinned:
            if target.pinned.get(kind) == fp:
                self._record(client, key, f"matches the fingerprint the instance printed ({kind} {fp})")
                return
            raise HostKeyError(
                f"the host key of {target.display} ({kind} {fp}) does not match the fingerprints the instance "
                f"printed on its console ({', '.join(f'{k} {v}' for k, v in target.pinned.items())})",
                hint="someone may be intercepting the connection; do not connect. `tflab down` and `tflab up` again")
        if target.accept_new:
            self._record(client, key, f"trusted on first use ({kind} {fp}), as --accept-new-host-key asked")
            return
        raise HostKeyError(
            f"the host key of {target.display} is not known: {kind} {fp}",
            hint=f"check the fingerprint with the host's owner, then add --accept-new-host-key to record it in "
                 f"{target.known_hosts}")

    def _record(self, client, key, why: str) -> None:
        path = Path(self.target.known_hosts)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "a") as f:
            f.write(f"{self.target.host_key_name} {key.get_name()} {key.get_base64()}\n")
        os.chmod(path, 0o600)
        client.get_host_keys().add(self.target.host_key_name, key.get_name(), key)
        self.recorded = why
        log.info("host key of %s recorded in %s: %s", self.target.display, path, why)


def _transport(sock, **kwargs):
    """paramiko's Transport, preferring AES-GCM: measured +25-30 % tunnel throughput and less CPU per
    byte than paramiko's default aes128-ctr + HMAC on AES-NI machines (bench/README.md). Servers
    without GCM negotiate the next cipher as before."""
    import paramiko

    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    gcm = [c for c in options.ciphers if c.endswith("-gcm@openssh.com")]
    options.ciphers = tuple(gcm + [c for c in options.ciphers if c not in gcm])
    return transport


def _load_known_hosts(client, path: Path) -> set[str]:
    """Load a known_hosts file into the client; returns the keys (base64) it marks @revoked.

    Read here rather than by paramiko's loader, which fails on a marker line ("@cert-authority",
    "@revoked") whose key it cannot parse and would otherwise take a revoked key from a plain line.
    Certificate authorities are not used (paramiko verifies plain host keys only)."""
    from paramiko.hostkeys import HostKeyEntry

    lines = [line.strip() for line in path.read_text().splitlines()]
    revoked = {parts[3] for parts in (line.split() for line in lines) if len(parts) >= 4 and parts[0] == "@revoked"}
    keys = client.get_host_keys()
    for line in lines:
        if not line or line.startswith(("#", "@")):
            continue
        try:
            entry = HostKeyEntry.from_line(line)
        except Exception:  # a line paramiko cannot parse (an unknown key type, say): as paramiko does, skip it
            continue
        if entry is not None and entry.key.get_base64() not in revoked:  # never taken from a plain line
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)
    return revoked


class Connection:
    """One verified SSH connection to a host (see the module docstring)."""

    def __init__(self, target: SshTarget, *, connect_timeout: float = 15.0, keepalive: float = 15.0,
                 answer_timeout: float = 30.0, sftp_timeout: float = 60.0):
        self.target = target
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        # How long the host may take to answer what needs no work there: opening a channel (paramiko's
        # open_session waits an hour by default: Transport.channel_timeout), an exec, subsystem, pty or shell
        # request (paramiko waits for those without any limit: Channel._wait_for_event) and a command's exit
        # status once its output ended. And how long one SFTP call may go without an answer (Channel.settimeout
        # on the SFTP channel: each read of a reply raises socket.timeout after it).
        self.answer_timeout = answer_timeout
        self.sftp_timeout = sftp_timeout
        self._client = None
        self._sftp = None
        self._lock = threading.Lock()
        self.host_key_note: str | None = None
        self.no_sftp_note: str | None = None  # set when the server has no SFTP and files go over exec channels

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.get_transport() is not None and \
            self._client.get_transport().is_active()

    def open(self) -> "Connection":
        """Connect and authenticate (once); raises HostKeyError, UnreachableError, InputError."""
        with self._lock:
            if self.is_open:
                return self
            self._close_locked()
            self._client = self._connect()
        return self

    def _connect(self):
        import paramiko

        t = self.target
        client = paramiko.SSHClient()
        known = Path(t.known_hosts)
        revoked: set[str] = set()
        if known.exists():
            try:
                revoked = _load_known_hosts(client, known)
            except (OSError, UnicodeDecodeError, paramiko.SSHException) as exc:
                raise InputError(f"cannot read {known}: {exc}", hint="fix or move the file") from exc
        policy = _VerifyPolicy(t, revoked)
        client.set_missing_host_key_policy(policy)
        key_filename = None
        if t.identity:
            if not Path(t.identity).is_file():
                what = "is not a file" if Path(t.identity).exists() else "does not exist"
                raise InputError(f"the key file {t.identity} {what}", hint="check --identity")
            key_filename = t.identity
        try:
            client.connect(t.host, port=t.port, username=t.user, key_filename=key_filename,
                           look_for_keys=key_filename is None, allow_agent=key_filename is None,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, transport_factory=_transport)
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"the host key of {t.display} CHANGED: it is now {key_type_label(exc.key)} {fingerprint(exc.key)}, "
                f"but {t.known_hosts} has {fingerprint(exc.expected_key)}",
                hint="someone may be intercepting the connection, or the host was rebuilt; if you know why, "
                     f"remove its line from {t.known_hosts}") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise InputError(f"{t.display} refused the SSH key ({exc})",
                             hint="check --identity and the user (ubuntu on the Deep Learning AMI)") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise UnreachableError(f"cannot connect to {t.display}: {exc or type(exc).__name__}",
                                   hint="check the address and port, and that the host runs an SSH server") from exc
        transport = client.get_transport()
        transport.set_keepalive(int(self.keepalive))
        try:  # small SSH messages must not wait for delayed ACKs (Nagle): ~40 ms per new tunnel otherwise
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        try:  # a host that vanished (a dead instance sends no RST): paramiko's keep-alives expect no answer, so
            # the kernel ends the connection once they stay unacknowledged for 3 intervals, as OpenSSH's
            # ServerAliveInterval 15 x ServerAliveCountMax 3 does (else a read waits for TCP's ~15 min).
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(3 * self.keepalive * 1000))
        except (OSError, AttributeError):
            pass
        self.host_key_note = policy.recorded
        return client

    def close(self) -> None:
        """Close the SFTP client and the connection (idempotent)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # closing a dead channel
                pass
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def transport(self):
        self.open()
        return self._client.get_transport()

    @property
    def sftp(self):
        """The connection's one SFTP client, or None when the server has no SFTP subsystem (hardened
        servers, minimal containers): files then travel over exec channels (a tar stream, cat)."""
        import paramiko

        self.open()
        if self._sftp is None and self.no_sftp_note is None:
            # SSHClient.open_sftp() as paramiko does it (SFTPClient.from_transport), each wait bounded
            channel = self.open_channel("SFTP")
            try:
                self.request(channel, "the SFTP subsystem", lambda: channel.invoke_subsystem("sftp"), refusal=True)
                channel.settimeout(self.sftp_timeout)
                with self.sftp_deadline("to start SFTP"):
                    self._sftp = paramiko.SFTPClient(channel)
            except UnreachableError:
                channel.close()
                raise
            except (paramiko.SSHException, EOFError) as exc:
                channel.close()
                if not self.is_open:
                    raise UnreachableError(f"the SSH connection to {self.target.display} closed",
                                           hint="check that the host runs, then try again") from exc
                self.no_sftp_note = (f"the SSH server of {self.target.display} has no SFTP subsystem ({exc}); "
                                     "copying files over SSH commands instead (a tar stream, cat)")
                log.info(self.no_sftp_note)
        return self._sftp

    @contextlib.contextmanager
    def sftp_deadline(self, what: str):
        """SFTP calls in this block that get no answer within sftp_timeout end with an UnreachableError naming
        the host and what waited (the SFTP client is then dropped: a late reply would answer the next call)."""
        try:
            yield
        except socket.timeout as exc:  # paramiko's SFTP reads its replies from the channel: Channel.recv's timeout
            sftp, self._sftp = self._sftp, None
            if sftp is not None:
                try:
                    sftp.close()
                except Exception:  # closing a channel that may be stuck too
                    pass
            raise UnreachableError(f"{self.target.display} did not answer over SFTP within {self.sftp_timeout:g} s "
                                   f"(waiting {what})", hint=_SLOW_HINT) from exc

    def probe(self, port: int, timeout: float | None = None) -> tuple[bool, str | None]:
        """Open a direct-tcpip channel to 127.0.0.1:port on the host, as a tunnel does, and close it at once:
        (whether something accepted it, the sshd's refusal text when it refused it as "administratively
        prohibited": RFC 4254 section 7.2, AllowTcpForwarding no, or a PermitOpen that leaves the port out)."""
        import paramiko

        timeout = self.answer_timeout if timeout is None else max(0.1, timeout)
        try:
            channel = self.transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0),
                                                  timeout=timeout)
        except paramiko.ChannelException as exc:  # nothing listens there, or the sshd forwards nothing
            log.info("port %d on %s does not answer: %s", port, self.target.display, exc)
            prohibited = exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            return False, (exc.text or "administratively prohibited") if prohibited else None
        except (paramiko.SSHException, EOFError, OSError) as exc:  # the next command on the connection says why
            log.info("port %d on %s was not probed: %s", port, self.target.display, exc)
            return False, None
        channel.close()
        return True, None

    def forwarding_refused(self, port: int, timeout: float | None = None) -> str | None:
        """Why the host's sshd forwards nothing to 127.0.0.1:port (probe), whatever listens at it; else None."""
        return self.probe(port, timeout)[1]

    def open_channel(self, what: str, timeout: float | None = None):
        """A new session channel, opened within timeout (answer_timeout by default); UnreachableError naming
        the host and what the channel was for when it is not, or when the host refuses it."""
        import paramiko

        timeout = self.answer_timeout if timeout is None else max(0.1, timeout)
        transport = self.transport
        try:
            return transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not transport.is_active():
                raise UnreachableError(f"the SSH connection to {self.target.display} was lost opening a channel "
                                       f"for {what}", hint="check that the host still runs (`tflab status`), then "
                                                           "try again") from exc
            if "Timeout" in str(exc):  # Transport.open_channel: SSHException("Timeout opening channel.")
                raise UnreachableError(f"{self.target.display} did not open an SSH channel for {what} within "
                                       f"{timeout:g} s", hint=_SLOW_HINT) from exc
            raise UnreachableError(f"{self.target.display} refused an SSH channel for {what} ({exc})",
                                   hint="the SSH server may limit sessions (MaxSessions); try again") from exc

    def request(self, channel, what: str, call: Callable[[], None], timeout: float | None = None,
                refusal: bool = False) -> None:
        """Make a channel request (call: channel.exec_command(...), invoke_subsystem, get_pty, invoke_shell)
        within timeout (answer_timeout by default): paramiko waits for the server's reply without a limit
        (Channel._wait_for_event: paramiko issues #2599, #1248), so the channel is closed at the deadline, which ends that wait. UnreachableError naming the host and
        what was asked when there is no answer in time or the connection is lost; when the server refuses,
        the same, or paramiko's SSHException itself if refusal (the caller has a way around it)."""
        import paramiko

        timeout = self.answer_timeout if timeout is None else max(0.1, timeout)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            channel.close()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            call()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            channel.close()
            if expired.is_set():
                raise UnreachableError(f"{self.target.display} did not answer the request for {what} within "
                                       f"{timeout:g} s", hint=_SLOW_HINT) from exc
            if not self.is_open:
                raise UnreachableError(f"the SSH connection to {self.target.display} was lost asking for {what}",
                                       hint="check that the host still runs (`tflab status`), then try again") from exc
            if refusal:
                raise
            raise UnreachableError(f"{self.target.display} refused {what} ({exc or type(exc).__name__})",
                                   hint="check the host's SSH server configuration") from exc
        finally:
            timer.cancel()
        if expired.is_set():  # answered just as the deadline closed the channel
            raise UnreachableError(f"{self.target.display} did not answer the request for {what} within "
                                   f"{timeout:g} s", hint=_SLOW_HINT)

    def exit_status(self, channel, what: str, timeout: float | None = None) -> int:
        """A command's exit status, waited for at most timeout (answer_timeout by default) once its output
        ended (paramiko's recv_exit_status waits without a limit); UnreachableError when it does not come."""
        timeout = self.answer_timeout if timeout is None else timeout
        if not channel.status_event.wait(max(0.0, timeout)):
            raise UnreachableError(f"{self.target.display} did not send the exit status of {what} within "
                                   f"{timeout:g} s", hint=_SLOW_HINT)
        return channel.recv_exit_status()

    # ------------------------------------------------------------------ commands

    def run(self, command: str, *, step: str = "command", on_line: LineSink | None = None, timeout: float = 600.0,
            check: bool = True, shell: str = "sh", quick: bool = False) -> CommandResult:
        """Run a shell command (with shell: "sh", or "login" for the user's login shell); stream its stdout
        and stderr lines as they come; return its status. The command ends when this call ends early.

        Raises LabStepError (with the output's tail) when check and the status is not 0, or on timeout; when
        quick (a command that should answer at once, not a lab step), running past timeout is an
        UnreachableError: the host did not answer in time. Opening the channel and starting the command are
        bounded by answer_timeout (and timeout) either way: UnreachableError naming the host and the step.
        """
        started = time.monotonic()
        deadline = started + timeout
        channel = self.open_channel(step, min(self.answer_timeout, timeout))
        self.request(channel, f"running {step}", lambda: channel.exec_command(ended_with_channel(command, shell)),
                     min(self.answer_timeout, max(0.1, deadline - time.monotonic())))
        tail: deque[str] = deque(maxlen=40)
        lock = threading.Lock()

        def pump(stream, kind):
            for raw in iter(stream.readline, ""):
                line = raw.rstrip("\n")
                with lock:
                    tail.append(line)
                    if on_line is not None:
                        on_line(kind, line)

        readers = [threading.Thread(target=pump, args=(channel.makefile("r"), "out"), daemon=True),
                   threading.Thread(target=pump, args=(channel.makefile_stderr("r"), "err"), daemon=True)]
        try:
            for r in readers:
                r.start()
            while not channel.exit_status_ready():
                if time.monotonic() > deadline:
                    if quick:
                        raise UnreachableError(f"{self.target.display} did not answer within {timeout:g} s "
                                               f"(waiting for {step} to finish)", hint=_SLOW_HINT)
                    raise LabStepError(step, f"did not finish within {timeout:.0f} s on {self.target.display}",
                                       tail="\n".join(tail))
                time.sleep(0.02)
            status = channel.recv_exit_status()
            for r in readers:
                r.join(10)
        finally:  # however this ends (a signal here too), the channel closes and the command with it
            channel.close()
        result = CommandResult((command,), status, "\n".join(tail), time.monotonic() - started)
        if status == -1 and not self.is_open:  # paramiko's -1: the channel closed with no status, the host went
            raise UnreachableError(f"the SSH connection to {self.target.display} was lost during {step}",
                                   hint="check that the host still runs (`tflab status`), then try again")
        if check and status != 0:
            raise LabStepError(step, f"exited with status {status} on {self.target.display}", status=status,
                               tail=result.tail)
        return result

    def output(self, command: str, timeout: float = 60.0) -> str:
        """A command's stdout (it must succeed; one that has not finished within timeout is an UnreachableError)."""
        lines: list[str] = []
        self.run(command, step=command.split()[0] if command else "command", timeout=timeout, quick=True,
                 on_line=lambda kind, line: lines.append(line) if kind == "out" else None)
        return "\n".join(lines)

    # ------------------------------------------------------------------ files

    def push(self, local_dir: str | os.PathLike, remote_dir: str,
             progress: Callable[[str], None] | None = None) -> dict:
        """Sync a local folder to the host: new or changed files (by content hash) only, modes kept.

        Returns {"sent": [...], "skipped": n, "bytes": n}.
        """
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        remote_hashes = self._remote_hashes(remote_dir)
        sftp = self.sftp
        if sftp is None:
            return self._push_tar(local_dir, files, remote_dir, remote_hashes, progress)
        sent, skipped, total = [], 0, 0
        made: set[str] = set()
        for i, path in enumerate(files, 1):
            rel = path.relative_to(local_dir).as_posix()
            data = path.read_bytes()
            mode = stat.S_IMODE(path.stat().st_mode)
            remote = posixpath.join(remote_dir, rel)
            if remote_hashes.get(rel) == (hashlib.sha256(data).hexdigest(), mode & 0o111 != 0):
                skipped += 1
                continue
            folder = posixpath.dirname(remote)
            if folder not in made:
                self._makedirs(folder)
                made.add(folder)
            tmp = f"{remote}.tflab-partial"
            with self.sftp_deadline(f"to write {remote}"):
                with sftp.open(tmp, "wb") as f:
                    f.set_pipelined(True)
                    f.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote)
            sent.append(rel)
            total += len(data)
            if progress is not None:
                progress(f"{i}/{len(files)} {rel}")
        return {"sent": sent, "skipped": skipped, "bytes": total}

    def _remote_hashes(self, remote_dir: str) -> dict[str, tuple[str, bool]]:
        """{relative path: (sha256, executable)} of the files already under remote_dir."""
        script = remote_script("file_hashes.py")
        command = f"test -d {shlex.quote(remote_dir)} && python3 -c {shlex.quote(script)} {shlex.quote(remote_dir)} || true"
        found = {}
        for line in self.output(command).splitlines():
            digest, executable, rel = line.split(" ", 2)
            found[rel] = (digest, executable == "1")
        return found

    def _push_tar(self, local_dir: Path, files: list[Path], remote_dir: str, remote_hashes: dict,
                  progress: Callable[[str], None] | None) -> dict:
        """push() without SFTP: the changed files as one tar stream into a small receiver on the host,
        which writes each file beside its place and renames it over (as the SFTP path does)."""
        import io
        import tarfile

        buffer = io.BytesIO()
        sent, skipped, total = [], 0, 0
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for path in files:
                rel = path.relative_to(local_dir).as_posix()
                data = path.read_bytes()
                mode = stat.S_IMODE(path.stat().st_mode)
                if remote_hashes.get(rel) == (hashlib.sha256(data).hexdigest(), mode & 0o111 != 0):
                    skipped += 1
                    continue
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = len(data), mode, int(path.stat().st_mtime)
                archive.addfile(info, io.BytesIO(data))
                sent.append(rel)
                total += len(data)
        if sent:
            if progress is not None:
                progress(f"{len(sent)} files in one tar stream (no SFTP)")
            status, _, err = self.exec_bytes(f"python3 -c {shlex.quote(remote_script('receive_tar.py'))} "
                                             f"{shlex.quote(remote_dir)}",
                                             stdin=buffer.getvalue())
            if status != 0:
                raise LabStepError("push", f"could not write the files under {remote_dir} on {self.target.display}",
                                   status=status, tail=err.decode(errors="replace"))
        return {"sent": sent, "skipped": skipped, "bytes": total}

    def _makedirs(self, path: str) -> None:
        self.run(f"mkdir -p {shlex.quote(path)}", step="mkdir")

    def exec_bytes(self, command: str, stdin: bytes = b"", timeout: float = 300.0) -> tuple[int, bytes, bytes]:
        """Run a short command with stdin as its input; returns (status, stdout, stderr) as bytes. UnreachableError
        when it has not finished within timeout (or its channel does not open, or start, within answer_timeout)."""
        what = command.split()[0] if command else "command"
        deadline = time.monotonic() + timeout
        channel = self.open_channel(what, min(self.answer_timeout, timeout))
        try:
            self.request(channel, f"running {what}", lambda: channel.exec_command(command),
                         min(self.answer_timeout, timeout))
            channel.settimeout(max(0.1, deadline - time.monotonic()))
            out, err = bytearray(), bytearray()

            def drain_stderr() -> None:
                try:
                    while data := channel.recv_stderr(65536):
                        err.extend(data)
                except OSError:
                    pass

            reader = threading.Thread(target=drain_stderr, name="ssh-stderr", daemon=True)
            reader.start()
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            while data := channel.recv(65536):
                out.extend(data)
                if time.monotonic() > deadline:
                    raise socket.timeout()
                channel.settimeout(max(0.1, deadline - time.monotonic()))
            status = self.exit_status(channel, what, min(self.answer_timeout, max(0.1, deadline - time.monotonic())))
            reader.join(10)
            return status, bytes(out), bytes(err)
        except socket.timeout as exc:
            raise UnreachableError(f"{self.target.display} did not answer within {timeout:g} s (waiting for {what} "
                                   "to finish)", hint=_SLOW_HINT) from exc
        finally:
            channel.close()

    def read_bytes(self, path: str) -> bytes:
        """A file's contents from the host; FileNotFoundError (or another OSError) when it cannot be read."""
        sftp = self.sftp
        if sftp is not None:
            with self.sftp_deadline(f"to read {path}"), sftp.open(path, "rb") as f:
                return f.read()
        status, out, err = self.exec_bytes(f"cat -- {shlex.quote(path)}")
        if status != 0:
            text = err.decode(errors="replace").strip()
            cls = FileNotFoundError if "No such file" in text else OSError
            raise cls(errno.ENOENT if cls is FileNotFoundError else errno.EIO, text or f"cat exited with {status}", path)
        return out

    def fetch(self, remote_path: str, local_path: str | os.PathLike) -> Path:
        """Copy one file from the host to this machine (written atomically)."""
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.partial")
        if self.sftp is not None:
            with self.sftp_deadline(f"to copy {remote_path}"):
                self.sftp.get(remote_path, str(tmp))
        else:
            tmp.write_bytes(self.read_bytes(remote_path))
        os.replace(tmp, local_path)
        return local_path

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def absolute(self, path: str) -> str:
        """A path on the host made absolute: ~ and relative paths are under the SSH user's home."""
        if path.startswith("/"):
            return path.rstrip("/") or "/"
        home = self.output("cd ~ && pwd").strip()
        rest = path[2:] if path.startswith("~/") else ("" if path == "~" else path)
        return posixpath.join(home, rest).rstrip("/")


def ended_with_channel(command: str, shell: str = "sh") -> str:
    """A shell command line that runs command (with shell; "login" for the user's login shell) and ends
    it, its whole process group, when the SSH channel closes before it finished."""
    shell = '"${SHELL:-sh}"' if shell == "login" else shlex.quote(shell)
    return f"sh -c {shlex.quote(_ended_with_channel())} tflab-run {shlex.quote(command)} {shell}"


@functools.cache
def _ended_with_channel() -> str:
    """remote/ended_with_channel.sh without its comments (it is sent with every command)."""
    return "".join(line for line in remote_script("ended_with_channel.sh").splitlines(keepends=True)
                   if not line.startswith("#"))


def wait_for_ssh(target: SshTarget, *, timeout: float, progress: Callable[[str], None],
                 alive: Callable[[], None] | None = None) -> Connection:
    """Wait until the host answers SSH: TCP, then the banner, then authentication; returns the connection.

    Backs off from 0.5 s to 5 s between tries; raises UnreachableError after timeout with the
    stage it was stuck at and why. timeout 0 tries once (a named host that does not resolve, or
    refuses, fails at once). Host key errors are not retried. alive() runs between tries and raises
    when waiting is pointless (the machine stopped).
    """
    deadline = time.monotonic() + timeout

    def attempt() -> Connection:
        stage, ready, last = _probe(target, min(10.0, max(1.0, deadline - time.monotonic())))
        if ready:
            progress("authentication")
            try:
                return Connection(target).open()
            except (UnreachableError, InputError) as exc:  # sshd up, but the key not installed yet
                if timeout <= 0:
                    raise
                stage, last = "authentication", str(exc)
        progress(f"waiting for the {stage}")
        if timeout <= 0:
            raise UnreachableError(f"cannot reach {target.display}: {last}",
                                   hint="check the address and port; --ssh-timeout SECONDS waits for a host "
                                        "that is still starting")
        raise NotYet(f"stuck at the {stage}{': ' + last if last and last != stage else ''}")

    return poll(attempt, timeout=timeout, what=f"{target.display} did not answer SSH", interval=0.5, backoff=1.6,
                max_interval=5.0, alive=alive or (lambda: None),
                hint="check that the host runs and that the security group lets your address in")


def _probe(target: SshTarget, timeout: float) -> tuple[str, bool, str]:
    """(stage reached, whether an SSH banner answered, what went wrong)."""
    try:
        with socket.create_connection((target.host, target.port), timeout=min(timeout, 5.0)) as s:
            s.settimeout(timeout)
            banner = b""
            while not banner.endswith(b"\n") and len(banner) < 256:
                chunk = s.recv(256)
                if not chunk:
                    break
                banner += chunk
            if banner.startswith(b"SSH-"):
                return "authentication", True, ""
            return "SSH banner", False, f"port {target.port} answers, but not with SSH"
    except socket.gaierror as exc:
        return "name lookup", False, f"the name {target.host} does not resolve ({exc.strerror or exc})"
    except socket.timeout:
        return "TCP connection", False, f"no answer on port {target.port} (timed out)"
    except OSError as exc:
        return "TCP connection", False, f"port {target.port}: {exc.strerror or exc}"


def interactive_shell(connection: Connection) -> int:
    """A terminal shell over paramiko, for machines without an ssh client."""
    import select
    import shutil
    import sys
    import termios
    import tty

    columns, lines = shutil.get_terminal_size()
    channel = connection.open_channel("a shell")
    connection.request(channel, "a terminal", lambda: channel.get_pty(term=os.environ.get("TERM", "xterm"),
                                                                       width=columns, height=lines))
    connection.request(channel, "a shell", channel.invoke_shell)
    old = termios.tcgetattr(sys.stdin)
    try:
        tty.setraw(sys.stdin.fileno())
        while True:
            readable, _, _ = select.select([channel, sys.stdin], [], [])
            if channel in readable:
                data = channel.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if sys.stdin in readable:
                data = os.read(sys.stdin.fileno(), 1024)
                if not data:
                    break
                channel.sendall(data)
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)
    try:
        return connection.exit_status(channel, "the shell")
    finally:
        channel.close()
