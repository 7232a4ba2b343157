"""The server's life: configuration read, the first loads waited for, the ports opened, signals handled.

Follows tensorflow_serving/model_servers/server.cc (Server::BuildAndStart) and main.cc.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

from .status import ServingError, clip
from .limits import MAX_GRPC_MESSAGE_BYTES, MAX_RPCS_PER_THREAD
from .batching import read_batching_parameters
from .core import Models, next_retry_in, poll_once, read_model_config, watch, watch_config
from .metrics import Activity, Metrics
from .grpc_services import health_service, make_grpc_services
from .rest import BoundedHTTPServer, RestApi, RestHandler
from .flags import is_true, parse_args


# What the server exits with when it cannot start because a model did not load or a label names a version that
# is not available: TF Serving's main.cc prints "Failed to start server. Error: ..." and returns -1.
FAILED_TO_START = 255
# The longest the main thread waits before it runs a signal handler that another thread's signal left pending.
SIGNAL_CHECK_SECONDS = 0.2


def read_monitoring_path(path: str) -> str | None:
    """--monitoring_config_file: the Prometheus path when prometheus_config enables it (serving_config.md)."""
    import re

    with open(path) as f:
        text = f.read()
    block = re.search(r"prometheus_config\s*:?\s*\{([^}]*)\}", text)
    if not block or not re.search(r"\benable\s*:\s*true\b", block.group(1)):
        return None
    found = re.search(r'\bpath\s*:\s*"([^"]*)"', block.group(1))
    return found.group(1) if found and found.group(1) else "/monitoring/prometheus/metrics"


def wait_in_main_thread(stop: threading.Event, seconds: float | None = None) -> None:
    """stop.wait(seconds) in short slices. CPython runs a signal's handler in the main thread only, and when the
    kernel gives SIGTERM to another thread (TensorFlow's, grpc's: any thread that does not block it may take
    it), nothing wakes a main thread blocked in a wait: the handler would run only when that wait ends. Each
    slice's end lets it run."""
    end = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set():
        remaining = SIGNAL_CHECK_SECONDS if end is None else min(SIGNAL_CHECK_SECONDS, end - time.monotonic())
        if remaining <= 0:
            return
        stop.wait(remaining)


def serve(args: argparse.Namespace, stop: threading.Event) -> int:
    """Run the servers until stop is set."""
    if args.version:
        print("TensorFlow ModelServer: tflab stand-in\nTensorFlow Library: (see the installed tensorflow)", flush=True)
        return 0
    import grpc
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)  # the TF1 loader's deprecation notice
    tags = [t.strip() for t in args.saved_model_tags.split(",") if t.strip()] or ["serve"]
    models = Models(tags, warmup=is_true(args.enable_model_warmup))
    models.method_name_check = is_true(args.enable_signature_method_name_check)
    try:
        if args.model_config_file:
            entries = read_model_config(args.model_config_file)
        else:
            entries = [(args.model_name, os.path.abspath(args.model_base_path), ("latest", 1), {})]
        metrics_path = read_monitoring_path(args.monitoring_config_file) if args.monitoring_config_file else None
        if is_true(args.enable_batching):
            models.batching = read_batching_parameters(args.batching_parameters_file)
        elif args.batching_parameters_file:  # server.cc refuses the same
            raise ServingError("INVALID_ARGUMENT", "--batching_parameters_file is set without --enable_batching")
    except (OSError, ServingError, Exception) as exc:
        print(f"model_server: bad configuration: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)
        return 2
    models.max_load_retries = max(0, args.max_num_load_retries)
    models.load_retry_interval = max(0, args.load_retry_interval_micros) / 1e6  # negative: no wait (retrier.cc)
    models.allow_unavailable_labels = is_true(args.allow_version_labels_for_unavailable_models)
    models.prefer_tflite = is_true(args.prefer_tflite_model)
    try:
        models.configure(entries)
    except ServingError as err:  # a version label for a version not available (at start, none is)
        print(f"Failed to start server. Error: {err.code_name}: {clip(err.message)}", flush=True)
        return FAILED_TO_START
    models.starting = {name for name, *_ in entries}
    # main.cc: --tensorflow_session_parallelism sets both pools, the two specific flags override it. Where no
    # inter-op size is given, each request's ops run in the thread that serves it (ConfigProto's negative
    # inter_op_parallelism_threads): waking a pool thread for a small graph costs more than the graph
    # (0.1-0.2 ms against 0.035 ms per call for the lab's model; bench/README.md).
    inter = args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism or -1
    intra = args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism
    models.session_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter,
                                                     intra_op_parallelism_threads=intra)
    # Collected only where they are exported; labelled only with the names of models served.
    metrics = Metrics(served=lambda name: name in models.by_name) if metrics_path else None

    def reload(new_entries, active=None):
        """server_core.cc ReloadConfig: the labels checked, the models applied and polled; then it waits for
        the models the config added (while active(), when given, says the client still waits)."""
        with models.poll_lock:
            added = {name for name, *_ in new_entries} - set(models.by_name)
            removed = set(models.by_name) - {name for name, *_ in new_entries}
            models.configure(new_entries)
            if metrics is not None:
                metrics.forget(removed)
            for model in models.all():
                poll_once(model, models)
        models.wait_settled(added, stop, active)

    # The first loads, with their retries, before any port is opened: TF Serving's Server::BuildAndStart
    # (model_servers/server.cc) creates its ServerCore, which loads the first config and waits for it
    # (load_servables_fast.cc), and only then adds its listening ports and starts; until then a client's
    # connection is refused rather than accepted and left waiting.
    for model in models.all():
        poll_once(model, models)
    while not stop.is_set() and models.starting and (wait := next_retry_in(models)) is not None:
        wait_in_main_thread(stop, wait)
        for model in models.all():
            poll_once(model, models)
    models.check_start(stop)
    if models.start_error:
        return FAILED_TO_START
    if stop.is_set():  # a signal while the first loads were retried: never listen
        return 0
    activity = Activity(os.environ.get("TFLAB_ACTIVITY_FILE"))  # for tflab's idle watchdog
    prediction, model_service, pred_grpc, model_grpc = make_grpc_services(models, metrics, reload, activity)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads),
                         maximum_concurrent_rpcs=max(1, args.threads) * MAX_RPCS_PER_THREAD,
                         options=[("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES)])
    pred_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_grpc.add_ModelServiceServicer_to_server(model_service, server)
    serving = threading.Event()  # set while the server serves: the health service's SERVING
    if is_true(args.enable_grpc_healthcheck_service):
        server.add_generic_rpc_handlers((health_service(serving),))
    address = f"{args.host}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
        bound = 0
    if bound == 0:
        print(f"model_server: cannot listen on {address}: the port is taken", file=sys.stderr, flush=True)
        return 3
    if args.grpc_socket_path:
        try:
            server.add_insecure_port(f"unix:{args.grpc_socket_path}")
        except RuntimeError:
            print(f"model_server: cannot listen on unix:{args.grpc_socket_path}", file=sys.stderr, flush=True)
            return 3
    server.start()
    serving.set()
    rest = None
    if args.rest_api_port:
        timeout = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None
        api = RestApi(models, timeout, metrics, metrics_path, is_true(args.rest_api_enable_cors_support), activity)
        rest = BoundedHTTPServer((args.host, args.rest_api_port), RestHandler, args.rest_api_num_threads, api)
        threading.Thread(target=rest.serve_forever, name="rest", daemon=True).start()
        print(f"Exporting HTTP/REST API at:{args.host}:{args.rest_api_port} ...", flush=True)
    elif metrics_path:
        print("model_server: warning: the Prometheus metrics are served over REST; give --rest_api_port",
              file=sys.stderr, flush=True)
    print(f"Running gRPC ModelServer at {address} ...", flush=True)
    watcher = threading.Thread(target=watch, args=(models, args.file_system_poll_wait_seconds, stop),
                               name="watch", daemon=True)
    watcher.start()
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        threading.Thread(target=watch_config, args=(args.model_config_file, args.model_config_file_poll_wait_seconds,
                                                    reload, stop), name="watch-config", daemon=True).start()
    wait_in_main_thread(stop)
    serving.clear()
    server.stop(grace=0.5).wait(2)
    if rest is not None:
        rest.shutdown()
    return FAILED_TO_START if models.start_error else 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return serve(args, stop)
