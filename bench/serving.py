"""Predict against the stand-in model server, next to the Python gRPC floor, in one run.

The floor is a plain grpcio server (a thread pool of the same size) that answers every Predict with a
prebuilt response, in its own process, driven by the same tflab client. A second reference, the TF floor,
is that server plus the least a Python server must do to run the model: the request's floats to numpy,
the lab model's TensorFlow session called through one cached session callable (as the stand-in calls
it), the outputs into float_val. It splits the gap into TensorFlow's part and the stand-in's own.
Figures: sequential p50/p99,
calls/s with 8 client threads, the same over REST (urllib, one connection per call as TF Serving's
REST API closes none but the stand-in closes each), and the server's memory at rest (VmRSS).
Client and servers share this machine's cores. Prints the figures and the ratios; nothing is asserted.

    python bench/serving.py [--server remote/model_server.py] [--calls 2000] [--seconds 5] [--threads 8]
                            [--rounds 3] [--extra=--enable_batching ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENV, PY, REPO, export_model  # noqa: E402

from tflab.client import ServingClient  # noqa: E402

XS = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def session_callable(base: str):
    """The lab model's prediction signature as a TensorFlow session callable, made as the stand-in makes it."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    graph = tf.Graph()
    with graph.as_default():
        session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(inter_op_parallelism_threads=-1))
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(next(Path(base).iterdir())))
    sig = meta.signature_def["prediction"]
    options = config_pb2.CallableOptions()
    options.feed.append(sig.inputs["input"].name)
    options.fetch.append(sig.outputs["output"].name)
    return session._make_callable_from_options(options)


def floor_server(port: int, threads: int, model: str | None = None) -> None:
    """The floor: a grpcio server answering every Predict with one prebuilt response; with a model, the TF
    floor: the same, plus the request's floats run through the model's session callable (runs until killed)."""
    import grpc
    import numpy as np

    from tflab.client import serving_apis

    apis = serving_apis()
    run = session_callable(model) if model else None
    response = apis.predict_pb2.PredictResponse()
    response.model_spec.name, response.model_spec.signature_name = "nn", "prediction"
    response.model_spec.version.value = 1
    out = response.outputs["output"]
    out.dtype = 1
    out.tensor_shape.dim.add().size = len(XS)
    out.tensor_shape.dim.add().size = 1
    out.float_val.extend(0.5 * x + 2.5 for x in XS)

    class Servicer(apis.prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if run is None:
                return response
            proto = request.inputs["input"]
            (out,) = run(np.frombuffer(proto.tensor_content, "<f4").reshape([d.size for d in proto.tensor_shape.dim]))
            answer = apis.predict_pb2.PredictResponse()
            answer.model_spec.CopyFrom(response.model_spec)
            tensor = answer.outputs["output"]
            tensor.dtype = 1
            for d in out.shape:
                tensor.tensor_shape.dim.add().size = d
            tensor.float_val.extend(out.ravel().tolist())
            return answer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def sequential(call, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def threaded(make_call, threads: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        call = make_call()
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            call()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(latencies), latencies


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def grpc_figures(address: str, calls: int, threads: int, seconds: float) -> dict:
    with ServingClient(address) as client:
        sequential(lambda: client.predict(XS), 200)  # warm-up
        seq = sequential(lambda: client.predict(XS), calls)
        # One channel shared by the threads, as gRPC intends.
        count, lat = threaded(lambda: (lambda: client.predict(XS)), threads, seconds)
    return {"p50": pct(seq, 0.5), "p99": pct(seq, 0.99), "mean": statistics.mean(seq) * 1000,
            "calls_s": count / seconds, "t_p50": pct(lat, 0.5), "t_p99": pct(lat, 0.99)}


def rest_figures(rest_port: int, calls: int, threads: int, seconds: float) -> dict:
    url = f"http://127.0.0.1:{rest_port}/v1/models/nn:predict"
    body = json.dumps({"signature_name": "prediction", "instances": [[x] for x in XS]}).encode()

    def call():
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            r.read()

    sequential(call, 100)
    seq = sequential(call, calls)
    count, lat = threaded(lambda: call, threads, seconds)
    return {"p50": pct(seq, 0.5), "p99": pct(seq, 0.99), "calls_s": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=str(REPO / "remote" / "model_server.py"), help="the stand-in to measure")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved floor/stand-in rounds")
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)  # internal: run the floor on this port
    parser.add_argument("--floor-model", help=argparse.SUPPRESS)  # internal: ... as the TF floor, over this model
    parser.add_argument("--extra", nargs="*", default=[], help="extra server flags, e.g. --extra=--enable_batching")
    args = parser.parse_args()
    if args.floor_server:
        return floor_server(args.floor_server, 8, args.floor_model)
    from tflab import ports

    env = {**os.environ, **ENV}
    with tempfile.TemporaryDirectory() as tmp:
        base = export_model(Path(tmp))
        port, rest, floor_port, tf_floor_port = (ports.free_port() for _ in range(4))
        server = subprocess.Popen([PY, args.server, f"--port={port}", f"--rest_api_port={rest}", "--model_name=nn",
                                   f"--model_base_path={base}", *args.extra],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        floors = [subprocess.Popen([PY, __file__, f"--floor-server={p}", *extra], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, env=env, text=True)
                  for p, extra in ((floor_port, []), (tf_floor_port, [f"--floor-model={base}"]))]
        try:
            with ServingClient(f"127.0.0.1:{port}") as client:
                client.wait_available("nn", timeout=120)
            for floor in floors:
                floor.stdout.readline()
            time.sleep(1.0)
            rest_rss = rss_mb(server.pid)
            rounds = []
            for _ in range(args.rounds):  # interleaved, so that all see the same load on a shared machine
                rounds.append([grpc_figures(f"127.0.0.1:{p}", args.calls, args.threads, args.seconds)
                               for p in (floor_port, tf_floor_port, port)])
            rest_fig = rest_figures(rest, args.calls // 2, args.threads, args.seconds)
            after_rss = rss_mb(server.pid)
        finally:
            for p in (server, *floors):
                p.terminate()
                p.wait(10)
    print(f"# Predict, 7 inputs; stand-in {args.server} {' '.join(args.extra)}; {args.rounds} interleaved rounds")
    names = ("floor (grpcio, prebuilt answer)", "TF floor (floor + the model's session call)", "stand-in gRPC")
    for i, figs in enumerate(rounds, 1):
        for name, f in zip(names, figs):
            print(f"round {i} {name}: sequential x{args.calls} p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms, "
                  f"mean {f['mean']:.2f} ms; {args.threads} threads x {args.seconds:g} s: {f['calls_s']:.0f} calls/s, "
                  f"p50 {f['t_p50']:.2f} ms, p99 {f['t_p99']:.2f} ms")
    print(f"stand-in REST (instances, one connection per call): sequential x{args.calls // 2} p50 {rest_fig['p50']:.2f} "
          f"ms, p99 {rest_fig['p99']:.2f} ms; {args.threads} threads: {rest_fig['calls_s']:.0f} calls/s")
    print(f"stand-in memory: {rest_rss:.0f} MB at rest, {after_rss:.0f} MB after the run")

    def ratio(key: str, a: int, b: int) -> str:
        values = [figs[a][key] / figs[b][key] for figs in rounds]
        return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"

    print(f"ratios, median of rounds [min-max]: sequential p50: stand-in {ratio('p50', 2, 0)} the floor "
          f"(goal <= 1.5x), TF floor {ratio('p50', 1, 0)} the floor, stand-in {ratio('p50', 2, 1)} the TF floor; "
          f"{args.threads}-thread calls/s: stand-in {ratio('calls_s', 2, 0)} the floor (goal >= 0.7x), "
          f"TF floor {ratio('calls_s', 1, 0)} the floor")


if __name__ == "__main__":
    main()
