"""The stand-in model server run the way TensorFlow Serving's own end-to-end tests run the real one.

Each test follows one test of tensorflow_serving/model_servers/tensorflow_model_server_test.py (with
test_util/tensorflow_model_server_test_base.py: RunServer, VerifyPredictRequest, WaitForServerReady), named in
its docstring, over models these tests build as upstream's testdata/saved_model_half_plus_two.py builds its own
(tests/remote/serving_models.py): y = 0.5 x + 2 ("half_plus_two") or + 3 ("half_plus_three"), x declared
[None, 1], each version in a zero-padded folder, 00000123, as upstream ships them. Real processes and sockets
on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest

import model_server
from tests.conftest import REMOTE, wait_until
from tests.remote.serving_models import export_half_plus, export_half_plus_tflite
from tflab import ports
from tflab.client import ServingClient, serving_apis

pytestmark = pytest.mark.slow

VERSION = 123
FOLDER = "00000123"


def start(args: list[str], log_path) -> tuple[subprocess.Popen, int, int]:
    """A model_server.py process with REST, as RunServer starts tensorflow_model_server: (process, gRPC, REST)."""
    port, rest = ports.free_port(), ports.free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}",
                             f"--rest_api_port={rest}", "--file_system_poll_wait_seconds=0.5", *args],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, port, rest


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


def wait_ready(proc, port: int, log_path) -> None:
    """WaitForServerReady: a Predict for a missing model answers "Servable not found" once the server serves."""
    def ready():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            predict(f"127.0.0.1:{port}", model="intentionally_missing_model", timeout=5)
        except grpc.RpcError as error:
            return "Servable" in (error.details() or "")
        return True
    wait_until(ready, timeout=120, interval=0.2, what="the model server to serve")


def predict(address: str, model: str = "default", shape=(1,), output_filter=True, timeout: float = 10):
    """VerifyPredictRequest's request: x = [2.0] with shape [1] (or [1, 1], its batch_input), output_filter y."""
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.float_val.append(2.0)
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    if output_filter:
        request.output_filter.append("y")
    with grpc.insecure_channel(address) as channel:
        return apis.prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def rest_post(rest: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{rest}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def models(tf, tmp_path_factory):
    """half_plus_two and half_plus_three as SavedModels, and half_plus_two as TF Lite models with and without a
    SignatureDef, each in <base>/00000123. half_plus_two's folder also holds a model.tflite of half_plus_three,
    so which of the two is served shows."""
    root = tmp_path_factory.mktemp("upstream")
    export_half_plus(tf, str(root / "half_plus_two" / FOLDER), b=2.0)
    export_half_plus_tflite(tf, str(root / "half_plus_two" / FOLDER), b=3.0)
    export_half_plus(tf, str(root / "half_plus_three" / FOLDER), b=3.0)
    export_half_plus_tflite(tf, str(root / "tflite" / FOLDER), b=2.0)
    export_half_plus_tflite(tf, str(root / "tflite_with_sigdef" / FOLDER), b=2.0, with_signature_def=True)
    return root


@pytest.fixture(scope="module")
def server(models):
    """RunServer('default', saved_model_half_plus_two_cpu): --model_name=default, its base path, REST and a UNIX
    socket (GRPC_SOCKET_PATH)."""
    sock = models / "grpc.sock"
    log_path = models / "server.log"
    proc, port, rest = start(["--model_name=default", f"--model_base_path={models / 'half_plus_two'}",
                              f"--grpc_socket_path={sock}", "--grpc_channel_arguments=grpc.so_reuseaddr=1"], log_path)
    try:
        wait_ready(proc, port, log_path)
        yield {"address": f"127.0.0.1:{port}", "rest": rest, "sock": sock, "log": log_path}
    finally:
        stop(proc)


def test_a_version_in_a_zero_padded_folder_is_loaded_from_that_folder(server):
    """testPredictSavedModel and testGetModelStatus: upstream's models live in <base>/00000123, which
    file_system_storage_path_source.cc reads as version 123 (IndexChildrenByVersion, absl::SimpleAtoi) and loads
    from the folder as named (AspireVersion joins the base path and the child's own name)."""
    response = predict(server["address"])
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.version.value == VERSION
    assert response.model_spec.name == "default" and response.model_spec.signature_name == "serving_default"
    (status,) = ServingClient(server["address"], timeout=10).status("default")
    assert (status.version, status.state, status.error) == (VERSION, "AVAILABLE", "")
    # The folder also holds a model.tflite (of half_plus_three): without --prefer_tflite_model the SavedModel serves.
    assert f"serving default version {VERSION} from {server['sock'].parent / 'half_plus_two' / FOLDER}" in \
        server["log"].read_text()


def test_version_folders_are_read_as_tf_serving_reads_them(tmp_path):
    """file_system_storage_path_source.cc IndexChildrenByVersion: a folder whose name reads as an int64 is that
    version; of two folders naming one version the last in name order is loaded ("Duplicate version directories
    detected"); other names, files and numbers beyond int64 are not versions."""
    for name in ("00000123", "124", "0007", "7", "12a", "99999999999999999999", "-5"):
        (tmp_path / name).mkdir()
    (tmp_path / "200").write_text("a file, not a version")
    assert model_server.version_folders(str(tmp_path)) == {7: "7", 123: "00000123", 124: "124"}
    assert model_server.version_folders(str(tmp_path / "missing")) == {}


def test_a_feed_is_not_checked_against_the_signatures_declared_shape(server):
    """VerifyPredictRequest feeds x = [2.0] with shape [1] where the signature declares [None, 1] (and, as its
    batch_input, [1, 1]); TF Serving answers 3.0 for both: a fed tensor replaces the placeholder in TensorFlow's
    C++ runtime, which checks its dtype, never its shape against the placeholder's. Without the output_filter,
    every output is answered (specify_output=False)."""
    for shape in ((1,), (1, 1)):
        response = predict(server["address"], shape=shape)
        assert list(response.outputs["y"].float_val) == [3.0]
        assert [d.size for d in response.outputs["y"].tensor_shape.dim] == list(shape)
    assert list(predict(server["address"], output_filter=False).outputs["y"].float_val) == [3.0]


def test_rest_predict_takes_one_scalar_per_instance_in_rows_and_columns(server):
    """testPredictREST: {"instances": [2.0, 3.0, 4.0]} -> {"predictions": [3.0, 3.5, 4.0]}; testPredictColumnarREST:
    {"inputs": [2.0, 3.0, 4.0]} -> {"outputs": [3.0, 3.5, 4.0]}: scalars per instance for x declared [None, 1]."""
    path = "/v1/models/default:predict"
    assert rest_post(server["rest"], path, {"instances": [2.0, 3.0, 4.0]}) == {"predictions": [3.0, 3.5, 4.0]}
    assert rest_post(server["rest"], path, {"inputs": [2.0, 3.0, 4.0]}) == {"outputs": [3.0, 3.5, 4.0]}


def test_predict_over_the_unix_socket(server):
    """testPredictUDS: the same Predict over --grpc_socket_path."""
    assert list(predict(f"unix:{server['sock']}", output_filter=False).outputs["y"].float_val) == [3.0]


def test_models_from_a_good_model_config_file(models, tmp_path):
    """testGoodModelConfig (testdata/good_model_config.txt): two models from one config, each answering its own
    value, with and without an output filter."""
    config = tmp_path / "good_model_config.txt"
    config.write_text("model_config_list: {\n" + "".join(
        f'  config: {{ name: "{name}", base_path: "{models / name}", model_platform: "tensorflow" }}\n'
        for name in ("half_plus_two", "half_plus_three")) + "}\n")
    log_path = tmp_path / "server.log"
    proc, port, _ = start([f"--model_config_file={config}"], log_path)
    try:
        wait_ready(proc, port, log_path)
        for name, value in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
            for output_filter in (True, False):
                response = predict(f"127.0.0.1:{port}", model=name, output_filter=output_filter)
                assert list(response.outputs["y"].float_val) == [value]
                assert response.model_spec.version.value == VERSION
    finally:
        stop(proc)


def test_a_bad_model_config_file_gets_protobufs_parse_error_on_stderr(tmp_path):
    """testBadModelConfig (testdata/bad_model_config.txt, "improperly formatted file"): stderr holds protobuf's
    text-format parser's words, "Error parsing text-format tensorflow.serving.ModelServerConfig" (TF Serving's
    util/proto_util.h ParseProtoTextFile -> TextFormat::ParseFromString), and the server does not start."""
    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file")
    done = subprocess.run([sys.executable, str(REMOTE / "model_server.py"), f"--port={ports.free_port()}",
                           f"--model_config_file={config}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    line = next(line for line in done.stderr.splitlines() if "Error parsing text-format" in line)
    assert line.startswith("model_server: bad configuration: Error parsing text-format "
                           "tensorflow.serving.ModelServerConfig: 1:"), line
    assert "Running gRPC ModelServer" not in done.stdout


def test_the_ports_open_only_after_the_first_load(models, tmp_path):
    """server.cc Server::BuildAndStart creates the ServerCore, which loads the first config and waits for it, and
    only then adds its listening ports: until the first version loads a client's connection is refused (which
    WaitForServerReady retries every second) instead of accepted and left waiting for its deadline. Here the
    first attempt fails (the folder holds no model yet), the server waits for its retry, and the model arrives."""
    base = tmp_path / "late"
    (base / FOLDER).mkdir(parents=True)
    log_path = tmp_path / "server.log"
    proc, port, rest = start(["--model_name=default", f"--model_base_path={base}", "--max_num_load_retries=100",
                              "--load_retry_interval_micros=1000000"], log_path)
    try:
        wait_until(lambda: "{name: default version: 123} failed" in log_path.read_text(), timeout=120,
                   what="the first load attempt to fail")
        for target in (port, rest):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", target), timeout=5).close()
        with pytest.raises(grpc.RpcError) as info:
            predict(f"127.0.0.1:{port}", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # refused, not DEADLINE_EXCEEDED
        staged = tmp_path / "staged"
        shutil.copytree(models / "half_plus_two" / FOLDER, staged)
        os.remove(staged / "model.tflite")
        for item in staged.iterdir():  # each file whole (a rename), the next retry loads them
            os.rename(item, base / FOLDER / item.name)
        wait_ready(proc, port, log_path)
        assert list(predict(f"127.0.0.1:{port}").outputs["y"].float_val) == [3.0]
    finally:
        stop(proc)


def test_tf_lite_models_with_prefer_tflite_model(models, tmp_path):
    """testPredictOnTfLite and testPredictWithSignatureDefOnTfLite (RunServer(..., model_type='tflite') adds
    --prefer_tflite_model=true): a version folder's model.tflite is served (saved_model_bundle_factory.cc
    TfLiteModelFound) through TF Lite (tflite_session.cc). A model without SignatureDefs gets serving_default of
    its tensors ("x" -> "y"); one with them (the input tensor named tflite_input, the signature's x naming
    tflite_input:0) is served through them. Where a folder holds both a SavedModel and a model.tflite (of
    half_plus_three here), the TF Lite model is served."""
    config = tmp_path / "tflite.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{models / name}" model_platform: "tensorflow" }}\n'
        for name in ("tflite", "tflite_with_sigdef", "half_plus_two")) + "}\n")
    log_path = tmp_path / "server.log"
    proc, port, rest = start([f"--model_config_file={config}", "--prefer_tflite_model=true"], log_path)
    try:
        wait_ready(proc, port, log_path)
        for name, value in (("tflite", 3.0), ("tflite_with_sigdef", 3.0), ("half_plus_two", 4.0)):
            response = predict(f"127.0.0.1:{port}", model=name, output_filter=False)
            assert list(response.outputs["y"].float_val) == [value], name
            assert response.model_spec.version.value == VERSION
        apis = serving_apis()
        request = apis.get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "tflite_with_sigdef"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request,
                                                                                                      timeout=10)
        signatures = apis.get_model_metadata_pb2.SignatureDefMap()
        answer.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert (signature.inputs["x"].name, signature.outputs["y"].name) == ("tflite_input", "y")
        answer = rest_post(rest, "/v1/models/tflite:predict", {"instances": [[2.0]]})
        assert answer == {"predictions": [[3.0]]}
        assert "does not implement" not in log_path.read_text()  # the flag is TF Serving's, implemented
    finally:
        stop(proc)
