"""The idle watchdog on this machine's side: its one owner here. remote/watchdog.py is its one definition
on the host; this module alone knows its folder, file names and policy keys, and writes them: the part
of `up`'s boot script that installs it (boot_script), the policy `up` gives it (policy), where run-lab's
lab is (tell_lab_dir), the other nodes of a lab (peers.json: tell_peers, write_peers), the model
server's activity stamp (activity_env), and `tflab autostop`/`tflab status` (autostop, view_of), which
show and change its policy.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from tflab.errors import InputError, LabStepError, NotFoundError, TflabError, UnreachableError
from tflab.jsontext import nesting

if TYPE_CHECKING:
    from tflab.console import Console
    from tflab.ssh import Connection, SshTarget
    from tflab.state import LabState

# The watchdog's files, as remote/watchdog.py reads them (its `paths` and `valid_policy`).
WATCHDOG_DIR = "~/tflab"  # where `up`'s boot script puts the watchdog (run-lab's --workdir may differ)
WATCHDOG_UNIT = "tflab-watchdog.service"  # `up`'s systemd unit
STATE_DIR = "/var/lib/tflab"  # root's: `up`'s watchdog program and its last good policy, out of the lab user's reach
BOOT_PROGRAM = f"{STATE_DIR}/watchdog.py"  # where the boot script puts remote/watchdog.py
FOLDER = "autostop"  # <workdir>/autostop/: policy.json, view.json, peers.json, lab-dir
POLICY_FILE = "policy.json"
PEERS_FILE = "peers.json"
LAB_DIR_FILE = "lab-dir"  # run-lab's workdir, when it is not the watchdog's own
ACTIVITY_FILE = "model-server.activity"  # in <lab workdir>/services/: the model server stamps it at each request
ACTIVITY_ENV = "TFLAB_ACTIVITY_FILE"  # where the model server (remote/tfserving/server.py) reads that file's path


def policy(idle_seconds: float | None, max_lifetime_seconds: float | None) -> dict:
    """The watchdog's policy document (remote/watchdog.py valid_policy's keys); off when neither is given."""
    return {"enabled": bool(idle_seconds or max_lifetime_seconds), "idle_seconds": idle_seconds or None,
            "max_lifetime_seconds": max_lifetime_seconds or None, "keep_until": None}


def activity_env(lab_workdir: str) -> dict[str, str]:
    """The model server's environment for its activity stamp in the lab's services folder."""
    return {ACTIVITY_ENV: posixpath.join(lab_workdir, "services", ACTIVITY_FILE)}


def boot_script(folder: str, ssh_user: str, policy: dict, program: str) -> str:
    """The part of the user data that installs the idle watchdog with the lab's policy, as a systemd unit that
    starts now and at every boot (a detached process where there is no systemd); program is the shell that
    writes remote/watchdog.py to BOOT_PROGRAM (the user data's here-document). It acts by the instance's own
    shutdown, which InstanceInitiatedShutdownBehavior turns into a stop or a terminate.

    The program and its last good policy are root's (STATE_DIR), out of reach of the lab user's
    `rm -rf ~/tflab`, and systemd restarts it whatever ends it (Restart=always): the lab never bills on
    unwatched. A copy in the lab's folder serves `tflab autostop`."""
    q = shlex.quote
    own = posixpath.join(folder, FOLDER)
    run = shlex.join(["/usr/bin/python3", BOOT_PROGRAM, "run", "--workdir", folder, "--action", "shutdown",
                      "--state", STATE_DIR])
    unit = ("[Unit]\nDescription=tflab idle watchdog\nAfter=network.target\n\n[Service]\n"
            f"ExecStart={run}\nRestart=always\nRestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n")
    return (f"# tflab: the idle watchdog ({WATCHDOG_UNIT})\n"
            f"mkdir -p {STATE_DIR} {q(own)} {q(folder + '/remote')}\n"
            f"{program}\n"
            f"cp {BOOT_PROGRAM} {q(folder + '/remote/watchdog.py')}\n"
            f"[ -f {q(own + '/' + POLICY_FILE)} ] || printf %s {q(json.dumps(policy))} > "
            f"{q(own + '/' + POLICY_FILE)}\n"
            f"chown -R {q(ssh_user + ':')} {q(folder)}\n"
            f"if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then\n"
            f"  printf %s {q(unit)} > /etc/systemd/system/{WATCHDOG_UNIT}\n"
            f"  systemctl daemon-reload && systemctl enable --now {WATCHDOG_UNIT}\n"
            f"else\n  nohup {run} >/var/log/tflab-watchdog.log 2>&1 &\nfi\n")


def service_command(remote: str, workdir: str, action: str, ssh_port: int) -> tuple[list[str], dict[str, str]]:
    """The idle watchdog as one of a lab's services, as run-lab starts it on a host (remote: the folder of the
    pushed remote/ scripts; ssh_port: the port sshd listens on there). Its code's digest goes in its environment:
    one started by another tflab (older code, e.g. one that trusted pid files) is not kept but restarted."""
    import hashlib

    from tflab.paths import remote_dir

    argv = ["python3", posixpath.join(remote, "watchdog.py"), "run", "--workdir", workdir, "--action", action,
            "--ssh-port", str(ssh_port)]
    code = hashlib.sha256((remote_dir() / "watchdog.py").read_bytes()).hexdigest()[:16]
    return argv, {"TFLAB_WATCHDOG_CODE": code}


def tell_lab_dir(connection: Connection, lab_workdir: str) -> None:
    """Tell the watchdog in WATCHDOG_DIR (`up`'s, started at boot) where run-lab's lab is: its services, their
    ports and the model server's activity stamp (run-lab's --workdir may be another folder)."""
    where = shlex.quote(connection.absolute(WATCHDOG_DIR) + "/" + FOLDER)
    connection.run(f"mkdir -p {where} && printf %s {shlex.quote(lab_workdir)} > {where}/{LAB_DIR_FILE}",
                   step="autostop")


def peers_token(state: LabState) -> str:
    """The lab's peers token: the secret its nodes' watchdogs sign their questions and answers with, so that
    only the lab's own nodes count as each other's activity. Derived from the lab's private key (HMAC-SHA256),
    which only this machine holds, so `up` and every `run-lab` write the same one; a random one without it."""
    import hashlib
    import hmac
    import secrets
    from pathlib import Path

    try:
        key = Path(state.key_path).read_bytes() if state.key_path else b""
    except OSError:
        key = b""
    if not key:
        return secrets.token_hex(32)
    return hmac.new(hashlib.sha256(key).digest(), b"tflab peers token\0" + state.name.encode(), "sha256").hexdigest()


def peers_command(state: LabState, index: int, token: str) -> tuple[str, bytes]:
    """Shell that tells node index's idle watchdog the other nodes' private addresses and the lab's token
    (remote/watchdog.py peers.json, readable by the lab user only), so that the lab stops as one; and the
    document it reads on its stdin (the SSH channel): the token is never in a command line, which any user
    of the host sees in its process list."""
    others = [n["private_ip"] for n in state.nodes if n["index"] != index and n.get("private_ip")]
    folder = f"{WATCHDOG_DIR}/{FOLDER}"
    path = f"{folder}/{PEERS_FILE}"
    return (f"mkdir -p {folder} && (umask 077; rm -f {path}.new; cat > {path}.new && mv -f {path}.new {path})",
            json.dumps({"token": token, "peers": others}).encode())


def write_peers(connection: Connection, state: LabState, index: int, token: str) -> None:
    """Write node index's peers.json over connection (peers_command); LabStepError if that fails."""
    command, document = peers_command(state, index, token)
    status, _, err = connection.exec_bytes(command, stdin=document, timeout=60)
    if status != 0:
        raise LabStepError("autostop peers", "could not write the watchdog's peers.json", status=status,
                           tail=err.decode(errors="replace"))


def tell_peers(state: LabState, target_of: Callable[[int], SshTarget], console: Console) -> None:
    """Each node's watchdog learns the others (best effort: run-lab tells them again); target_of(index) is the
    SSH target of the lab's node index."""
    from tflab.ssh import Connection

    token = peers_token(state)
    for node in state.nodes:
        try:
            with Connection(target_of(node["index"]), connect_timeout=10) as connection:
                write_peers(connection, state, node["index"], token)
        except (TflabError, OSError) as exc:
            console.note(f"could not tell node {node['index']}'s watchdog about the other nodes ({exc}); "
                         "run-lab does it")


def view_of(target: SshTarget) -> dict:
    """The watchdog's view on `up`'s lab host (in WATCHDOG_DIR), asked over SSH (a short query, not activity)
    within 5 s to connect and 15 s to answer, and checked (read_view); {"error": ...} when it cannot be had."""
    from tflab.ssh import Connection

    try:
        with Connection(target, connect_timeout=5) as connection:
            return autostop(connection, WATCHDOG_DIR, timeout=15)
    except (TflabError, OSError, ValueError, EOFError) as exc:
        return {"error": str(exc)}

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


@dataclass(frozen=True)
class LaunchPolicy:
    """The watchdog's policy for a lab `up` makes, from --idle-stop, --max-lifetime, --idle-action and --spot,
    and what the instance's own shutdown does (its InstanceInitiatedShutdownBehavior)."""

    idle_seconds: float
    lifetime_seconds: float
    behavior: str  # "stop" | "terminate"

    @classmethod
    def of(cls, idle_stop: str, max_lifetime: str, idle_action: str | None, spot: bool) -> LaunchPolicy:
        """Checked: a duration that is not one, or a spot lab asked to stop, is an InputError."""
        idle, lifetime = parse_duration(idle_stop, "--idle-stop"), parse_duration(max_lifetime, "--max-lifetime")
        if spot and idle_action == "stop":
            raise InputError("a one-time spot instance cannot be stopped, only terminated",
                             hint="drop --idle-action stop (a spot lab's watchdog terminates it), or drop --spot")
        return cls(idle, lifetime, idle_action or ("terminate" if spot else "stop"))

    @property
    def document(self) -> dict:
        return policy(self.idle_seconds, self.lifetime_seconds)

    def announce(self, console: Console) -> None:
        """What the lab will do by itself, said before launching (a warning where it may bill on)."""
        if not self.document["enabled"]:
            console.warn("autostop is OFF (--idle-stop off --max-lifetime off): the lab bills until `tflab down`")
        elif not self.idle_seconds:
            console.warn(f"--idle-stop off: an idle lab keeps billing until its maximum lifetime "
                         f"({describe(self.lifetime_seconds)}) or `tflab down`")
        else:
            console.info(f"autostop: the instance {'stops' if self.behavior == 'stop' else 'terminates'} itself "
                         f"after {describe(self.idle_seconds)} without activity, and after "
                         f"{describe(self.lifetime_seconds)} in any case (`tflab autostop` changes it)")


DEADLINE = 30.0  # seconds a call to the watchdog on the host may take (its `view` and `set` answer at once)
VIEW_LIMIT, VIEW_DEPTH = 262144, 16  # the most bytes and nesting read from the host's view
LATEST = 1e10  # no time the watchdog gives is later than this (the year 2286): a larger one is damage


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
    if nesting(line) > VIEW_DEPTH:
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
