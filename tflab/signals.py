"""Signals end what a command started: SIGINT (Ctrl-C), SIGTERM (systemd, `timeout`, `docker stop`)
and SIGHUP (a closed terminal) all unwind the command the same way, from its first instruction.

`install()` runs first thing in `tflab.cli.main`: each of the three raises `Interrupted` (a
KeyboardInterrupt) in the main thread, so every `finally` block and context manager that owns a
process, a tunnel or a connection ends it. While that cleanup runs (each step is bounded), a second
signal is ignored rather than cutting the cleanup short; `kill -9` cannot be caught, and for that
the children tflab starts on this machine carry a parent-death signal (`tied_to_this_process`).
"""

from __future__ import annotations

import signal
import time
from typing import Callable

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state = {"received": 0}


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop; carries which one."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
        return 128 + int(self.signum)


def _handler(signum, _frame) -> None:
    if _state["received"]:
        return  # cleaning up after the first one: let it finish
    _state["received"] = signum
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread (again: no change)."""
    for sig in HANDLED:
        if signal.getsignal(sig) is not _handler:
            signal.signal(sig, _handler)


def received() -> int:
    """The signal that interrupted this command, or 0."""
    return _state["received"]


def wait_for_interrupt(alive: Callable[[], bool] = lambda: True) -> bool:
    """Block until a signal (True), or until alive() turns False (False)."""
    try:
        while alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        return True
    return False
