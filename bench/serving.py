"""Predict against the stand-in model server: sequential p50/p99, and calls/s with 8 client threads.

Client and server share this machine's cores. Prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import served_model  # noqa: E402

from tflab.client import ServingClient  # noqa: E402

XS = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def sequential(client: ServingClient, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.predict(XS)
        times.append(time.perf_counter() - started)
    return times


def threaded(address: str, threads: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(client: ServingClient) -> None:
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.predict(XS)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    with ServingClient(address) as client:  # one channel shared by the threads, as gRPC intends
        pool = [threading.Thread(target=worker, args=(client,)) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return len(latencies), latencies


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with served_model() as address:
        with ServingClient(address) as client:
            sequential(client, 200)  # warm-up
            seq = sequential(client, args.calls)
        print(f"# Predict, 7 inputs, stand-in server on {address}")
        print(f"sequential x{args.calls}: p50 {pct(seq, 0.5):.2f} ms, p99 {pct(seq, 0.99):.2f} ms, "
              f"mean {statistics.mean(seq) * 1000:.2f} ms")
        count, lat = threaded(address, args.threads, args.seconds)
        print(f"{args.threads} threads x {args.seconds:g} s: {count / args.seconds:.0f} calls/s, "
              f"p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms")


if __name__ == "__main__":
    main()
