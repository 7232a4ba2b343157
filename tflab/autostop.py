"""`tflab autostop`: show and change the idle watchdog's policy on a lab host (remote/watchdog.py).

The watchdog runs on the host and needs nothing from this machine; this only talks to it over SSH
with short commands, which its idle clock does not count as activity.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import shlex
import time

from tflab.errors import InputError, LabStepError, NotFoundError, UnreachableError
from tflab.ssh import Connection

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> float:
    """'45s', '30m', '2h', '1h30m' or 'off' (0) -> seconds; InputError for anything else."""
    value = text.strip().lower()
    if value in ("off", "0"):
        return 0.0
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise InputError(f"{option} {text!r} is not a duration", hint=f"e.g. {option} 45s, 30m, 2h or 1h30m (or off)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds > 366 * 86400:
        raise InputError(f"{option} {text!r} is more than a year", hint="give a shorter duration")
    return seconds


def describe(seconds: float | None) -> str:
    if not seconds:
        return "off"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


DEADLINE = 30.0  # seconds a call to the watchdog on the host may take (its `view` and `set` answer at once)
VIEW_LIMIT, VIEW_DEPTH = 262144, 16  # the most bytes and nesting read from the host's view
LATEST = 1e10  # no time the watchdog gives is later than this (the year 2286): a larger one is damage
_JSON = re.compile(r'"(?:[^"\\]|\\.)*"|[][{}]')


def autostop(connection: Connection, workdir: str, *, idle: float | None = None, max_lifetime: float | None = None,
             keep: float | None = None, off: bool = False, on: bool = False, timeout: float = DEADLINE) -> dict:
    """Change the policy (what is given) and return the watchdog's view, checked (read_view).

    Raises NotFoundError (no watchdog there), UnreachableError (no answer within timeout seconds),
    InputError (it failed, or its view is damaged).
    """
    workdir = connection.absolute(workdir)
    script = posixpath.join(workdir, "remote", "watchdog.py")
    changes = []
    for flag, value in (("--idle", idle), ("--max-lifetime", max_lifetime), ("--keep", keep)):
        if value is not None:
            changes += [flag, repr(float(value))]
    changes += ["--off"] if off else []
    changes += ["--on"] if on else []
    verb = "set" if changes else "view"
    command = shlex.join(["python3", script, verb, "--workdir", workdir, *changes])
    where = connection.target.display
    try:  # only the answer's last VIEW_LIMIT bytes come back, whatever the host prints
        result = connection.run(f"test -f {shlex.quote(script)} || exit 66; out=$({command} 2>&1); s=$?; "
                                f"printf '%s\\n' \"$out\" | tail -c {VIEW_LIMIT}; exit $s", step="autostop",
                                check=False, timeout=timeout)
    except LabStepError as exc:  # with check=False, only the deadline raises
        raise UnreachableError(f"the watchdog on {where} did not answer within {timeout:.0f} s",
                               hint=f"look at {workdir}/services/watchdog.log there; `tflab status` still "
                                    "shows the lab") from exc
    if result.status == 66:
        raise NotFoundError(f"there is no lab watchdog in {workdir} on {where}",
                            hint="`tflab run-lab` prepares the host and starts it (--workdir if not ~/tflab)")
    last = result.tail.splitlines()[-1][:300] if result.tail else ""
    if result.status != 0:
        raise InputError(f"the watchdog on {where} answered with status {result.status}: {last}",
                         hint="run it again; see --json")
    return read_view(result.tail.splitlines()[-1] if result.tail else "", f"{where}:{workdir}")


def read_view(line: str, where: str) -> dict:
    """The watchdog's view from its one line of JSON, every value it shows checked: bounded in size and
    depth, numbers finite and times within reach. InputError naming what is wrong otherwise."""
    def damaged(what: str):
        return InputError(f"the watchdog's view on {where} is damaged: {what}",
                          hint="its files are in the lab's autostop/ folder on the host; `tflab run-lab` installs "
                               "the watchdog again, `tflab autostop --keep off` writes its policy afresh")

    if len(line) > VIEW_LIMIT:
        raise damaged(f"more than {VIEW_LIMIT} bytes")
    depth = 0
    for token in _JSON.finditer(line):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(token.group(), 0)
        if depth > VIEW_DEPTH:
            raise damaged(f"nested deeper than {VIEW_DEPTH}")
    try:
        view = json.loads(line, parse_constant=lambda name: float(name))
    except (ValueError, RecursionError) as exc:
        raise damaged(f"not JSON ({line[-120:]!r})") from exc

    def check(value, kind, name: str, high: float = LATEST, empty: bool = True):
        ok = (value is None and empty) or (kind is float and isinstance(value, (int, float)) and
                                           not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= high) \
            or (kind is not float and isinstance(value, kind) and (kind is not list or
                                                                   all(isinstance(v, str) for v in value)))
        if not ok:
            raise damaged(f"{name} is {str(value)[:40]}")
        return value

    check(view, dict, "the view", empty=False)
    policy = check(view.get("policy"), dict, "the policy", empty=False)
    check(policy.get("enabled"), bool, "policy.enabled", empty=False)
    for key in ("idle_seconds", "max_lifetime_seconds"):
        check(policy.get(key), float, f"policy.{key}", 366 * 86400)
    check(policy.get("keep_until"), float, "policy.keep_until")
    for key in ("now", "checked_at", "acts_at", "idle_seconds", "started_at"):
        check(view.get(key), float, key)
    for key in ("action", "acts_because"):
        check(view.get(key), str, key)
    for key in ("active", "problems"):
        check(view.get(key), list, key)
    acted = check(view.get("acted"), dict, "acted")
    if acted is not None:
        check(acted.get("what"), str, "acted.what", empty=False)
        check(acted.get("why"), str, "acted.why", empty=False)
        check(acted.get("at"), float, "acted.at", empty=False)
        for key in ("stopped", "ignored"):
            check(acted.get(key), list, f"acted.{key}")
    return view


def render(view: dict, where: str) -> str:
    """The watchdog's view for a person."""
    policy, now = view.get("policy", {}), view.get("now", time.time())
    at = lambda t: time.strftime("%H:%M:%S", time.localtime(t))  # noqa: E731
    lines = [f"autostop on {where}: {'on' if policy.get('enabled') else 'OFF (the lab runs until you stop it)'}",
             f"  policy     idle {describe(policy.get('idle_seconds'))}, "
             f"max lifetime {describe(policy.get('max_lifetime_seconds'))}"
             + (f", kept until {at(policy['keep_until'])}" if (policy.get("keep_until") or 0) > now else "")
             + f"; action: {view.get('action', '?')}"]
    problems = [f"  problem    {problem[:200]}" for problem in (view.get("problems") or [])[:5]]
    if "checked_at" not in view:
        lines.append("  the watchdog has not checked yet")
        return "\n".join(lines + problems)
    lines.append(f"  idle       {describe(view.get('idle_seconds')) if view.get('idle_seconds') else '0 s'} "
                 f"(checked {now - view['checked_at']:.0f} s ago)")
    lines.append(f"  active     {', '.join(view.get('active') or []) or 'nothing'}")
    if view.get("acted"):
        acted = view["acted"]
        lines.append(f"  acted      {acted['what']} at {at(acted['at'])}: {acted['why']}")
        lines += [f"  left alone {why}" for why in acted.get("ignored") or []]
    elif view.get("acts_at") and policy.get("enabled"):
        lines.append(f"  acts at    {at(view['acts_at'])} ({view.get('acts_because')}) unless there is activity")
    return "\n".join(lines + problems)


def summary(view: dict) -> str:
    """One line of the watchdog's state, for `tflab status`."""
    if "error" in view:
        return f"unknown ({view['error']})"
    policy, at = view.get("policy", {}), lambda t: time.strftime("%H:%M", time.localtime(t))  # noqa: E731
    if not policy.get("enabled"):
        return "OFF: the lab runs until you stop it"
    if view.get("acted"):
        return f"acted at {at(view['acted']['at'])}: {view['acted']['why']}"
    idle = f"idle {describe(view.get('idle_seconds')) if view.get('idle_seconds') else '0 s'}"
    if view.get("active"):
        idle = f"active ({', '.join(view['active'])})"
    return idle + (f", acts at {at(view['acts_at'])}" if view.get("acts_at") else "")
