"""Where the lab runs: the Host interface the run-lab pipeline (tflab.lab) is written against.

One pipeline, three kinds of host (an instance made by `tflab up`, any SSH machine, this
machine). A Host carries everything that differs between them: preparing itself (push and
bootstrap), running a command with streamed output, starting and stopping long-running services,
choosing the ports of its services (the lab's own where free there), making them reachable from
here (tunnels, or nothing), fetching files, and its facts (how it serves, its GPUs). The pipeline
never asks which kind of host it has. `LocalHost` is this machine, with no SSH and no cloud
(`run-lab --local`); `tflab.sshhost.SshHost` is a machine reached over SSH.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from tflab.errors import InputError, LabStepError

log = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]  # (stream name "out" | "err", line)
# What each of the lab's service ports is, for messages.
PORT_NAMES = {"serving": "model server gRPC", "rest": "model server REST", "tensorboard": "TensorBoard",
              "jupyter": "Jupyter"}


@dataclass(frozen=True)
class CommandResult:
    """A finished command: its exit status and the tail of its output."""

    argv: tuple[str, ...]
    status: int
    tail: str
    seconds: float


@dataclass(frozen=True)
class Service:
    """A long-running process on a host, with its pid and log file there."""

    name: str
    pid: int
    log_path: str
    port: int | None = None
    kept: bool = False  # already running from an earlier run with the same command


class Host(ABC):
    """A machine the lab runs on.

    Contract: every wait is bounded; `run` streams output lines as they come and returns
    the status; services outlive the call that started them (and, on remote hosts, the
    connection) until `stop_service`. `prepare` comes first; `close` ends what the host holds
    here (connections, tunnels), never its kept services.
    """

    name: str = "host"
    keeps_services: bool = False  # its services outlive the run (a lab host), or end with it (this machine)
    serving: str | None = None  # how its bootstrap found it can serve (tflab.serving kinds); None: by PATH
    jupyter_token_file: str | None = None  # where its Jupyter token is; None: no Jupyter on this host

    @property
    @abstractmethod
    def workdir(self) -> str:
        """The lab's folder on the host (models, logs, plots, services)."""

    def prepare(self, console) -> None:
        """Make the host ready to run the lab (connect, push remote/, bootstrap)."""

    def attach(self, console) -> None:
        """Reach a host a run prepared before, as it left it, to serve its lab again (no training)."""
        self.prepare(console)

    @abstractmethod
    def choose_ports(self, wanted: dict[str, int], console, avoid: frozenset[int] = frozenset()) -> dict[str, int]:
        """The ports its services listen on, by name: the wanted ones where free there (and not in
        avoid: ports other hosts of the run chose), others where not (said on console); a port of one
        of its own services still running is kept."""

    @property
    def peer_address(self) -> str:
        """The address the run's other hosts reach this one at (TF_CONFIG's cluster)."""
        return "127.0.0.1"

    @abstractmethod
    def forward(self, ports: dict[str, int], wanted_local: dict[str, int], console) -> None:
        """Start making the services' ports reachable from this machine (may return before they are)."""

    @abstractmethod
    def local_port(self, name: str) -> int:
        """The port on this machine that reaches the service port `name` (waits until it does)."""

    def check_forwarding(self) -> None:
        """Raise UnreachableError when the services cannot be reached from here any more."""

    @property
    def forwarding_alive(self) -> bool:
        """Whether the services are still reachable from here."""
        return True

    def fetch(self, path: str, folder: Path) -> Path:
        """A file of the host as a file here: copied into folder, or the file itself on this machine."""
        return Path(path)

    def facts(self) -> dict:
        """What the report says of the host beyond its name and python (address, GPUs, ...)."""
        return {}

    def phase_marks(self) -> dict[str, float]:
        """When each of its own phases of prepare ended (time.monotonic()), for the report's timings."""
        return {}

    def close(self) -> None:
        """End what the host holds on this machine (connections, tunnels); idempotent."""

    @property
    @abstractmethod
    def python(self) -> str:
        """The interpreter the lab steps run with on this host."""

    @property
    @abstractmethod
    def remote_dir(self) -> str:
        """The folder on this host holding the scripts from remote/."""

    @abstractmethod
    def which(self, program: str) -> str | None:
        """The path of a program on the host's PATH, or None."""

    @abstractmethod
    def run(self, argv: list[str], *, step: str, cwd: str | None = None, env: dict | None = None,
            on_line: LineSink | None = None, timeout: float = 600.0) -> CommandResult:
        """Run a command to its end; raise LabStepError when it fails or outlives timeout."""

    @abstractmethod
    def start_service(self, name: str, argv: list[str], *, log_path: str, cwd: str | None = None,
                      env: dict | None = None, port: int | None = None, tied: bool = False) -> Service:
        """Start a long-running process detached, its output going to log_path. tied: it must end with
        this run even when tflab cannot stop it (killed, or the host unreachable): a run's workers."""

    @abstractmethod
    def service_alive(self, service: Service) -> bool:
        """Whether the service's process still runs."""

    @abstractmethod
    def stop_service(self, service: Service, timeout: float = 5.0) -> None:
        """Stop the service (SIGTERM, then SIGKILL after timeout); idempotent."""

    @abstractmethod
    def read_log(self, service: Service, lines: int = 20) -> str:
        """The last lines of the service's log."""

    @abstractmethod
    def read_text(self, path: str) -> str:
        """The contents of a text file on the host."""


class LocalHost(Host):
    """This machine: commands are subprocesses, services are process groups that end with the run."""

    name = "local"

    def __init__(self, python: str | None = None, workdir: str | os.PathLike | None = None):
        self._python = python or sys.executable
        self._workdir = str(Path(workdir or Path.cwd() / "tflab-results" / "local").resolve())
        self._procs: dict[int, subprocess.Popen] = {}
        self._ports: dict[str, int] = {}

    @property
    def workdir(self) -> str:
        return self._workdir

    def prepare(self, console) -> None:
        try:
            Path(self._workdir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot use {self._workdir} for the results: {exc.strerror}",
                             hint="choose another --out") from exc

    def choose_ports(self, wanted: dict[str, int], console, avoid: frozenset[int] = frozenset()) -> dict[str, int]:
        from tflab import ports

        got = ports.choose({name: port for name, port in wanted.items() if port}, avoid)
        chosen = {name: got.get(name, 0) for name in wanted}  # 0: not wanted (REST off)
        for name, port in wanted.items():
            if port and chosen[name] != port:
                console.note(f"port {port} ({PORT_NAMES.get(name, name)}) is in use; using {chosen[name]} instead")
        return chosen

    def forward(self, ports: dict[str, int], wanted_local: dict[str, int], console) -> None:
        self._ports = dict(ports)  # this machine: the services are reached where they listen

    def local_port(self, name: str) -> int:
        return self._ports[name]

    @property
    def python(self) -> str:
        return self._python

    @property
    def remote_dir(self) -> str:
        from tflab.paths import remote_dir

        return str(remote_dir())

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def run(self, argv, *, step, cwd=None, env=None, on_line=None, timeout=600.0) -> CommandResult:
        started = time.monotonic()
        tail: deque[str] = deque(maxlen=40)
        proc = subprocess.Popen(tied_to_this_process(argv), cwd=cwd, env={**os.environ, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                start_new_session=True)
        lock = threading.Lock()

        def pump(stream, kind):
            for raw in stream:
                line = raw.rstrip("\n")
                with lock:
                    tail.append(line)
                    if on_line is not None:
                        on_line(kind, line)

        threads = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
        for t in threads:
            t.start()
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise LabStepError(step, f"did not finish within {timeout:.0f} s", tail="\n".join(tail),
                               hint="raise the limit, or look at the output above")
        except BaseException:  # Ctrl-C: take the child down with us
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise
        for t in threads:
            t.join(5)
        result = CommandResult(tuple(argv), status, "\n".join(tail), time.monotonic() - started)
        if status != 0:
            raise LabStepError(step, f"exited with status {status}", status=status, tail=result.tail)
        return result

    def start_service(self, name, argv, *, log_path, cwd=None, env=None, port=None, tied=False) -> Service:
        # Every child here is tied to this process already (the parent-death signal).
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(tied_to_this_process(argv), cwd=cwd, env={**os.environ, **(env or {})},
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[proc.pid] = proc
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return Service(name, proc.pid, log_path, port)

    def service_alive(self, service: Service) -> bool:
        proc = self._procs.get(service.pid)
        if proc is not None:
            return proc.poll() is None
        return _pid_alive(service.pid)

    def stop_service(self, service: Service, timeout: float = 5.0) -> None:
        proc = self._procs.pop(service.pid, None)
        if proc is not None and proc.poll() is not None:
            return
        _kill_group(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not _pid_alive(service.pid):
                return
            time.sleep(0.02)
        _kill_group(service.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(5)

    def read_text(self, path: str) -> str:
        return Path(path).read_text()

    def read_log(self, service: Service, lines: int = 20) -> str:
        try:
            text = Path(service.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@lru_cache(maxsize=1)
def _setpriv() -> str | None:
    """util-linux's setpriv, when it has --pdeathsig (2.33 and newer)."""
    program = shutil.which("setpriv")
    if program is None:
        return None
    try:
        usage = subprocess.run([program, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return program if "--pdeathsig" in usage else None


def tied_to_this_process(argv: list[str]) -> list[str]:
    """argv, started so that it is killed when this process dies, even by `kill -9` (Linux's
    parent-death signal, set by `setpriv --pdeathsig` before it execs argv: the pid stays the same).
    SIGKILL, not SIGTERM: TensorFlow's multi-worker runtime catches SIGTERM and would train on; the
    orderly stop (SIGTERM first) is the owner's, while tflab lives.

    The signal follows the thread that starts the child: start children from the main thread.
    Where setpriv cannot do it, argv is returned as it is (the signal handlers still clean up).
    """
    setpriv = _setpriv() if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
