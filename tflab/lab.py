"""The run-lab pipeline, written once against the Host interface (tflab.host), and nothing else: what a
lab name, --local, --host or --hosts resolves to (the state, the targets, the Hosts) is tflab.labs's,
which hands LabRun its Hosts.

prepare the host -> choose the services' ports there -> TensorBoard, Jupyter (where the host has
it) and the model server as services (started first, so their start-up overlaps the steps) ->
the way here (tunnels, or nothing) -> the steps (basics, train + plot, summaries, export) in one
TensorFlow process -> wait until the exported version is AVAILABLE -> gRPC predictions from this
machine -> TensorBoard and Jupyter checked from here -> the plot fetched -> the report.

A LabRun owns what a run holds: the services it started, the host's connection and tunnels. It
ends them when the run ends, however it ends: services end too unless the host keeps them (a lab
host's are kept: the user asked for them), and the connection and tunnels always.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import posixpath
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tflab.autostop import activity_env
from tflab.console import Console
from tflab.errors import LabStepError, TflabError
from tflab.host import Host, Service
from tflab.ports import LAB_PORTS
from tflab.report import (HostInfo, JupyterInfo, Prediction, Report, ServerInfo, TensorBoardInfo,
                          steps_sections)
from tflab.serving import ServerCommand, quiet_tensorflow_env, server_command
from tflab.waiting import poll

log = logging.getLogger(__name__)

PREDICT_XS = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
NOISE_FREE_SLOPE = 0.5
NOISE_FREE_INTERCEPT = 2.5
HOST_PORTS = {name: host for name, (host, _) in LAB_PORTS.items()}  # the lab's own ports on a host
LOCAL_PORTS = {name: local for name, (_, local) in LAB_PORTS.items()}  # where the tunnels bring them here
WORKER_PORT = 23456  # TF_CONFIG's ports for N workers start here on the host (free ones if taken)


@dataclass(frozen=True)
class LabOptions:
    """What run-lab runs (where is the Host's business)."""

    steps: int = 100
    learning_rate: float = 0.001
    num_examples: int = 60
    seed: int | None = None
    model_name: str = "nn"
    ports: dict = field(default_factory=lambda: dict(HOST_PORTS))  # wanted service ports; 0: none (REST)
    prefer_builtin_server: bool = False
    workers: int = 1  # train across this many TensorFlow processes (MultiWorkerMirroredStrategy)
    workload: str | None = None  # then a workload where distribution matters (remote/steps.py WORKLOADS)
    epochs: int = 3  # of the workload
    step_timeout: float = 900.0
    ready_timeout: float = 120.0


def noise_free(x: float) -> float:
    return NOISE_FREE_SLOPE * x + NOISE_FREE_INTERCEPT


def steps_command(host: Host, options: LabOptions, report_path: str) -> list[str]:
    """The command line of the one process that runs every TensorFlow step."""
    argv = [host.python, posixpath.join(host.remote_dir, "steps.py"), "--workdir", host.workdir,
            "--steps", str(options.steps), "--learning-rate", repr(options.learning_rate),
            "--num-examples", str(options.num_examples), "--model-name", options.model_name,
            "--report", report_path]
    if options.seed is not None:
        argv += ["--seed", str(options.seed)]
    if options.workload:
        argv += ["--workload", options.workload, "--epochs", str(options.epochs)]
    return argv


def tensorboard_command(host: Host, logdir: str, port: int) -> list[str]:
    """TensorBoard over every run's logs, bound to 127.0.0.1 on the host."""
    return [host.python, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
            "--port", str(port), "--reload_interval", "2"]


def jupyter_command(host: Host, port: int, root: str) -> list[str]:
    """JupyterLab bound to 127.0.0.1 on the host, its token read from JUPYTER_TOKEN_FILE (never argv). Run as
    `-m jupyterlab`, not `-m jupyter lab`, which execs jupyter-lab with other arguments: the running process
    keeps this command line, so the watchdog and `down` can prove it is the lab's (remote/watchdog.py runs)."""
    return [host.python, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
            f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root}"]


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


HTTP_NOT_YET = (urllib.error.URLError, OSError, ValueError)  # HTTP and connection errors mean "not yet"


def wait_jupyter(port: int, token: str, timeout: float, alive: Callable[[], None]) -> list[str]:
    """Poll Jupyter's /api/status with the token until it answers; returns the notebooks it lists."""
    def check():
        http_json(f"http://127.0.0.1:{port}/api/status?token={token}")
        contents = http_json(f"http://127.0.0.1:{port}/api/contents?token={token}")
        return sorted(item["name"] for item in contents.get("content", []) if item.get("type") == "notebook")

    return poll(check, timeout=timeout, what="Jupyter did not answer", retry_on=HTTP_NOT_YET, alive=alive)


def wait_tensorboard(port: int, run: str, timeout: float, alive: Callable[[], None]) -> dict:
    """Poll TensorBoard's HTTP API until it lists the run's `loss` scalar; returns the run's tags."""
    def check():
        tags = http_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
        return tags[run] if "loss" in tags.get(run, {}) else None

    return poll(check, timeout=timeout, what=f"TensorBoard on port {port} did not show run {run}",
                retry_on=HTTP_NOT_YET, alive=alive)


class LabRun:
    """One run of the lab on a host, as a context manager that owns what the run holds (see the
    module docstring). `execute()` runs it and returns the report; after it, `alive` says whether
    the services can still be reached from here (the tunnels)."""

    def __init__(self, host: Host, options: LabOptions, console: Console, out: Path,
                 on_prepared: Callable[[Host], None] = lambda host: None, others: list[Host] | tuple = (),
                 local_ports: dict[str, int] | None = None, on_forwarded: Callable[[dict], None] = lambda ports: None,
                 reopen: str | None = None, explain: Callable[[TflabError], TflabError | None] = lambda error: None):
        self.host = host  # the chief: it runs the steps, trains as worker 0 and serves
        self.others = list(others)  # the other nodes of a run across machines: each trains as one worker
        self.options = options
        self.console = console
        self.out = Path(out)
        self.on_prepared = on_prepared  # e.g. remember where the lab's services are on a lab's host
        self.local_ports = dict(local_ports or LOCAL_PORTS)  # wanted here: the ones the lab last used, else its own
        self.on_forwarded = on_forwarded  # e.g. remember the local ports the tunnels got (stable URLs)
        self.reopen = reopen  # the command that opens the tunnels again once the run's close (None: no tunnels)
        self.explain = explain  # a better error for a host's, from what its owner knows (e.g. its instance stopped)
        self.services: list[Service] = []
        self.report: Report | None = None

    def __enter__(self) -> "LabRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self.host.forwarding_alive

    @property
    def hosts(self) -> list[Host]:
        return [self.host, *self.others]

    def close(self) -> None:
        """Stop the services unless the host keeps them, then end every node's connection and tunnels."""
        try:
            if not self.host.keeps_services:
                stop_services(self.host, self.services)
        finally:
            for other in self.others:
                try:
                    other.close()
                except Exception as exc:  # closing the chief matters more
                    log.warning("could not close %s: %s", other.name, exc)
            self.host.close()

    def _prepare(self) -> None:
        """Prepare the chief, and the other nodes in parallel with it (each from its own thread, its
        lines marked with its node); the first node that fails ends the run, its error naming it."""
        if not self.others:
            self.host.prepare(self.console)
            return
        import threading

        from tflab.console import NodeConsole
        from tflab.errors import TflabError

        failures: dict[int, BaseException] = {}

        def prepare(index: int, host: Host) -> None:
            try:
                host.prepare(NodeConsole(self.console, f"node-{index}"))
            except BaseException as exc:  # reported by the main thread
                failures[index] = exc

        threads = [threading.Thread(target=prepare, args=(i, h), name=f"prepare-node-{i}", daemon=True)
                   for i, h in enumerate(self.others, start=1)]
        live, self.console.live = self.console.live, False  # plain lines: the nodes' threads print too
        try:
            for thread in threads:
                thread.start()
            try:
                self.host.prepare(self.console)
            except Exception as exc:  # noqa: BLE001 - reported below, with the node's name
                failures[0] = exc
            while not failures and any(thread.is_alive() for thread in threads):  # bounded; Ctrl-C gets through
                for thread in threads:
                    thread.join(0.1)
        finally:
            self.console.live = live
        if failures:
            for other in self.others:  # the nodes still preparing stop: their connections close under them
                try:
                    other.close()
                except Exception as exc:  # noqa: BLE001
                    log.info("closing %s: %s", other.name, exc)
            index = min(failures)
            exc = failures[index]
            if isinstance(exc, TflabError):
                exc.message = f"node-{index} ({self.hosts[index].name}): {exc.message}"
                exc.args = (exc.message,)
            raise exc

    def execute(self) -> Report:
        """Run every step; serve, predict, check TensorBoard and Jupyter from here; return the report.
        Raises LabStepError, UnreachableError, and the host's errors (each as explain() says it, if it does)."""
        with self._explained():
            return self._execute()

    @contextlib.contextmanager
    def _explained(self) -> Iterator[None]:
        try:
            yield
        except TflabError as exc:
            better = self.explain(exc)
            if better is None:
                raise
            raise better from exc

    def _execute(self) -> Report:
        host, console = self.host, self.console
        started = time.monotonic()
        self._prepare()
        self.on_prepared(host)
        prepared = time.monotonic()
        ports, env, server, services = self._serve()
        steps = self._steps(env)
        timings = {"steps": self._steps_seconds}
        result = self._predict(steps["export"]["version"], services["model-server"], prepared, timings)
        basics, training, tensorflow, artifacts = steps_sections(steps)
        tags, jupyter = self._check_from_here(posixpath.basename(artifacts.logdir), services)
        timings["total"] = time.monotonic() - prepared
        with console.waiting(f"fetching the plot into {self.out}"):
            plot = host.fetch(artifacts.plot, self.out)
        fetched = artifacts if str(plot) == artifacts.plot else dataclasses.replace(artifacts, plot=str(plot))
        marks = {"prepare": prepared, **host.phase_marks(), "lab": prepared + timings["total"]}
        timings |= {f"phase_{k}": v - started for k, v in marks.items()}
        timings["phase_total"] = time.monotonic() - started

        local = {name: host.local_port(name) for name in ports if ports[name]}
        if self.reopen is not None:
            self.on_forwarded(local)
        rest = f"127.0.0.1:{local['rest']}" if "rest" in local else None
        tensorboard = f"http://127.0.0.1:{local['tensorboard']}/"
        self.report = Report(
            host=HostInfo(name=host.name, python=host.python, ports=ports,
                          gpus_tensorflow=list(tensorflow.get("gpus", [])), **host.facts()),
            basics=basics, training=training,
            predictions=[Prediction(x, y, noise_free(x)) for x, y in zip(result.inputs, result.outputs)],
            server=ServerInfo(kind=server.kind, address=f"127.0.0.1:{local['serving']}",
                              listen=f"{server.listen}:{server.port}", model_name=server.model_name,
                              version=result.version, rest_address=rest, model_base_path=server.model_base_path),
            tensorboard=TensorBoardInfo(tensorboard, sorted(tags)),
            tensorflow=tensorflow, artifacts=fetched, timings={k: round(v, 3) for k, v in timings.items()},
            urls={"tensorboard": tensorboard, "jupyter": jupyter.url if jupyter else None,
                  "serving_grpc": f"127.0.0.1:{local['serving']}",
                  "serving_rest": f"http://{rest}/v1/models/{self.options.model_name}" if rest else None},
            jupyter=jupyter, remote_artifacts=artifacts if fetched is not artifacts else None,
            tunnel=self.reopen)
        self.report.save(self.out / "report.json")
        return self.report

    def resume(self) -> dict:
        """Serve the lab again as its last run left it, with nothing trained: the host reached as it was
        prepared (Host.attach), the services started where they are down (kept where they run) over the
        lab's models, logs and notebooks (a notebook there is left as it is), the tunnels, the last exported
        version AVAILABLE and answering Predict, TensorBoard and Jupyter answering from here.

        Returns {"workdir", "model", "version", "ports", "services": {name: "started" | "kept running"}}.
        Raises NotFoundError when no version was exported there."""
        with self._explained():
            return self._resume()

    def _resume(self) -> dict:
        from tflab.errors import NotFoundError

        host, console, name = self.host, self.console, self.options.model_name
        host.attach(console)
        self.on_prepared(host)
        versions = [int(v) for v in self._listing(posixpath.join(host.workdir, "models", name)) if v.isdigit()]
        if not versions:
            raise NotFoundError(f"no exported version of model {name} in {host.workdir} on {host.name}",
                                hint="`tflab run-lab` trains and exports it")
        ports, _, _, services = self._serve(keep_notebooks=True)
        self._predict(max(versions), services["model-server"], time.monotonic(), {})
        runs = [r for r in self._listing(posixpath.join(host.workdir, "logs")) if r.startswith("run-")]
        if runs:
            self._check_from_here(max(runs, key=lambda r: int(r[4:]) if r[4:].isdigit() else -1), services)
        self.on_forwarded({n: host.local_port(n) for n in ports if ports[n]})
        return {"workdir": host.workdir, "model": name, "version": max(versions), "ports": ports,
                "services": {s.name: "kept running" if s.kept else "started" for s in services.values()}}

    def _listing(self, folder: str) -> list[str]:
        """The names in a folder on the host ([] when there is none)."""
        names: list[str] = []
        self.host.run(["sh", "-c", 'ls -1 "$1" 2>/dev/null; true', "sh", folder], step="list", timeout=60,
                      on_line=lambda kind, line: names.append(line) if kind == "out" else None)
        return names

    def _serve(self, keep_notebooks: bool = False) -> tuple[dict, dict, ServerCommand, dict[str, Service]]:
        """The lab's services on the host and the way here: the ports they get there, the model server and
        TensorBoard (started first, so that their start-up overlaps what follows), the tunnels, then Jupyter
        (where the host has it). Returns (ports, the TensorFlow environment, the server's command, services)."""
        host, console = self.host, self.console
        wanted = dict(self.options.ports)
        if host.jupyter_token_file is None:
            wanted.pop("jupyter", None)
        ports = host.choose_ports(wanted, console)
        env = quiet_tensorflow_env()
        server, services = self._start_services(ports, env)
        host.forward(ports, self.local_ports, console)
        if "jupyter" in ports:  # after the tunnels: its TensorBoard notebook links TensorBoard as they bring it
            services["jupyter"] = self._start_jupyter(ports, env, keep_notebooks)
        return ports, env, server, services

    def _start_services(self, ports: dict[str, int], env: dict) -> tuple[ServerCommand, dict[str, Service]]:
        """The model server, TensorBoard and (where the host has it) Jupyter, started before the steps so
        that their start-up overlaps them; returns the server's command and the services by name."""
        host, options, console = self.host, self.options, self.console
        workdir = host.workdir
        logs_root = posixpath.join(workdir, "logs")
        server = server_command(host, model_base_path=posixpath.join(workdir, "models", options.model_name),
                                model_name=options.model_name, port=ports["serving"], rest_port=ports.get("rest", 0),
                                prefer_builtin=options.prefer_builtin_server, kind=host.serving)
        services = {"model-server": self._start("model-server", server.argv, {**env, **activity_env(workdir)},
                                                ports["serving"], server.describe())}
        if server.exposure():
            console.warn(server.exposure())
        services["tensorboard"] = self._start(
            "tensorboard", tensorboard_command(host, logs_root, ports["tensorboard"]), env, ports["tensorboard"],
            f"TensorBoard on 127.0.0.1:{ports['tensorboard']} over {logs_root}")
        return server, services

    def _start_jupyter(self, ports: dict[str, int], env: dict, keep_notebooks: bool = False) -> Service:
        """The lab's notebooks (remote/notebooks.py; keep_notebooks: the ones there are left as they are),
        then JupyterLab over them. Its kernels run the lab's kernel spec (found through JUPYTER_PATH), which
        keeps TensorFlow's C++ log lines out of the cells; Jupyter itself gets the quiet TensorFlow
        environment too."""
        host = self.host
        workdir = host.workdir
        notebooks = posixpath.join(workdir, "notebooks")
        jupyter_path = posixpath.join(workdir, "jupyter")
        host.run([host.python, posixpath.join(host.remote_dir, "notebooks.py"), notebooks, "--remote-dir",
                  host.remote_dir, "--workdir", workdir, "--port", str(ports["serving"]),
                  "--tensorboard-url", f"http://127.0.0.1:{host.local_port('tensorboard')}/",
                  "--kernel-dir", jupyter_path, "--python", host.python]
                 + (["--keep-existing"] if keep_notebooks else []), step="notebooks", timeout=60)
        return self._start("jupyter", jupyter_command(host, ports["jupyter"], notebooks),
                           {**env, "JUPYTER_TOKEN_FILE": host.jupyter_token_file, "JUPYTER_PATH": jupyter_path,
                            # the lab's layout (open tabs) is the lab's, not mixed with the user's other JupyterLabs
                            "JUPYTERLAB_WORKSPACES_DIR": posixpath.join(jupyter_path, "workspaces")},
                           ports["jupyter"], f"JupyterLab on 127.0.0.1:{ports['jupyter']} over {notebooks}")

    def _alive(self, service: Service) -> Callable[[], None]:
        """A check that raises when waiting for service is pointless: it died, or the way here is gone."""
        def check() -> None:
            self.host.check_forwarding()
            if not self.host.service_alive(service):
                raise LabStepError(service.name, "stopped unexpectedly", tail=self.host.read_log(service),
                                   hint=f"its log is {service.log_path}")
        return check

    def _predict(self, version: int, server: Service, since: float, timings: dict):
        """Wait until the exported version is AVAILABLE, then call Predict from this machine."""
        from tflab.client import ServingClient

        name = self.options.model_name
        address = f"127.0.0.1:{self.host.local_port('serving')}"
        with self.console.waiting(f"waiting for {name} version {version} to be AVAILABLE at {address}"):
            with ServingClient(address, timeout=10.0) as client:
                client.wait_available(name, version=version, timeout=self.options.ready_timeout,
                                      alive=self._alive(server))
                timings["serving_ready"] = time.monotonic() - since
                result = client.predict(PREDICT_XS, model=name, signature="prediction")
        timings["first_prediction"] = time.monotonic() - since
        return result

    def _check_from_here(self, run_name: str, services: dict[str, Service]) -> tuple[dict, JupyterInfo | None]:
        """TensorBoard lists the run, and Jupyter (where there is one) answers with its notebooks."""
        host, console, timeout = self.host, self.console, self.options.ready_timeout
        with console.waiting(f"waiting for TensorBoard to list run {run_name}"):
            tags = wait_tensorboard(host.local_port("tensorboard"), run_name, timeout,
                                    self._alive(services["tensorboard"]))
        if "jupyter" not in services:
            return tags, None
        token = host.read_text(host.jupyter_token_file).strip()
        port = host.local_port("jupyter")
        with console.waiting("waiting for JupyterLab"):
            listed = wait_jupyter(port, token, timeout, self._alive(services["jupyter"]))
        return tags, JupyterInfo(f"http://127.0.0.1:{port}/lab?token={token}", listed)

    def _start(self, name: str, argv: list[str], env: dict, port: int, what: str) -> Service:
        service = self.host.start_service(name, argv, log_path=posixpath.join(self.host.workdir, "services",
                                                                               f"{name}.log"), env=env, port=port)
        self.services.append(service)
        self.console.info(f"{'kept running' if service.kept else 'started'}: {what}")
        return service

    def _steps(self, env: dict) -> dict:
        """Run the steps' process; returns what it reported."""
        host, console = self.host, self.console
        report_path = posixpath.join(host.workdir, "steps-report.json")
        console.info("running the lab steps (basics, train, summaries, export) in one TensorFlow process")
        t0 = time.monotonic()

        def on_line(kind: str, line: str) -> None:
            if kind == "out":
                step, _, text = line.partition("] ")
                console.stream(step.lstrip("[") if text else "steps", text or line)

        if self.options.workers > 1:
            return self._distributed_steps(env, report_path, on_line, t0)
        finished = host.run(steps_command(host, self.options, report_path), step="lab steps", env=env,
                            on_line=on_line, timeout=self.options.step_timeout)
        self._steps_seconds = time.monotonic() - t0
        try:
            return json.loads(host.read_text(report_path))
        except (OSError, ValueError) as exc:  # it exited 0 but wrote no report: not the lab's steps.py running
            raise LabStepError("lab steps", f"exited with status 0 but wrote no report at {report_path} on "
                                            f"{host.name} ({exc})", tail=finished.tail,
                               hint=f"check that {host.python} is a Python with TensorFlow (--python)") from exc


    def _distributed_steps(self, env: dict, report_path: str, on_line, t0: float) -> dict:
        """The steps with the training across N TensorFlow processes, each with its TF_CONFIG: all on the
        host (loopback ports it chose), or one on each node of a run across machines (the address the
        others reach it at, a port it chose); worker 0, the chief, does the other steps. They run as
        their hosts' processes, watched together: one that ends without its report, or whose node cannot
        be reached, ends the run, naming it, and the others are stopped. Returns the chief's report with
        every worker in it."""
        options, console = self.options, self.console
        count = options.workers
        placement = self.hosts if self.others else [self.host] * count
        taken: set[int] = set()  # nodes may share a network (two users of one machine): no port twice
        cluster: list[str] = []
        for i, node in enumerate(placement):
            port = node.choose_ports({f"worker-{i}": WORKER_PORT + i}, console, avoid=frozenset(taken))[f"worker-{i}"]
            taken.add(port)
            address = node.peer_address
            cluster.append(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        loopback = [node.name for node in placement if _is_loopback(node.peer_address)]
        if loopback and len(loopback) < len(placement):
            raise LabStepError("workers", f"{loopback[0]} is reached at a loopback address, which the other machines "
                                          "cannot reach",
                               hint="name every machine in --hosts by an address the others reach it at, not "
                                    "localhost or 127.0.0.1")
        where = "nodes" if self.others else "TensorFlow processes"
        console.info(f"training across {count} {where} (MultiWorkerMirroredStrategy): " + ", ".join(cluster))
        workers: list[tuple[str, Host, Service, str]] = []  # (name, node, process, report path)
        results: dict[int, dict] = {}
        try:
            for i, node in enumerate(placement):
                folder = posixpath.join(node.workdir, "workers")
                path = report_path if i == 0 else posixpath.join(folder, f"worker-{i}.json")
                node.run(["rm", "-f", path], step="workers", timeout=30)
                argv = steps_command(node, options, path) + ["--workers", str(count), "--worker-index", str(i)]
                tf_config = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}})
                extra = {"TF_CONFIG": tf_config}
                if not self.others:  # N workers on one machine share its GPU: each takes memory as it needs it
                    extra["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
                name = f"worker-{i}" + (f" on {node.name}" if self.others else "")
                service = node.start_service(f"worker-{i}", argv, log_path=posixpath.join(folder, f"worker-{i}.log"),
                                             env={**env, **extra}, tied=True)
                workers.append((name, node, service, path))
            deadline = time.monotonic() + options.step_timeout
            while len(results) < count:
                for i, (name, node, service, path) in enumerate(workers):
                    if i not in results and not self._worker_running(name, node, service):
                        results[i] = self._worker_report(name, node, service, path)
                if len(results) < count and time.monotonic() > deadline:
                    raise LabStepError("lab steps", f"the workers did not finish within {options.step_timeout:.0f} s")
                time.sleep(0.2 if not self.others else 0.5)
        finally:
            for name, node, service, _ in workers:  # ended already, or stopped now: none outlives the step
                try:
                    node.stop_service(service)
                except Exception as exc:  # noqa: BLE001 - a node that cannot be reached: stop the others still
                    console.warn(f"could not stop {name} (pid {service.pid}): {exc}; it ends with its SSH session")
        chief_log = self.host.read_log(workers[0][2], 200)
        for line in chief_log.splitlines():
            if line.startswith("["):
                on_line("out", line)
        self._steps_seconds = time.monotonic() - t0
        steps = results[0]
        entries = [steps["training"]["workers"][0]] + [results[i]["worker"] for i in range(1, count)]
        for entry in entries[1:]:  # a worker's own timing of the workload (the chief's is the report's)
            if "workload" in entry:
                entry["workload_seconds_per_epoch"] = entry.pop("workload")["seconds_per_epoch"]
        if self.others:
            for entry, node, address in zip(entries, placement, cluster):
                entry.update(host=node.name, address=address)
        steps["training"]["workers"] = sorted(entries, key=lambda w: w["index"])
        return steps

    @staticmethod
    def _worker_report(name: str, node: Host, service: Service, path: str) -> dict:
        """What an ended worker reported; a LabStepError naming it when it wrote nothing, or when its node
        cannot be asked any more (a node that went away ends its worker: a tied service)."""
        try:
            return json.loads(node.read_text(path))
        except (OSError, ValueError):
            try:
                tail = node.read_log(service, 30)
            except Exception:  # noqa: BLE001 - the node is gone: the error says so below
                tail = None
            if tail is not None:
                raise LabStepError(name, "ended without finishing its training", tail=tail,
                                   hint=f"its log is {service.log_path}; the other workers were stopped") from None
            raise LabStepError(name, "cannot be reached any more",
                               hint=f"check that {node.name} is up; the other workers were stopped") from None
        except Exception as exc:  # noqa: BLE001 - paramiko's and tflab's errors for a node that went away
            raise LabStepError(name, f"cannot be reached: {exc}",
                               hint=f"check that {node.name} is up; the other workers were stopped") from exc

    @staticmethod
    def _worker_running(name: str, node: Host, service: Service) -> bool:
        """Whether a worker's process still runs; a LabStepError naming it when its node cannot be asked."""
        from tflab.errors import TflabError

        try:
            return node.service_alive(service)
        except (TflabError, OSError, EOFError) as exc:
            raise LabStepError(name, f"cannot be reached: {exc}",
                               hint=f"check that {node.name} is up; the other workers were stopped") from exc


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def stop_services(host: Host, services: list[Service]) -> None:
    """Stop the lab's services on the host, newest first."""
    for service in reversed(services):
        try:
            host.stop_service(service)
        except Exception as exc:  # stopping the rest matters more than this one
            log.warning("could not stop %s (pid %d): %s", service.name, service.pid, exc)
    services.clear()




def across(options: LabOptions, count: int) -> LabOptions:
    """The options of a run across count workers (one on each machine, or all on one): one seed for all,
    since every worker makes the same points from it."""
    import secrets

    from tflab.errors import InputError

    if options.workers not in (1, count):
        raise InputError(f"--workers {options.workers} with {count} machines: across machines, each runs one worker",
                         hint=f"leave --workers out (or give --workers {count})")
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    return dataclasses.replace(options, workers=count, seed=seed)
