#!/usr/bin/env python3
"""Write the lab's notebooks, one per step, for Jupyter on the lab host.

Usage: python3 notebooks.py FOLDER [--remote-dir DIR] [--workdir DIR] [--port 9000]

Each notebook runs its step of the lab interactively, as the original lab did in Jupyter, with the
same TensorFlow 2 code tflab runs (remote/steps.py), and the gRPC client against the served model.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os


def notebook(cells: list[tuple[str, str]]) -> dict:
    return {
        "cells": [{"cell_type": kind, "metadata": {}, "source": text.strip("\n").splitlines(keepends=True),
                   **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                  for kind, text in cells],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def lab_notebooks(remote_dir: str, workdir: str, port: int) -> dict[str, dict]:
    setup = f"import sys\nsys.path.insert(0, {remote_dir!r})\nimport numpy as np\nimport tensorflow as tf\nimport steps"
    return {
        "1-basics.ipynb": notebook([
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
        "2-train.ipynb": notebook([
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
        "3-tensorboard.ipynb": notebook([
            ("markdown", "# 3. TensorBoard\nTraining writes the lab's summaries (loss, weights/summaries/*, "
                         f"y_error) under `{workdir}/logs`; TensorBoard serves them on port 6006 (through the "
                         "tunnel: http://127.0.0.1:6006/)."),
            ("code", setup),
            ("code", f"report = steps.train(tf, steps=100, learning_rate=0.001, num_examples=60, seed=1,\n"
                     f"                     logdir={os.path.join(workdir, 'logs', 'notebook')!r},\n"
                     f"                     plot_path={os.path.join(workdir, 'plots', 'notebook.png')!r})['report']\n"
                     "report['final_loss']"),
        ]),
        "4-export.ipynb": notebook([
            ("markdown", "# 4. Export a SavedModel for TensorFlow Serving\nThe next version appears under "
                         f"`{workdir}/models/nn/`, and the server loads it without a restart."),
            ("code", setup),
            ("code", f"trained = steps.train(tf, steps=500, learning_rate=0.001, num_examples=60, seed=2,\n"
                     f"                      logdir={os.path.join(workdir, 'logs', 'notebook-export')!r},\n"
                     f"                      plot_path={os.path.join(workdir, 'plots', 'notebook-export.png')!r})\n"
                     f"steps.export(tf, trained['model'], {os.path.join(workdir, 'models')!r}, 'nn', None)"),
        ]),
        "5-predict.ipynb": notebook([
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--remote-dir", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--workdir", default=os.path.expanduser("~/tflab"))
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    for name, content in lab_notebooks(args.remote_dir, args.workdir, args.port).items():
        path = os.path.join(args.folder, name)
        with open(path, "w") as f:
            json.dump(content, f, indent=1)
    print(f"notebooks written to {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
