"""The test suite's wall time and CPU use with N pytest-xdist workers (issue 20: the whole suite, the EC2 in a box
left out, in under 10 minutes on 2 cores).

Each round runs `pytest -m "not cloudbox" -n N --dist loadgroup` as scripts/test.sh runs it, and reads this
machine's /proc/stat before and after: wall seconds, CPU-seconds busy and idle, the share of the cores kept busy,
and the wall time as a ratio against the first worker count given (the baseline, measured in the same run).

    .venv/bin/python bench/suite.py                 # 2, then 3 workers (about 20 minutes on 2 cores)
    .venv/bin/python bench/suite.py --workers 2,3,4 -- tests/ssh   # a part of the suite; pytest's arguments after --
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import REPO


def cpu_ticks() -> tuple[int, int]:
    """(busy, idle) jiffies of every core since boot: user + nice + system, and idle + iowait."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2], fields[3] + fields[4]


def one_round(workers: int, extra: list[str]) -> dict:
    busy0, idle0 = cpu_ticks()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cloudbox",
                           "-n", str(workers), "--dist", "loadgroup", *extra], cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    busy1, idle1 = cpu_ticks()
    tick = os.sysconf("SC_CLK_TCK")
    busy, idle = (busy1 - busy0) / tick, (idle1 - idle0) / tick
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no output)"
    return {"workers": workers, "wall": wall, "busy": busy, "idle": idle, "share": busy / (busy + idle),
            "result": last.strip("= "), "ok": proc.returncode == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,3", help="worker counts, the first the baseline [default: 2,3]")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (e.g. a folder)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"{os.cpu_count()} cores; pytest -m 'not cloudbox' {' '.join(args.pytest_args)}", flush=True)
    print("| workers | wall | CPU-s busy | CPU-s idle | cores busy | wall vs first | result |")
    print("|---|---|---|---|---|---|---|", flush=True)
    first = None
    for count in counts:
        r = one_round(count, args.pytest_args)
        first = first or r["wall"]
        minutes, seconds = divmod(round(r["wall"]), 60)
        print(f"| {count} | {minutes}:{seconds:02d} ({r['wall']:.0f} s) | {r['busy']:.0f} | "
              f"{r['idle']:.0f} | {r['share']:.0%} | {r['wall'] / first:.2f}x | {r['result']} |", flush=True)


if __name__ == "__main__":
    main()
