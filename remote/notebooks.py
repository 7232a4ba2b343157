#!/usr/bin/env python3
"""Write the lab's notebooks, one per step, for Jupyter on the lab host.

Usage: python3 notebooks.py FOLDER [--remote-dir DIR] [--workdir DIR] [--port 9000]
                            [--tensorboard-url URL] [--kernel-dir DIR --python PY]

Each notebook runs its step of the lab interactively, as the original lab did in Jupyter, with the
same TensorFlow 2 code tflab runs (remote/steps.py), and the gRPC client against the served model.
The notebooks are nbformat 4.5 (every cell has a stable `id`, so JupyterLab has nothing to add and
does not mark a notebook modified when it opens it; the notebooks are written with this Python's
language_info, so run this script with the kernel's Python). With --kernel-dir, the lab's Python kernel spec
is written there too (`<DIR>/kernels/python3/kernel.json`; Jupyter finds it through JUPYTER_PATH=DIR):
TensorFlow's C++ log lines stay out of the cells (see kernel_spec). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

KERNEL_DISPLAY_NAME = "Python 3 (ipykernel)"  # ipykernel's own name for its kernel spec


def notebook(stem: str, cells: list[tuple[str, str]]) -> dict:
    """An nbformat 4.5 notebook; cell ids are `<stem>-<n>`, the same on every write."""
    return {
        "cells": [{"cell_type": kind, "id": f"{stem}-{index}", "metadata": {},
                   "source": text.strip("\n").splitlines(keepends=True),
                   **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                  for index, (kind, text) in enumerate(cells, start=1)],
        # What JupyterLab writes once the kernel answers (the kernel spec's display name, ipykernel's
        # language_info for this Python): the same already, so opening a notebook changes nothing in it.
        "metadata": {"kernelspec": {"display_name": KERNEL_DISPLAY_NAME, "language": "python", "name": "python3"},
                     "language_info": {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                                       "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                                       "pygments_lexer": "ipython3", "version": platform.python_version()}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def lab_notebooks(remote_dir: str, workdir: str, port: int, tensorboard_url: str | None = None) -> dict[str, dict]:
    """The five notebooks. Their TensorBoard runs are `your-run-<N>` under <workdir>/logs, numbered in
    order and sorted after the lab's `run-<N>`: TensorBoard's Graphs tab opens on the first run in its
    order, which stays the lab's."""
    logs = os.path.join(workdir, "logs")
    plots = os.path.join(workdir, "plots")
    tensorboard = (f"through run-lab's tunnel: [{tensorboard_url}]({tensorboard_url})" if tensorboard_url
                   else "on the lab host's TensorBoard port (`tflab tunnel` brings it here)")
    setup = f"import os\nimport sys\nsys.path.insert(0, {remote_dir!r})\nimport numpy as np\nimport tensorflow as tf\nimport steps"
    return {
        "1-basics.ipynb": notebook("basics", [
            ("markdown", "# 1. TensorFlow basics: graphs and sessions\nThe lab's four examples, through "
                         "`tf.compat.v1`. (The original lab prints `[[5], [11]]` for the variable example; "
                         "the true result is `[[16], [16]]`.)"),
            ("code", setup),
            ("code", "graph = tf.Graph()\nwith graph.as_default():\n    input1 = tf.constant([1.0, 2.0])\n"
                     "    input2 = tf.constant([3.0, 4.0])\n    output = tf.add(input1, input2)\n"
                     "print(graph.get_operations())\nwith tf.compat.v1.Session(graph=graph) as sess:\n"
                     "    print('result:', sess.run(output))"),
            ("code", "steps.basics(tf)"),
        ]),
        "2-train.ipynb": notebook("train", [
            ("markdown", "# 2. A single-neuron network\n60 noisy points around y = 0.5x + 2.5, plain gradient "
                         "descent on the L2 loss. Change `steps` or `learning_rate` and run again."),
            ("code", setup + "\n%matplotlib inline"),
            ("code", "x, y, x_with_bias, initial = steps.make_data(60, seed=0)\n"
                     "neuron = steps.SingleNeuron(tf, initial)\ntrain = neuron.make_train()\n"
                     "losses = train(tf.constant(x_with_bias), tf.constant(y.reshape(-1, 1).astype(np.float32)),\n"
                     "               tf.constant(100), tf.constant(0.001)).numpy()\n"
                     "w = neuron.weights.numpy()\nprint('slope', w[1][0], 'intercept', w[0][0])\n"
                     "print('least squares', steps.least_squares(x, y))"),
            ("code", "import matplotlib.pyplot as plt\nfig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))\n"
                     "ax1.scatter(x, y, c='b', alpha=.6)\nax1.plot((-3, 7), [w[1][0] * v + w[0][0] for v in (-3, 7)], 'g')\n"
                     "ax1.plot((-3, 7), [0.5 * v + 2.5 for v in (-3, 7)], 'r')\nax2.plot(losses)\nplt.show()"),
        ]),
        "3-tensorboard.ipynb": notebook("tensorboard", [
            ("markdown", "# 3. TensorBoard\nTraining writes the lab's summaries (loss, weights/summaries/*, "
                         f"y_error) and the training step's graph into a new run under `{logs}`, named "
                         f"`your-run-<N>`. TensorBoard shows it, {tensorboard}: SCALARS has `loss`, GRAPHS "
                         "the step's namespaces (`weights`, `gradients`, `GradientDescent`, ...)."),
            ("code", setup),
            ("code", f"run = steps.next_run({logs!r}, 'your-run')\n"
                     f"report = steps.train(tf, steps=100, learning_rate=0.001, num_examples=60, seed=1,\n"
                     f"                     logdir=os.path.join({logs!r}, run),\n"
                     f"                     plot_path=os.path.join({plots!r}, run + '.png'))['report']\n"
                     "report['final_loss']"),
        ]),
        "4-export.ipynb": notebook("export", [
            ("markdown", "# 4. Export a SavedModel for TensorFlow Serving\nThe next version appears under "
                         f"`{os.path.join(workdir, 'models', 'nn')}/`, and the server loads it without a restart."),
            ("code", setup),
            ("code", f"run = steps.next_run({logs!r}, 'your-run')\n"
                     f"trained = steps.train(tf, steps=500, learning_rate=0.001, num_examples=60, seed=2,\n"
                     f"                      logdir=os.path.join({logs!r}, run),\n"
                     f"                      plot_path=os.path.join({plots!r}, run + '.png'))\n"
                     f"exported = steps.export(tf, trained['model'], {os.path.join(workdir, 'models')!r}, 'nn', None)\n"
                     "print('served as version', exported['version'], 'of', exported['model_name'])"),
        ]),
        "5-predict.ipynb": notebook("predict", [
            ("markdown", f"# 5. Call the served model over gRPC\nTensorFlow Serving (or tflab's stand-in) "
                         f"listens on 127.0.0.1:{port}."),
            ("code", "import grpc\nimport numpy as np\nimport tensorflow as tf\n"
                     "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc"),
            ("code", f"channel = grpc.insecure_channel('127.0.0.1:{port}')\n"
                     "stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)\n"
                     "request = predict_pb2.PredictRequest()\nrequest.model_spec.name = 'nn'\n"
                     "request.model_spec.signature_name = 'prediction'\n"
                     "tests = np.arange(-1, 6, dtype=np.float32).reshape(-1, 1)\n"
                     "request.inputs['input'].CopyFrom(tf.make_tensor_proto(tests))\n"
                     "result = stub.Predict(request, 5.0)\n"
                     "print('Prediction is:', tf.make_ndarray(result.outputs['output']).ravel())\n"
                     "print('Noise-free value is:', 0.5 * tests.ravel() + 2.5)"),
        ]),
    }


def kernel_spec(python: str) -> dict:
    """The lab's Python 3 kernel (Jupyter's kernel.json), replacing the default `python3` for this Jupyter.

    TensorFlow 2.21's C++ logs its start-up lines (oneDNN, CUDA drivers, `failed call to cuInit` on a
    machine without a GPU) through absl before absl is initialised, and TF_CPP_MIN_LOG_LEVEL does not
    reach those; ipykernel forwards its process's own stderr (fd 2) into the cells, where every one of them
    reads as an error. So the kernel keeps fd 2 its own (`capture_fd_output=False`: those lines go to
    Jupyter's log on the host) and sets TF_CPP_MIN_LOG_LEVEL=2 for what TensorFlow does filter. Python's
    own output, warnings and tracebacks still show in the cells.
    """
    return {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.capture_fd_output=False"],
            "display_name": KERNEL_DISPLAY_NAME, "language": "python",
            "env": {"TF_CPP_MIN_LOG_LEVEL": "2"}, "metadata": {"debugger": True}}


def write_json(path: str, content: dict) -> None:
    """Write content, unless the file holds it already (an open notebook is not touched by a rerun)."""
    text = json.dumps(content, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # as Jupyter saves
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--remote-dir", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--workdir", default=os.path.expanduser("~/tflab"))
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--tensorboard-url", default=None, help="TensorBoard as the user reaches it")
    parser.add_argument("--kernel-dir", default=None, help="write the lab's kernel spec under DIR/kernels")
    parser.add_argument("--python", default=sys.executable, help="the kernel's Python (with --kernel-dir)")
    parser.add_argument("--keep-existing", action="store_true",
                        help="leave a notebook that is there as it is (the user's work); write the missing ones")
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    for name, content in lab_notebooks(args.remote_dir, args.workdir, args.port, args.tensorboard_url).items():
        path = os.path.join(args.folder, name)
        if not (args.keep_existing and os.path.lexists(path)):
            write_json(path, content)
    if args.kernel_dir:
        spec_dir = os.path.join(args.kernel_dir, "kernels", "python3")
        os.makedirs(spec_dir, exist_ok=True)
        write_json(os.path.join(spec_dir, "kernel.json"), kernel_spec(args.python))
    print(f"notebooks written to {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
