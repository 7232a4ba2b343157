#!/usr/bin/env python3
"""tflab's idle watchdog: runs on the lab host and acts when the lab has been idle too long, or has
lived past its hard limit, with nothing needed from the user's machine (README: "A GPU lab on AWS").

    watchdog.py run  --workdir W [--action stop-services|shutdown] [--interval 30] [--ssh-port 22] [--state D]
    watchdog.py set  --workdir W [--idle S] [--max-lifetime S] [--keep S] [--off | --on]
    watchdog.py view --workdir W
    watchdog.py stop --folder F [--name N ...] [--timeout 5] [--forget]   (tflab's `down` and restarts)

W/autostop/ holds policy.json (what `set` wrote), view.json (rewritten at every check: the policy, the
idle time, each activity source, when it acts, what it did and why) and, for a lab of several nodes,
peers.json ({"token": the lab's secret, "peers": ["10.0.0.6", ...]}: each node answers on --peer-port;
only a question and an answer signed with the token count, and "peers" is never passed on).

Fails safe: every file is read without blocking, bounded in size and depth, and only if it is a regular
file; every value is range-checked; a file it cannot read is no information (a damaged policy keeps the
last good one, as does a deleted one) and never stops it acting, nor does a view it cannot write; a time
from the future is no activity. `shutdown` powers the machine off (`up`'s InstanceInitiatedShutdownBehavior
makes that a stop or a terminate), tried again every --retry s, harder each time, while the machine is up;
it never ends on its own, not even when W is deleted (it keeps its last good policy in --state, root's);
`stop-services` (a --host) signals only a process that /proc proves is the one recorded
in <service>.id as it started (boot, pid, start time, owner, command), and says why it left any other.
Standard library only: it runs on a freshly booted instance before anything is installed.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request

DEFAULT_POLICY = {"enabled": True, "idle_seconds": 3600, "max_lifetime_seconds": None, "keep_until": None}
STATE = "/var/lib/tflab"  # `up`'s watchdog keeps its last good policy here (root's)
PEER_PORT = 23450  # a lab's nodes ask each other's watchdogs here (TF_CONFIG's ports start at 23456)
SOURCES = ("ssh", "serving", "tensorboard", "jupyter", "gpu", "step", "keep")  # a node's own; never "peers"
LIMIT, DEPTH = 65536, 16  # the most bytes and nesting the watchdog reads in any file or answer
YEAR, SKEW = 366 * 86400.0, 5.0  # the longest duration a policy holds; how far ahead a clock may be
_JSON = re.compile(r'"(?:[^"\\]|\\.)*"|[][{}]')


def now() -> float:
    return time.time()


def read_text(path: str, limit: int = LIMIT) -> str:
    """A regular file's text, opened without blocking; a FIFO, device or folder, or more than limit
    bytes, is a ValueError (so a damaged file never holds or floods the watchdog)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode()


def _constant(name):
    raise ValueError(f"{name} is not a number")


def parse(text: str):
    """JSON nested at most DEPTH deep, without NaN or Infinity."""
    depth = 0
    for token in _JSON.finditer(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(token.group(), 0)
        if depth > DEPTH:
            raise ValueError(f"nested deeper than {DEPTH}")
    return json.loads(text, parse_constant=_constant)


def read_json(path: str, kind, problems: list, limit: int = LIMIT):
    """The JSON value of kind in path; None when there is no such file, or (said in problems) it cannot be read."""
    try:
        value = parse(read_text(path, limit))
        if not isinstance(value, kind):
            raise ValueError("not what the watchdog writes there")
        return value
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        problems.append(f"{os.path.basename(path)}: {type(exc).__name__}: {exc}; ignored"[:300])
        return None


def write_json(path: str, value) -> None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):  # one level only, owned as its parent (never a root folder in the lab's)
        os.mkdir(folder)
        if os.geteuid() == 0:
            owner = os.stat(os.path.dirname(folder))
            os.chown(folder, owner.st_uid, owner.st_gid)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def number(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        low <= value <= high


def paths(workdir: str, problems: list | None = None) -> dict:
    """The watchdog's files in workdir, and the lab's: run-lab may put the lab elsewhere (`--workdir`) and
    then says where in autostop/lab-dir."""
    folder = os.path.join(workdir, "autostop")
    lab = workdir
    try:
        told = read_text(os.path.join(folder, "lab-dir"), 4096).strip()
        if told.startswith("/") and "\0" not in told and "\n" not in told:
            lab = told
    except (OSError, ValueError) as exc:
        if problems is not None and not isinstance(exc, FileNotFoundError):
            problems.append(f"lab-dir: {exc}; ignored")
    return {"folder": folder, "policy": os.path.join(folder, "policy.json"), "view": os.path.join(folder, "view.json"),
            "peers": os.path.join(folder, "peers.json"), "lab": lab, "services": os.path.join(lab, "services")}


def valid_policy(doc: dict, last: dict, problems: list, where: str = "policy.json") -> dict:
    """doc's values over the defaults; a value out of range keeps the last good one (said in problems)."""
    policy, t = dict(DEFAULT_POLICY), now()
    ranges = {"idle_seconds": YEAR, "max_lifetime_seconds": YEAR, "keep_until": t + YEAR + SKEW}
    for key, value in doc.items():
        if key == "enabled" and isinstance(value, bool) or key in ranges and (value is None or
                                                                              number(value, 0, ranges[key])):
            policy[key] = value
        elif key in DEFAULT_POLICY:
            policy[key] = last[key]
            problems.append(f"{where}: {key} {str(value)[:40]} is out of range; kept {last[key]}")
    return policy


def read_policy(workdir: str, problems: list, last: dict | None = None) -> dict:
    """The policy file over the defaults; a missing or damaged file keeps the last good policy (else the
    defaults): deleting it (or the lab's folder) drops no maximum lifetime."""
    last = last or DEFAULT_POLICY
    before = len(problems)
    doc = read_json(paths(workdir)["policy"], dict, problems)
    if doc is None:
        if len(problems) == before and last != DEFAULT_POLICY:
            problems.append("policy.json: missing; the last good policy holds")
        return dict(last)
    return valid_policy(doc, last, problems)


def kept(state: str | None) -> dict | None:
    """The last good policy the watchdog keeps in --state (root's, where the lab user's rm does not reach)."""
    doc = read_json(os.path.join(state, "policy.json"), dict, []) if state else None
    return valid_policy(doc, DEFAULT_POLICY, []) if doc is not None else None


def sign(token: str, *parts: str) -> str:
    return hmac.new(token.encode(), "\n".join(parts).encode(), "sha256").hexdigest()


def receive(s: socket.socket, timeout: float, limit: int, line: bool = False) -> bytes:
    """What s sends within timeout seconds in all (up to a newline if line), at most limit bytes."""
    deadline, data = time.monotonic() + timeout, b""
    while len(data) <= limit and not (line and b"\n" in data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer took too long")
        s.settimeout(left)
        chunk = s.recv(1024)
        if not chunk:
            break
        data += chunk
    if len(data) > limit:
        raise ValueError("the answer is too long")
    return data


def ask_peer(peer: str, default_port: int, token: str, timeout: float = 2.0, limit: int = 4096) -> list:
    """The sources a peer's watchdog found active on its own at its last check. The question carries a
    fresh nonce and the lab token's signature; only an answer signed with the token over that nonce and
    its list counts (a stranger on the port, or a replay, is no activity), read for timeout s and limit bytes."""
    host, _, port = peer.rpartition(":") if peer.count(":") == 1 else (peer, "", "")
    nonce = os.urandom(16).hex()
    with socket.create_connection((host, int(port) if port else default_port), timeout=timeout) as s:
        s.sendall(json.dumps({"ask": nonce, "mac": sign(token, "ask", nonce)}).encode() + b"\n")
        answer = parse(receive(s, timeout, limit).decode())
    active = answer.get("active") if isinstance(answer, dict) else None
    if not isinstance(active, list) or not all(isinstance(a, str) for a in active) or \
            not hmac.compare_digest(str(answer.get("mac")).encode(), sign(token, "answer", nonce, *active).encode()):
        raise ValueError("not this lab's watchdog")
    return sorted({a for a in active if a in SOURCES})


def guarded(source, *args) -> tuple[bool, str]:
    """A source that fails counts as active (never stop a lab on a broken check), with why."""
    try:
        return source(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of a check must not stop the watchdog
        return True, f"check failed ({type(exc).__name__}: {exc}); counted as active"


# --------------------------------------------------------------------------- activity sources


def tcp_connections() -> dict:
    """Established TCP connections: (local, peer) -> bytes moved so far (ss -tin, tcp_info)."""
    try:
        out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found, key = {}, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            parts = line.split()
            key = (parts[2], parts[3]) if len(parts) >= 4 else None
            continue
        if key is not None:
            sent = re.search(r"bytes_(?:acked|sent):(\d+)", line)
            got = re.search(r"bytes_received:(\d+)", line)
            found[key] = (int(sent.group(1)) if sent else 0) + (int(got.group(1)) if got else 0)
            key = None
    return found


def port_of(address: str) -> int:
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def _when(stamp) -> float:
    """Jupyter's ISO 8601 UTC time ("2026-11-26T11:50:00.123456Z") as a Unix time; 0 when unreadable."""
    import datetime

    try:
        return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return 0.0


def jupyter_active(port: int | None, token_file: str, since: float) -> tuple[bool, str]:
    """A kernel executing now or since the last check (its last_activity moves with its messages, not
    with a browser polling the REST API), or an open terminal, by Jupyter's own API."""
    if not port:
        return False, "no Jupyter"
    try:
        token = read_text(token_file, 4096).strip()
        kernels, terminals = (parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{what}?token={token}",
                                                           timeout=5).read(LIMIT).decode())
                              for what in ("kernels", "terminals"))
        kernels = [k for k in kernels if isinstance(k, dict)]
    except (OSError, ValueError, RecursionError, TypeError):
        return False, "not answering"
    busy = [k for k in kernels if k.get("execution_state") in ("busy", "starting")]
    if busy:
        return True, f"{len(busy)} kernel(s) executing"
    recent = [k for k in kernels if since < _when(k.get("last_activity")) <= now() + SKEW]
    if recent:
        return True, f"{len(recent)} kernel(s) active since the last check"
    if terminals:
        return True, f"{len(terminals)} terminal(s) open"
    return False, f"{len(kernels)} kernel(s) idle"


def gpu_busy(threshold: float) -> tuple[bool, str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False, "no nvidia-smi"
    values = [float(v) for v in out.stdout.split() if v.replace(".", "", 1).isdigit()]
    if not values:
        return False, "no GPU"
    return max(values) > threshold, f"utilization {max(values):.0f}%"


def proc_read(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read(LIMIT)


def step_running(*workdirs: str) -> tuple[bool, str]:
    """A lab step (remote/steps.py) or the bootstrap (remote/bootstrap.sh: pip, an image pull) running from
    one of workdirs: run-lab's lab folder, and the watchdog's own, where `up`'s user data starts the boot-time
    bootstrap (an instance still bootstrapping is never idle, even once run-lab has put the lab elsewhere)."""
    markers = [os.path.join(workdir, "remote", name).encode() for workdir in dict.fromkeys(workdirs)
               for name in ("steps.py", "bootstrap.sh")]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = proc_read(int(pid), "cmdline")
            except OSError:
                continue
            for marker in markers:
                if marker in cmdline:
                    return True, f"{os.path.basename(marker.decode())} (pid {pid})"
    return False, "none"


# --------------------------------------------------------------------------- the lab's services


def proc_identity(pid: int) -> dict:
    """What /proc says of a live pid: its start time (clock ticks after boot, stat's field 22), process
    group, real uid and command line; OSError when there is no such process (or only its zombie)."""
    fields = proc_read(pid, "stat").rsplit(b")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    if fields[0] == b"Z":
        raise ProcessLookupError(f"pid {pid} has ended")
    uid = re.search(rb"\nUid:\s*(\d+)", proc_read(pid, "status"))
    return {"start": int(fields[19]), "pgid": int(fields[2]), "uid": int(uid.group(1)) if uid else -1,
            "cmdline": [a.decode(errors="replace") for a in proc_read(pid, "cmdline").split(b"\0")[:-1]]}


def runs(argv: list, cmdline: list) -> bool:
    """Whether a command line is argv's after its exec: the same arguments, and argv[0]'s program (which a
    #! script's interpreter precedes)."""
    n = len(argv) - 1
    return len(cmdline) > n and cmdline[len(cmdline) - n:] == argv[1:] and \
        os.path.basename(cmdline[-n - 1]) == os.path.basename(argv[0])


def service(base: str) -> tuple[int | None, int, str]:
    """(pid, process group, "") for a service's pid file base.pid when /proc proves the process is the one
    recorded in base.id as it started (same boot, pid, start time, owner and command); else (None, 0, why)."""
    try:
        pid = int(read_text(base + ".pid", 64).strip())
    except (OSError, ValueError) as exc:
        return None, 0, f"unreadable ({exc})"
    if pid <= 1 or pid in (os.getpid(), os.getpgid(0)):
        return None, 0, f"pid {pid} is never a lab service's"
    try:
        record = parse(read_text(base + ".id"))
        boot = read_text("/proc/sys/kernel/random/boot_id", 64).strip() if os.path.exists(
            "/proc/sys/kernel/random/boot_id") else ""
    except FileNotFoundError:
        return None, 0, f"pid {pid}: nothing recorded when it started, so nothing proves it is the lab's"
    except (OSError, ValueError, RecursionError) as exc:
        return None, 0, f"pid {pid}: its record is unreadable ({exc})"
    try:
        live = proc_identity(pid)
    except (OSError, IndexError, ValueError):
        return None, 0, f"pid {pid} is not running"
    argv = record.get("argv") if isinstance(record, dict) else None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv) or \
            record.get("pid") != pid or record.get("boot") != boot:
        return None, 0, f"pid {pid}: its record is not of this process (another pid or boot)"
    if record.get("start") != live["start"]:
        return None, 0, f"pid {pid} is another process now (it started at another time)"
    if record.get("uid") != live["uid"]:
        return None, 0, f"pid {pid} belongs to another user"
    if not runs(argv, live["cmdline"]):
        return None, 0, f"pid {pid} runs another command"
    return pid, live["pgid"], ""


def command_of(text: str) -> list:
    """The argv a service's command file (<name>.cmd: [cd D &&] exec [env K=V ...] argv) runs, or []."""
    try:
        words = shlex.split(text)
    except ValueError:
        return []
    if "exec" not in words:
        return []
    words = words[len(words) - words[::-1].index("exec"):]
    if words[:1] == ["env"]:
        words = words[1:]
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0], re.S):
            words = words[1:]
    return words


def unrecorded(base: str, why: str) -> tuple[int | None, int, str]:
    """service() for a pid file with no identity record (a service an older tflab started): proved when the
    process runs the command in <name>.cmd, as this user, in a session of its own, and started as its pid file
    was written (a pid reused since started later). Only tflab's own stop path (`stop`) asks this."""
    if not why.endswith("nothing proves it is the lab's"):
        return None, 0, why
    try:
        pid = int(read_text(base + ".pid", 64).strip())
        argv = command_of(read_text(base + ".cmd", LIMIT))
        fields = proc_read(pid, "stat").rsplit(b")", 1)[1].split()
        live = proc_identity(pid)
        with open("/proc/stat") as f:
            btime = float(next(line.split()[1] for line in f if line.startswith("btime ")))
        written = os.stat(base + ".pid").st_mtime
    except (OSError, ValueError, IndexError, StopIteration):
        return None, 0, why
    started = btime + live["start"] / os.sysconf("SC_CLK_TCK")
    if live["uid"] != os.getuid() or not argv or not runs(argv, live["cmdline"]):
        return None, 0, why + " (and it is not running its command as this user)"
    if int(fields[2]) != pid or int(fields[3]) != pid:
        return None, 0, why + " (and it is not in a session of its own)"
    if not written - 30 <= started <= written + 2:  # $! is written as soon as it is forked
        return None, 0, f"pid {pid} is another process now (it started {started - written:.0f} s from when its " \
                        "pid file was written)"
    return pid, pid, ""


def stop_services(folder: str, only: list | None = None, timeout: float = 5.0, forget: bool = False,
                  older: bool = False) -> dict:
    """Stop each service with a pid file in folder (those named in only, when given) that is proved to be the
    lab's (TERM, KILL after timeout s); what was stopped, and each pid file left alone and why. forget: then
    remove each pid file and identity record; older: a pid file with no record is proved as unrecorded() does
    (both tflab's `down` and a service it restarts: `stop`)."""
    def proved(base: str) -> tuple[int | None, int, str]:
        pid, group, why = service(base)
        return unrecorded(base, why) if pid is None and older else (pid, group, why)

    done = {"stopped": [], "ignored": []}
    names = sorted(n for n in os.listdir(folder) if n.endswith(".pid")) if os.path.isdir(folder) else []
    for name in names if only is None else [n + ".pid" for n in only if n + ".pid" in names]:
        base, stopped = os.path.join(folder, name[:-4]), 0
        pending = time.monotonic() + 2  # a service started a moment ago may not have made its exec yet
        while service(base)[2].endswith("runs another command") and time.monotonic() < pending:
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pid, group, why = proved(base)  # proved again before each signal
            if pid is None:
                break
            try:
                if group == pid and group != os.getpgid(0):
                    os.killpg(pid, sig)  # its group: a service runs in a session of its own (setsid)
                else:
                    os.kill(pid, sig)
            except OSError:
                pass
            stopped = pid
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proved(base)[0] == pid:
                time.sleep(0.1)
        if stopped:
            done["stopped"].append(f"{name[:-4]} (pid {stopped})")
        elif "is not running" not in why:
            done["ignored"].append(f"{name}: {why}; not signalled")
        if forget:
            for path in (base + ".pid", base + ".id"):
                try:
                    os.remove(path)
                except OSError:
                    pass
    return done


def stop(args) -> int:
    """tflab's own stop path (`down`, a service run-lab restarts or stops): the same proof as the watchdog's."""
    folder = os.path.expanduser(args.folder)
    timeout = min(max(args.timeout, 0.1), 60.0) if math.isfinite(args.timeout) else 5.0
    done = stop_services(folder, args.name, timeout, args.forget, older=True)
    deadline = time.monotonic() + timeout  # and reaped (its parent is init): no pid of it is left when tflab goes on
    for pid in (int(m) for m in re.findall(r"\(pid (\d+)\)$", "\n".join(done["stopped"]), re.M)):
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
    print(json.dumps(done))
    return 0


class Watcher:
    """The state carried from one check to the next."""

    def __init__(self, args):
        self.args = args
        self.started = now()
        self.first_seen: dict = {}  # connection -> when first seen
        self.bytes: dict = {}  # connection -> bytes at the last check
        self.last_active = self.started
        self.last_check = self.started
        self.checks = 0
        self.acted = False
        self.tries, self.retry_at, self.done = 0, 0.0, {}  # shutdowns tried, when to try again, what they did
        self.warned = False
        self.own_active: list = []  # what this node found active on its own at the last check (told to peers)
        self.token = ""  # the lab's peers token (peers.json)
        self.listener: socket.socket | None = None
        seen = read_json(paths(args.workdir)["view"], dict, [])  # the policy it used before a restart
        self.saved = kept(args.state)
        self.policy = self.saved or (valid_policy(seen["policy"], DEFAULT_POLICY, [])
                                     if seen and isinstance(seen.get("policy"), dict) else dict(DEFAULT_POLICY))

    def answer_peers(self) -> None:
        """Answer the lab's other nodes on --peer-port, from a thread, once peers.json exists: only a question
        signed with the lab token, with a signed answer."""
        if self.listener is not None:
            return
        listener = socket.socket(socket.AF_INET6 if ":" in self.args.peer_bind else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.args.peer_bind, self.args.peer_port))
        listener.listen(16)
        self.listener = listener

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    try:
                        question, token, active = parse(receive(conn, 2, 512, line=True).decode()), self.token, \
                            list(self.own_active)
                        nonce = str(question.get("ask"))[:64]
                        if token and hmac.compare_digest(str(question.get("mac")).encode(),
                                                         sign(token, "ask", nonce).encode()):
                            conn.sendall(json.dumps({"active": active, "host": socket.gethostname(),
                                                     "mac": sign(token, "answer", nonce, *active)}).encode())
                    except Exception:  # noqa: BLE001 - whatever a stranger sends, the next question is answered
                        pass

        threading.Thread(target=serve, name="peers", daemon=True).start()

    def peers_active(self, peers: list) -> tuple[bool, str]:
        answers, unreachable = [], []
        for peer in peers:
            try:
                found = ask_peer(peer, self.args.peer_port, self.token)
            except Exception as exc:  # noqa: BLE001 - stopped, or a stranger: never activity
                unreachable.append(f"{peer} ({type(exc).__name__})")
                continue
            if found:
                answers.append(f"{peer}: {', '.join(found)}")
        detail = "; ".join(answers) or f"{len(peers) - len(unreachable)} node(s) idle"
        if unreachable:
            detail += f"; not answering: {', '.join(unreachable)}"
        return bool(answers), detail

    def sources(self, policy: dict, lab_ports: dict, problems: list) -> dict:
        """name -> {"active": bool, "detail": str}"""
        args, t = self.args, now()
        p = paths(args.workdir, problems)
        connections = tcp_connections()
        moved = {}
        for key, total in connections.items():
            self.first_seen.setdefault(key, t)
            # A connection new since the last check moved all it has (but not at the very first check).
            moved[key] = total - self.bytes.get(key, 0) if self.checks else 0
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in connections}
        self.bytes = dict(connections)
        self.checks += 1

        def served(port) -> int:  # bytes the server side of a port moved since the last check
            return sum(m for (local, _), m in moved.items() if port and port_of(local) == port)

        jupyter_bytes = served(lab_ports.get("jupyter"))
        ssh_bytes, ssh_live = 0, 0
        for (local, peer), m in moved.items():
            if port_of(local) == args.ssh_port and t - self.first_seen[(local, peer)] >= args.min_age:
                ssh_live += 1
                ssh_bytes += m
        ssh_own = ssh_bytes - 1.5 * jupyter_bytes  # what the SSH connections carried besides Jupyter
        found = {"ssh": {"active": ssh_own > args.ssh_bytes,
                         "detail": f"{ssh_live} connection(s), {ssh_bytes} bytes since the last check"
                                   + (f" ({jupyter_bytes} for Jupyter)" if jupyter_bytes else "")}}
        # Requests: any bytes on the model server's ports, or its own stamp (tflab's server moves a file's
        # time at each request, so short connections between two checks count too). TensorBoard: more
        # than --tensorboard-bytes, since an open tab reloads by itself every 30 s.
        for name, names, floor in (("serving", ("serving", "rest"), 0), ("tensorboard", ("tensorboard",),
                                                                          args.tensorboard_bytes)):
            known = [lab_ports[n] for n in names if lab_ports.get(n)]
            moved_here = sum(served(port) for port in known)
            found[name] = {"active": moved_here > floor,
                           "detail": f"{moved_here} bytes on port {', '.join(map(str, known))}" if known
                           else "no port known yet"}
        try:
            stamped = os.stat(os.path.join(p["services"], "model-server.activity")).st_mtime
        except OSError:
            stamped = 0.0
        if self.last_check < stamped <= t + SKEW:  # a stamp from the future is no request
            found["serving"] = {"active": True, "detail": "requests since the last check (the server's stamp)"}
        elif stamped > t + SKEW:
            problems.append("model-server.activity: stamped in the future; ignored")
        active, detail = guarded(jupyter_active, lab_ports.get("jupyter"), os.path.join(p["lab"], "jupyter-token"),
                                 self.last_check)
        found["jupyter"] = {"active": active, "detail": detail}
        active, detail = guarded(gpu_busy, args.gpu_percent)
        found["gpu"] = {"active": active, "detail": detail}
        active, detail = guarded(step_running, p["lab"], args.workdir)
        found["step"] = {"active": active, "detail": detail}
        keep = policy.get("keep_until")
        found["keep"] = {"active": bool(keep and keep > t),
                         "detail": f"until {time.strftime('%H:%M:%S', time.localtime(keep))}" if keep else "none"}
        self.own_active = sorted(name for name, s in found.items() if s["active"])
        doc = read_json(p["peers"], (dict, list), problems)
        doc = {"peers": doc} if isinstance(doc, list) else doc or {}  # a list: before the lab's token
        peers = doc.get("peers") if isinstance(doc.get("peers"), list) else []
        peers = [x for x in peers if isinstance(x, str) and re.fullmatch(r"[\w.:\[\]-]{1,255}", x)][:64]
        token = doc.get("token")
        self.token = token if isinstance(token, str) and re.fullmatch(r"[0-9a-f]{32,128}", token) else ""
        if peers and not self.token:
            found["peers"] = {"active": False, "detail": "peers.json has no lab token (run-lab writes it): "
                                                         "the other nodes are not asked"}
        elif peers:
            try:
                self.answer_peers()
            except OSError as exc:  # the others then see this node as idle: never a reason not to act
                print(f"cannot answer the other nodes on port {args.peer_port}: {exc}", flush=True)
            active, detail = guarded(self.peers_active, peers)
            found["peers"] = {"active": active, "detail": detail}
        return found

    def check(self) -> dict:
        """One check: read the policy, look at every source, decide; returns the view (written when it can be)."""
        args, t, problems = self.args, now(), []
        p = paths(args.workdir)
        before = len(problems)
        policy = self.policy = read_policy(args.workdir, problems, self.policy)
        if args.state and len(problems) == before and policy != self.saved and os.path.isfile(p["policy"]):
            try:  # a good policy, kept where the lab user's rm does not reach
                write_json(os.path.join(args.state, "policy.json"), policy)
                self.saved = policy
            except OSError as exc:
                problems.append(f"cannot keep the policy in {args.state}: {exc}")
        doc = read_json(os.path.join(p["services"], "ports.json"), dict, problems) or {}
        lab_ports = {k: v for k, v in doc.items() if number(v, 1, 65535) and isinstance(v, int)}
        try:
            sources = self.sources(policy, lab_ports, problems)
        except Exception as exc:  # noqa: BLE001 - counted as active; the lifetime still acts
            sources = {"check": {"active": True, "detail": f"failed ({type(exc).__name__}: {exc}); counted as active"}}
        self.last_check = t
        active = sorted(name for name, s in sources.items() if s["active"])
        if active:
            self.last_active = t
            self.warned = False
        view = self.verdict(policy, t) | {"active": active, "sources": sources, "problems": problems}
        try:
            if os.path.isdir(args.workdir):  # the lab's folder is never made again by root
                write_json(p["view"], view)
        except OSError as exc:  # it acts all the same
            print(f"cannot write {p['view']}: {exc}", flush=True)
        return view

    def verdict(self, policy: dict, t: float) -> dict:
        """The view's clock: when the policy acts, and whether now."""
        args, idle = self.args, t - self.last_active
        view = {"policy": policy, "action": args.action, "host": socket.gethostname(), "pid": os.getpid(),
                "checked_at": t, "interval_seconds": args.interval, "started_at": self.started,
                "lifetime_from": self.lifetime_from(), "idle_seconds": round(idle, 1), "active": [],
                "sources": {}, "acts_at": None, "acts_because": None, "acted": None}
        if policy["enabled"]:
            due = []
            if policy.get("idle_seconds"):
                due.append((self.last_active + policy["idle_seconds"], f"idle for {policy['idle_seconds']:g} s"))
            if policy.get("max_lifetime_seconds"):
                due.append((self.lifetime_from() + policy["max_lifetime_seconds"],
                            f"past its maximum lifetime of {policy['max_lifetime_seconds']:g} s"))
            if due:
                view["acts_at"], view["acts_because"] = min(due)
                lifetime = "lifetime" in view["acts_because"]
                advice = ("`tflab autostop --max-lifetime 24h` (or off) lets it run longer" if lifetime
                          else "`tflab autostop --keep 1h` keeps it")
                if t >= view["acts_at"]:
                    view["acted"] = {"what": args.action, "at": t, "why": view["acts_because"], **self.done}
                elif view["acts_at"] - t <= args.warn and not self.warned and args.action == "shutdown":
                    self.warned = True
                    wall(f"tflab: this lab stops in {view['acts_at'] - t:.0f} s ({view['acts_because']}); {advice}")
        return view

    def lifetime_from(self) -> float:
        """The machine's boot for a lab made by `up` (an instance bills from its start), else the watchdog's."""
        if self.args.action == "shutdown":
            try:
                with open("/proc/stat") as f:
                    return float(next(line.split()[1] for line in f if line.startswith("btime")))
            except (OSError, StopIteration, ValueError):
                pass
        return self.started


def wall(message: str) -> None:
    try:
        subprocess.run(["wall", message], timeout=10, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        pass


SHUTDOWN = "shutdown -h now;systemctl poweroff --force;poweroff -f"  # each a harder way down


def act(args, view: dict, tries: int = 0) -> dict:
    """Do what the policy asked; what was done. A shutdown tries its commands in turn until one succeeds, from
    the tries-th on (the machine still up after an earlier one's success: a harder one)."""
    if args.action == "shutdown":
        if not tries:
            wall(f"tflab: stopping this lab now ({view['acted']['why']})")
        commands, tried = os.environ.get("TFLAB_WATCHDOG_SHUTDOWN", SHUTDOWN).split(";"), []  # tests replace them
        for command in commands[min(tries, len(commands) - 1):]:
            try:
                status = subprocess.run(shlex.split(command), timeout=60).returncode
            except (OSError, subprocess.SubprocessError) as exc:
                status = type(exc).__name__
            tried.append(f"{command}: {status}")
            if status == 0:
                break
        return {"tried": tried}
    return stop_services(paths(args.workdir)["services"])


def run(args) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    watcher, gone = Watcher(args), False
    while not stop["now"]:
        if os.path.isdir(args.workdir) == gone:  # a lab made by `up` bills on without its folder: still watched
            gone = not gone
            print(f"{args.workdir} is {'gone' if gone else 'back'}", flush=True)
            if gone and args.action != "shutdown":  # a --host's services went with their pid files
                return 0
        try:
            view = watcher.check()
        except Exception as exc:  # noqa: BLE001 - a failed check is logged; the policy's clock still acts
            print(f"check failed: {type(exc).__name__}: {exc}", flush=True)
            view = watcher.verdict(watcher.policy, now())
        if view["acted"] and (not watcher.acted or args.action == "shutdown" and time.monotonic() >= watcher.retry_at):
            watcher.acted = True  # a shutdown takes a while: tried again --retry s later if still up
            watcher.retry_at = time.monotonic() + args.retry
            print(f"acting: {view['acted']['what']} ({view['acted']['why']})", flush=True)
            try:
                watcher.done = act(args, view, watcher.tries)
                view["acted"] |= watcher.done
            except Exception as exc:  # noqa: BLE001
                print(f"acting failed: {type(exc).__name__}: {exc}", flush=True)
            watcher.tries += 1
            print(f"acted: {json.dumps(view['acted'])}", flush=True)
            try:
                if not gone:
                    write_json(paths(args.workdir)["view"], view)
            except OSError as exc:
                print(f"cannot write the view: {exc}", flush=True)
            if args.action != "shutdown":
                return 0
        deadline = time.monotonic() + args.interval
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(min(0.5, args.interval))
    return 0


def set_policy(args) -> int:
    for flag, value in (("--idle", args.idle), ("--max-lifetime", args.max_lifetime), ("--keep", args.keep)):
        if value is not None and not number(value, 0, YEAR):
            print(f"watchdog: {flag} {value} is not a duration of at most a year", file=sys.stderr)
            return 2
    document = shown(args.workdir, args.state)
    policy = document["policy"]
    if args.idle is not None:
        policy["idle_seconds"] = args.idle
    if args.max_lifetime is not None:
        policy["max_lifetime_seconds"] = args.max_lifetime or None
    if args.keep is not None:
        policy["keep_until"] = now() + args.keep if args.keep else None
    if args.off:
        policy["enabled"] = False
    if args.on:
        policy["enabled"] = True
    try:
        write_json(paths(args.workdir)["policy"], policy)
    except OSError as exc:
        print(f"watchdog: cannot write the policy: {exc}", file=sys.stderr)
        return 1
    return view(args)


def shown(workdir: str, state: str | None = None) -> dict:
    """The watchdog's last view with the policy it acts on now (a missing or damaged policy file: the last good
    one, the view's, else the one kept in state)."""
    problems = []
    document = read_json(paths(workdir)["view"], dict, problems) or {}
    last = valid_policy(document["policy"], DEFAULT_POLICY, []) if isinstance(document.get("policy"), dict) \
        else kept(state) or DEFAULT_POLICY
    document["policy"] = read_policy(workdir, problems, last)
    seen = document.get("problems") if isinstance(document.get("problems"), list) else []
    document["problems"] = list(dict.fromkeys([x for x in seen if isinstance(x, str)] + problems))
    document["now"] = now()
    return document


def view(args) -> int:
    print(json.dumps(shown(args.workdir, args.state)))
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="tflab's idle watchdog for a lab host")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--workdir", required=True)
    r.add_argument("--action", choices=["stop-services", "shutdown"], default="stop-services")
    r.add_argument("--interval", type=float, default=30.0, help="seconds between checks (at least one a minute)")
    r.add_argument("--ssh-port", type=int, default=22)
    r.add_argument("--min-age", type=float, default=10.0, help="an SSH connection counts once this old (s)")
    r.add_argument("--ssh-bytes", type=int, default=8192, help="bytes an SSH connection must carry per check")
    r.add_argument("--gpu-percent", type=float, default=10.0)
    r.add_argument("--tensorboard-bytes", type=int, default=65536,
                   help="bytes TensorBoard must serve per check (an open tab's own reloads are less)")
    r.add_argument("--warn", type=float, default=300.0, help="seconds before shutting down to warn users")
    r.add_argument("--peer-port", type=int, default=PEER_PORT, help="where a lab's nodes ask each other")
    r.add_argument("--peer-bind", default="0.0.0.0", help="the address to answer the other nodes on")
    r.add_argument("--retry", type=float, default=180.0, help="seconds before a shutdown is tried again")
    r.add_argument("--state", help="a folder of root's where the last good policy is kept (up's: /var/lib/tflab)")
    s = sub.add_parser("set")
    s.add_argument("--workdir", required=True)
    s.add_argument("--idle", type=float)
    s.add_argument("--max-lifetime", type=float)
    s.add_argument("--keep", type=float)
    s.add_argument("--off", action="store_true")
    s.add_argument("--on", action="store_true")
    v = sub.add_parser("view")
    v.add_argument("--workdir", required=True)
    k = sub.add_parser("stop", help="stop the services /proc proves are the lab's (tflab's down and restarts)")
    k.add_argument("--folder", required=True)
    k.add_argument("--name", action="append", help="only this service (its pid file's name); repeatable")
    k.add_argument("--timeout", type=float, default=5.0, help="seconds from SIGTERM to SIGKILL")
    k.add_argument("--forget", action="store_true", help="then remove the pid files and identity records")
    for p in (s, v):
        p.add_argument("--state", default=STATE)
    args = parser.parse_args(argv)
    if args.command == "run":
        args.interval = min(max(args.interval, 0.2), 60.0) if math.isfinite(args.interval) else 30.0
        args.retry = min(max(args.retry, 1.0), 3600.0) if math.isfinite(args.retry) else 180.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"run": run, "set": set_policy, "view": view, "stop": stop}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
