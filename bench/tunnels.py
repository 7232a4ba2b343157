"""Tunnels side by side, in one run, against the same local sshd: direct loopback, OpenSSH
`ssh -N -L`, and `tflab tunnel` with each of its clients (--client openssh, the default where `ssh`
is present, and --client paramiko, the fallback); each tunnel its own process, as a user runs it.

Figures: bulk MiB/s (one way, acknowledged), 64-byte round trip p50, new connection to first
echoed byte p50 (back to back), gRPC unary p50 and calls/s with 8 threads over one channel, and
tunnel stop (SIGINT) to process exit. Goals (issue 4): gRPC p50 <= 1.2x OpenSSH, calls/s >= 0.9x;
first byte <= 2x OpenSSH; bulk >= 0.8x OpenSSH's default; stop + exit < 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sshd import Sshd  # noqa: E402
from tflab import ports  # noqa: E402

PY = sys.executable
PATHS = ("direct", "openssh", "tflab-openssh", "tflab-paramiko")


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Sink(socketserver.BaseRequestHandler):
    """Reads an 8-byte length, then that many bytes, then answers one byte."""

    def handle(self):
        try:
            (size,) = struct.unpack("!Q", recv_exact(self.request, 8))
        except EOFError:  # a readiness probe
            return
        left = size
        while left:
            left -= len(self.request.recv(min(1 << 20, left)))
        self.request.sendall(b"k")


def recv_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def serve(handler) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def grpc_server():
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


# ------------------------------------------------------------------ measurements


def bulk(port: int, mib: int) -> float:
    payload = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        s.sendall(struct.pack("!Q", mib << 20))
        for _ in range(mib):
            s.sendall(payload)
        assert s.recv(1) == b"k"
        return mib / (time.perf_counter() - started)


def ping_pong(port: int, n: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        times = []
        for _ in range(n):
            started = time.perf_counter()
            s.sendall(msg)
            recv_exact(s, 64)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def first_byte(port: int, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"1")
            recv_exact(s, 1)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def grpc_calls(port: int, n: int, threads: int, seconds: float) -> tuple[float, float]:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/bench.Echo/Call")
        body = b"y" * 100
        for _ in range(50):
            call(body, timeout=10)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            call(body, timeout=10)
            times.append(time.perf_counter() - started)
        count = [0]
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def worker():
            mine = 0
            while time.monotonic() < stop:
                call(body, timeout=10)
                mine += 1
            with lock:
                count[0] += mine

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return statistics.median(times) * 1e6, count[0] / seconds


# ------------------------------------------------------------------ the tunnels


def start_openssh(sshd: Sshd, known: str, forwards: dict[int, int]) -> subprocess.Popen:
    argv = ["ssh", "-N", "-p", str(sshd.port), "-i", str(sshd.user_key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes"]
    for local, remote in forwards.items():
        argv += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote}"]
    return subprocess.Popen(argv + [f"{sshd.user}@127.0.0.1"], stderr=subprocess.DEVNULL)


def start_tflab(sshd: Sshd, known: str, forwards: dict[int, int], client: str) -> subprocess.Popen:
    argv = [PY, "-m", "tflab", "tunnel", "--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--identity",
            str(sshd.user_key), "--known-hosts", known, "--accept-new-host-key", "--no-lab-ports", "--client", client]
    for local, remote in forwards.items():
        argv += ["--forward", f"{local}:{remote}"]
    return subprocess.Popen(argv, stderr=subprocess.DEVNULL)


def stop_time(proc: subprocess.Popen) -> float:
    started = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    echo, sink = serve(Echo), serve(Sink)
    grpc_srv, grpc_port = grpc_server()
    targets = {"echo": echo.server_address[1], "sink": sink.server_address[1], "grpc": grpc_port}
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sshd = Sshd(Path(tmp) / "sshd", ports.free_port()).start()
        try:
            for round_ in range(args.rounds):
                for path in PATHS:  # interleaved rounds: load hits all alike
                    if path == "direct":
                        local, proc = dict(targets), None
                    else:
                        local = {name: ports.free_port() for name in targets}
                        known, forwards = str(Path(tmp) / f"known_{path}"), {local[n]: targets[n] for n in targets}
                        if path == "openssh":
                            proc = start_openssh(sshd, known, forwards)
                        else:
                            proc = start_tflab(sshd, known, forwards, path.removeprefix("tflab-"))
                        for port in local.values():
                            wait_port(port)
                    r = results.setdefault(path, {})
                    r.setdefault("bulk MiB/s", []).append(bulk(local["sink"], args.mib))
                    r.setdefault("64 B round trip p50 us", []).append(ping_pong(local["echo"], 2000))
                    r.setdefault("new conn first byte p50 ms", []).append(first_byte(local["echo"], 200))
                    p50, rate = grpc_calls(local["grpc"], 1000, 8, args.seconds)
                    r.setdefault("gRPC unary p50 us", []).append(p50)
                    r.setdefault("gRPC calls/s, 8 threads", []).append(rate)
                    if proc is not None:
                        r.setdefault("stop + exit s", []).append(stop_time(proc))
        finally:
            sshd.stop()
            grpc_srv.stop(0)
    metrics = list(results["openssh"])
    print(f"# tunnels, {args.rounds} interleaved rounds, median of rounds [min-max]; ratios against OpenSSH")
    print(f"{'metric':<28} {'direct':>16} {'OpenSSH ssh -L':>20} {'tflab, openssh':>20} {'tflab, paramiko':>20}"
          f" {'openssh/OpenSSH':>16} {'paramiko/OpenSSH':>17}")
    for m in metrics:
        cells = []
        for path in PATHS:
            v = results[path].get(m)
            cells.append(f"{statistics.median(v):.3g} [{min(v):.3g}-{max(v):.3g}]" if v else "-")
        base = statistics.median(results["openssh"][m])
        ratios = [statistics.median(results[p][m]) / base for p in ("tflab-openssh", "tflab-paramiko")]
        print(f"{m:<28} {cells[0]:>16} {cells[1]:>20} {cells[2]:>20} {cells[3]:>20} {ratios[0]:>15.2f}x {ratios[1]:>16.2f}x")


if __name__ == "__main__":
    main()
