"""tflab.waiting.poll, the one polling helper: limits, backoff, a dead wait, the reason given."""

from __future__ import annotations

import time

import pytest

from tflab import waiting
from tflab.errors import UnreachableError
from tflab.waiting import NotYet, poll


class Clock:
    """time.monotonic and time.sleep as seen by tflab.waiting, without waiting: sleeps are recorded."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(waiting, "time", fake)
    return fake


def test_a_value_is_returned_as_soon_as_the_check_gives_one(clock):
    answers = iter([None, None, "ready"])
    assert poll(lambda: next(answers), timeout=10, what="x") == "ready"
    assert clock.sleeps == [0.25, 0.25]


def test_timeout_zero_tries_exactly_once(clock):
    calls = []

    def check():
        calls.append(1)
        raise NotYet("closed")

    with pytest.raises(UnreachableError, match=r"^the door did not open within 0 s \(closed\)$"):
        poll(check, timeout=0, what="the door did not open")
    assert calls == [1] and clock.sleeps == []
    assert poll(lambda: 5, timeout=0, what="x") == 5


def test_the_backoff_grows_up_to_its_bound_and_no_sleep_passes_the_deadline(clock):
    with pytest.raises(UnreachableError):
        poll(lambda: None, timeout=30, what="x", interval=0.5, backoff=2.0, max_interval=4.0)
    assert clock.sleeps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert max(clock.sleeps) == 4.0
    assert sum(clock.sleeps) == pytest.approx(30.0)  # the last try is at the deadline, not past it
    assert clock.sleeps[-1] <= 4.0


def test_without_a_bound_the_backoff_is_still_cut_at_the_deadline(clock):
    with pytest.raises(UnreachableError):
        poll(lambda: None, timeout=10, what="x", interval=1.0, backoff=3.0)
    assert clock.sleeps == [1.0, 3.0, 6.0]  # 1 + 3 = 4 s, then the 9 s sleep is cut to the 6 s left


def test_alive_stops_the_wait_at_once(clock):
    class Died(Exception):
        pass

    tries = []

    def alive():
        if len(tries) == 2:
            raise Died("the server exited")

    def check():
        tries.append(1)
        raise NotYet("loading")

    with pytest.raises(Died, match="the server exited"):
        poll(check, timeout=600, what="x", alive=alive)
    assert len(tries) == 2 and clock.sleeps == [0.25]


def test_the_error_gives_the_last_reason_and_the_hint(clock):
    reasons = iter(["version 1 START", "version 1 LOADING", "version 1 LOADING"])
    seen: list[str] = []

    def check():
        raise NotYet(next(reasons))

    with pytest.raises(UnreachableError) as caught:
        poll(check, timeout=1.0, interval=0.5, what="model nn was not AVAILABLE", progress=seen.append,
             hint="read its log")
    assert caught.value.message == "model nn was not AVAILABLE within 1 s (version 1 LOADING)"
    assert caught.value.hint == "read its log"
    assert isinstance(caught.value.__cause__, NotYet)
    assert seen == ["version 1 START", "version 1 LOADING", "version 1 LOADING"]


def test_retry_on_means_not_yet_and_anything_else_propagates(clock):
    answers = iter([ConnectionRefusedError("refused"), TimeoutError(), "up"])

    def check():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert poll(check, timeout=5, what="x", retry_on=(OSError,)) == "up"

    def broken():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        poll(broken, timeout=5, what="x", retry_on=(OSError,))


def test_an_empty_reason_names_the_exception_and_none_says_not_ready(clock):
    with pytest.raises(UnreachableError, match=r"\(TimeoutError\)"):
        poll(lambda: (_ for _ in ()).throw(TimeoutError()), timeout=0, what="x", retry_on=(TimeoutError,))
    with pytest.raises(UnreachableError, match=r"\(not ready\)"):
        poll(lambda: None, timeout=0, what="x")


def test_it_really_waits_no_longer_than_its_limit():
    started = time.monotonic()
    with pytest.raises(UnreachableError):
        poll(lambda: None, timeout=0.3, what="x", interval=0.05, backoff=2.0)
    assert 0.3 <= time.monotonic() - started < 1.0
