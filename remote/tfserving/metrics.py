"""Request counts and latencies in Prometheus's text format, and the activity stamp tflab's watchdog reads.

Follows tensorflow_serving/model_servers/prometheus_exporter.cc and the request metrics of
servables/tensorflow/util.cc (RecordRequestLatency); the activity stamp is tflab's own.
"""

from __future__ import annotations

import math
import os
import threading
import time


# The model_name label the metrics count a request under when it names a model the server does not serve. Our
# choice (TF Serving labels it with whatever name the request carries: see Metrics).
UNKNOWN_MODEL_LABEL = "(unknown)"


class Activity:
    """tflab's idle watchdog (remote/watchdog.py) counts model requests by the time of a file, which every
    request moves (at most once a second); run-lab names it in the environment variable TFLAB_ACTIVITY_FILE
    (not a TF Serving flag). Without a path, stamp() does nothing."""

    def __init__(self, path: str | None):
        self.path = path
        self.last = 0.0

    def stamp(self) -> None:
        """Mark that a request came (for the watchdog), cheaply."""
        now = time.time()
        if self.path and now - self.last >= 1.0:
            self.last = now
            try:
                with open(self.path, "a"):
                    os.utime(self.path, None)
            except OSError:
                pass


class Metrics:
    """Request counts and latencies per model and API, under TF Serving's metric names
    (servables/tensorflow/util.cc: /tensorflow/serving/request_count, /tensorflow/serving/request_latency),
    exported as Prometheus text as util/prometheus_exporter.cc does (':' for '/').

    Labels name only the models the server serves. TF Serving labels each request with the name it carries
    (prediction_service_impl.cc and http_server.cc pass request.model_spec().name() to util.cc
    RecordModelRequestCount and RecordRequestLatency, whose monitoring cells are never deleted), so there any
    name a client makes up becomes a series kept for the process's life: 100 requests naming 1 MB names keep
    100 MB and make the metrics page 100 MB. Here a request naming a model the server does not serve counts
    under model_name="(unknown)", and a model a config reload removes takes its series with it."""

    # request_latency's buckets (util.cc: exponential, scale 10 us, growth 1.8, 33 buckets).
    BUCKETS = [10 * 1.8 ** i for i in range(33)]

    def __init__(self, served=None):
        self.lock = threading.Lock()
        self.served = served  # name -> whether the server serves it (None: every name is labelled)
        self.counts: dict = {}  # (model, status) -> n
        self.latency: dict = {}  # (model, api, entrypoint) -> [bucket counts..., sum, count]

    def forget(self, names) -> None:
        """Drop the series of models that are no longer served."""
        names = set(names)
        with self.lock:
            for table in (self.counts, self.latency):
                for key in [k for k in table if k[0] in names]:
                    del table[key]

    def record(self, model: str, api: str, entrypoint: str, code: str, micros: float) -> None:
        """One request: its count under its status code's name (util.cc RecordModelRequestCount), and its
        latency when it succeeded (prediction_service_impl.cc, http_server.cc RecordRequestLatency)."""
        import bisect

        if self.served is not None and not self.served(model):
            model = UNKNOWN_MODEL_LABEL
        with self.lock:
            key = (model, code)
            self.counts[key] = self.counts.get(key, 0) + 1
            if code == "OK":
                h = self.latency.setdefault((model, api, entrypoint), [0] * (len(self.BUCKETS) + 1) + [0.0, 0])
                h[bisect.bisect_left(self.BUCKETS, micros)] += 1
                h[-2] += micros
                h[-1] += 1

    def prometheus(self) -> str:
        def esc(v):
            return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self.lock:
            counts = dict(self.counts)
            latency = {k: list(v) for k, v in self.latency.items()}
        for (model, status), n in sorted(counts.items()):
            lines.append(f':tensorflow:serving:request_count{{model_name="{esc(model)}",status="{status}"}} {n}')
        lines.append("# TYPE :tensorflow:serving:request_latency histogram")
        for (model, api, entry), h in sorted(latency.items()):
            labels = f'model_name="{esc(model)}",API="{api}",entrypoint="{entry}"'
            running = 0
            for bound, n in zip(self.BUCKETS + [math.inf], h):
                running += n
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {h[-2]:g}")
            lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {h[-1]}")
        return "\n".join(lines) + "\n"
