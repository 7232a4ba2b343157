#!/usr/bin/env python3
"""tflab's idle watchdog: runs on the lab host and acts when the lab has been idle too long, or has
lived past its hard limit, with nothing needed from the user's machine.

    watchdog.py run  --workdir W [--action stop-services|shutdown] [--interval 30] [--ssh-port 22]
    watchdog.py set  --workdir W [--idle S] [--max-lifetime S] [--keep S] [--off | --on]
    watchdog.py view --workdir W

Files (W is the lab's folder on the host):
    W/autostop/policy.json   what `set` wrote: idle and lifetime limits, a keep-alive, on/off
    W/autostop/view.json     the watchdog's view, rewritten at every check: the policy, how long the
                             lab has been idle, each activity source and whether it is active now,
                             when it will act, and once it has acted what it did, when and why

Activity (each a named source in the view; any one active keeps the lab):
    ssh          SSH connections (shells, commands, tunnels) that have lived at least --min-age
                 seconds and carried more than --ssh-bytes bytes since the last check, less what
                 they carried for Jupyter (an open notebook tab polls: that alone is not activity).
                 tflab's own short queries (`tflab autostop`, `tflab status`) never live that long.
    serving      requests to the model server (bytes on its gRPC or REST port)
    tensorboard  requests to TensorBoard
    jupyter      a kernel executing, or an open terminal (Jupyter's API, with the lab's token)
    gpu          an NVIDIA GPU busier than --gpu-percent (nvidia-smi)
    step         a lab step running (remote/steps.py)
    keep         a keep-alive the user set (`tflab autostop --keep 2h`)
    peers        another node of the same lab active on its own (a lab of several instances: it stops
                 as one, once none of its nodes has been active for the idle time)

A lab of several instances (`tflab up --nodes N`) lists its other nodes in W/autostop/peers.json
(["10.0.0.6", ...], or "address:port"). Each node's watchdog then answers on --peer-port (reachable only
by the lab's own nodes: their security group) with the sources active on its own at its last check, and
asks the others for theirs; a peer's "peers" source is never passed on, so two idle nodes cannot keep
each other up.

Actions: `shutdown` powers the machine off (a lab made by `tflab up`: the instance's own
InstanceInitiatedShutdownBehavior makes that a stop or a terminate, so the host needs no AWS
credentials; logged-in users get a wall message --warn seconds before). `stop-services` stops the
lab's services (a --host machine, which is not tflab's to power off), then the watchdog ends.

Standard library only: it runs on a freshly booted instance before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

DEFAULT_POLICY = {"enabled": True, "idle_seconds": 3600, "max_lifetime_seconds": None, "keep_until": None}
PEER_PORT = 23450  # a lab's nodes ask each other's watchdogs here (TF_CONFIG's ports start at 23456)
SOURCES = ("ssh", "serving", "tensorboard", "jupyter", "gpu", "step", "keep")  # a node's own; never "peers"


def now() -> float:
    return time.time()


def paths(workdir: str) -> dict:
    """The watchdog's files in workdir, and the lab's: run-lab may put the lab elsewhere (`--workdir`) and
    then says where in autostop/lab-dir."""
    folder = os.path.join(workdir, "autostop")
    try:
        lab = open(os.path.join(folder, "lab-dir")).read().strip() or workdir
    except OSError:
        lab = workdir
    return {"folder": folder, "policy": os.path.join(folder, "policy.json"), "view": os.path.join(folder, "view.json"),
            "peers": os.path.join(folder, "peers.json"), "lab": lab, "services": os.path.join(lab, "services")}


def ask_peer(peer: str, default_port: int, timeout: float = 2.0, limit: int = 4096) -> list:
    """The sources a peer's watchdog found active on its own at its last check. Whatever answers there is
    read for at most timeout seconds in all and limit bytes; anything but the expected answer is no
    activity (a check never hangs, and a stranger on the port cannot keep the lab up)."""
    host, _, port = peer.rpartition(":") if peer.count(":") == 1 else (peer, "", "")
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port) if port else default_port), timeout=timeout) as s:
        data = b""
        while len(data) <= limit:
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
    answer = json.loads(data.decode())
    active = answer.get("active") if isinstance(answer, dict) else None
    if not isinstance(active, list):
        raise ValueError("not a watchdog's answer")
    return sorted({a for a in active if isinstance(a, str) and a in SOURCES})


def read_json(path: str, default):
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, type(default)) else default
    except (OSError, ValueError):
        return default


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def read_policy(workdir: str) -> dict:
    """The policy file over the defaults; a value of the wrong type (a hand edit) keeps the default."""
    policy = dict(DEFAULT_POLICY)
    for key, value in read_json(paths(workdir)["policy"], {}).items():
        if key == "enabled" and isinstance(value, bool):
            policy[key] = value
        elif key in DEFAULT_POLICY and key != "enabled" and (value is None or (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)):
            policy[key] = value
    return policy


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
    except ValueError:
        return 0.0


def jupyter_active(port: int | None, token_file: str, since: float) -> tuple[bool, str]:
    """A kernel executing now or since the last check (its last_activity moves with its messages, not
    with a browser polling the REST API), or an open terminal, by Jupyter's own API."""
    if not port:
        return False, "no Jupyter"
    try:
        token = open(token_file).read().strip()
        kernels = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernels?token={token}", timeout=5))
        terminals = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/terminals?token={token}", timeout=5))
    except (OSError, ValueError):
        return False, "not answering"
    busy = [k.get("id", "?")[:8] for k in kernels if k.get("execution_state") in ("busy", "starting")]
    if busy:
        return True, f"{len(busy)} kernel(s) executing"
    recent = [k for k in kernels if _when(k.get("last_activity")) > since]
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


def step_running(workdir: str) -> tuple[bool, str]:
    """A lab step (remote/steps.py) or the bootstrap (remote/bootstrap.sh: pip, an image pull) running."""
    markers = [os.path.join(workdir, "remote", name).encode() for name in ("steps.py", "bootstrap.sh")]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            for marker in markers:
                if marker in cmdline:
                    return True, f"{os.path.basename(marker.decode())} (pid {pid})"
    return False, "none"


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
        self.warned = False
        self.own_active: list = []  # what this node found active on its own at the last check (told to peers)
        self.listener: socket.socket | None = None

    def answer_peers(self) -> None:
        """Answer the lab's other nodes on --peer-port, from a thread, once peers.json exists."""
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
                        conn.settimeout(2)
                        conn.sendall(json.dumps({"active": self.own_active, "host": socket.gethostname()}).encode())
                    except OSError:
                        pass

        threading.Thread(target=serve, name="peers", daemon=True).start()

    def peers_active(self, peers: list) -> tuple[bool, str]:
        answers, unreachable = [], []
        for peer in peers:
            try:
                found = ask_peer(peer, self.args.peer_port)
            except (OSError, ValueError, UnicodeDecodeError) as exc:  # a stopped node, or a stranger: no activity
                unreachable.append(f"{peer} ({type(exc).__name__})")
                continue
            if found:
                answers.append(f"{peer}: {', '.join(found)}")
        detail = "; ".join(answers) or f"{len(peers) - len(unreachable)} node(s) idle"
        if unreachable:
            detail += f"; not answering: {', '.join(unreachable)}"
        return bool(answers), detail

    def sources(self, policy: dict, lab_ports: dict) -> dict:
        """name -> {"active": bool, "detail": str}"""
        args, t = self.args, now()
        lab = paths(args.workdir)["lab"]
        p_services = os.path.join(lab, "services")
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
            stamped = os.stat(os.path.join(p_services, "model-server.activity")).st_mtime
        except OSError:
            stamped = 0.0
        if stamped > self.last_check:
            found["serving"] = {"active": True, "detail": "requests since the last check (the server's stamp)"}
        active, detail = guarded(jupyter_active, lab_ports.get("jupyter"), os.path.join(lab, "jupyter-token"),
                                 self.last_check)
        found["jupyter"] = {"active": active, "detail": detail}
        active, detail = guarded(gpu_busy, args.gpu_percent)
        found["gpu"] = {"active": active, "detail": detail}
        active, detail = guarded(step_running, lab)
        found["step"] = {"active": active, "detail": detail}
        keep = policy.get("keep_until")
        found["keep"] = {"active": bool(keep and keep > t),
                         "detail": f"until {time.strftime('%H:%M:%S', time.localtime(keep))}" if keep else "none"}
        self.own_active = sorted(name for name, s in found.items() if s["active"])
        peers = [p for p in read_json(paths(args.workdir)["peers"], []) if isinstance(p, str) and p]
        if peers:
            try:
                self.answer_peers()
            except OSError as exc:  # the others then see this node as idle: never a reason not to act
                print(f"cannot answer the other nodes on port {args.peer_port}: {exc}", flush=True)
            active, detail = guarded(self.peers_active, peers)
            found["peers"] = {"active": active, "detail": detail}
        return found

    def check(self) -> dict:
        """One check: read the policy, look at every source, act when due; returns the view."""
        args, t = self.args, now()
        p = paths(args.workdir)
        policy = read_policy(args.workdir)
        lab_ports = {k: v for k, v in read_json(os.path.join(p["services"], "ports.json"), {}).items()
                     if isinstance(v, int)}
        sources = self.sources(policy, lab_ports)
        self.last_check = t
        active = sorted(name for name, s in sources.items() if s["active"])
        if active:
            self.last_active = t
            self.warned = False
        idle = t - self.last_active
        view = {"policy": policy, "action": args.action, "host": socket.gethostname(), "pid": os.getpid(),
                "checked_at": t, "interval_seconds": args.interval, "started_at": self.started,
                "lifetime_from": self.lifetime_from(), "idle_seconds": round(idle, 1), "active": active,
                "sources": sources, "acts_at": None, "acts_because": None, "acted": None}
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
                    view["acted"] = {"what": args.action, "at": t, "why": view["acts_because"]}
                elif view["acts_at"] - t <= args.warn and not self.warned and args.action == "shutdown":
                    self.warned = True
                    wall(f"tflab: this lab stops in {view['acts_at'] - t:.0f} s ({view['acts_because']}); {advice}")
        write_json(p["view"], view)
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


def act(args, view: dict) -> None:
    """Do what the policy asked, once."""
    if args.action == "shutdown":
        wall(f"tflab: stopping this lab now ({view['acted']['why']})")
        command = os.environ.get("TFLAB_WATCHDOG_SHUTDOWN", "shutdown -h now")  # tests replace it
        subprocess.run(shlex.split(command), timeout=60)
        return
    folder = paths(args.workdir)["services"]
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".pid"):
            continue
        try:
            pid = int(open(os.path.join(folder, name)).read())
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or os.getpgid(0) == pid:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except OSError:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.1)
            if not alive(pid):
                break


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def run(args) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    watcher = Watcher(args)
    while not stop["now"]:
        if not os.path.isdir(args.workdir):  # the lab's folder is gone: nothing left to watch
            print(f"{args.workdir} is gone; stopping", flush=True)
            return 0
        try:
            view = watcher.check()
        except Exception as exc:  # noqa: BLE001 - a failed check is logged; the clock keeps its time
            print(f"check failed: {type(exc).__name__}: {exc}", flush=True)
            view = {"acted": None}
        if view["acted"] and not watcher.acted:
            watcher.acted = True  # once: a shutdown takes a while, and is not repeated meanwhile
            print(f"acting: {view['acted']['what']} ({view['acted']['why']})", flush=True)
            try:
                act(args, view)
            except Exception as exc:  # noqa: BLE001
                print(f"acting failed: {type(exc).__name__}: {exc}", flush=True)
            write_json(paths(args.workdir)["view"], view)
            if args.action != "shutdown":
                return 0
        deadline = time.monotonic() + args.interval
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(min(0.5, args.interval))
    return 0


def set_policy(args) -> int:
    p = paths(args.workdir)
    policy = read_policy(args.workdir)
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
    write_json(p["policy"], policy)
    return view(args)


def view(args) -> int:
    p = paths(args.workdir)
    document = read_json(p["view"], {})
    document["policy"] = read_policy(args.workdir)
    document["now"] = now()
    print(json.dumps(document))
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
    s = sub.add_parser("set")
    s.add_argument("--workdir", required=True)
    s.add_argument("--idle", type=float)
    s.add_argument("--max-lifetime", type=float)
    s.add_argument("--keep", type=float)
    s.add_argument("--off", action="store_true")
    s.add_argument("--on", action="store_true")
    v = sub.add_parser("view")
    v.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        args.interval = min(max(args.interval, 0.2), 60.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"run": run, "set": set_policy, "view": view}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
