"""`tflab run-lab --local` end to end, and `tflab serve` + `tflab predict`, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import assert_valid_report, tflab, wait_until
from tflab import ports

pytestmark = pytest.mark.slow

XS = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention text (to prove nothing was left running)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def local_ports():
    return {"--port": ports.free_port(), "--rest-port": ports.free_port(), "--tensorboard-port": ports.free_port()}


def run_local(out: Path, local_ports: dict, *extra: str) -> subprocess.CompletedProcess:
    args = ["run-lab", "--local", "--json", "--out", str(out), "--seed", "0"]
    for flag, port in local_ports.items():
        args += [flag, str(port)]
    return tflab(*args, *extra, timeout=400)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, local_ports):
    out = tmp_path_factory.mktemp("lab")
    proc = run_local(out, local_ports)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads(proc.stdout), proc.stderr


def test_run_lab_local_json_reports_every_step(first_run, local_ports):
    out, report, stderr = first_run
    assert report["basics"]["add"] == [4.0, 6.0]
    assert report["basics"]["matmul"] == [[5.0], [11.0]]
    assert report["basics"]["variable"] == [[16.0], [16.0]]
    assert report["basics"]["operations"] == ["Const", "Const_1", "Add"]
    t = report["training"]
    assert (t["steps"], t["learning_rate"], t["seed"]) == (100, 0.001, 0)
    assert len(t["losses"]) == 100 and t["final_loss"] == t["losses"][-1]
    for key in ("slope", "intercept", "ols_slope", "ols_intercept"):
        assert isinstance(t[key], float)
    assert report["server"] == {"kind": "builtin", "address": f"127.0.0.1:{local_ports['--port']}",
                                "listen": f"127.0.0.1:{local_ports['--port']}",
                                "model_name": "nn", "version": 1,
                                "rest_address": f"127.0.0.1:{local_ports['--rest-port']}",
                                "model_base_path": str(out / "models" / "nn")}
    # The served model's answers are the trained line's, for x = -1..5, beside the noise-free line.
    assert [p["x"] for p in report["predictions"]] == XS
    for p in report["predictions"]:
        assert p["predicted"] == pytest.approx(p["x"] * t["slope"] + t["intercept"], rel=1e-5)
        assert p["noise_free"] == 0.5 * p["x"] + 2.5
    a = report["artifacts"]
    assert Path(a["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert a["saved_model"] == str(out / "models" / "nn" / "1")
    assert (Path(a["saved_model"]) / "saved_model.pb").is_file()
    assert any(Path(a["logdir"]).glob("events.out.tfevents.*"))
    assert report["tensorboard"]["url"] == f"http://127.0.0.1:{local_ports['--tensorboard-port']}/"
    assert {"loss", "weights/summaries/mean", "weights/summaries/max"} <= set(report["tensorboard"]["scalars"])
    # Progress went to stderr, the JSON alone to stdout; the run said which server serves.
    assert "built-in stand-in server" in stderr and "[basics]" not in stderr and "basics | add: [4.0, 6.0]" in stderr


def test_the_json_report_follows_its_published_schema_and_is_saved(first_run):
    out, report, _ = first_run
    assert_valid_report(report)
    assert report["report_version"] == 1 and report["host"]["address"] is None
    saved = json.loads((out / "report.json").read_text())  # the same, less the Jupyter URL (a secret)
    assert saved == {**report, "urls": {k: v for k, v in report["urls"].items() if k != "jupyter"}}
    with pytest.raises(Exception, match="is a required property"):  # the schema does hold something
        assert_valid_report({k: v for k, v in report.items() if k != "server"})


def test_run_lab_stops_its_services_and_frees_its_ports(first_run, local_ports):
    out, _, _ = first_run
    assert processes_mentioning(str(out)) == []
    for port in local_ports.values():
        assert ports.is_free(port)


def test_a_second_run_serves_version_2_and_the_same_seed_trains_the_same(first_run, local_ports):
    out, first, _ = first_run
    proc = run_local(out, local_ports)
    assert proc.returncode == 0, proc.stderr[-4000:]
    second = json.loads(proc.stdout)
    assert second["server"]["version"] == 2
    assert second["artifacts"]["saved_model"] == str(out / "models" / "nn" / "2")
    assert second["training"]["losses"] == pytest.approx(first["training"]["losses"], rel=1e-6)
    assert [p["predicted"] for p in second["predictions"]] == pytest.approx(
        [p["predicted"] for p in first["predictions"]], rel=1e-6)


def test_a_taken_port_moves_to_a_free_one_and_says_so(tmp_path, local_ports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = run_local(tmp_path, {**local_ports, "--port": busy}, "--steps", "10")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    moved = int(report["server"]["address"].rsplit(":", 1)[1])
    assert moved != busy
    assert f"note: port {busy} (model server gRPC) is in use; using {moved} instead" in proc.stderr
    assert len(report["training"]["losses"]) == 10


def test_a_failing_step_stops_the_run_with_its_output_and_leaves_nothing_running(tmp_path, local_ports):
    (tmp_path / "steps-report.json").mkdir()  # the steps cannot write their report
    proc = run_local(tmp_path, local_ports)
    assert proc.returncode == 6, proc.stderr[-3000:]
    assert "tflab: error: lab steps: exited with status 1" in proc.stderr
    assert "IsADirectoryError" in proc.stderr  # the step's own output tail is shown
    assert proc.stdout == ""
    assert processes_mentioning(str(tmp_path)) == []


def test_serve_and_predict_from_the_command_line(lab_steps_run, tmp_path):
    workdir, report, _ = lab_steps_run
    port = ports.free_port()
    server = subprocess.Popen([sys.executable, "-m", "tflab", "serve", "--model-base-path",
                               str(workdir / "models" / "nn"), "--port", str(port), "--rest-port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def answered():
            proc = tflab("predict", "-1", "0", "2.5", "--address", f"127.0.0.1:{port}", "--json", "--timeout", "2")
            return proc if proc.returncode == 0 else None

        proc = wait_until(answered, timeout=120, interval=0.5, what="tflab serve to answer")
        result = json.loads(proc.stdout)
        t = report["training"]
        assert result["version"] == 1 and result["signature"] == "prediction"
        assert [r["x"] for r in result["predictions"]] == [-1.0, 0.0, 2.5]
        for r in result["predictions"]:
            assert r["predicted"] == pytest.approx(r["x"] * t["slope"] + t["intercept"], rel=1e-5)
        text = tflab("predict", "1", "--address", f"127.0.0.1:{port}")
        assert text.returncode == 0 and "model nn version 1 (prediction)" in text.stdout
        missing = tflab("predict", "1", "--address", f"127.0.0.1:{port}", "--model", "other")
        assert missing.returncode == 7 and "Servable not found for request: Latest(other)" in missing.stderr
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert "built-in stand-in server" in err
    assert ports.is_free(port)


def test_keep_running_serves_until_ctrl_c(tmp_path):
    local_ports = {"--port": ports.free_port(), "--rest-port": ports.free_port(),
                   "--tensorboard-port": ports.free_port()}
    args = [sys.executable, "-m", "tflab", "run-lab", "--local", "--keep-running", "--out", str(tmp_path),
            "--steps", "20"]
    for flag, port in local_ports.items():
        args += [flag, str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: proc.poll() is not None or any("(Ctrl-C to stop)" in line for line in err_lines),
                   timeout=240, interval=0.2, what="run-lab to report and keep running")
        assert proc.poll() is None, "".join(err_lines)[-3000:]
        # The services are still up after the report: TensorBoard lists the run, the model answers.
        with urllib.request.urlopen(f"http://127.0.0.1:{local_ports['--tensorboard-port']}/data/runs", timeout=10) as r:
            assert "run-1" in json.load(r)
        assert tflab("predict", "1", "--address", f"127.0.0.1:{local_ports['--port']}").returncode == 0
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        reader.join(10)
    assert proc.returncode == 0, "".join(err_lines)[-3000:]
    assert "Predictions over gRPC" in out
    # The summary names the REST API too, where this machine reaches it.
    assert f"REST         http://127.0.0.1:{local_ports['--rest-port']}/v1/models/nn" in out
    assert processes_mentioning(str(tmp_path)) == []
    for port in local_ports.values():
        assert ports.is_free(port)


def test_two_workers_train_to_the_same_weights_as_one(first_run, tmp_path):
    """--workers 2: two TensorFlow processes under MultiWorkerMirroredStrategy, each on half the points,
    gradients summed across them, end where one process ends for the same seed."""
    from tests.conftest import assert_valid_report

    _, single, _ = first_run  # seed 0, 100 steps, one process
    proc = tflab("run-lab", "--local", "--json", "--out", str(tmp_path), "--seed", "0", "--workers", "2",
                 "--workload", "mlp", "--epochs", "2",
                 "--port", str(ports.free_port()), "--rest-port", "0", "--tensorboard-port", str(ports.free_port()),
                 timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = assert_valid_report(json.loads(proc.stdout))
    t, one = report["training"], single["training"]
    assert [w["index"] for w in t["workers"]] == [0, 1]
    for w in t["workers"]:
        assert (w["slope"], w["intercept"]) == pytest.approx((one["slope"], one["intercept"]), rel=1e-5)
    assert t["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert "training across 2 TensorFlow processes" in proc.stderr
    # The workload where distribution matters ran on both, timed per epoch; both end on the same model.
    workload = t["workload"]
    assert (workload["name"], workload["workers"], workload["epochs"]) == ("mlp", 2, 2)
    assert workload["allreduce_bytes_per_step"] == 4 * workload["parameters"] > 1_000_000
    assert len(workload["seconds_per_epoch"]) == 2 and len(t["workers"][1]["workload_seconds_per_epoch"]) == 2
    assert "workload | mlp on worker 0 of 2: 2 epochs of 128 steps" in proc.stderr
    predicted = [p["predicted"] for p in report["predictions"]]  # the chief's export is what serves
    assert predicted == pytest.approx([p["predicted"] for p in single["predictions"]], rel=1e-5)
    assert processes_mentioning(str(tmp_path)) == []


def test_a_worker_that_dies_ends_the_run_naming_it_and_nothing_is_left(tmp_path):
    args = [sys.executable, "-m", "tflab", "run-lab", "--local", "--out", str(tmp_path), "--seed", "1", "--workers",
            "2", "--steps", "10000000", "--port", str(ports.free_port()), "--rest-port", "0",
            "--tensorboard-port", str(ports.free_port())]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def worker_1():
            found = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith("--worker-index 1")
                     and str(tmp_path) in _cmdline(p)]
            chief = tmp_path / "workers" / "worker-0.log"  # it speaks once both workers are connected
            return found[0] if found and chief.exists() and "[basics]" in chief.read_text() else None

        pid = wait_until(worker_1, 120, interval=0.2, what="the workers to connect")
        # Workers on one machine share its GPU: TensorFlow's TF_FORCE_GPU_ALLOW_GROWTH, not all of its memory each.
        assert b"TF_FORCE_GPU_ALLOW_GROWTH=true" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        os.kill(int(pid), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 6, err[-3000:]
    assert "tflab: error: worker-1: ended without finishing its training" in err
    wait_until(lambda: processes_mentioning(str(tmp_path)) == [], 15, what="the other worker to be stopped")


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
