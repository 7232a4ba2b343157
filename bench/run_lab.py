"""`tflab run-lab --local` wall time next to its floor, measured in the same run.

The floor: one `import tensorflow` (a process that imports it and exits) plus the stand-in
server's start (process start -> version AVAILABLE). Goal (issue 2): run-lab <= 3x the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENV, PY, export_model, start_server, summary, time_command  # noqa: E402

from tflab import ports  # noqa: E402


def server_start(base: Path) -> float:
    started = time.perf_counter()
    proc = start_server(base, ports.free_port())
    seconds = time.perf_counter() - started
    proc.terminate()
    proc.wait(10)
    return seconds


def run_lab(out: Path) -> tuple[float, dict]:
    argv = [PY, "-m", "tflab", "run-lab", "--local", "--json", "--out", str(out), "--seed", "0",
            "--port", str(ports.free_port()), "--rest-port", str(ports.free_port()),
            "--tensorboard-port", str(ports.free_port())]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **ENV}, check=True)
    return time.perf_counter() - started, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    imports, starts, labs, phases = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = export_model(Path(tmp) / "model")
        for i in range(args.runs):  # interleaved, so load changes hit all three alike
            imports += time_command([PY, "-c", "import tensorflow"], 1, warmup=0)
            starts.append(server_start(base))
            seconds, report = run_lab(Path(tmp) / f"lab{i}")
            labs.append(seconds)
            phases.append(report["timings"])
    floor = statistics.median(imports) + statistics.median(starts)
    print(f"# run-lab --local, {args.runs} runs, median [min-max]")
    print(f"import tensorflow (process)      {summary(imports)}")
    print(f"stand-in server start->AVAILABLE {summary(starts)}")
    print(f"floor (sum of medians)           {floor:.3f} s")
    print(f"tflab run-lab --local            {summary(labs)}   = {statistics.median(labs) / floor:.2f}x the floor")
    for key in phases[0]:
        print(f"  phase {key:<24} {summary([p[key] for p in phases])}")


if __name__ == "__main__":
    main()
