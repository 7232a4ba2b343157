"""The `tflab` command line: parse, call one function of the core, render.

Heavy libraries (TensorFlow, grpc, boto3, paramiko) are imported inside the commands that
need them, never here, so `tflab --help` starts fast.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from tflab.errors import ExitCode, InputError, TflabError

app = typer.Typer(
    name="tflab",
    help="A real TensorFlow lab, run and served with one command: on this machine (--local) for now.\n\n"
         "Exit codes: 0 ok, 1 unexpected error, 2 bad command line, 3 bad input or local setup, "
         "4 cloud refused, 5 host or server unreachable, 6 a lab step failed, 7 not found, "
         "8 a server rejected the request, 130 interrupted.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _console(json_mode: bool):
    from tflab.console import Console

    return Console(json_mode=json_mode)


def _local_ports(console, wanted: dict[str, tuple[int, str]]) -> dict[str, int]:
    """Free local ports for the services: the wanted ones, or free ones instead (said out loud)."""
    from tflab import ports

    chosen: dict[str, int] = {}
    for name, (port, what) in wanted.items():
        if not port:
            chosen[name] = 0
            continue
        got = ports.pick(port, taken=set(chosen.values()))
        if got != port:
            console.note(f"port {port} ({what}) is in use; using {got} instead")
        chosen[name] = got
    return chosen


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command("run-lab")
def run_lab(
    local: bool = typer.Option(False, "--local", help="Run the whole lab on this machine: no cloud, no SSH."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the results [default: ./tflab-results/local]."),
    steps: int = typer.Option(100, "--steps", min=1, help="Gradient descent steps."),
    learning_rate: float = typer.Option(0.001, "--learning-rate", help="Learning rate (> 0)."),
    num_examples: int = typer.Option(60, "--num-examples", min=2, help="Number of noisy points."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Random seed; the same seed gives the same run."),
    port: int = typer.Option(9000, "--port", help="Model server gRPC port (a free one if taken)."),
    rest_port: int = typer.Option(8501, "--rest-port", help="Model server REST port, 0 for none (a free one if taken)."),
    tensorboard_port: int = typer.Option(6006, "--tensorboard-port", help="TensorBoard port (a free one if taken)."),
    builtin_server: bool = typer.Option(False, "--builtin-server",
                                        help="Use tflab's stand-in server even where tensorflow_model_server exists."),
    keep_running: bool = typer.Option(False, "--keep-running",
                                      help="Keep TensorBoard and the model server up until Ctrl-C."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
) -> None:
    """Run every step of the lab, serve the model and call it over gRPC; print the report."""
    if not learning_rate > 0:
        raise typer.BadParameter("must be > 0", param_hint="--learning-rate")
    if not local:
        raise InputError("run-lab needs a lab host; on this machine use --local",
                         hint="tflab run-lab --local (cloud labs and --host come with `tflab up` and the SSH layer)")
    from tflab.host import LocalHost
    from tflab.lab import LabOptions, run_lab as run, stop_services
    from tflab.report import render

    console = _console(json_out)
    workdir = (out or Path.cwd() / "tflab-results" / "local").resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot use {workdir} for the results: {exc.strerror}", hint="choose another --out") from exc
    chosen = _local_ports(console, {"serving": (port, "model server gRPC"), "rest": (rest_port, "model server REST"),
                                    "tensorboard": (tensorboard_port, "TensorBoard")})
    options = LabOptions(workdir=str(workdir), steps=steps, learning_rate=learning_rate, num_examples=num_examples,
                         seed=seed, serving_port=chosen["serving"], rest_port=chosen["rest"],
                         tensorboard_port=chosen["tensorboard"], prefer_builtin_server=builtin_server)
    host = LocalHost()
    lab = run(host, options, console)
    try:
        console.result(lab.report, render(lab.report))
        if keep_running:
            console.info(f"TensorBoard: {lab.report['tensorboard']['url']}   model server: "
                         f"{lab.report['server']['address']}   (Ctrl-C to stop)")
            _wait_for_interrupt()
    finally:
        stop_services(host, lab.services)


@app.command()
def serve(
    model_base_path: Path = typer.Option(..., "--model-base-path",
                                         help="Folder holding the model's numeric version folders (1, 2, ...)."),
    model_name: str = typer.Option("nn", "--model-name", help="Name clients ask for."),
    port: int = typer.Option(9000, "--port", help="gRPC port on 127.0.0.1."),
    rest_port: int = typer.Option(8501, "--rest-port", help="REST port on 127.0.0.1, 0 for none."),
    builtin: bool = typer.Option(False, "--builtin", help="Use tflab's stand-in even where tensorflow_model_server exists."),
) -> None:
    """Serve a SavedModel over gRPC until Ctrl-C: TensorFlow Serving when installed, else tflab's stand-in."""
    import subprocess

    from tflab import ports
    from tflab.errors import PortInUseError
    from tflab.host import LocalHost
    from tflab.serving import quiet_tensorflow_env, server_command

    console = _console(False)
    base = model_base_path.resolve()
    if not base.is_dir():
        raise InputError(f"{base} is not a folder", hint="give the folder that holds the version folders, e.g. .../models/nn")
    for p, option in ((port, "--port"), (rest_port, "--rest-port")):
        if p and not ports.is_free(p):
            raise PortInUseError(p, "the model server", option)
    command = server_command(LocalHost(), model_base_path=str(base), model_name=model_name, port=port,
                             rest_port=rest_port, prefer_builtin=builtin)
    versions = sorted(int(n.name) for n in base.iterdir() if n.name.isdigit())
    console.info(command.describe())
    if not versions:
        console.note(f"no version folder in {base} yet; the server will load the first one that appears")
    import os

    proc = subprocess.Popen(command.argv, env={**os.environ, **quiet_tensorflow_env()})
    try:
        status = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return
    if status not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise TflabError(f"the model server exited with status {status}", hint="its output is above")


@app.command(context_settings={"ignore_unknown_options": True})
def predict(
    xs: List[float] = typer.Argument(..., help="Inputs x to predict y for (negative numbers work as they are)."),
    address: str = typer.Option("127.0.0.1:9000", "--address", help="Model server gRPC address."),
    model: str = typer.Option("nn", "--model", help="Model name."),
    signature: str = typer.Option("prediction", "--signature", help="Signature name."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="A specific model version [default: latest]."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Deadline of the call, in seconds."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Call the served model's Predict over gRPC and print each x, its prediction and the noise-free value."""
    from tflab.client import ServingClient
    from tflab.lab import noise_free

    console = _console(json_out)
    with ServingClient(address, timeout=timeout) as client:
        result = client.predict(xs, model=model, signature=signature, version=version)
    rows = [{"x": x, "predicted": y, "noise_free": noise_free(x)} for x, y in zip(result.inputs, result.outputs)]
    document = {"address": address, "model": model, "version": result.version, "signature": result.signature,
                "predictions": rows, "seconds": round(result.seconds, 6)}
    text = [f"model {model} version {result.version} ({result.signature}) at {address}",
            f"{'x':>8} {'predicted':>12} {'noise-free':>11}"]
    text += [f"{r['x']:>8g} {r['predicted']:>12.6f} {r['noise_free']:>11g}" for r in rows]
    console.result(document, "\n".join(text))


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app; turn expected failures into one line and an exit code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except TflabError as err:
        tail = getattr(err, "tail", "")
        if tail:
            sys.stderr.write("".join(f"  | {line}\n" for line in tail.splitlines()[-15:]))
        sys.stderr.write(f"tflab: error: {err.message}\n")
        if err.hint:
            sys.stderr.write(f"  hint: {err.hint}\n")
        sys.exit(int(err.exit_code))
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("tflab: interrupted\n")
        sys.exit(int(ExitCode.INTERRUPTED))
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:
        # click's (or typer's vendored click's) usage errors: they know how to show themselves.
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            err.show()
            sys.exit(err.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
