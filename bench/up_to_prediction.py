"""`tflab up` to the first prediction in the EC2 in a box (tests/cloudbox), phase by phase, through the real CLI.

Two runs of one lab: a fresh instance (cloud-init runs the user data; the boot-time bootstrap makes the venv,
pip installing TensorFlow and the rest from the box's local wheelhouse), then the same instance stopped and
started again (the venv is on its disk: no bootstrap). Phases: RunInstances to running, the host key
fingerprints in the console output, SSH answering (from `up`'s own "done in" lines), the bootstrap (its log's
start and end on the instance), how long run-lab waited for it, the steps, serving ready, the first prediction
(run-lab's report). Needs root and what tests/cloudbox needs; the box's image and wheelhouse are built first if
they are not cached (not timed here).

    sudo .venv/bin/python bench/up_to_prediction.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CIDR = ["--ssh-cidr", "198.51.100.1/32"]


def tflab(env: dict, *args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tflab", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"tflab {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc, time.monotonic() - started


def done_in(stderr: str) -> dict[str, float]:
    """up's progress lines 'WHAT: done in X s' as {WHAT: X}."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(.+): done in ([\d.]+) s$", stderr, re.M)}


def phase(found: dict[str, float], start: str) -> float | None:
    return next((v for k, v in found.items() if k.startswith(start)), None)


def bootstrap_seconds(env: dict) -> float | None:
    log = tflab(env, "ssh", "--name", "bench", "--", "cat", "tflab/bootstrap.log")[0].stdout
    start = re.search(r"\[bootstrap\] started (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", log)
    end = re.search(r"\[bootstrap\] done (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", log)
    if not (start and end):
        return None
    parse = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(end.group(1)) - parse(start.group(1))).total_seconds()


def one_run(env: dict, label: str) -> dict:
    up, up_wall = tflab(env, "up", "--name", "bench", "--yes", *CIDR)
    found = done_in(up.stderr)
    run, run_wall = tflab(env, "run-lab", "--name", "bench", "--json")
    report = json.loads(run.stdout)
    timings = report["timings"]
    return {"run": label, "up_seconds": round(up_wall, 1),
            "to_running": phase(found, "waiting for i-"), "host_key": phase(found, "reading the SSH host key"),
            "ssh": phase(found, "waiting for SSH"), "bootstrap_on_instance": bootstrap_seconds(env),
            "run_lab_waited_for_bootstrap": report["host"].get("bootstrap_seconds"),
            "steps": timings.get("steps"), "serving_ready": timings.get("serving_ready"),
            "first_prediction": timings.get("first_prediction"), "run_lab_seconds": round(run_wall, 1),
            "up_to_first_prediction": round(up_wall + run_wall, 1)}


def main() -> int:
    from tests.cloudbox.__main__ import missing

    why = missing()
    if why:
        print(f"bench/up_to_prediction.py: {why}", file=sys.stderr)
        return 3
    home = tempfile.mkdtemp(prefix="tflab-bench-")
    box = subprocess.Popen([sys.executable, "-m", "tests.cloudbox"], cwd=REPO, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(box.stdout.readline())
        env = {**ready["env"], "TFLAB_HOME": home}
        rows = [one_run(env, "fresh instance (bootstrap: venv from the box's wheelhouse)")]
        tflab(env, "ssh", "--name", "bench", "--", "sudo", "poweroff")  # as the watchdog would: a stop
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = json.loads(tflab(env, "status", "--name", "bench", "--json")[0].stdout)
            if status.get("state") == "stopped":
                break
            time.sleep(3)
        rows.append(one_run(env, "restarted instance (venv on its disk: no bootstrap)"))
        tflab(env, "down", "--name", "bench", "--yes")
    finally:
        box.send_signal(signal.SIGTERM)
        box.wait(300)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
