"""`tflab autostop`: show and change the idle watchdog's policy on a lab host (remote/watchdog.py).

The watchdog runs on the host and needs nothing from this machine; this only talks to it over SSH
with short commands, which its idle clock does not count as activity.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import time

from tflab.errors import InputError, NotFoundError
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


def autostop(connection: Connection, workdir: str, *, idle: float | None = None, max_lifetime: float | None = None,
             keep: float | None = None, off: bool = False, on: bool = False) -> dict:
    """Change the policy (what is given) and return the watchdog's view."""
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
    result = connection.run(f"test -f {shlex.quote(script)} || exit 66; {command}", step="autostop", check=False)
    if result.status == 66:
        raise NotFoundError(f"there is no lab watchdog in {workdir} on {connection.target.display}",
                            hint="`tflab run-lab` prepares the host and starts it (--workdir if not ~/tflab)")
    if result.status != 0:
        raise InputError(f"the watchdog on {connection.target.display} answered with status {result.status}: "
                         f"{result.tail.splitlines()[-1] if result.tail else ''}", hint="run it again; see --json")
    try:
        return json.loads(result.tail.splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise InputError(f"the watchdog on {connection.target.display} gave no view ({result.tail[-200:]!r})",
                         hint="run it again; its log is in the lab's services folder") from exc


def render(view: dict, where: str) -> str:
    """The watchdog's view for a person."""
    policy, now = view.get("policy", {}), view.get("now", time.time())
    at = lambda t: time.strftime("%H:%M:%S", time.localtime(t))  # noqa: E731
    lines = [f"autostop on {where}: {'on' if policy.get('enabled') else 'OFF (the lab runs until you stop it)'}",
             f"  policy     idle {describe(policy.get('idle_seconds'))}, "
             f"max lifetime {describe(policy.get('max_lifetime_seconds'))}"
             + (f", kept until {at(policy['keep_until'])}" if (policy.get("keep_until") or 0) > now else "")
             + f"; action: {view.get('action', '?')}"]
    if "checked_at" not in view:
        lines.append("  the watchdog has not checked yet")
        return "\n".join(lines)
    lines.append(f"  idle       {describe(view.get('idle_seconds')) if view.get('idle_seconds') else '0 s'} "
                 f"(checked {now - view['checked_at']:.0f} s ago)")
    lines.append(f"  active     {', '.join(view.get('active') or []) or 'nothing'}")
    if view.get("acted"):
        acted = view["acted"]
        lines.append(f"  acted      {acted['what']} at {at(acted['at'])}: {acted['why']}")
    elif view.get("acts_at") and policy.get("enabled"):
        lines.append(f"  acts at    {at(view['acts_at'])} ({view.get('acts_because')}) unless there is activity")
    return "\n".join(lines)


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
