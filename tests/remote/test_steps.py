"""The lab's TensorFlow steps, run for real at their real sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REMOTE

pytestmark = pytest.mark.slow


def test_basics_give_the_true_results_of_the_four_graph_examples(tf, steps_module):
    basics = steps_module.basics(tf)
    assert basics["operations"] == ["Const", "Const_1", "Add"]
    assert basics["operation_types"] == ["Const", "Const", "AddV2"]
    assert basics["add"] == [4.0, 6.0]
    assert basics["default_graph"] == {"operations": ["Const", "Const_1", "Add"], "add": [4.0, 6.0]}
    assert basics["matmul"] == [[5.0], [11.0]]
    # The original lab prints [[5], [11]] for this one; four multiplications by ones give 16.
    assert basics["variable"] == [[16.0], [16.0]]


def test_data_follows_the_lab_and_the_seed(steps_module):
    x, y, x_with_bias, initial = steps_module.make_data(60, seed=3)
    assert x.shape == y.shape == (60,)
    assert x_with_bias.dtype == np.float32 and np.all(x_with_bias[:, 0] == 1.0)
    np.testing.assert_allclose(x_with_bias[:, 1], x, rtol=1e-6)
    assert initial.shape == (2, 1) and np.all(np.abs(initial) < 0.5)
    # The noise is N(0, 1) around the lab's two linspaces.
    assert abs(np.mean(x - np.linspace(-1, 5, 60))) < 0.5
    assert abs(np.mean(y - np.linspace(2, 5, 60))) < 0.5
    again = steps_module.make_data(60, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, x_with_bias, initial), again))
    other = steps_module.make_data(60, seed=4)
    assert not np.array_equal(x, other[0])


def test_long_training_reaches_numpys_least_squares(tf, steps_module, tmp_path):
    trained = steps_module.train(tf, steps=2000, learning_rate=0.001, num_examples=60, seed=11,
                                 logdir=str(tmp_path / "logs"), plot_path=str(tmp_path / "plot.png"))
    r = trained["report"]
    x, y, _, _ = steps_module.make_data(60, 11)
    design = np.stack([np.ones_like(x), x], axis=1)
    (ols_intercept, ols_slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    assert r["ols_slope"] == pytest.approx(ols_slope, abs=1e-9)
    assert abs(r["slope"] - ols_slope) < 1e-3
    assert abs(r["intercept"] - ols_intercept) < 1e-3
    assert len(r["losses"]) == 2000
    # Loss at the least-squares solution is the floor, and training gets there.
    floor = 0.5 * np.sum((design @ [ols_intercept, ols_slope] - y) ** 2)
    assert r["final_loss"] == pytest.approx(floor, rel=1e-3)


def test_the_labs_default_run_is_reproducible_by_seed_and_shows_its_plots(lab_steps_run, tf, steps_module, tmp_path):
    _, report, _ = lab_steps_run
    t = report["training"]
    assert (t["steps"], t["learning_rate"], t["num_examples"], t["seed"]) == (100, 0.001, 60, 7)
    assert len(t["losses"]) == 100 and t["final_loss"] == t["losses"][-1]
    assert t["losses"][-1] < t["losses"][0]  # gradient descent goes downhill
    # 100 steps at 0.001 do not reach least squares (the lab's own setting), but get close.
    assert abs(t["slope"] - t["ols_slope"]) < 0.3 and abs(t["intercept"] - t["ols_intercept"]) < 0.5
    again = steps_module.train(tf, steps=100, learning_rate=0.001, num_examples=60, seed=7,
                               logdir=str(tmp_path / "logs"), plot_path=str(tmp_path / "plot.png"))["report"]
    assert again["losses"] == pytest.approx(t["losses"], rel=1e-6)
    assert (again["slope"], again["intercept"]) == pytest.approx((t["slope"], t["intercept"]), rel=1e-6)
    png = (tmp_path / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_every_summary_tag_of_the_lab_has_one_point_per_step(lab_steps_run):
    from tensorboard.backend.event_processing import event_accumulator

    _, report, _ = lab_steps_run
    acc = event_accumulator.EventAccumulator(report["artifacts"]["logdir"], size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    scalars = {"loss", "weights/summaries/mean", "weights/summaries/stddev", "weights/summaries/max",
               "weights/summaries/min"}
    histograms = {"weights/summaries/histogram", "y_error"}
    assert scalars | histograms <= tags
    for tag in scalars | histograms:
        assert [e.step for e in acc.Tensors(tag)] == list(range(100)), tag
    loss = [float(np.asarray(__import__("tensorflow").make_ndarray(e.tensor_proto))) for e in acc.Tensors("loss")]
    assert loss == pytest.approx(report["training"]["losses"], rel=1e-5)
    # max is the intercept weight and min the slope weight at the end, as the lab explains.
    last_max = float(__import__("tensorflow").make_ndarray(acc.Tensors("weights/summaries/max")[-1].tensor_proto))
    assert last_max == pytest.approx(max(report["training"]["slope"], report["training"]["intercept"]), rel=1e-5)


def test_the_graphs_tab_shows_the_training_step_under_the_labs_namespaces(lab_steps_run):
    """What TensorBoard's Graphs tab draws (the lab's steps 8-9 of its TensorBoard part): the graph plugin
    merges a traced tag's function graphs, naming each `graph_<n>` when there are several
    (tensorboard/plugins/graph/graphs_plugin.py graph_impl, graph_util.merge_graph_defs); its top level
    is then the namespaces before the first `/`. One graph, with the lab's namespaces there."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto import config_pb2
    from tensorboard.plugins.graph import graph_util

    _, report, _ = lab_steps_run
    acc = event_accumulator.EventAccumulator(report["artifacts"]["logdir"], size_guidance={"tensors": 0})
    acc.Reload()
    assert acc.SummaryMetadata("single_neuron_training").plugin_data.plugin_name == "graph_run_metadata_graph"
    run_metadata = config_pb2.RunMetadata.FromString(acc.Tensors("single_neuron_training")[0].tensor_proto.string_val[0])
    assert len(run_metadata.function_graphs) == 1  # no graph_1, graph_2, ... boxes
    graph = graph_util.merge_graph_defs([g.pre_optimization_graph for g in run_metadata.function_graphs])
    names = [node.name for node in graph.node]
    namespaces = {name.split("/")[0] for name in names if "/" in name}
    assert {"weights", "gradients", "GradientDescent", "y_predicted"} <= namespaces, namespaces
    assert {"y_error", "loss"} <= set(names)  # the error and the L2 loss, as the lab names them
    ops = {node.name: node.op for node in graph.node}
    assert ops["y_error"] == "Sub" and ops["loss"] == "L2Loss"
    assert any(n.startswith("weights/summaries/") and ops[n] == "WriteSummary" for n in names)  # expandable
    assert any(n.startswith("GradientDescent/") and ops[n] == "AssignSubVariableOp" for n in names)
    assert any(n.startswith("gradients/") and ops[n] == "L2Loss" for n in names)


def test_export_reads_back_with_the_prediction_signature(lab_steps_run, tf):
    workdir, report, _ = lab_steps_run
    path = report["artifacts"]["saved_model"]
    assert path == str(workdir / "models" / "nn" / "1")
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) >= {"prediction", "serving_default"}
    fn = loaded.signatures["prediction"]
    _, inputs = fn.structured_input_signature
    assert list(inputs) == ["input"]
    assert inputs["input"].dtype == tf.float32 and inputs["input"].shape.as_list() == [None, 1]
    x = np.arange(-1, 6, dtype=np.float32).reshape(-1, 1)
    out = fn(input=tf.constant(x))
    assert list(out) == ["output"] and out["output"].shape == (7, 1)
    t = report["training"]
    np.testing.assert_allclose(out["output"].numpy().ravel(), x.ravel() * t["slope"] + t["intercept"], rtol=1e-5)
    np.testing.assert_allclose(loaded.signatures["serving_default"](input=tf.constant(x))["output"], out["output"])


def test_a_second_export_writes_the_next_version(tf, steps_module, tmp_path):
    trained = steps_module.train(tf, steps=5, learning_rate=0.001, num_examples=60, seed=1,
                                 logdir=str(tmp_path / "logs"), plot_path=str(tmp_path / "p.png"))
    first = steps_module.export(tf, trained["model"], str(tmp_path / "models"), "nn", None)
    second = steps_module.export(tf, trained["model"], str(tmp_path / "models"), "nn", None)
    assert (first["version"], second["version"]) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "models" / "nn").iterdir()) == ["1", "2"]  # no partial folders left
    with pytest.raises(SystemExit, match="exists already"):
        steps_module.export(tf, trained["model"], str(tmp_path / "models"), "nn", 2)


def test_steps_script_refuses_bad_options_with_a_message(tmp_path):
    proc = subprocess.run([sys.executable, str(REMOTE / "steps.py"), "--workdir", str(tmp_path), "--steps", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--steps must be >= 1" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_labs_runs_are_numbered_in_order_whatever_the_notebooks_export(tmp_path):
    """A notebook exported versions 2 and 3 and wrote its own runs: the lab's next run is run-2, not run-4."""
    workdir = tmp_path / "work"
    for folder in ("logs/run-1", "logs/your-run-1", "logs/your-run-2", "models/nn/1", "models/nn/2", "models/nn/3"):
        (workdir / folder).mkdir(parents=True)
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REMOTE / "steps.py"), "--workdir", str(workdir), "--seed", "3",
                           "--steps", "5", "--report", str(report_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads(report_path.read_text())
    assert report["artifacts"]["logdir"] == str(workdir / "logs" / "run-2")
    assert report["artifacts"]["plot"] == str(workdir / "plots" / "run-2.png")
    assert report["export"]["version"] == 4  # the model's versions go on from the notebook's


def test_next_run_counts_its_own_prefix_only(steps_module, tmp_path):
    assert steps_module.next_run(str(tmp_path / "none")) == "run-1"
    for name in ("run-1", "run-9", "run-x", "your-run-4", "run-10.png"):
        (tmp_path / name).mkdir()
    assert steps_module.next_run(str(tmp_path)) == "run-10"
    assert steps_module.next_run(str(tmp_path), "your-run") == "your-run-5"


def write_notebooks(folder, *args):
    proc = subprocess.run([sys.executable, str(REMOTE / "notebooks.py"), str(folder), "--workdir", "/home/u/tflab",
                           *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {p.name: p for p in sorted(folder.glob("*.ipynb"))}


def test_the_notebooks_are_valid_nbformat_4_5_and_rewritten_identically(tmp_path):
    """JupyterLab adds the cell ids nbformat 4.5 requires to a notebook that lacks them, and so marks it
    modified as soon as it opens: every cell has its id, and nbformat's own validation has nothing to repair."""
    import copy
    import json
    import warnings

    import nbformat

    written = write_notebooks(tmp_path / "nb", "--tensorboard-url", "http://127.0.0.1:6123/")
    assert list(written) == ["1-basics.ipynb", "2-train.ipynb", "3-tensorboard.ipynb", "4-export.ipynb",
                             "5-predict.ipynb"]
    for name, path in written.items():
        document = json.loads(path.read_text())
        assert (document["nbformat"], document["nbformat_minor"]) == (4, 5)
        untouched = copy.deepcopy(document)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a missing id is only a warning (MissingIDFieldWarning) today
            nbformat.validate(document)
        assert document == untouched, name  # nothing repaired
        ids = [cell["id"] for cell in document["cells"]]
        assert len(set(ids)) == len(ids), name
    mtimes = {name: path.stat().st_mtime_ns for name, path in written.items()}
    again = write_notebooks(tmp_path / "nb", "--tensorboard-url", "http://127.0.0.1:6123/")
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == mtimes  # an open notebook is left alone


def test_the_tensorboard_notebook_links_tensorboard_where_the_tunnel_brings_it(tmp_path):
    text = write_notebooks(tmp_path / "a", "--tensorboard-url", "http://127.0.0.1:6123/")["3-tensorboard.ipynb"].read_text()
    assert "http://127.0.0.1:6123/" in text and "6006" not in text
    text = write_notebooks(tmp_path / "b")["3-tensorboard.ipynb"].read_text()
    assert "6006" not in text and "tflab tunnel" in text  # no port it does not know


def test_the_kernel_spec_keeps_tensorflows_cpp_log_out_of_the_cells(tmp_path):
    """TensorFlow's start-up lines (absl, before its initialisation) ignore TF_CPP_MIN_LOG_LEVEL; the lab's
    kernel leaves its fd 2 to Jupyter's log instead of forwarding it into the cells as red stderr."""
    import json

    write_notebooks(tmp_path / "nb", "--kernel-dir", str(tmp_path / "jupyter"), "--python", "/opt/py/bin/python3")
    spec = json.loads((tmp_path / "jupyter" / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][:3] == ["/opt/py/bin/python3", "-m", "ipykernel_launcher"]
    assert "{connection_file}" in spec["argv"] and "--IPKernelApp.capture_fd_output=False" in spec["argv"]
    assert spec["env"]["TF_CPP_MIN_LOG_LEVEL"] == "2"
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager(kernel_dirs=[str(tmp_path / "jupyter" / "kernels")]).get_kernel_spec("python3")
    assert found.argv == spec["argv"] and found.env == spec["env"]  # Jupyter reads it as written


def test_in_the_labs_kernel_tensorflow_imports_without_a_line_of_stderr_and_prints_reach_the_cell(tmp_path, monkeypatch):
    """A real kernel from the lab's spec (as Jupyter starts it): importing TensorFlow sends no stream to
    stderr (JupyterLab draws those red), while print and tf.print still reach the cell."""
    from jupyter_client.manager import start_new_kernel

    write_notebooks(tmp_path / "nb", "--kernel-dir", str(tmp_path / "jupyter"), "--python", sys.executable)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=120)
    try:
        assert "--IPKernelApp.capture_fd_output=False" in manager.kernel_spec.argv  # the lab's spec, found
        streams: list[tuple[str, str]] = []
        reply = client.execute_interactive(
            "import tensorflow as tf\ntf.constant(1.0) + 1\ntf.print('from tf.print')\nprint('from print')",
            timeout=180, output_hook=lambda m: streams.append((m["content"]["name"], m["content"]["text"]))
            if m["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok"
        assert [name for name, _ in streams if name == "stderr"] == [], streams
        assert "from tf.print" in "".join(text for _, text in streams)
        assert "from print" in "".join(text for _, text in streams)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
