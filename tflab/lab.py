"""The run-lab pipeline, written once against the Host interface.

steps (basics, train + plot, summaries, export) in one TensorFlow process -> TensorBoard and
the model server as services (started first, so their start-up overlaps the steps) -> wait
until the exported version is AVAILABLE -> gRPC predictions from this machine -> report.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from tflab.client import ServingClient
from tflab.console import Console
from tflab.errors import LabStepError, UnreachableError
from tflab.host import Host, Service
from tflab.serving import ServerCommand, quiet_tensorflow_env, server_command

log = logging.getLogger(__name__)

PREDICT_XS = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
NOISE_FREE_SLOPE = 0.5
NOISE_FREE_INTERCEPT = 2.5


@dataclass(frozen=True)
class LabOptions:
    """What run-lab does, and where on the host."""

    workdir: str
    steps: int = 100
    learning_rate: float = 0.001
    num_examples: int = 60
    seed: int | None = None
    model_name: str = "nn"
    serving_port: int = 9000
    rest_port: int = 8501
    tensorboard_port: int = 6006
    prefer_builtin_server: bool = False
    server_kind: str | None = None  # what the host's bootstrap found: docker-gpu | binary | builtin
    jupyter_port: int | None = None  # None: no Jupyter (the local run)
    jupyter_token_file: str | None = None
    stop_on_failure: bool = True  # a lab host keeps the services that were up when a step fails
    step_timeout: float = 900.0
    ready_timeout: float = 120.0


@dataclass
class LabRun:
    """A finished run: its report and the services still running on the host."""

    report: dict
    services: list[Service] = field(default_factory=list)


Reach = Callable[[int], int]  # a port on the host -> the local port that reaches it


def noise_free(x: float) -> float:
    return NOISE_FREE_SLOPE * x + NOISE_FREE_INTERCEPT


def steps_command(host: Host, options: LabOptions, report_path: str) -> list[str]:
    """The command line of the one process that runs every TensorFlow step."""
    argv = [host.python, posixpath.join(host.remote_dir, "steps.py"), "--workdir", options.workdir,
            "--steps", str(options.steps), "--learning-rate", repr(options.learning_rate),
            "--num-examples", str(options.num_examples), "--model-name", options.model_name,
            "--report", report_path]
    if options.seed is not None:
        argv += ["--seed", str(options.seed)]
    return argv


def tensorboard_command(host: Host, logdir: str, port: int) -> list[str]:
    """TensorBoard over every run's logs, bound to 127.0.0.1 on the host."""
    return [host.python, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
            "--port", str(port), "--reload_interval", "2"]


def jupyter_command(host: Host, port: int, root: str) -> list[str]:
    """JupyterLab bound to 127.0.0.1 on the host, its token read from JUPYTER_TOKEN_FILE (never argv)."""
    return [host.python, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
            f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root}"]


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def poll_http(what: str, check: Callable[[], object], timeout: float, alive: Callable[[], None]):
    """Call check() until it returns a value (not None); HTTP and connection errors mean "not yet".

    alive() is called between tries and raises when the service behind died.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            value = check()
            if value is not None:
                return value
            last = "not ready"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        alive()
        if time.monotonic() >= deadline:
            raise UnreachableError(f"{what} within {timeout:.0f} s ({last})")
        time.sleep(0.25)


def wait_jupyter(port: int, token: str, timeout: float, alive: Callable[[], None]) -> list[str]:
    """Poll Jupyter's /api/status with the token until it answers; returns the notebooks it lists."""
    def check():
        http_json(f"http://127.0.0.1:{port}/api/status?token={token}")
        contents = http_json(f"http://127.0.0.1:{port}/api/contents?token={token}")
        return sorted(item["name"] for item in contents.get("content", []) if item.get("type") == "notebook")

    return poll_http("Jupyter did not answer", check, timeout, alive)


def wait_tensorboard(port: int, run: str, timeout: float, alive: Callable[[], None]) -> dict:
    """Poll TensorBoard's HTTP API until it lists the run's `loss` scalar; returns the run's tags."""
    def check():
        tags = http_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
        return tags[run] if "loss" in tags.get(run, {}) else None

    return poll_http(f"TensorBoard on port {port} did not show run {run}", check, timeout, alive)


def run_lab(host: Host, options: LabOptions, console: Console, reach: Reach = lambda port: port,
            link_alive: Callable[[], None] = lambda: None) -> LabRun:
    """Run every lab step on host, serve the model, predict through `reach`; returns the run.

    link_alive() is called while waiting for a service and raises when the way to it (the SSH
    tunnels) is gone for good, so a wait does not run to its limit for nothing.

    Services are left running in the returned LabRun; on failure they are stopped unless
    the host keeps them (see stop_services). Raises LabStepError, UnreachableError.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    workdir = options.workdir
    models = posixpath.join(workdir, "models")
    model_base = posixpath.join(models, options.model_name)
    logs_root = posixpath.join(workdir, "logs")
    env = quiet_tensorflow_env()
    services: list[Service] = []
    run = LabRun({}, services)
    try:
        server = server_command(host, model_base_path=model_base, model_name=options.model_name,
                                port=options.serving_port, rest_port=options.rest_port,
                                prefer_builtin=options.prefer_builtin_server, kind=options.server_kind)
        server_svc = host.start_service("model-server", server.argv, log_path=posixpath.join(workdir, "services", "model-server.log"),
                                        env=env, port=options.serving_port)
        services.append(server_svc)
        console.info(f"{'kept running' if server_svc.kept else 'started'}: {server.describe()}")
        if server.exposure():
            console.warn(server.exposure())
        tb_svc = host.start_service("tensorboard", tensorboard_command(host, logs_root, options.tensorboard_port),
                                    log_path=posixpath.join(workdir, "services", "tensorboard.log"), env=env,
                                    port=options.tensorboard_port)
        services.append(tb_svc)
        console.info(f"{'kept running' if tb_svc.kept else 'started'}: TensorBoard on 127.0.0.1:{options.tensorboard_port} "
                     f"over {logs_root}")
        jupyter_svc = None
        if options.jupyter_port:
            notebooks = posixpath.join(workdir, "notebooks")
            host.run([host.python, posixpath.join(host.remote_dir, "notebooks.py"), notebooks, "--remote-dir",
                      host.remote_dir, "--workdir", workdir, "--port", str(options.serving_port)],
                     step="notebooks", timeout=60)
            jupyter_svc = host.start_service("jupyter", jupyter_command(host, options.jupyter_port, notebooks),
                                             log_path=posixpath.join(workdir, "services", "jupyter.log"),
                                             env={"JUPYTER_TOKEN_FILE": options.jupyter_token_file},
                                             port=options.jupyter_port)
            services.append(jupyter_svc)
            console.info(f"{'kept running' if jupyter_svc.kept else 'started'}: JupyterLab on "
                         f"127.0.0.1:{options.jupyter_port} over {notebooks}")

        report_path = posixpath.join(workdir, "steps-report.json")
        console.info("running the lab steps (basics, train, summaries, export) in one TensorFlow process")
        t0 = time.monotonic()

        def on_line(kind: str, line: str) -> None:
            if kind == "out":
                step, _, text = line.partition("] ")
                console.stream(step.lstrip("[") if text else "steps", text or line)

        finished = host.run(steps_command(host, options, report_path), step="lab steps", env=env, on_line=on_line,
                            timeout=options.step_timeout)
        timings["steps"] = time.monotonic() - t0
        try:
            steps = json.loads(host.read_text(report_path))
        except (OSError, ValueError) as exc:  # it exited 0 but wrote no report: not the lab's steps.py running
            raise LabStepError("lab steps", f"exited with status 0 but wrote no report at {report_path} on "
                                            f"{host.name} ({exc})", tail=finished.tail,
                               hint=f"check that {host.python} is a Python with TensorFlow (--python)") from exc
        version = steps["export"]["version"]

        def check_alive(service: Service) -> Callable[[], None]:
            def alive() -> None:
                link_alive()
                if not host.service_alive(service):
                    raise LabStepError(service.name, "stopped unexpectedly", tail=host.read_log(service),
                                       hint=f"its log is {service.log_path}")
            return alive

        address = f"127.0.0.1:{reach(options.serving_port)}"
        with console.waiting(f"waiting for {options.model_name} version {version} to be AVAILABLE at {address}"):
            with ServingClient(address, timeout=10.0) as client:
                client.wait_available(options.model_name, version=version, timeout=options.ready_timeout,
                                      alive=check_alive(server_svc))
                timings["serving_ready"] = time.monotonic() - started
                result = client.predict(PREDICT_XS, model=options.model_name, signature="prediction")
        timings["first_prediction"] = time.monotonic() - started
        predictions = [{"x": x, "predicted": y, "noise_free": noise_free(x)} for x, y in zip(result.inputs, result.outputs)]

        run_name = posixpath.basename(steps["artifacts"]["logdir"])
        tb_port = reach(options.tensorboard_port)
        with console.waiting(f"waiting for TensorBoard to list run {run_name}"):
            tags = wait_tensorboard(tb_port, run_name, options.ready_timeout, check_alive(tb_svc))
        jupyter = None
        if jupyter_svc is not None:
            token = host.read_text(options.jupyter_token_file).strip()
            jupyter_port = reach(options.jupyter_port)
            with console.waiting("waiting for JupyterLab"):
                listed = wait_jupyter(jupyter_port, token, options.ready_timeout, check_alive(jupyter_svc))
            jupyter = {"url": f"http://127.0.0.1:{jupyter_port}/lab?token={token}", "notebooks": listed}
        timings["total"] = time.monotonic() - started
        run.report = build_report(host, steps, server, result.version, predictions, tb_port, tags, timings)
        if jupyter is not None:
            run.report["jupyter"] = jupyter
        return run
    except BaseException:
        if options.stop_on_failure:
            stop_services(host, services)
        raise


def build_report(host: Host, steps: dict, server: ServerCommand, version: int, predictions: list[dict],
                 tb_port: int, tb_tags: dict, timings: dict) -> dict:
    """The run's report: the same keys for every kind of host."""
    return {
        "host": {"name": host.name, "python": host.python},
        "basics": steps["basics"],
        "training": steps["training"],
        "predictions": predictions,
        "server": {"kind": server.kind, "address": server.address, "listen": f"{server.listen}:{server.port}",
                   "model_name": server.model_name,
                   "version": version, "rest_address": f"127.0.0.1:{server.rest_port}" if server.rest_port else None,
                   "model_base_path": server.model_base_path},
        "tensorboard": {"url": f"http://127.0.0.1:{tb_port}/", "scalars": sorted(tb_tags)},
        "tensorflow": steps.get("tensorflow", {}),
        "artifacts": steps["artifacts"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def stop_services(host: Host, services: list[Service]) -> None:
    """Stop the lab's services on the host, newest first."""
    for service in reversed(services):
        try:
            host.stop_service(service)
        except Exception as exc:  # stopping the rest matters more than this one
            log.warning("could not stop %s (pid %d): %s", service.name, service.pid, exc)
    services.clear()
