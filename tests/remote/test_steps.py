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
    # The graph of the training function is there for the GRAPHS tab.
    graph_tags = [t for t in tags if t == "single_neuron_training"]
    assert graph_tags and acc.SummaryMetadata("single_neuron_training").plugin_data.plugin_name.startswith("graph")


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
