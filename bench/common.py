"""Helpers for the benchmarks: timing whole commands, medians, a served model to call."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}  # added to the environment at each call


def time_command(argv: list[str], runs: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each run of a command (after warm-up runs); fails if it fails."""
    times = []
    for i in range(warmup + runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV})
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def summary(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    """median [min-max] of values."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.3f} {unit} [{min(v):.3f}-{max(v):.3f}]"


def export_model(workdir: Path) -> Path:
    """Run the lab steps once (a real SavedModel); returns the model base path."""
    subprocess.run([PY, str(REPO / "remote" / "steps.py"), "--workdir", str(workdir), "--seed", "0"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV})
    return workdir / "models" / "nn"


@contextmanager
def served_model() -> Iterator[str]:
    """A freshly exported lab model served by the stand-in server; yields its gRPC address."""
    from tflab import ports

    with tempfile.TemporaryDirectory() as tmp:
        port = ports.free_port()
        server = start_server(export_model(Path(tmp)), port)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(10)


def start_server(base: Path, port: int) -> subprocess.Popen:
    """The stand-in model server over base; returns once version 1 is AVAILABLE."""
    from tflab.client import ServingClient

    proc = subprocess.Popen([PY, str(REPO / "remote" / "model_server.py"), f"--port={port}", "--model_name=nn",
                             f"--model_base_path={base}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **ENV})
    with ServingClient(f"127.0.0.1:{port}") as client:
        client.wait_available("nn", timeout=120)
    return proc
