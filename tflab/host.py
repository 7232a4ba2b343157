"""Where the lab runs: the small Host interface the run-lab pipeline is written against.

One pipeline, three kinds of host (an instance made by `tflab up`, any SSH machine, this
machine): each implements running a command with streamed output, starting a long-running
service detached with a pid and a log file, and reaching a service's port from here.
`LocalHost` is this machine, with no SSH and no cloud (`run-lab --local`).
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

from tflab.errors import LabStepError

log = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]  # (stream name "out" | "err", line)


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
    connection) until `stop_service`.
    """

    name: str = "host"

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
                      env: dict | None = None, port: int | None = None) -> Service:
        """Start a long-running process detached, its output going to log_path."""

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
    """This machine: commands are subprocesses, services are detached process groups."""

    name = "local"

    def __init__(self, python: str | None = None):
        self._python = python or sys.executable
        self._procs: dict[int, subprocess.Popen] = {}

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

    def start_service(self, name, argv, *, log_path, cwd=None, env=None, port=None) -> Service:
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
    """argv, started so that it gets SIGTERM when this process dies, even by `kill -9` (Linux's
    parent-death signal, set by `setpriv --pdeathsig` before it execs argv: the pid stays the same).

    The signal follows the thread that starts the child: start children from the main thread.
    Where setpriv cannot do it, argv is returned as it is (the signal handlers still clean up).
    """
    setpriv = _setpriv() if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


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
