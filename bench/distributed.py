"""Training across workers: the `mlp` workload (remote/steps.py --workload mlp) timed per epoch with 1 and
with 2 TensorFlow processes on this machine (MultiWorkerMirroredStrategy, TF_CONFIG on loopback ports),
then an on-paper estimate for N g4dn.xlarge instances.

    .venv/bin/python bench/distributed.py [--epochs 4] [--rounds 2]

The first epoch (tracing, the workers' first collectives) is reported apart; "per epoch" is the median
of the others. On one 2-core machine two workers share the cores, so the local ratio shows the cost of
the all-reduce and the coordination, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tflab import ports  # noqa: E402

# g4dn.xlarge, from AWS's instance type page: 1 NVIDIA T4 (8.1 TFLOPS FP32 peak, NVIDIA's data sheet),
# network "up to 25 Gbps" with a baseline of 5 Gbps (the sustained figure is what an all-reduce that
# runs every step gets).
T4_FP32_FLOPS = 8.1e12
T4_EFFICIENCY = 0.3  # a small dense model on a T4 gets a fraction of peak (kernel launches dominate)
BASELINE_GBPS = 5.0
HOP_LATENCY_S = 50e-6  # one message between instances in a cluster placement group, order of magnitude
STEP_OVERHEAD_S = 1e-3  # per-step launch and input pipeline cost on a GPU, order of magnitude


def run_workers(count: int, epochs: int, seed: int) -> list[dict]:
    """The workload on count local workers; returns each worker's workload figures."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = [f"127.0.0.1:{ports.free_port()}" for _ in range(count)]
        procs = []
        for i in range(count):
            argv = [sys.executable, str(REPO / "remote" / "steps.py"), "--workdir", f"{tmp}/w{i}", "--seed", str(seed),
                    "--steps", "10", "--workload", "mlp", "--epochs", str(epochs), "--report", f"{tmp}/r{i}.json"]
            worker_env = dict(env)
            if count > 1:
                argv += ["--workers", str(count), "--worker-index", str(i)]
                worker_env["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster},
                                                      "task": {"type": "worker", "index": i}})
            procs.append(subprocess.Popen(argv, env=worker_env, stdout=subprocess.DEVNULL,
                                          stderr=open(f"{tmp}/err{i}.log", "w")))
        try:
            for i, proc in enumerate(procs):
                proc.wait(timeout=1200)
                if proc.returncode != 0:
                    raise SystemExit(f"worker {i} failed:\n{Path(f'{tmp}/err{i}.log').read_text()[-3000:]}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        found = []
        for i in range(count):
            report = json.loads(Path(f"{tmp}/r{i}.json").read_text())
            found.append(report["training"]["workload"] if i == 0 else report["worker"]["workload"])
        return found


def estimate(figures: dict, nodes: int) -> dict:
    """Seconds per epoch of the workload on nodes g4dn.xlarge (one worker each), on paper: compute on the
    worker's share of each batch, plus a ring all-reduce of the gradients every step."""
    params, batch, steps = figures["parameters"], figures["global_batch"], figures["steps_per_epoch"]
    compute = 6 * params * (batch / nodes) / (T4_FP32_FLOPS * T4_EFFICIENCY) + STEP_OVERHEAD_S
    size = figures["allreduce_bytes_per_step"]
    if nodes > 1:
        allreduce = 2 * (nodes - 1) / nodes * size / (BASELINE_GBPS * 1e9 / 8) + 2 * (nodes - 1) * HOP_LATENCY_S
    else:
        allreduce = 0.0
    return {"nodes": nodes, "compute_ms_per_step": compute * 1e3, "allreduce_ms_per_step": allreduce * 1e3,
            "seconds_per_epoch": steps * (compute + allreduce)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    per_epoch: dict[int, list[float]] = {1: [], 2: []}
    first: dict[int, list[float]] = {1: [], 2: []}
    figures = None
    for _ in range(args.rounds):  # interleaved, so that both see the same machine
        for count in (1, 2):
            workers = run_workers(count, args.epochs, args.seed)
            chief = workers[0]
            figures = chief
            first[count].append(chief["seconds_per_epoch"][0])
            per_epoch[count].append(statistics.median(chief["seconds_per_epoch"][1:] or chief["seconds_per_epoch"]))
            losses = {round(w["final_loss"], 5) for w in workers}
            print(f"{count} worker(s): seconds per epoch {chief['seconds_per_epoch']}, final loss {sorted(losses)}",
                  flush=True)
    one, two = statistics.median(per_epoch[1]), statistics.median(per_epoch[2])
    print(f"\nworkload mlp: {figures['parameters']:,} parameters, all-reduce {figures['allreduce_bytes_per_step']:,} "
          f"bytes per step, {figures['steps_per_epoch']} steps of {figures['global_batch']} per epoch")
    print(f"this machine ({os.cpu_count()} cores), median of {args.rounds} rounds:")
    print(f"  1 worker : {one:.2f} s per epoch (first epoch {statistics.median(first[1]):.2f} s)")
    print(f"  2 workers: {two:.2f} s per epoch (first epoch {statistics.median(first[2]):.2f} s): "
          f"{two / one:.2f}x the time of one")
    print("on paper, N g4dn.xlarge (1 T4 each, 5 Gbps baseline network, a ring all-reduce every step):")
    for nodes in (1, 2, 4, 8):
        e = estimate(figures, nodes)
        print(f"  {nodes} node(s): compute {e['compute_ms_per_step']:.2f} ms + all-reduce "
              f"{e['allreduce_ms_per_step']:.2f} ms per step -> {e['seconds_per_epoch']:.2f} s per epoch")
    one_node, two_nodes = estimate(figures, 1), estimate(figures, 2)
    # With compute C per step on one node, two take C/2 + the all-reduce A: they win once C > 2A.
    needed = 2 * two_nodes["allreduce_ms_per_step"]
    print(f"  two nodes win once one node's compute per step passes 2 x the all-reduce ({needed:.1f} ms): "
          f"{needed / one_node['compute_ms_per_step']:.1f}x this workload's (a bigger model or batch, with the "
          "same gradients to reduce)")


if __name__ == "__main__":
    main()
