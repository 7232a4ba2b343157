"""The gRPC client: TF Serving's protos without TensorFlow, and tensors built by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tflab.client import column_tensor, serving_apis, tensor_floats
from tflab.errors import RequestError


def test_the_client_loads_the_serving_protos_without_importing_tensorflow():
    code = ("import sys\n"
            "from tflab.client import ServingClient\n"
            "c = ServingClient('127.0.0.1:1')\n"
            "c.close()\n"
            "assert 'tensorflow_serving.apis.predict_pb2' in sys.modules\n"
            "heavy = [m for m in ('tensorflow', 'tensorflow.python', 'numpy', 'keras') if m in sys.modules]\n"
            "print(heavy)\n"
            "import tensorflow as tf\n"  # and the real TensorFlow still imports afterwards
            "from tensorflow.core.framework import tensor_pb2\n"
            "assert type(tf.make_tensor_proto([[1.0]])) is tensor_pb2.TensorProto\n"
            "print('real tensorflow ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "real tensorflow ok"]


def test_column_tensor_round_trips_float32_values():
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    tensor = column_tensor([-1.0, 0.5, 3.25], request.inputs["input"])
    assert [d.size for d in tensor.tensor_shape.dim] == [3, 1]
    assert tensor_floats(tensor) == [-1.0, 0.5, 3.25]


def test_tensor_floats_reads_float_val_and_its_compressed_form():
    apis = serving_apis()
    tensor = apis.predict_pb2.PredictResponse().outputs["output"]
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = 3
    tensor.float_val.append(2.5)  # TensorFlow stores a tensor of one repeated value once
    assert tensor_floats(tensor) == [2.5, 2.5, 2.5]
    tensor.dtype = 2
    with pytest.raises(RequestError, match="dtype"):
        tensor_floats(tensor)
