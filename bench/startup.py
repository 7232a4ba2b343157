"""`tflab --help` and `tflab predict` start-up, next to their floors, measured in one run.

Goals (issue 2): --help <= 0.15 s; predict from process start to printed result <= 0.4 s.
Prints median [min-max] over N runs of whole processes (warm page cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, served_model, summary, time_command  # noqa: E402


# A bare grpcio call: the request bytes are built once here, the timed process only imports grpc.
BARE = """
import grpc, sys
req = bytes.fromhex(sys.argv[2])
ch = grpc.insecure_channel(sys.argv[1])
call = ch.unary_unary('/tensorflow.serving.PredictionService/Predict')
print(len(call(req, timeout=5)))
"""

TF_CLIENT = """
import sys, numpy as np, grpc, tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
req = predict_pb2.PredictRequest(); req.model_spec.name = 'nn'; req.model_spec.signature_name = 'prediction'
req.inputs['input'].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.0]], np.float32)))
stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(sys.argv[1]))
print(tf.make_ndarray(stub.Predict(req, 5.0).outputs['output']).ravel())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    n = args.runs
    print(f"# start-up, {n} runs each, median [min-max]")
    print(f"python -c pass               {summary(time_command([PY, '-c', 'pass'], n))}")
    print(f"python -c 'import typer'     {summary(time_command([PY, '-c', 'import typer'], n))}")
    print(f"tflab --help                 {summary(time_command([PY, '-m', 'tflab', '--help'], n))}")

    from tflab.client import column_tensor, serving_apis

    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = "nn"
    request.model_spec.signature_name = "prediction"
    column_tensor([1.0, 2.0], request.inputs["input"])
    with served_model() as address:
        print(f"bare grpcio Predict process  "
              f"{summary(time_command([PY, '-c', BARE, address, request.SerializeToString().hex()], n))}")
        print(f"tflab predict 1 2            "
              f"{summary(time_command([PY, '-m', 'tflab', 'predict', '1', '2', '--address', address], n))}")
        print(f"client importing TensorFlow  {summary(time_command([PY, '-c', TF_CLIENT, address], max(3, n // 3)))}")


if __name__ == "__main__":
    main()
