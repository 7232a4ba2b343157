#!/usr/bin/env python3
"""The lab's TensorFlow steps, in TensorFlow 2, in one process.

This file ships to lab hosts and runs there as it is: it imports only TensorFlow, numpy,
matplotlib and the standard library, never tflab. It reimplements the steps of the original
"TensorFlow on an AWS Deep Learning AMI" lab (TF1 code) with today's APIs, keeping what each
step teaches and shows:

1. basics     the four graph/session examples, through tf.compat.v1 (the lesson is graphs)
2. train      the single-neuron network, loss per step, the lab's two plots (PNG)
3. summaries  TensorBoard event files with every tag the lab writes, and the graph
4. export     a SavedModel at <models>/<name>/<version>/ with a `prediction` signature

Usage: python3 steps.py --workdir DIR [--steps 100] [--learning-rate 0.001] [--seed N]
                        [--num-examples 60] [--model-name nn] [--version N] [--report FILE]

Progress goes to stdout as lines `[step] text`; the report is a JSON file (`--report`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

NOISE_FREE_SLOPE = 0.5
NOISE_FREE_INTERCEPT = 2.5
GRAPH_NAME = "single_neuron_training"  # the training step's graph in TensorBoard (Graphs tab)


def say(step: str, text: str) -> None:
    """Print one progress line, flushed so a streaming reader sees it at once."""
    print(f"[{step}] {text}", flush=True)


# --------------------------------------------------------------------------- 1. basics


def basics(tf) -> dict:
    """The lab's four graph examples, run in graphs and sessions (tf.compat.v1)."""
    v1 = tf.compat.v1
    # 1. An explicit graph: two constants and an add.
    graph = tf.Graph()
    with graph.as_default():
        input1 = tf.constant([1.0, 2.0])
        input2 = tf.constant([3.0, 4.0])
        output = tf.add(input1, input2)
    operations = [op.name for op in graph.get_operations()]
    op_types = [op.type for op in graph.get_operations()]
    say("basics", f"graph.get_operations(): {operations} (types {op_types})")
    with v1.Session(graph=graph) as sess:
        add = sess.run(output).tolist()
    say("basics", f"add: {add}")

    # 2. The default graph of a session (a fresh graph made the default, as in a new process).
    with tf.Graph().as_default(), v1.Session() as sess:
        input1 = tf.constant([1.0, 2.0])
        input2 = tf.constant([3.0, 4.0])
        output = tf.add(input1, input2)
        default_ops = [op.name for op in v1.get_default_graph().get_operations()]
        default_add = sess.run(output).tolist()
    say("basics", f"default graph: {default_ops} -> {default_add}")

    # 3. Matrix times vector.
    matmul_graph = tf.Graph()
    with matmul_graph.as_default():
        matrix = tf.constant([[1.0, 2.0], [3.0, 4.0]])
        vector = tf.constant([[1.0], [2.0]])
        output = tf.matmul(matrix, vector)
    with v1.Session(graph=matmul_graph) as sess:
        matmul = sess.run(output).tolist()
    say("basics", f"matmul: {matmul}")

    # 4. A variable multiplied four times by a matrix of ones. (The original lab prints
    #    [[5], [11]] here, the matmul example's output; the true result is [[16], [16]].)
    var_graph = tf.Graph()
    with var_graph.as_default():
        matrix = tf.constant([[1.0, 1.0], [1.0, 1.0]])
        vector = v1.Variable([[1.0], [1.0]])
        for _ in range(4):
            vector = tf.matmul(matrix, vector)
        init = v1.global_variables_initializer()
    with v1.Session(graph=var_graph) as sess:
        sess.run(init)
        variable = sess.run(vector).tolist()
    say("basics", f"variable after 4 multiplications: {variable}")
    return {
        "add": add,
        "matmul": matmul,
        "variable": variable,
        "operations": operations,
        "operation_types": op_types,
        "default_graph": {"operations": default_ops, "add": default_add},
    }


# --------------------------------------------------------------------------- data


def make_data(num_examples: int, seed: int):
    """The lab's data: points around y = 0.5x + 2.5, and initial weights, from one seed.

    Returns (x, y, x_with_bias, initial_weights) as numpy arrays. x_with_bias has the bias
    column first, as in the lab, so weights[0] is the intercept and weights[1] the slope.
    """
    import numpy as np

    rng = np.random.RandomState(seed)
    points = np.array([np.linspace(-1, 5, num_examples), np.linspace(2, 5, num_examples)])
    points += rng.randn(2, num_examples)
    x, y = points
    x_with_bias = np.stack([np.ones_like(x), x], axis=1).astype(np.float32)
    initial = rng.normal(0.0, 0.1, size=(2, 1)).astype(np.float32)
    return x, y, x_with_bias, initial


def least_squares(x, y) -> tuple[float, float]:
    """numpy's least-squares line through the points: (slope, intercept)."""
    import numpy as np

    design = np.stack([np.ones_like(x), x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(slope), float(intercept)


# --------------------------------------------------------------------------- 2+3. train


class SingleNeuron:
    """The lab's single neuron: y = [1, x] @ weights, trained by plain gradient descent."""

    def __init__(self, tf, initial_weights, strategy=None):
        self.tf = tf
        self.strategy = strategy  # MultiWorkerMirroredStrategy across workers, or None for one process
        self.module = tf.Module(name="single_neuron")
        if strategy is None:
            self.module.weights = tf.Variable(initial_weights, name="weights")
        else:
            with strategy.scope():
                self.module.weights = tf.Variable(initial_weights, name="weights")

    @property
    def weights(self):
        return self.module.weights

    def make_step(self):
        """One training step as a tf.function, its ops under the lab's namespaces.

        The step's graph is what TensorBoard's Graphs tab shows (traced at the first step, see train()):
        `gradients` (the L2 loss of the prediction error and its gradient; TensorFlow 2 names the backward
        ops `gradient_tape`), `GradientDescent` (the weights' update), then the error and loss after the
        update (`y_predicted`, `y_error`, `loss`), the summaries of both, and `weights` with its
        `summaries` (mean, stddev, max, min, histogram), as in the lab's `variable_summaries`. Tags are
        the lab's: scalars loss and weights/summaries/{mean,stddev,max,min}; histograms
        weights/summaries/histogram and y_error (absolute scopes, so no caller's scope prefixes them).
        As in the lab, the loss and the summaries are read after each update. The step is traced once
        and called once per step (a graph while-loop would hide the namespaces in a loop-body function).
        """
        tf = self.tf
        weights = self.weights
        strategy = self.strategy
        top_level = tf.compat.v1.name_scope

        @tf.function
        def train_step(inputs, target, learning_rate, step, shard_inputs=None, shard_target=None):
            """With a strategy, each worker computes the gradient of the L2 loss on its shard of the points;
            the sum over workers (an all-reduce) is the gradient on all of them, so every worker takes the
            same step as one process would. The loss and the summaries are of all the points."""
            if strategy is None:
                with tf.GradientTape() as tape:
                    with tf.name_scope("weights"):  # the graph's input for the variable is named for it
                        current = weights.read_value()
                    with tf.name_scope("gradients") as gradients_scope:
                        loss_before = tf.nn.l2_loss(tf.matmul(inputs, current) - target)
                with tf.name_scope(gradients_scope):  # the same namespace again (it ends with "/")
                    gradient = tape.gradient(loss_before, weights)
                with tf.name_scope("GradientDescent"):
                    weights.assign_sub(learning_rate * gradient)
            else:
                def replica_step():
                    with tf.name_scope("gradients"):
                        with tf.GradientTape() as tape:
                            shard_loss = tf.nn.l2_loss(tf.matmul(shard_inputs, weights) - shard_target)
                        summed = tf.distribute.get_replica_context().all_reduce(
                            tf.distribute.ReduceOp.SUM, tape.gradient(shard_loss, weights))
                    with tf.name_scope("GradientDescent"):
                        weights.assign_sub(learning_rate * summed)

                strategy.run(replica_step)
            y_predicted = tf.matmul(inputs, weights, name="y_predicted")
            y_error = tf.subtract(y_predicted, target, name="y_error")
            loss = tf.nn.l2_loss(y_error, name="loss")
            with top_level(None):
                tf.summary.scalar("loss", loss, step=step)
                tf.summary.histogram("y_error", y_error, step=step)
            with tf.name_scope("weights/summaries/"):
                mean = tf.reduce_mean(weights)
                tf.summary.scalar("mean", mean, step=step)
                tf.summary.scalar("stddev", tf.sqrt(tf.reduce_mean(tf.square(weights - mean))), step=step)
                tf.summary.scalar("max", tf.reduce_max(weights), step=step)
                tf.summary.scalar("min", tf.reduce_min(weights), step=step)
                tf.summary.histogram("histogram", weights, step=step)
            return loss

        return train_step

    def make_train(self, graph_name: str | None = None):
        """The training: `train(inputs, target, steps, learning_rate[, shard_inputs, shard_target])` runs
        the step `steps` times and returns the loss after each step (a tensor). With graph_name, the first
        step's graph is written to the default summary writer under that name (TensorBoard's Graphs tab)."""
        tf = self.tf
        train_step = self.make_step()

        def train(inputs, target, steps, learning_rate, shard_inputs=None, shard_target=None):
            learning_rate = tf.constant(learning_rate, tf.float32)
            losses = []
            for i in range(int(steps)):
                step = tf.constant(i, tf.int64)
                if i == 0 and graph_name:  # only the step's function in the trace: one graph, no graph_N boxes
                    tf.summary.trace_on(graph=True, profiler=False)
                losses.append(train_step(inputs, target, learning_rate, step, shard_inputs, shard_target))
                if i == 0 and graph_name:
                    tf.summary.trace_export(name=graph_name, step=0)
            return tf.stack(losses)

        return train


def train(tf, *, steps: int, learning_rate: float, num_examples: int, seed: int, logdir: str,
          plot_path: str, strategy=None, worker: tuple[int, int] = (0, 1)) -> dict:
    """Train the single neuron, write TensorBoard summaries and the lab's plots.

    With a strategy, this process is worker `worker[0]` of `worker[1]`: every worker makes the same
    points from the seed and trains on its own rows (i, i + N, ...); the chief (worker 0) alone
    writes the summaries and the plots. Returns the report and the model (with plain weights)."""
    import numpy as np

    x, y, x_with_bias, initial = make_data(num_examples, seed)
    index, count = worker
    neuron = SingleNeuron(tf, initial, strategy)
    chief = index == 0
    train_fn = neuron.make_train(graph_name=GRAPH_NAME if chief else None)
    inputs = tf.constant(x_with_bias)
    target = tf.constant(y.reshape(-1, 1).astype(np.float32))
    shard = {}
    if strategy is not None:
        rows = np.arange(num_examples)[index::count]
        shard = {"shard_inputs": tf.constant(x_with_bias[rows]),
                 "shard_target": tf.constant(y[rows].reshape(-1, 1).astype(np.float32))}

    if chief:
        os.makedirs(logdir, exist_ok=True)
    writer = tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()
    started = time.perf_counter()
    with writer.as_default():
        losses = train_fn(inputs, target, steps, learning_rate, **shard)
    writer.flush()
    writer.close()
    seconds = time.perf_counter() - started

    losses = [float(v) for v in losses.numpy()]
    w = np.asarray(neuron.weights.numpy())
    slope, intercept = float(w[1][0]), float(w[0][0])
    worker_report = {"index": index, "slope": slope, "intercept": intercept,
                     "seconds_per_step": round(seconds / steps, 6)}
    if strategy is not None:
        say("train", f"worker {index} of {count}: {steps} steps on {len(shard['shard_inputs'])} of "
            f"{num_examples} points, gradients summed across workers")
        neuron = SingleNeuron(tf, w)  # plain weights for the export, outside the strategy
        if not chief:
            return {"model": neuron, "report": {"worker": worker_report}}
    ols_slope, ols_intercept = least_squares(x, y)
    final_loss = losses[-1]
    say("train", f"{steps} steps at learning rate {learning_rate} in {seconds:.2f} s: "
        f"slope {slope:.4f}, intercept {intercept:.4f}, final loss {final_loss:.4f}")
    say("train", f"least squares on the same data: slope {ols_slope:.4f}, intercept {ols_intercept:.4f}; "
        f"noise-free line: slope {NOISE_FREE_SLOPE}, intercept {NOISE_FREE_INTERCEPT}")
    predicted = (x_with_bias @ w).ravel()
    plot(x, y, predicted, slope, intercept, losses, plot_path)
    say("train", f"plots written to {plot_path}")
    say("summaries", f"TensorBoard event files (loss, weights/summaries/*, y_error, graph) in {logdir}")
    return {
        "model": neuron,
        "report": {
            "slope": slope,
            "intercept": intercept,
            "final_loss": final_loss,
            "losses": losses,
            "ols_slope": ols_slope,
            "ols_intercept": ols_intercept,
            "noise_free_slope": NOISE_FREE_SLOPE,
            "noise_free_intercept": NOISE_FREE_INTERCEPT,
            "steps": steps,
            "learning_rate": learning_rate,
            "num_examples": num_examples,
            "seed": seed,
            "seconds": round(seconds, 4),
            **({"workers": [worker_report]} if strategy is not None else {}),
        },
    }


# --------------------------------------------------------------------------- a workload where distribution matters

WORKLOADS = {
    # A small MLP (two hidden layers of 512) on synthetic data (256 features -> 10 classes of a fixed random
    # teacher): 400k parameters, so every step all-reduces 1.6 MB of gradients across the workers.
    "mlp": {"features": 256, "hidden": 512, "classes": 10, "examples": 32768, "global_batch": 256},
}


def workload(tf, name: str, *, epochs: int, seed: int, strategy=None, worker: tuple[int, int] = (0, 1)) -> dict:
    """Train the workload for epochs by minibatch SGD (every worker makes the same data and initial weights
    from the seed, and takes its rows of each global batch; the all-reduce SUM of the gradients is the
    gradient of the global batch, as with the single neuron); returns its figures: time per epoch,
    parameters, all-reduce size."""
    import numpy as np

    spec = WORKLOADS[name]
    index, count = worker
    rng = np.random.default_rng(seed)
    features, hidden, classes, batch = spec["features"], spec["hidden"], spec["classes"], spec["global_batch"]
    x = rng.standard_normal((spec["examples"], features)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((features, classes)), axis=1).astype(np.int32)
    shapes = [(features, hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, classes), (classes,)]
    initial = [(rng.uniform(-1, 1, shape) * np.sqrt(6.0 / sum(shape))).astype(np.float32) if len(shape) == 2
               else np.zeros(shape, np.float32) for shape in shapes]  # Glorot uniform, zero biases
    if strategy is None:
        variables = [tf.Variable(v) for v in initial]
    else:
        with strategy.scope():
            variables = [tf.Variable(v) for v in initial]
    steps = spec["examples"] // batch
    local_x = tf.constant(x[:steps * batch].reshape(steps, batch, features)[:, index::count])
    local_y = tf.constant(y[:steps * batch].reshape(steps, batch)[:, index::count])

    def logits_of(inputs):
        w1, b1, w2, b2, w3, b3 = variables
        hidden1 = tf.nn.relu(inputs @ w1 + b1)
        return tf.nn.relu(hidden1 @ w2 + b2) @ w3 + b3

    @tf.function
    def one_epoch(xs, ys):
        for i in tf.range(steps):
            def step():
                with tf.GradientTape() as tape:  # this worker's share of the global batch's mean loss
                    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(ys[i], logits_of(xs[i]))) / batch
                grads = tape.gradient(loss, variables)
                if strategy is not None:  # 1.6 MB of gradients every step
                    grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
                for variable, grad in zip(variables, grads):
                    variable.assign_sub(0.05 * grad)

            if strategy is None:
                step()
            else:
                strategy.run(step)

    times: list[float] = []
    for _ in range(epochs):
        started = time.perf_counter()
        one_epoch(local_x, local_y)
        times.append(time.perf_counter() - started)
    final_loss = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits_of(x))))
    parameters = int(sum(np.prod(shape) for shape in shapes))
    say("workload", f"{name} on worker {index} of {count}: {epochs} epochs of {steps} steps, "
        f"{parameters:,} parameters; seconds per epoch: {', '.join(f'{t:.2f}' for t in times)}; "
        f"loss {final_loss:.4f}")
    return {"name": name, "workers": count, "parameters": parameters, "allreduce_bytes_per_step": 4 * parameters,
            "examples": spec["examples"], "global_batch": batch, "steps_per_epoch": steps, "epochs": epochs,
            "seconds_per_epoch": [round(t, 4) for t in times], "final_loss": final_loss}


def plot(x, y, predicted, slope, intercept, losses, path: str) -> None:
    """The lab's two plots side by side: the fit, and the loss per training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2)
    plt.subplots_adjust(wspace=0.3)
    fig.set_size_inches(11, 4)
    ax1.scatter(x, y, c="b", alpha=0.6, label="noisy points")
    ax1.scatter(x, predicted, c="g", alpha=0.6, label="predictions")
    line_x = (-3, 7)
    ax1.plot(line_x, [slope * v + intercept for v in line_x], "g", alpha=0.6, label="fitted line")
    ax1.plot(line_x, [NOISE_FREE_SLOPE * v + NOISE_FREE_INTERCEPT for v in line_x], "r", alpha=0.6,
             label="noise-free line")
    ax1.set_xlabel("x")
    ax1.set_ylabel("y")
    ax1.legend(loc="upper left", fontsize="small")
    ax2.plot(range(len(losses)), losses)
    ax2.set_xlabel("Training step")
    ax2.set_ylabel("Loss")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- 4. export


def next_version(model_dir: str) -> int:
    """The version after the highest numeric folder under model_dir (1 when there is none)."""
    versions = [int(n) for n in os.listdir(model_dir) if n.isdigit()] if os.path.isdir(model_dir) else []
    return max(versions, default=0) + 1


def next_run(logs_root: str, prefix: str = "run") -> str:
    """The next TensorBoard run name, `<prefix>-<N>`, N one more than the highest there (1 when none): the
    lab's runs are numbered in order whatever the notebooks export. The notebooks' runs use another prefix
    that sorts after `run` (TensorBoard's Graphs tab opens on the first run in its order: the lab's)."""
    taken = [int(n[len(prefix) + 1:]) for n in (os.listdir(logs_root) if os.path.isdir(logs_root) else [])
             if n.startswith(prefix + "-") and n[len(prefix) + 1:].isdigit()]
    return f"{prefix}-{max(taken, default=0) + 1}"


def export(tf, neuron: SingleNeuron, models_dir: str, model_name: str, version: int | None) -> dict:
    """Save a SavedModel at <models_dir>/<model_name>/<version>/, written atomically.

    The `prediction` signature (also `serving_default`) takes `input`, float32 [None, 1], and
    returns `output` = x * slope + intercept, [None, 1]. The folder appears under its version
    number only once complete, so a server polling the base path never loads half a model.
    """
    model_dir = os.path.join(models_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise SystemExit(f"export: {final} exists already; give another --version")
    weights = neuron.weights

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="input")])
    def predict(x):
        return {"output": tf.matmul(x, weights[1:]) + weights[0]}

    module = neuron.module
    module.predict = predict
    staging = os.path.join(model_dir, f".{version}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    # TensorFlow logs "Assets written to: <the staging folder>" at INFO, which an interactive session (Jupyter)
    # shows: a path the user never sees again. The line below says where the model is.
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel("WARNING")
    try:
        tf.saved_model.save(module, staging, signatures={"prediction": predict, "serving_default": predict})
    finally:
        tf_logger.setLevel(level)
    os.rename(staging, final)
    say("export", f"SavedModel version {version} written to {final} in {time.perf_counter() - started:.2f} s "
        "(signature 'prediction': input [None, 1] -> output [None, 1])")
    return {"path": final, "model_name": model_name, "version": version, "signature": "prediction"}


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the TensorFlow lab steps in one process.")
    parser.add_argument("--workdir", required=True, help="folder for plots, logs and models")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--num-examples", type=int, default=60)
    parser.add_argument("--seed", type=int, default=None, help="random seed (random when not given)")
    parser.add_argument("--model-name", default="nn")
    parser.add_argument("--version", type=int, default=None, help="model version (default: next one)")
    parser.add_argument("--report", default=None, help="write the JSON report here")
    parser.add_argument("--workers", type=int, default=1,
                        help="train across this many processes (MultiWorkerMirroredStrategy; TF_CONFIG says where)")
    parser.add_argument("--worker-index", type=int, default=0, help="this process's index; 0 is the chief")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default=None,
                        help="after the lab's training, a workload where distribution matters (timed per epoch)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of --workload")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.workers > 1 and (args.seed is None or "TF_CONFIG" not in os.environ):
        parser.error("--workers needs --seed (the same points on every worker) and TF_CONFIG")
    if args.steps < 1 or args.num_examples < 2 or not args.learning_rate > 0:
        parser.error("--steps must be >= 1, --num-examples >= 2 and --learning-rate > 0")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return args


def run(args: argparse.Namespace) -> dict:
    """Run all four steps; returns the report."""
    started = time.perf_counter()
    import tensorflow as tf

    import_seconds = time.perf_counter() - started
    strategy = None
    if args.workers > 1:  # first, before any other op: the workers connect (TF_CONFIG) and wait for each other
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        if args.worker_index != 0:  # a worker only trains; the chief (0) does the rest
            trained = train(tf, steps=args.steps, learning_rate=args.learning_rate, num_examples=args.num_examples,
                            seed=args.seed, logdir="", plot_path="", strategy=strategy,
                            worker=(args.worker_index, args.workers))
            if args.workload:  # every worker takes part in the workload's collectives, in the chief's order
                trained["report"]["worker"]["workload"] = workload(
                    tf, args.workload, epochs=args.epochs, seed=args.seed, strategy=strategy,
                    worker=(args.worker_index, args.workers))
            return trained["report"]
    workdir = os.path.abspath(args.workdir)
    models_dir = os.path.join(workdir, "models")
    run_name = next_run(os.path.join(workdir, "logs"))
    logdir = os.path.join(workdir, "logs", run_name)
    plot_path = os.path.join(workdir, "plots", f"{run_name}.png")
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    say("basics", f"TensorFlow {tf.__version__} imported in {import_seconds:.1f} s; GPUs: {gpus or 'none'}")

    basics_report = basics(tf)
    trained = train(tf, steps=args.steps, learning_rate=args.learning_rate, num_examples=args.num_examples,
                    seed=args.seed, logdir=logdir, plot_path=plot_path, strategy=strategy,
                    worker=(0, args.workers))
    if args.workload:
        trained["report"]["workload"] = workload(tf, args.workload, epochs=args.epochs, seed=args.seed,
                                                 strategy=strategy, worker=(0, args.workers))
    exported = export(tf, trained["model"], models_dir, args.model_name, args.version)
    return {
        "basics": basics_report,
        "training": trained["report"],
        "export": exported,
        "tensorflow": {"version": tf.__version__, "gpus": gpus, "import_seconds": round(import_seconds, 3)},
        "artifacts": {
            "plot": plot_path,
            "logdir": logdir,
            "logs_root": os.path.join(workdir, "logs"),
            "models": models_dir,
            "saved_model": exported["path"],
        },
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.report:
        tmp = args.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.replace(tmp, args.report)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # TensorFlow's interpreter teardown costs ~0.7 s and has nothing left to do here.
    os._exit(code)
