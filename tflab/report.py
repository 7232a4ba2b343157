"""The run-lab report: typed records, one JSON rendering (secrets left out where asked), and text.

`tflab run-lab --json` prints `Report.to_json()`; its JSON Schema is tflab/report.schema.json
(REPORT_VERSION goes up when a key changes meaning or goes away; new keys may appear beside the
old ones). The report saved next to the results is `to_json(secrets=False)`: no Jupyter token.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

REPORT_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def _known(cls, data: dict) -> dict:
    """The keys of data that are fields of the dataclass cls (the steps may report more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Basics:
    """The lab's graph-and-session examples (remote/steps.py basics)."""

    add: list
    matmul: list
    variable: list
    operations: list[str]
    operation_types: list[str]
    default_graph: dict


@dataclass(frozen=True)
class Training:
    """The single neuron's training (remote/steps.py train)."""

    slope: float
    intercept: float
    final_loss: float
    losses: list[float]
    ols_slope: float
    ols_intercept: float
    noise_free_slope: float
    noise_free_intercept: float
    steps: int
    learning_rate: float
    num_examples: int
    seed: int
    seconds: float
    workers: list[dict] | None = None  # with --workers N: each worker's index, slope, intercept, seconds_per_step
    workload: dict | None = None  # with --workload: its figures per epoch (remote/steps.py workload())


@dataclass(frozen=True)
class Artifacts:
    """Where the run's files are (on the host; `plot` here once fetched)."""

    plot: str
    logdir: str
    logs_root: str
    models: str
    saved_model: str


@dataclass(frozen=True)
class Prediction:
    x: float
    predicted: float
    noise_free: float


@dataclass(frozen=True)
class HostInfo:
    """The host the lab ran on, and what it had."""

    name: str
    python: str
    address: str | None = None  # host:port of its SSH server; None for this machine
    workdir: str | None = None
    serving: str | None = None  # what its bootstrap found: docker-gpu | docker-gpu-sudo | binary | builtin
    bootstrap_seconds: float | None = None
    tunnel_client: str | None = None  # openssh | paramiko; None when no tunnel is needed
    ports: dict[str, int] = field(default_factory=dict)  # the service ports the host chose
    gpus_nvidia_smi: list[str] = field(default_factory=list)
    gpus_tensorflow: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServerInfo:
    """The model server and the version that answered."""

    kind: str  # tensorflow_model_server | tensorflow/serving:latest-gpu | builtin
    address: str  # where this machine reaches its gRPC port
    listen: str  # where it listens on its host (0.0.0.0 for tensorflow_model_server)
    model_name: str
    version: int
    rest_address: str | None
    model_base_path: str


@dataclass(frozen=True)
class TensorBoardInfo:
    url: str
    scalars: list[str]


@dataclass(frozen=True)
class JupyterInfo:
    url: str  # carries the token: a secret
    notebooks: list[str]


@dataclass(frozen=True)
class Report:
    """One run of the lab."""

    host: HostInfo
    basics: Basics
    training: Training
    predictions: list[Prediction]
    server: ServerInfo
    tensorboard: TensorBoardInfo
    tensorflow: dict  # version, gpus, import_seconds as the steps saw them
    artifacts: Artifacts
    timings: dict[str, float]
    urls: dict[str, str | None]  # the services as this machine reaches them
    jupyter: JupyterInfo | None = None
    remote_artifacts: Artifacts | None = None  # the files on the host, when it is not this machine
    # The urls go through run-lab's tunnels, which close when it ends: this command opens them again, at the
    # same local ports where they are free (None: no tunnels, the services are on this machine).
    tunnel: str | None = None
    report_version: int = REPORT_VERSION

    def to_json(self, secrets: bool = True) -> dict:
        """The report as JSON data; without secrets (the Jupyter token), for files."""
        data = dataclasses.asdict(self)
        for optional in ("jupyter", "remote_artifacts", "tunnel"):
            if data[optional] is None:
                del data[optional]
        if data["training"]["workers"] is None:  # one process: no workers list
            del data["training"]["workers"]
        if data["training"]["workload"] is None:
            del data["training"]["workload"]
        if not secrets:
            if "jupyter" in data:
                data["jupyter"].pop("url")
            data["urls"].pop("jupyter", None)
        return data

    def save(self, path: Path) -> Path:
        """Write the report, without secrets, as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(secrets=False), indent=2) + "\n")
        return path


def render(report: Report) -> str:
    """A readable summary of a run-lab report."""
    b, t, s, host = report.basics, report.training, report.server, report.host
    lines = [f"tflab lab report ({host.name})", ""]
    if host.address:
        gpus = host.gpus_nvidia_smi
        lines += [f"Host: {host.address}, {host.workdir}, Python {host.python}",
                  f"  GPUs (nvidia-smi): {'; '.join(gpus) if gpus else 'none'}; "
                  f"TensorFlow sees: {', '.join(host.gpus_tensorflow) or 'none'}",
                  f"  serving: {host.serving}; bootstrap {host.bootstrap_seconds or 0:.1f} s", ""]
    lines += [
        "Basics: graphs and sessions (tf.compat.v1)",
        f"  operations   {', '.join(b.operations)}",
        f"  add          {b.add}",
        f"  matmul       {b.matmul}",
        f"  variable     {b.variable}   (the vector after 4 multiplications by a matrix of ones)",
        "",
        f"Training: single neuron, {t.steps} steps, learning rate {t.learning_rate:g}, "
        f"{t.num_examples} points, seed {t.seed}",
        f"  {'':12} {'trained':>10} {'least squares':>14} {'noise-free':>11}",
        f"  {'slope':12} {t.slope:>10.4f} {t.ols_slope:>14.4f} {t.noise_free_slope:>11g}",
        f"  {'intercept':12} {t.intercept:>10.4f} {t.ols_intercept:>14.4f} {t.noise_free_intercept:>11g}",
        f"  {'final loss':12} {t.final_loss:>10.4f}",
        *([f"  across {len(t.workers)} workers: "
           + ", ".join(f"worker {w['index']}" + (f" on {w['host']}" if w.get("host") else "")
                       + f" {w['seconds_per_step'] * 1e3:.2f} ms/step" for w in t.workers)] if t.workers else []),
        *([f"Workload {t.workload['name']}: {t.workload['parameters']:,} parameters on {t.workload['workers']} "
           f"worker(s), {t.workload['steps_per_epoch']} steps per epoch; seconds per epoch "
           + ", ".join(f"{v:.2f}" for v in t.workload["seconds_per_epoch"])] if t.workload else []),
        "",
        f"Predictions over gRPC: model {s.model_name} version {s.version}, {s.kind} at {s.address}",
        f"  {'x':>6} {'predicted':>10} {'noise-free':>11}"]
    lines += [f"  {p.x:>6g} {p.predicted:>10.4f} {p.noise_free:>11g}" for p in report.predictions]
    a = report.artifacts
    lines += [""]
    if report.urls.get("serving_rest"):
        lines.append(f"REST         {report.urls['serving_rest']}")
    lines.append(f"TensorBoard  {report.tensorboard.url}")
    if report.jupyter:
        lines.append(f"Jupyter      {report.jupyter.url}   ({len(report.jupyter.notebooks)} notebooks)")
    if report.tunnel:
        lines.append(f"             (through run-lab's tunnels, which close when it ends; `{report.tunnel}` opens "
                     "them again at these addresses)")
    lines += [f"Plot         {a.plot}", f"Logs         {a.logdir}", f"SavedModel   {a.saved_model}"]
    if report.timings:
        lines += ["", "Timings (s): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in report.timings.items())]
    return "\n".join(lines)


def steps_sections(steps: dict) -> tuple[Basics, Training, dict, Artifacts]:
    """The typed sections of what remote/steps.py reported."""
    return (Basics(**_known(Basics, steps["basics"])), Training(**_known(Training, steps["training"])),
            dict(steps.get("tensorflow", {})), Artifacts(**_known(Artifacts, steps["artifacts"])))
