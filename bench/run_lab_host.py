"""`tflab run-lab` over SSH against a local sshd, phase by phase, next to `run-lab --local` in the
same run, with each tunnel client. Goal (issue 5): the SSH path adds no more than a few seconds over --local.

The host is this machine (the lab's python is this one, so the bootstrap only checks it): the first
SSH run bootstraps, the measured ones find it done, as a second `run-lab` on an instance does.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sshd import Sshd  # noqa: E402
from tflab import ports  # noqa: E402

PY = sys.executable
CLIENTS = ("openssh", "paramiko")  # who carries run-lab's tunnels (TFLAB_TUNNEL_CLIENT)


def tflab(*args: str, client: str = "auto") -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([PY, "-m", "tflab", *args, "--json", "--seed", "0"], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TFLAB_TUNNEL_CLIENT": client})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - started, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sshd = Sshd(tmp / "sshd", ports.free_port()).start()
        remote = ["run-lab", "--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity", str(sshd.user_key),
                  "--known-hosts", str(tmp / "kh"), "--accept-new-host-key", "--python", PY,
                  "--workdir", str(tmp / "host"), "--out", str(tmp / "results")]
        try:
            first, _ = tflab(*remote)  # bootstraps (checks the interpreter) and starts the services
            local_times, remote_times, phases = [], {c: [] for c in CLIENTS}, {c: [] for c in CLIENTS}
            for i in range(args.runs):
                seconds, _ = tflab("run-lab", "--local", "--out", str(tmp / f"local{i}"), "--port",
                                   str(ports.free_port()), "--rest-port", "0", "--tensorboard-port",
                                   str(ports.free_port()))
                local_times.append(seconds)
                for client in CLIENTS:
                    seconds, report = tflab(*remote, client=client)
                    assert report["host"]["tunnel_client"] == client
                    remote_times[client].append(seconds)
                    phases[client].append(report["timings"])
        finally:
            subprocess.run([PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                            "from tflab.ssh import Connection, SshTarget; from tflab.sshhost import SshHost;"
                            "t = SshTarget('127.0.0.1', sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]);"
                            "c = Connection(t); SshHost(c).stop_all_services(sys.argv[6]); c.close()",
                            str(Path(__file__).resolve().parent.parent), sshd.user, str(sshd.port),
                            str(sshd.user_key), str(tmp / "kh"), str(tmp / "host" / "services")])
            sshd.stop()

    def s(values):
        return f"{statistics.median(values):6.2f} s [{min(values):.2f}-{max(values):.2f}]"

    print(f"# run-lab, {args.runs} interleaved runs each, median [min-max]")
    print(f"first SSH run (bootstrap + services started)  {first:6.2f} s")
    print(f"run-lab --local                               {s(local_times)}")
    for client in CLIENTS:
        print(f"run-lab --host (bootstrap done), {client:<8} tunnels {s(remote_times[client])}   "
              f"({statistics.median(remote_times[client]) - statistics.median(local_times):+.2f} s)")
    for client in CLIENTS:
        print(f"phases of the SSH runs with {client} tunnels, seconds from start:")
        for key in ("phase_connect", "phase_push", "phase_bootstrap", "phase_tunnels_ready", "phase_lab", "phase_total"):
            print(f"  {key.removeprefix('phase_'):<12} {s([p[key] for p in phases[client]])}")
        print("  inside the lab phase (from its own start):")
        for key in ("steps", "serving_ready", "first_prediction", "total"):
            print(f"    {key:<16} {s([p[key] for p in phases[client]])}")


if __name__ == "__main__":
    main()
