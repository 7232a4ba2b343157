"""One way to wait for something: poll a check until it gives a value, with a limit, a bounded
backoff, and the last reason it was not ready in the error."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from tflab.errors import UnreachableError

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a check: not ready yet, and why (the reason the final error gives)."""


def poll(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25,
         max_interval: float | None = None, backoff: float = 1.0, retry_on: tuple[type[BaseException], ...] = (),
         alive: Callable[[], None] = lambda: None, progress: Callable[[str], None] | None = None,
         hint: str | None = None) -> T:
    """Call check() until it returns something other than None, and return that.

    check() raising NotYet or one of retry_on means "not yet" (its text is the reason given at the
    end); anything else propagates. alive() runs between tries and raises when waiting is pointless
    (what was waited for died). The delay starts at interval and grows by backoff up to max_interval;
    no sleep passes the deadline, and the last try is made at it. timeout 0 tries once.
    Raises UnreachableError("<what> within <timeout> s (<last reason>)"), chained from the last
    exception that meant "not yet".
    """
    deadline = time.monotonic() + max(0.0, timeout)
    delay = max(interval, 0.001)  # never a busy loop
    last, cause = "no answer yet", None
    while True:
        try:
            value = check()
            if value is not None:
                return value
            last, cause = "not ready", None
        except (NotYet, *retry_on) as exc:
            last, cause = str(exc) or type(exc).__name__, exc
        alive()
        if progress is not None:
            progress(last)
        left = deadline - time.monotonic()
        if left <= 0:
            raise UnreachableError(f"{what} within {timeout:.0f} s ({last})", hint=hint) from cause
        time.sleep(min(delay, left))
        delay = delay * backoff if max_interval is None else min(delay * backoff, max_interval)
