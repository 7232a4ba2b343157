"""The stand-in model server: TF Serving's gRPC API over a real SavedModel, in its own process."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from tests.conftest import REMOTE
from tflab import ports
from tflab.client import ServingClient, column_tensor, serving_apis
from tflab.errors import NotFoundError, RequestError, UnreachableError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(lab_steps_run, tmp_path_factory):
    """A model base path holding version 1 of the lab's model, and a server over it."""
    workdir, report, _ = lab_steps_run
    base = tmp_path_factory.mktemp("served") / "nn"
    shutil.copytree(workdir / "models" / "nn" / "1", base / "1")
    port, rest = ports.free_port(), ports.free_port()
    log = open(base.parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}",
                             f"--rest_api_port={rest}", "--model_name=nn", f"--model_base_path={base}",
                             "--file_system_poll_wait_seconds=0.2"], stdout=log, stderr=subprocess.STDOUT)
    client = ServingClient(f"127.0.0.1:{port}", timeout=10)
    try:
        client.wait_available("nn", timeout=120)
        yield {"base": base, "port": port, "rest": rest, "client": client, "proc": proc, "report": report}
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
        log.close()


def expected(report, xs):
    t = report["training"]
    return [x * t["slope"] + t["intercept"] for x in xs]


def test_predictions_over_grpc_equal_the_savedmodel_called_in_process(served, tf):
    xs = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    result = served["client"].predict(xs, model="nn", signature="prediction")
    assert result.version == 1 and result.signature == "prediction"
    loaded = tf.saved_model.load(str(served["base"] / "1"))
    direct = loaded.signatures["prediction"](input=tf.constant(np.array(xs, np.float32).reshape(-1, 1)))["output"]
    assert result.outputs == pytest.approx(direct.numpy().ravel().tolist(), abs=0)
    assert result.outputs == pytest.approx(expected(served["report"], xs), rel=1e-5)
    # The default signature answers the same.
    assert served["client"].predict(xs, signature="").outputs == result.outputs


def test_status_and_metadata_describe_the_served_version(served):
    client = served["client"]
    (status,) = client.status("nn")
    assert (status.version, status.state, status.error) == (1, "AVAILABLE", "")
    apis = serving_apis()
    request = apis.get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "nn"
    request.metadata_field.append("signature_def")
    response = apis.prediction_service_pb2_grpc.PredictionServiceStub(client._channel).GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    sig_map = apis.get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["prediction"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 1]
    assert list(sig.outputs) == ["output"]


def raw_predict(client, *, model="nn", signature="prediction", key="input", values=(1.0, 2.0), dtype=None,
                shape=None):
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    tensor = column_tensor(list(values), request.inputs[key])
    if dtype == 2:  # DT_DOUBLE: the same values as float64
        tensor.dtype = dtype
        tensor.tensor_content = struct.pack(f"<{len(values)}d", *values)
    if shape is not None:
        del tensor.tensor_shape.dim[:]
        for size in shape:
            tensor.tensor_shape.dim.add().size = size
    stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(client._channel)
    return stub.Predict(request, timeout=10)


@pytest.mark.parametrize("kwargs, code, text", [
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    # predict_util.cc RunPredict's message (the REST API's is 'Serving signature name: ... not found in signature def').
    ({"signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    ({"key": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "input tensor alias not found in signature: x"),
    ({"dtype": 2}, grpc.StatusCode.INVALID_ARGUMENT, "to be float but double is provided"),
    # A feed's shape is not checked against the signature's (TensorFlow's C++ runtime does not): the model's own
    # op refuses it, and TF Serving passes its status on.
    ({"values": (1.0, 2.0), "shape": (1, 2)}, grpc.StatusCode.INVALID_ARGUMENT,
     "Matrix size-incompatible: In[0]: [1,2], In[1]: [1,1]"),
])
def test_bad_requests_get_tf_servings_status_codes_and_the_server_keeps_serving(served, kwargs, code, text):
    client = served["client"]
    with pytest.raises(grpc.RpcError) as info:
        raw_predict(client, **kwargs)
    assert info.value.code() == code
    assert text in info.value.details()
    assert client.predict([1.0]).outputs == pytest.approx(expected(served["report"], [1.0]), rel=1e-5)
    assert served["proc"].poll() is None


def test_client_errors_are_typed(served):
    client = served["client"]
    with pytest.raises(NotFoundError, match="Latest\\(other\\)"):
        client.predict([1.0], model="other")
    with pytest.raises(RequestError) as info:
        client.predict([1.0], signature="nope")
    assert info.value.code == "FAILED_PRECONDITION"
    with pytest.raises(NotFoundError):
        client.status("other")
    with ServingClient(f"127.0.0.1:{ports.free_port()}", timeout=1) as dead:
        with pytest.raises(UnreachableError, match="no answer from a model server"):
            dead.predict([1.0])


def test_rest_api_answers_status_and_predict(served):
    base = f"http://127.0.0.1:{served['rest']}/v1/models/nn"
    with urllib.request.urlopen(base, timeout=10) as r:
        status = json.load(r)
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    body = json.dumps({"signature_name": "prediction", "instances": [[1.0], [3.0]]}).encode()
    with urllib.request.urlopen(urllib.request.Request(base + ":predict", data=body), timeout=10) as r:
        predictions = json.load(r)["predictions"]
    assert [p[0] for p in predictions] == pytest.approx(expected(served["report"], [1.0, 3.0]), rel=1e-5)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(
            base + ":predict", data=json.dumps({"signature_name": "nope", "instances": [[1.0]]}).encode()), timeout=10)
    assert info.value.code == 400


def test_a_newly_exported_version_is_served_without_a_restart(served, tf, steps_module, tmp_path):
    client = served["client"]
    trained = steps_module.train(tf, steps=3, learning_rate=0.001, num_examples=60, seed=99,
                                 logdir=str(tmp_path / "logs"), plot_path=str(tmp_path / "p.png"))
    exported = steps_module.export(tf, trained["model"], str(served["base"].parent), "nn", None)
    assert exported["version"] == 2
    assert client.wait_available("nn", version=2, timeout=60) == 2
    result = client.predict([0.0, 1.0])
    r = trained["report"]
    assert result.version == 2
    assert result.outputs == pytest.approx([r["intercept"], r["slope"] + r["intercept"]], rel=1e-5)
    states = {s.version: s.state for s in client.status("nn")}
    assert states == {1: "END", 2: "AVAILABLE"}  # TF Serving's latest-version policy
    assert served["proc"].poll() is None
    with pytest.raises(NotFoundError, match="Specific\\(nn, 1\\)"):
        client.predict([0.0], version=1)


def test_without_its_flag_there_is_no_health_service(served):
    """model_servers/server.cc enables gRPC's health service only with --enable_grpc_healthcheck_service."""
    with grpc.insecure_channel(f"127.0.0.1:{served['port']}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_sigterm_taken_by_any_thread_stops_the_server(served, tmp_path):
    """The kernel gives a process's SIGTERM to any of its threads that does not block it, often one of
    TensorFlow's or grpc's. CPython runs the handler in the main thread only, when it next wakes, so a main
    thread that waits without end would keep the server up. Sent here to a thread that is not the main one
    (tgkill), it still stops the server at once."""
    import ctypes
    import os
    import signal

    base = tmp_path / "nn"
    shutil.copytree(served["base"] / "1", base / "1")
    port = ports.free_port()
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}", "--model_name=nn",
                             f"--model_base_path={base}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ServingClient(f"127.0.0.1:{port}", timeout=10) as client:
            client.wait_available("nn", timeout=120)
        others = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        assert others, "the server has threads besides its main one"
        assert ctypes.CDLL(None, use_errno=True).tgkill(proc.pid, others[-1], signal.SIGTERM) == 0
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
