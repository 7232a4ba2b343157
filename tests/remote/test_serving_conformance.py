"""The stand-in model server against TensorFlow Serving's own documentation, tests and code.

Each test names the upstream file (github.com/tensorflow/serving, tensorflow_serving/...) whose behaviour
it checks. One server process serves the whole module, from a --model_config_file: the lab's model
("nn", versions 1 and 2 with the labels stable and canary), a model with two inputs and three
outputs of different dtypes ("multi"), a model with classify and regress signatures over tf.Examples
("census", tests/remote/serving_models.py) and the same saved under the tags serve,tflab ("tagged"),
which a server with the default --saved_model_tags cannot load. Real requests over 127.0.0.1; every
wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest

import model_server
from tests.conftest import REMOTE, wait_until
from tests.remote.serving_models import example, export_census, fill_input, run_directly, stub
from tflab import ports
from tflab.client import ServingClient, column_tensor, serving_apis

pytestmark = pytest.mark.slow

MODEL_CONFIG = """
model_config_list {{
  config {{
    name: "nn"
    base_path: "{nn}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "census"
    base_path: "{census}"
    model_platform: "tensorflow"
  }}
  config {{
    name: "multi"
    base_path: "{multi}"
    model_platform: "tensorflow"
  }}
}}
"""
MONITORING_CONFIG = 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n'
BATCHING_PARAMETERS = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 2 }
"""


def export_multi(tf, path: str) -> None:
    """A SavedModel whose default signature takes a: float32 [None, 2] and b: int64 [None] and answers
    sum (float32), twice (int64) and half (float64), one value per row each."""

    class Multi(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.int64)])
        def serve(self, a, b):
            return {"sum": tf.reduce_sum(a, axis=1), "twice": b * 2, "half": tf.cast(a[:, 0], tf.float64) / 2}

    module = Multi()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def write_warmup(tf, path, count: int) -> None:
    """assets.extra/tf_serving_warmup_requests: PredictLog records in a TFRecord file (g3doc/saved_model_warmup.md)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(nn_request([float(i)]))
            writer.write(log.SerializeToString())


@pytest.fixture(scope="module")
def server(lab_steps_run, tf, tmp_path_factory):
    """One model_server.py process over a model config, with REST, a UNIX socket and Prometheus metrics."""
    workdir, report, _ = lab_steps_run
    root = tmp_path_factory.mktemp("conformance")
    for version in (1, 2):
        shutil.copytree(workdir / "models" / "nn" / "1", root / "nn" / str(version))
    export_multi(tf, str(root / "multi" / "1"))
    export_census(tf, str(root / "census" / "1"))
    export_census(tf, str(root / "tagged" / "1"), tags=("serve", "tflab"))
    write_warmup(tf, root / "nn" / "2" / "assets.extra" / "tf_serving_warmup_requests", count=3)
    config = root / "models.config"
    config.write_text(MODEL_CONFIG.format(nn=root / "nn", multi=root / "multi", census=root / "census"))
    monitoring = root / "monitoring.config"
    monitoring.write_text(MONITORING_CONFIG)
    batching = root / "batching.config"
    batching.write_text(BATCHING_PARAMETERS)
    port, rest = ports.free_port(), ports.free_port()
    sock = root / "grpc.sock"
    log_path = root / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}",
                             f"--rest_api_port={rest}", f"--model_config_file={config}",
                             f"--monitoring_config_file={monitoring}", f"--grpc_socket_path={sock}",
                             "--file_system_poll_wait_seconds=0.2", "--enable_batching=true",
                             # serving_config.md: labels given at start name versions not loaded yet.
                             "--allow_version_labels_for_unavailable_models",
                             "--load_retry_interval_micros=100000",
                             f"--batching_parameters_file={batching}", "--num_load_threads", "2",
                             "--rest_api_enable_cors_support=true", "--flush_filesystem_caches=true",
                             "--enable_grpc_healthcheck_service"],
                            stdout=log, stderr=subprocess.STDOUT)
    client = ServingClient(f"127.0.0.1:{port}", timeout=10)
    try:
        client.wait_available("nn", version=2, timeout=120)
        client.wait_available("multi", timeout=60)
        client.wait_available("census", timeout=60)
        t = report["training"]
        yield {"port": port, "rest": rest, "client": client, "proc": proc, "log": log_path, "sock": sock,
               "root": root, "config": config, "expect": lambda x: x * t["slope"] + t["intercept"]}
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
        log.close()


def nn_request(xs=(1.0, 2.0), **spec):
    request = serving_apis().predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "nn")
    request.model_spec.signature_name = spec.pop("signature_name", "prediction")
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    column_tensor(list(xs), request.inputs["input"])
    return request


def multi_request(rows=((1.0, 2.0, 3),), outputs=()):
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    a, b = request.inputs["a"], request.inputs["b"]
    a.dtype, b.dtype = 1, 9  # DT_FLOAT, DT_INT64
    a.tensor_shape.dim.add().size = len(rows)
    a.tensor_shape.dim.add().size = 2
    b.tensor_shape.dim.add().size = len(rows)
    for x, y, n in rows:
        a.float_val.extend([x, y])
        b.int64_val.append(n)
    request.output_filter.extend(outputs)
    return request


def refusal(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10)
    return info.value


def http(server, method, path, body=None):
    """(status, parsed JSON or text, raw text) of one REST call."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = urllib.request.Request(f"http://127.0.0.1:{server['rest']}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    try:
        return status, json.loads(raw), raw
    except ValueError:
        return status, raw, raw


# --------------------------------------------------------------------------- gRPC Predict


def test_predict_answers_in_the_typed_fields(server):
    """servables/tensorflow/predict_util.cc PostProcessPredictionResult: kAsProtoField, i.e. TensorFlow's
    Tensor::AsProtoField (float_val for DT_FLOAT, int64_val for DT_INT64, double_val for DT_DOUBLE; every
    element, no tensor_content). model_servers/tensorflow_model_server_test.py reads `.float_val`."""
    response = stub(server).Predict(nn_request([1.0, 2.0, 3.0]), timeout=10)
    out = response.outputs["output"]
    assert out.dtype == 1 and out.tensor_content == b""
    assert [d.size for d in out.tensor_shape.dim] == [3, 1]
    assert list(out.float_val) == pytest.approx([server["expect"](x) for x in (1.0, 2.0, 3.0)], rel=1e-5)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("nn", 2, "prediction")
    multi = stub(server).Predict(multi_request([(1.0, 2.0, 3), (0.5, 0.25, -4)]), timeout=10)
    assert list(multi.outputs["sum"].float_val) == [3.0, 0.75]
    assert list(multi.outputs["twice"].int64_val) == [6, -8] and multi.outputs["twice"].dtype == 9
    assert list(multi.outputs["half"].double_val) == [0.5, 0.25] and multi.outputs["half"].dtype == 2
    assert all(not t.tensor_content for t in multi.outputs.values())
    # tflab's own client reads the same answer.
    assert server["client"].predict([1.0]).outputs == pytest.approx([server["expect"](1.0)], rel=1e-5)


def test_a_request_without_a_model_spec_is_invalid_argument(server):
    """servables/tensorflow/predict_impl.cc, get_model_metadata_impl.cc, model_servers/get_model_status_impl.cc:
    no model_spec is INVALID_ARGUMENT "Missing ModelSpec"."""
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    column_tensor([1.0], request.inputs["input"])
    error = refusal(stub(server).Predict, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    metadata = apis.get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.metadata_field.append("signature_def")
    error = refusal(stub(server).GetModelMetadata, metadata)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    models = apis.model_service_pb2_grpc.ModelServiceStub(server["client"]._channel)
    error = refusal(models.GetModelStatus, apis.get_model_status_pb2.GetModelStatusRequest())
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_output_filter_selects_and_refuses_duplicates_and_unknown_aliases(server):
    """servables/tensorflow/predict_util.cc PreProcessPrediction: the filter's outputs only; an unknown alias
    and a duplicate one are INVALID_ARGUMENT with its messages."""
    response = stub(server).Predict(multi_request(outputs=["twice"]), timeout=10)
    assert list(response.outputs) == ["twice"]
    error = refusal(stub(server).Predict, multi_request(outputs=["twice", "twice"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "duplicate output tensor alias: twice"
    error = refusal(stub(server).Predict, multi_request(outputs=["nope"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("output tensor alias not found in signature: nope Outputs expected to be in the "
                               "set {half,sum,twice}.")


def test_inputs_that_do_not_match_the_signature_get_tf_servings_messages(server):
    """servables/tensorflow/predict_util.cc VerifyRequestInputsSize: a missing input is INVALID_ARGUMENT
    "input size does not match signature"; an unknown signature is FAILED_PRECONDITION (RunPredict)."""
    request = multi_request()
    del request.inputs["b"]
    error = refusal(stub(server).Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input size does not match signature: 1!=2 len({a}) != len({a,b}). "
                               "Sent extra: {}. Missing but required: {b}.")
    error = refusal(stub(server).Predict, nn_request(signature_name="nope"))
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                               'Serving signature key "nope" not found.')


def test_versions_and_labels_from_the_model_config(server):
    """g3doc/serving_config.md (model_version_policy specific, version_labels) and model_servers/server_core.cc
    (a label names a version; an unknown label is INVALID_ARGUMENT "Unrecognized servable version label");
    core/basic_manager.cc (an unknown version is NOT_FOUND "Servable not found for request: Specific(...)")."""
    call = stub(server).Predict
    assert call(nn_request(version_label="stable"), timeout=10).model_spec.version.value == 1
    assert call(nn_request(version_label="canary"), timeout=10).model_spec.version.value == 2
    assert call(nn_request(version=1), timeout=10).model_spec.version.value == 1
    assert call(nn_request(), timeout=10).model_spec.version.value == 2
    error = refusal(call, nn_request(version_label="nope"))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Unrecognized servable version label: nope")
    error = refusal(call, nn_request(version=9))
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "Servable not found for request: Specific(nn, 9)")
    assert {(s.version, s.state) for s in server["client"].status("nn")} == {(1, "AVAILABLE"), (2, "AVAILABLE")}


# --------------------------------------------------------------------------- gRPC, other methods


def test_classify_regress_and_multi_inference_refuse_a_predict_signature(server):
    """servables/tensorflow/classifier.cc and regressor.cc (GetClassificationSignatureDef,
    PreProcessClassification, PreProcessRegression) with --enable_signature_method_name_check off, TF Serving's
    default (model_servers/server.h): a signature is checked by its inputs and outputs, so the lab's predict
    signature (input "input") is INVALID_ARGUMENT "No classification inputs found in SignatureDef: ...";
    multi_inference.cc: a task's method must be classify or regress (UNIMPLEMENTED otherwise)."""
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    for method, kind, name in ((stub(server).Classify, "classification", "classify"),
                               (stub(server).Regress, "regression", "regress")):
        request = (classification_pb2.ClassificationRequest if name == "classify"
                   else regression_pb2.RegressionRequest)()
        request.model_spec.name, request.model_spec.signature_name = "nn", "prediction"
        request.input.example_list.examples.add()
        error = refusal(method, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The whole SignatureDef, as its DebugString: it is under 1,024 characters, where TF Serving cuts a gRPC
        # error (model_servers/grpc_status_util.cc).
        assert error.details().startswith(f"No {kind} inputs found in SignatureDef: inputs {{\n  key: \"input\"")
        assert error.details().endswith('method_name: "tensorflow/serving/predict"\n'), error.details()
        request.model_spec.signature_name = "nope"
        assert refusal(method, request).details() == "No signature was found with the name: nope"
    request = inference_pb2.MultiInferenceRequest()
    request.input.example_list.examples.add()
    task = request.tasks.add()
    task.model_spec.name, task.model_spec.signature_name = "nn", "prediction"
    task.method_name = "tensorflow/serving/classify"
    error = refusal(stub(server).MultiInference, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No classification inputs found in SignatureDef: ")
    task.method_name = "tensorflow/serving/predict"
    error = refusal(stub(server).MultiInference, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                               "Unsupported signature method_name: tensorflow/serving/predict")


# --------------------------------------------------------------------------- Classify, Regress, MultiInference


def census_request(kind: str, xs=(0.5, 2.0, -1.0), signature: str = "", context=None, shifts=None, name="census"):
    """A ClassificationRequest or RegressionRequest with one tf.Example per x."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    request = (classification_pb2.ClassificationRequest if kind == "classify" else regression_pb2.RegressionRequest)()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    fill_input(request.input, xs, context, shifts)
    return request


def serialized_examples(input_proto) -> list:
    """What util.cc InputToSerializedExampleTensor feeds: each example's bytes, after the context's when there
    is one."""
    if input_proto.WhichOneof("kind") == "example_list_with_context":
        head = input_proto.example_list_with_context.context.SerializeToString()
        return [head + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    return [e.SerializeToString() for e in input_proto.example_list.examples]


def classifications(result) -> list:
    return [[(c.label, c.score) for c in item.classes] for item in result.classifications]


def test_classify_answers_the_classes_and_scores_the_model_computes(server, tf):
    """servables/tensorflow/classifier.cc: the examples go serialized to the signature's input "inputs"
    (util.cc PerformOneShotTensorComputation), and PostProcessClassificationResult answers one Classifications
    per example with a Class per column, its label from "classes" and its score from "scores" (a label is ""
    without "classes", a score 0 without "scores"); util.cc MakeModelSpec names the model, version and
    signature (serving_default for an empty name). model_servers/tensorflow_model_server_test.py testClassify."""
    path = str(server["root"] / "census" / "1")
    request = census_request("classify")
    response = stub(server).Classify(request, timeout=10)
    direct = run_directly(tf, path, "serving_default", serialized_examples(request.input))
    want = [[(label.decode(), score) for label, score in zip(labels, scores)]
            for labels, scores in zip(direct["classes"].tolist(), direct["scores"].tolist())]
    got = classifications(response.result)
    assert [[label for label, _ in row] for row in got] == [[label for label, _ in row] for row in want]
    assert [score for row in got for _, score in row] == pytest.approx([score for row in want for _, score in row],
                                                                      abs=1e-6)
    assert len(got) == 3 and all(len(row) == 3 for row in got)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("census", 1, "serving_default")
    scores_only = stub(server).Classify(census_request("classify", signature="scores_only"), timeout=10)
    assert [[label for label, _ in row] for row in classifications(scores_only.result)] == [[""] * 3] * 3
    assert [[s for _, s in row] for row in classifications(scores_only.result)] == [[s for _, s in row] for row in got]
    classes_only = stub(server).Classify(census_request("classify", signature="classes_only"), timeout=10)
    assert classifications(classes_only.result) == [[(label, 0.0) for label, _ in row] for row in got]


def test_regress_with_a_context_answers_the_values_the_model_computes(server, tf):
    """servables/tensorflow/regressor.cc PostProcessRegressionResult: one Regression per example, from the
    output "outputs" ([batch] or [batch, 1], float); util.cc InputToSerializedExampleTensor: with
    example_list_with_context each example is fed as the context's bytes followed by its own, so an example's
    feature wins over the context's. model_servers/tensorflow_model_server_test.py testRegress, and
    testRegressTf2: a TF2 signature (method_name predict) shaped as a regression one is served too."""
    path = str(server["root"] / "census" / "1")
    request = census_request("regress", signature="regress", context={"shift": 1.0}, shifts=(None, 0.0, None))
    response = stub(server).Regress(request, timeout=10)
    values = [r.value for r in response.result.regressions]
    assert values == [4.0, 5.0, 1.0]  # 2 (x + shift) + 1, the second example's shift 0 winning over the context
    direct = run_directly(tf, path, "regress", serialized_examples(request.input))["outputs"]
    assert values == direct.ravel().tolist()
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("census", 1, "regress")
    request.model_spec.signature_name = "tf2_regress"
    assert [r.value for r in stub(server).Regress(request, timeout=10).result.regressions] == values


@pytest.mark.parametrize("kind, signature, message", [
    # classifier.cc / regressor.cc GetClassificationSignatureDef, PreProcessClassification, PreProcessRegression
    ("classify", "nope", "No signature was found with the name: nope"),
    ("classify", "two_inputs", "Expected one input Tensor."),
    ("regress", "serving_default", "Expected one output Tensor."),
    ("regress", "misnamed_input", "No regression inputs found in SignatureDef: inputs {\n  key: \"examples\""),
    ("classify", "no_class_outputs",
     'Expected classification signature outputs to contain at least one of "classes" or "scores". Signature was: '),
    ("classify", "regress", 'Expected classification signature outputs to contain at least one of "classes" or '),
    # classifier.cc PostProcessClassificationResult
    ("classify", "scores_1d", "Expected Tensor shape: [batch_size num_classes] but got [3]"),
    ("classify", "scores_double", "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    ("classify", "classes_int", "Expected classes Tensor of DT_STRING. Got: DT_INT64"),
    ("classify", "classes_scores_differ", "Tensors class and score should match in dim_size(1). Got 3 vs. 2"),
    ("classify", "scores_extra_row", "Expected scores output batch size of 3. Got: 4"),
    # regressor.cc PostProcessRegressionResult
    ("regress", "regress_wide", "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [3,2]"),
    ("regress", "regress_double", "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE"),
    ("regress", "regress_extra_row", "Input batch size did not match output batch size: 3 vs. 4"),
])
def test_classify_and_regress_check_signatures_and_outputs_as_tf_serving_does(server, kind, signature, message):
    """servables/tensorflow/classifier.cc and regressor.cc: each malformed signature of the census model
    (tests/remote/serving_models.py) gets INVALID_ARGUMENT with the message of the check it fails."""
    call = stub(server).Classify if kind == "classify" else stub(server).Regress
    error = refusal(call, census_request(kind, signature=signature))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message), error.details()


def test_classify_refuses_an_empty_input_and_passes_on_the_models_parse_errors(server):
    """servables/tensorflow/util.cc InputToSerializedExampleTensor: no examples is INVALID_ARGUMENT
    "Input is empty."; classification_service.cc: no model_spec is "Missing ModelSpec"; an example the
    model's parsing op refuses gets that op's status, passed on from Session::Run."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "census"
    error = refusal(stub(server).Classify, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    request.input.example_list_with_context.context.features.feature["shift"].float_list.value.append(1.0)
    assert refusal(stub(server).Classify, request).details() == "Input is empty."
    request = regression_pb2.RegressionRequest()
    fill_input(request.input, [1.0])
    error = refusal(stub(server).Regress, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.name, request.model_spec.signature_name = "census", "regress"
    request.input.example_list.examples.add()  # no "x", which the model requires
    error = refusal(stub(server).Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "x" in error.details()
    request.model_spec.name = "nope"
    assert refusal(stub(server).Regress, request).code() == grpc.StatusCode.NOT_FOUND
    assert server["proc"].poll() is None


def test_multi_inference_runs_classify_and_regress_over_the_same_examples(server):
    """servables/tensorflow/multi_inference.cc: the tasks' signatures run in one session call over the same
    examples (every signature's input fed the same serialized examples), each result post-processed as
    Classify or Regress does, with its own ModelSpec. tensorflow_model_server_test.py testMultiInference."""
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    fill_input(request.input, (0.5, 2.0, -1.0), context={"shift": 1.0}, shifts=(None, 0.0, None))
    for signature, method in (("regress", "tensorflow/serving/regress"), ("", "tensorflow/serving/classify"),
                              ("regress_other_input", "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = "census", signature, method
    response = stub(server).MultiInference(request, timeout=10)
    assert [(r.model_spec.name, r.model_spec.signature_name, r.model_spec.version.value) for r in response.results] \
        == [("census", "regress", 1), ("census", "serving_default", 1), ("census", "regress_other_input", 1)]
    regress = census_request("regress", signature="regress")
    regress.input.CopyFrom(request.input)
    assert response.results[0].regression_result == stub(server).Regress(regress, timeout=10).result
    classify = census_request("classify")
    classify.input.CopyFrom(request.input)
    assert response.results[1].classification_result == stub(server).Classify(classify, timeout=10).result
    lengths = [r.value for r in response.results[2].regression_result.regressions]
    assert lengths == [float(len(e)) for e in serialized_examples(request.input)]


def test_multi_inference_refuses_as_multi_inference_cc_does(server):
    """servables/tensorflow/multi_inference.cc Infer, in its order, after multi_inference_helper.cc has taken
    the version the first task names (server_core.cc: an empty name is "ModelSpec has no name specified.")."""
    from tensorflow_serving.apis import inference_pb2

    def multi(*tasks, examples=1):
        request = inference_pb2.MultiInferenceRequest()
        fill_input(request.input, [1.0] * examples)
        for name, signature, method in tasks:
            task = request.tasks.add()
            task.model_spec.name, task.model_spec.signature_name, task.method_name = name, signature, method
        return refusal(stub(server).MultiInference, request)

    classify, regress = "tensorflow/serving/classify", "tensorflow/serving/regress"
    cases = [
        ((), "INVALID_ARGUMENT", "ModelSpec has no name specified."),
        ((("census", "regress", regress), ("", "", classify)), "INVALID_ARGUMENT",
         "Found ModelSpec with an empty model name."),
        ((("census", "regress", regress), ("nn", "", classify)), "INVALID_ARGUMENT",
         "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
        ((("census", "regress", regress), ("census", "regress", regress)), "INVALID_ARGUMENT",
         "Duplicate evaluation of signature: regress"),
        ((("census", "nope", regress),), "INVALID_ARGUMENT", "Requested signature not found in model graph: nope"),
        ((("census", "predict", "tensorflow/serving/predict"),), "UNIMPLEMENTED",
         "Unsupported signature method_name: tensorflow/serving/predict"),
        ((("census", "regress", classify),), "INVALID_ARGUMENT",
         'Expected classification signature outputs to contain at least one of "classes" or "scores".'),
        ((("nope", "", classify),), "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    ]
    for tasks, code, message in cases:
        error = multi(*tasks)
        assert (error.code().name, error.details()[:len(message)]) == (code, message), tasks
    error = multi(("census", "regress", regress), examples=0)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")


def test_predict_runs_a_signature_of_any_method_name_by_default(server):
    """servables/tensorflow/predict_util.cc VerifySignature: the method_name is checked only with
    --enable_signature_method_name_check; by default Predict runs a classify signature (fed its "inputs"
    tensor directly) and one whose method_name no API has."""
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "census", "custom_method"
    column_tensor([1.0, 2.0], request.inputs["x"])
    response = stub(server).Predict(request, timeout=10)
    assert list(response.outputs["value"].float_val) == [3.0, 5.0]
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = "census"
    examples = request.inputs["inputs"]
    examples.dtype = 7  # DT_STRING
    examples.tensor_shape.dim.add().size = 1
    examples.string_val.append(example(x=2.0).SerializeToString())
    response = stub(server).Predict(request, timeout=10)
    assert list(response.outputs["classes"].string_val) == [b"low", b"mid", b"high"]
    assert sorted(response.outputs) == ["classes", "scores"]


# --------------------------------------------------------------------------- REST classify and regress


def rest_classify(server, path: str, body) -> tuple:
    status, answer, _ = http(server, "POST", path, body)
    return status, answer


def test_rest_classify_and_regress_answer_as_the_grpc_apis_do(server):
    """g3doc/api_rest.md "Classify and Regress API" and util/json_tensor.cc: "examples" (and an optional
    "context") become tf.Examples (FillClassifyRegressRequestFromJson: a decimal is a float feature, a string
    or {"b64": ...} bytes, a whole number int64), the answer is {"results": [[[label, score], ...], ...]} or
    {"results": [value, ...]} (MakeJsonFromClassificationResult / MakeJsonFromRegressionResult), floats
    printed as float32. tensorflow_model_server_test.py testClassifyREST ([["", 3.0]] for a scores-only
    signature) and testRegressREST."""
    import numpy as np

    status, body = rest_classify(server, "/v1/models/census:classify", {"examples": [{"x": 0.5}, {"x": 2.0}]})
    assert status == 200 and list(body) == ["results"]
    grpc_answer = classifications(stub(server).Classify(census_request("classify", xs=(0.5, 2.0)), timeout=10).result)
    assert [[label for label, _ in row] for row in body["results"]] == [[label for label, _ in row]
                                                                        for row in grpc_answer]
    assert [[np.float32(s) for _, s in row] for row in body["results"]] == [[np.float32(s) for _, s in row]
                                                                            for row in grpc_answer]
    status, body = rest_classify(server, "/v1/models/census/versions/1:classify",
                                 {"signature_name": "scores_only", "examples": [{"x": 0.5}]})
    assert status == 200 and [label for label, _ in body["results"][0]] == ["", "", ""]
    status, body = rest_classify(server, "/v1/models/census:regress",
                                 {"signature_name": "regress", "context": {"shift": 1.0},
                                  "examples": [{"x": 0.5}, {"x": 2.0, "shift": [0.0]}, {"x": -1.0}]})
    assert (status, body) == (200, {"results": [4.0, 5.0, 1.0]})
    status, _, raw = http(server, "POST", "/v1/models/census:regress",
                          {"signature_name": "regress", "examples": [{"x": 0.1}]})
    assert status == 200 and raw == '{"results": [1.2]}'  # 2 * 0.1f + 1 as float32, shortest form
    # A whole number is an int64 feature: the model's float feature "x" refuses it, as in TF Serving.
    status, body = rest_classify(server, "/v1/models/census:regress", {"signature_name": "regress",
                                                                      "examples": [{"x": 2}]})
    assert status == 400 and "x" in body["error"]


@pytest.mark.parametrize("path, body, message", [
    ("census:classify", {}, "When method is classify, key 'examples' is expected and was not found"),
    ("census:regress", {"signature_name": "regress"},
     "When method is classify, key 'examples' is expected and was not found"),
    ("census:classify", {"examples": {}}, "Expecting 'examples' value to be an list/array"),
    ("census:classify", {"examples": []}, "'examples' value is an empty array"),
    ("census:classify", {"examples": [[1.0]]}, "Example must be JSON object but got JSON Array"),
    ("census:classify", {"context": 1, "examples": [{"x": 1.0}]}, "Example must be JSON object but got JSON Number"),
    ("census:classify", {"examples": [{"x": [1.0, "a"]}]}, "Unexpected element type in feature: x expecting type: float"),
    ("census:classify", {"examples": [{"x": ["a", 1]}]}, "Unexpected element type in feature: x expecting type: bytes"),
    ("census:classify", {"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
    ("census:classify", {"examples": [{"x": [[1.0]]}]}, "Feature: x has element with unexpected JSON type: Array"),
    ("census:classify", {"examples": [{"x": {"a": 1}}]}, "Feature: x has element with unexpected JSON type: Object"),
    ("census:classify", {"examples": [{"x": 18446744073709551615}]},
     "Feature: x has uint64_t element. Only int64_t is supported."),
    ("census:classify", {"examples": [{"x": {"b64": "!!"}}]}, "Unable to base64 decode"),
    ("census:classify", {"signature_name": 1, "examples": [{"x": 1.0}]}, "'signature_name' key must be a string value"),
    ("nn:classify", {"signature_name": "prediction", "examples": [{"x": 1.0}]},
     "No classification inputs found in SignatureDef: "),
    ("census:regress", {"examples": [{"x": 1.0}]}, "Expected one output Tensor."),
])
def test_rest_classify_and_regress_refusals_get_json_tensors_messages(server, path, body, message):
    """util/json_tensor.cc FillClassifyRegressRequestFromJson, MakeExampleFromJsonObject, AddValueToFeature (their
    messages, "When method is classify" for regress too), then classifier.cc / regressor.cc; INVALID_ARGUMENT is
    HTTP 400 (http_server.cc)."""
    status, answer = rest_classify(server, f"/v1/models/{path}", body)
    assert status == 400 and message in answer["error"], answer


TAGGED = """
  config {{
    name: "tagged"
    base_path: "{tagged}"
    model_platform: "tensorflow"
  }}
"""


def reload_request(server, text: str):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return request


def with_model(config: str, entry: str) -> str:
    """A model_config_list text with one more config entry."""
    return config.rstrip()[:-1] + entry + "}\n"


def model_service(server):
    return serving_apis().model_service_pb2_grpc.ModelServiceStub(server["client"]._channel)


def test_a_model_added_by_a_reload_that_fails_to_load_is_retried_then_reported(server):
    """--saved_model_tags (model_servers/main.cc): "tagged", whose only MetaGraphDef is tagged serve,tflab, does
    not load under the default "serve" (tensorflow/cc/saved_model/loader.cc: NOT_FOUND). Each attempt is retried
    --max_num_load_retries times (5), --load_retry_interval_micros apart (util/retrier.cc, core/loader_harness.cc);
    then the version ends with the loader's error. HandleReloadConfigRequest waits for the model it added and
    fails UNKNOWN "1 model(s) did not become available: ..." (server_core.cc WaitUntilModelsAvailable: "{", then
    "{" + ServableId::DebugString() + " due to error: " + status + "}, " per model, then "}"), the config staying
    applied; the error is the C++ loader's (tensorflow/cc/saved_model/reader.cc FindMetaGraphDef). A model removed
    by the next reload still shows its ended version in GetModelStatus (servable_state_monitor.cc keeps every
    servable's last state)."""
    original = server["config"].read_text()
    adding = reload_request(server, with_model(original, TAGGED.format(tagged=server["root"] / "tagged")))
    error = refusal(model_service(server).HandleReloadConfigRequest, adding)
    assert error.code() == grpc.StatusCode.UNKNOWN, error
    assert error.details() == ("1 model(s) did not become available: {{{name: tagged version: 1} due to error: "
                               "NOT_FOUND: Could not find meta graph def matching supplied tags: { serve }. To inspect "
                               "available tag-sets in the SavedModel, please use the SavedModel CLI: "
                               "`saved_model_cli`}, }"), error
    log = server["log"].read_text()
    assert "Retrying of Loading servable: {name: tagged version: 1} retry: 5" in log
    assert "Retrying of Loading servable: {name: tagged version: 1} exhausted max_num_retries: 5" in log
    (status,) = server["client"].status("tagged")
    assert status.version == 1 and status.state == "END"
    assert status.error.startswith("Could not find meta graph def matching supplied tags: { serve }."), status
    request = serving_apis().get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tagged"
    (version,) = model_service(server).GetModelStatus(request, timeout=10).model_version_status
    assert version.status.error_code == 5  # NOT_FOUND
    error = refusal(stub(server).Predict, nn_request(name="tagged", signature_name="predict"))
    assert error.details() == "Servable not found for request: Latest(tagged)"
    assert model_service(server).HandleReloadConfigRequest(reload_request(server, original), timeout=60)
    (status,) = server["client"].status("tagged")  # removed, and still listed as ended
    assert status.state == "END" and "Could not find meta graph def" in status.error
    assert server["client"].status("nn")


def test_a_label_names_only_an_available_version_and_a_refused_reload_changes_nothing(server):
    """server_core.cc UpdateModelVersionLabelMap, run before the rest of a reload: a label naming a version that
    is not available is FAILED_PRECONDITION "Request to assign label to version 3 of model nn, which is not
    currently available for inference", and nothing of that config is applied (here: census, left out, is still
    served). --allow_version_labels_for_unavailable_models (main.cc) lets a new label name it, never an
    existing one move to it (server_core_test.cc AssignExistingLabelToUnavailableVersionDisallowed)."""
    original = server["config"].read_text()
    without_census = original.split("  config {\n    name: \"census\"")[0] + "}\n"
    moved = without_census.replace('key: "stable" value: 1', 'key: "stable" value: 3')
    assert 'key: "stable" value: 3' in moved
    error = refusal(model_service(server).HandleReloadConfigRequest, reload_request(server, moved))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == ("Request to assign label to version 3 of model nn, which is not currently "
                               "available for inference")
    assert server["client"].status("census")[0].state == "AVAILABLE"  # not removed: nothing was applied
    request = nn_request(version_label="stable")
    assert stub(server).Predict(request, timeout=10).model_spec.version.value == 1
    new_label = original.replace('key: "canary" value: 2 }',
                                 'key: "canary" value: 2 }\n    version_labels { key: "next" value: 3 }')
    assert model_service(server).HandleReloadConfigRequest(reload_request(server, new_label), timeout=60)
    error = refusal(stub(server).Predict, nn_request(version_label="next"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(nn, 3)"
    assert model_service(server).HandleReloadConfigRequest(reload_request(server, original), timeout=60)


def start_failure(args: list[str]) -> subprocess.CompletedProcess:
    """A model server that cannot start: its exit and output."""
    port = ports.free_port()
    return subprocess.run([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_server_does_not_start_when_a_first_model_fails_or_a_label_names_no_available_version(
        server, tmp_path):
    """model_servers/main.cc: "Failed to start server. Error: <status>", exit -1 (255), when
    load_servables_fast.cc finds a model whose first version did not become available (after its retries:
    "1 servable(s) did not become available: {{{name: tagged version: 1} due to error: ...}, }"), or when the first
    config labels a version (none is available yet) without --allow_version_labels_for_unavailable_models
    (server_core.cc UpdateModelVersionLabelMap; g3doc/serving_config.md)."""
    done = start_failure([f"--model_base_path={server['root'] / 'tagged'}", "--model_name=tagged",
                          "--max_num_load_retries=1", "--load_retry_interval_micros=100000"])
    assert done.returncode == 255, done
    assert ("Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
            "{{{name: tagged version: 1} due to error: NOT_FOUND: Could not find meta graph def matching supplied "
            "tags: { serve }.") in done.stdout, done
    assert "Running gRPC ModelServer" not in done.stdout
    assert "Retrying of Loading servable: {name: tagged version: 1} retry: 1" in done.stderr
    config = tmp_path / "labels.config"
    config.write_text(MODEL_CONFIG.format(nn=server["root"] / "nn", multi=server["root"] / "multi",
                                          census=server["root"] / "census"))
    done = start_failure([f"--model_config_file={config}"])
    assert done.returncode == 255, done
    assert ("Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version 2 of model nn, "
            "which is not currently available for inference") in done.stdout, done  # "canary", the first by name


def test_metadata_for_a_label_and_a_version(server):
    """servables/tensorflow/get_model_metadata_impl.cc: the signature_def map of the version asked for."""
    apis = serving_apis()
    request = apis.get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name, request.model_spec.version_label = "nn", "stable"
    request.metadata_field.append("signature_def")
    response = stub(server).GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    sig_map = apis.get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert sig_map.signature_def["prediction"].method_name == "tensorflow/serving/predict"


def test_predict_over_the_grpc_unix_socket(server):
    """model_servers/main.cc --grpc_socket_path; tensorflow_model_server_test.py testPredictUDS."""
    with ServingClient(f"unix:{server['sock']}", timeout=10) as client:
        assert client.predict([2.0]).outputs == pytest.approx([server["expect"](2.0)], rel=1e-5)


# --------------------------------------------------------------------------- REST


def test_rest_metadata_has_tf_servings_json_shape(server):
    """g3doc/api_rest.md "Model Metadata API" and model_servers/http_rest_api_util.cc ToJsonString:
    {"model_spec": {name, signature_name, version}, "metadata": {"signature_def": {"signature_def": ...}}},
    proto field names kept; for the latest version, /versions/N and /labels/L."""
    status, body, _ = http(server, "GET", "/v1/models/nn/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "nn", "signature_name": "", "version": "2"}
    sig = body["metadata"]["signature_def"]["signature_def"]["prediction"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert sig["inputs"]["input"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
    assert http(server, "GET", "/v1/models/nn/versions/1/metadata")[1]["model_spec"]["version"] == "1"
    assert http(server, "GET", "/v1/models/nn/labels/canary/metadata")[1]["model_spec"]["version"] == "2"
    status, body, _ = http(server, "GET", "/v1/models/nn/versions/9/metadata")
    assert (status, body) == (404, {"error": "Servable not found for request: Specific(nn, 9)"})


def test_rest_status_of_a_version_and_an_unknown_version(server):
    """model_servers/get_model_status_impl.cc via http_rest_api_handler.cc ProcessModelStatusRequest:
    "Could not find version 9 of model nn" is NOT_FOUND, HTTP 404 (http_server.cc ToHTTPStatusCode)."""
    status, body, _ = http(server, "GET", "/v1/models/nn/versions/1")
    assert (status, body) == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert http(server, "GET", "/v1/models/nn/versions/9") == (
        404, {"error": "Could not find version 9 of model nn"}, '{"error": "Could not find version 9 of model nn"}')
    status, body, _ = http(server, "POST", "/v1/models/nn/versions/9:predict", {"instances": [[1.0]]})
    assert (status, body) == (404, {"error": "Servable not found for request: Specific(nn, 9)"})


def test_rest_columnar_format_plain_and_named(server):
    """g3doc/api_rest.md "Specifying input tensors in column format" and util/json_tensor.cc
    FillTensorMapFromInputsMap / MakeColumnarFormatJsonFromTensors: "inputs" in, "outputs" out, a plain
    value for one output and an object of named values for several."""
    status, body, _ = http(server, "POST", "/v1/models/nn:predict",
                           {"signature_name": "prediction", "inputs": [[1.0], [3.0]]})
    assert status == 200 and list(body) == ["outputs"]
    assert [v[0] for v in body["outputs"]] == pytest.approx([server["expect"](1.0), server["expect"](3.0)], rel=1e-5)
    status, body, _ = http(server, "POST", "/v1/models/nn:predict",
                           {"signature_name": "prediction", "inputs": {"input": [[2.0]]}})
    assert status == 200 and body["outputs"][0][0] == pytest.approx(server["expect"](2.0), rel=1e-5)
    status, body, _ = http(server, "POST", "/v1/models/multi:predict",
                           {"inputs": {"a": [[1.0, 2.0], [0.5, 0.25]], "b": [3, -4]}})
    assert (status, body) == (200, {"outputs": {"half": [0.5, 0.25], "sum": [3.0, 0.75], "twice": [6, -8]}})
    status, body, _ = http(server, "POST", "/v1/models/multi:predict", {"inputs": {"a": [[1.0, 2.0]]}})
    assert (status, body) == (400, {"error": "Missing named input: b in 'inputs' object."})


def test_rest_row_format_with_objects(server):
    """g3doc/api_rest.md "Specifying input tensors in row format" and util/json_tensor.cc
    FillTensorMapFromInstancesList / MakeRowFormatJsonFromTensors: objects name the inputs; several outputs
    answer one object per row."""
    status, body, _ = http(server, "POST", "/v1/models/nn:predict",
                           {"signature_name": "prediction", "instances": [{"input": [1.0]}, {"input": [3.0]}]})
    assert status == 200
    assert [p[0] for p in body["predictions"]] == pytest.approx([server["expect"](1.0), server["expect"](3.0)],
                                                                 rel=1e-5)
    status, body, _ = http(server, "POST", "/v1/models/multi:predict",
                           {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [0.5, 0.25], "b": -4}]})
    assert (status, body) == (200, {"predictions": [{"half": 0.5, "sum": 3.0, "twice": 6},
                                                    {"half": 0.25, "sum": 0.75, "twice": -8}]})
    status, body, _ = http(server, "POST", "/v1/models/multi:predict", {"instances": [[1.0, 2.0]]})
    assert status == 400 and body["error"].startswith("instances is a plain list, but expecting list of objects")
    status, body, _ = http(server, "POST", "/v1/models/multi:predict", {"instances": [{"a": [1.0, 2.0]}]})
    assert status == 400 and "keys must be equal to: a,b" in body["error"]


@pytest.mark.parametrize("model, body, message", [
    # json_tensor.cc TypeError ("JSON Value: <value> Type: <JsonTypeString> is not of expected type:
    # <DataTypeString>") for the first value of the wrong type; in the row format inside
    # FillTensorMapFromInstancesList's "Failed to process element" with the status's code (absl ToString).
    ("nn", {"signature_name": "prediction", "instances": [["a"]]},
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: String "
     "is not of expected type: float"),
    ("nn", {"signature_name": "prediction", "inputs": [[1.0], [True]]},
     "JSON Value: true Type: True is not of expected type: float"),
    ("nn", {"signature_name": "prediction", "inputs": [[None]]},
     "JSON Value: null Type: Null is not of expected type: float"),
    ("nn", {"signature_name": "prediction", "inputs": [[{"x": 1}]]},
     'JSON Value: {\n    "x": 1\n} Type: Object is not of expected type: float'),
    ("multi", {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [1.0, 2.0], "b": 1.5}]},
     "Failed to process element: 1 key: b of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: "
     "Number is not of expected type: int64"),
    # IsLosslessDecimal: a whole number above 2^24 - 1 is not a float.
    ("nn", {"signature_name": "prediction", "inputs": [[16777217]]},
     "Cannot convert JSON value: 16777217 to float without loss of precision."),
    # FillTensorProto and AddInstanceItem: lists of another size or shape than the first.
    ("nn", {"signature_name": "prediction", "inputs": [[1.0], [2.0, 3.0]]},
     "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
    ("nn", {"signature_name": "prediction", "instances": [[1.0], [2.0, 3.0]]},
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but "
     "got: 2"),
    ("nn", {"signature_name": "prediction", "instances": [[1.0], [[2.0]]]},
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [1] but got: "
     "[1,1]"),
    ("multi", {"instances": [{"c": 1, "a": [1.0, 2.0], "b": 3}]},
     "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
     "have named input: c"),
])
def test_rest_values_of_the_wrong_type_or_shape_get_json_tensors_messages(server, model, body, message):
    """A request a person gets wrong is answered in TF Serving's own words (util/json_tensor.cc), naming the
    JSON value, its JSON type and the type the signature wants, and the server keeps serving."""
    status, answer, _ = http(server, "POST", f"/v1/models/{model}:predict", body)
    assert (status, answer) == (400, {"error": message})
    status, answer, _ = http(server, "POST", "/v1/models/nn:predict",
                             {"signature_name": "prediction", "instances": [[2.0]]})
    assert status == 200 and answer["predictions"][0][0] == pytest.approx(server["expect"](2.0), rel=1e-5)


def test_rest_refuses_both_instances_and_inputs_and_neither(server):
    """util/json_tensor.cc FillPredictRequestFromJson: "expecting only one of 'inputs' or 'instances' keys",
    "Missing 'inputs' or 'instances' key", "No values in 'instances' array", an empty body."""
    status, body, _ = http(server, "POST", "/v1/models/nn:predict",
                           {"signature_name": "prediction", "instances": [[1.0]], "inputs": [[1.0]]})
    assert status == 400
    assert "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist" in body["error"]
    assert http(server, "POST", "/v1/models/nn:predict", {"signature_name": "prediction"})[:2] == (
        400, {"error": "Missing 'inputs' or 'instances' key"})
    status, body, _ = http(server, "POST", "/v1/models/nn:predict", {"signature_name": "prediction", "instances": []})
    assert status == 400 and "No values in 'instances' array" in body["error"]
    assert http(server, "POST", "/v1/models/nn:predict", b"")[:2] == (
        400, {"error": "JSON Parse error: The document is empty"})


def test_rest_labels_and_versions_in_the_path(server):
    """model_servers/http_rest_api_util.cc kPredictionApiGegex: /versions/N and /labels/L before :predict."""
    for path, version in (("/v1/models/nn/labels/stable:predict", 1), ("/v1/models/nn/versions/2:predict", 2),
                          ("/v1/models/nn/labels/canary:predict", 2)):
        status, body, _ = http(server, "POST", path, {"signature_name": "prediction", "instances": [[1.0]]})
        assert status == 200 and body["predictions"][0][0] == pytest.approx(server["expect"](1.0), rel=1e-5), path
    status, body, _ = http(server, "POST", "/v1/models/nn/labels/nope:predict", {"instances": [[1.0]]})
    assert (status, body) == (400, {"error": "Unrecognized servable version label: nope"})


@pytest.mark.parametrize("method, path, message", [
    ("POST", "/v1/models/nn:bogus", "Malformed request: POST /v1/models/nn:bogus"),
    ("POST", "/v1/models/nn", "Malformed request: POST /v1/models/nn"),
    ("GET", "/v1/models/nn:predict", "Malformed request: GET /v1/models/nn:predict"),
    ("GET", "/v2/models/nn", "Malformed request: GET /v2/models/nn"),
    ("GET", "/v1/models/nn/versions/x", "Malformed request: GET /v1/models/nn/versions/x"),
    ("PUT", "/v1/models/nn", "Malformed request: PUT /v1/models/nn"),
    ("DELETE", "/v1/models/nn", "Malformed request: DELETE /v1/models/nn"),
    ("GET", "/v1/models", "Missing model name in request."),
])
def test_rest_malformed_paths_and_methods_get_400_with_tf_servings_message(server, method, path, message):
    """model_servers/http_rest_api_handler.cc ProcessRequest ("Malformed request: <method> <path>",
    "Missing model name in request.") and http_rest_api_handler_test.cc; INVALID_ARGUMENT is HTTP 400."""
    body = b"{}" if method in ("POST", "PUT") else None
    status, answer, _ = http(server, method, path, body)
    assert (status, answer) == (400, {"error": message})


def test_rest_floats_are_printed_as_json_tensor_prints_float32(server):
    """util/json_tensor.cc WriteDecimal: a float32 prints in its shortest "%g" form when that reads back as the
    same float32 (0.3, not 0.30000001192092896), else with 9 digits; whole numbers get ".0"."""
    status, _, raw = http(server, "POST", "/v1/models/multi:predict",
                          {"inputs": {"a": [[0.1, 0.2], [1.0, 2.0], [1e-7, 0.0]], "b": [1, 2, 3]}})
    assert status == 200
    assert json.loads(raw)["outputs"]["sum"] == [0.3, 3.0, 1e-07]
    assert "[0.3, 3.0, 1e-07]" in raw, raw
    status, _, raw = http(server, "POST", "/v1/models/nn:predict", {"signature_name": "prediction",
                                                                    "instances": [[1.0]]})
    value = json.loads(raw)["predictions"][0][0]
    assert len(repr(value)) <= 11, raw  # at most 9 significant digits, never a float64 expansion


def test_json_float_formatting_matches_write_decimal():
    """util/json_tensor.cc WriteDecimal, case by case (its own comment's examples: 0.2, 9000000, .00003)."""
    import numpy as np

    f32 = lambda v: model_server.json_float(float(np.float32(v)), True)  # noqa: E731
    assert [f32(0.2), f32(9000000.0), f32(0.00003), f32(1.0), f32(-2.5)] == ["0.2", "9e+06", "3e-05", "1.0", "-2.5"]
    assert f32(16777217.0) == "16777216.0"  # not representable: the float32 is 16777216
    assert f32(1.0000001) == "1.00000012"  # "%g" gives 1, which does not round-trip: 9 digits
    assert model_server.json_float(0.1 + 0.2, False) == "0.30000000000000004"
    assert [model_server.json_float(v, True) for v in (float("nan"), float("inf"), float("-inf"))] == [
        "NaN", "Infinity", "-Infinity"]


# --------------------------------------------------------------------------- batching, monitoring, flags, reload


def test_batching_merges_concurrent_requests_and_each_gets_its_own_rows(server):
    """batching/README.md and servables/tensorflow/session_bundle_config.proto BatchingParameters: with
    --enable_batching, concurrent Predicts run as one batch of at most max_batch_size rows, each request
    answered with its own rows; a request larger than max_batch_size is refused (batch_scheduler.h
    "Task size ... is larger than maximum input batch size")."""
    import threading

    results, errors = {}, []

    def call(i):
        try:
            xs = [float(i), float(i) + 0.5][: 1 + i % 2]
            response = stub(server).Predict(nn_request(xs), timeout=30)
            results[i] = (xs, list(response.outputs["output"].float_val))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 16
    for xs, ys in results.values():
        assert ys == pytest.approx([server["expect"](x) for x in xs], rel=1e-5)
    error = refusal(stub(server).Predict, nn_request([1.0] * 65))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Task size 65 is larger than maximum input batch size 64")


def test_prometheus_metrics_count_requests_per_model_and_api(server):
    """util/prometheus_exporter.cc (metric names with ':' for '/', "# TYPE" lines) and
    servables/tensorflow/util.cc (/tensorflow/serving/request_count {model_name, status},
    /tensorflow/serving/request_latency {model_name, API, entrypoint}); tensorflow_model_server_test.py
    testPrometheusEndpoint reads /monitoring/prometheus/metrics."""
    stub(server).Predict(nn_request(), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub(server).Predict(nn_request(version=9), timeout=10)
    http(server, "POST", "/v1/models/nn:predict", {"signature_name": "prediction", "instances": [[1.0]]})
    status, _, text = http(server, "GET", "/monitoring/prometheus/metrics")
    assert status == 200
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    assert lines[':tensorflow:serving:request_count{model_name="nn",status="OK"}'] >= 2
    assert lines[':tensorflow:serving:request_count{model_name="nn",status="NOT_FOUND"}'] >= 1
    grpc_count = ':tensorflow:serving:request_latency_count{model_name="nn",API="Predict",entrypoint="GRPC"}'
    rest_count = ':tensorflow:serving:request_latency_count{model_name="nn",API="predict",entrypoint="REST"}'
    assert lines[grpc_count] >= 1 and lines[rest_count] >= 1
    assert ':tensorflow:serving:request_latency_bucket{model_name="nn",API="Predict",entrypoint="GRPC",le="+Inf"}' \
        in lines


def test_tf_serving_flags_the_stand_in_does_not_implement_are_a_one_line_warning(server):
    """model_servers/main.cc lists TensorFlow Serving's flags: the stand-in takes them all, warns in one line
    about those it does not implement, and still refuses a flag TF Serving does not have."""
    text = server["log"].read_text()
    warnings = [line for line in text.splitlines() if "does not implement" in line]
    assert any("--flush_filesystem_caches" in line for line in warnings), text[-2000:]
    assert any("--num_load_threads" in line for line in warnings), text[-2000:]
    proc = subprocess.run([sys.executable, str(REMOTE / "model_server.py"), "--model_base_path=/nonexistent",
                           "--no_such_flag=1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --no_such_flag=1" in proc.stderr


def test_warmup_requests_are_replayed_when_a_version_loads(server):
    """g3doc/saved_model_warmup.md and servables/tensorflow/saved_model_warmup.cc (--enable_model_warmup, on by
    default): the PredictLog records in assets.extra/tf_serving_warmup_requests run before the version is
    AVAILABLE."""
    assert "warmed up nn version 2 with 3 requests" in server["log"].read_text()


def test_reload_config_changes_the_served_models(server):
    """model_servers/model_service_impl.cc HandleReloadConfigRequest: the call's status is the outcome;
    a config that is not a model_config_list is INVALID_ARGUMENT; a model left out is no longer served
    (server_core.cc ReloadConfig)."""
    from google.protobuf import text_format

    apis = serving_apis()
    from tensorflow_serving.apis import model_management_pb2

    models = apis.model_service_pb2_grpc.ModelServiceStub(server["client"]._channel)
    original = server["config"].read_text()
    request = model_management_pb2.ReloadConfigRequest()
    request.config.custom_model_config.Pack(request)  # not a model_config_list
    error = refusal(models.HandleReloadConfigRequest, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Only ModelConfigList" in error.details()
    only_nn = original.split("  config {\n    name: \"multi\"")[0] + "}\n"
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(only_nn, request.config)
    response = models.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0, response
    error = refusal(stub(server).Predict, multi_request())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(original, request.config)
    assert models.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
    wait_until(lambda: any(s.state == "AVAILABLE" for s in server["client"].status("multi")), 60, what="multi")
    assert list(stub(server).Predict(multi_request(), timeout=10).outputs["twice"].int64_val) == [6]
    assert server["proc"].poll() is None


def test_saved_model_tags_choose_the_meta_graph_that_is_loaded(lab_steps_run, tf):
    """--saved_model_tags (model_servers/main.cc, server.cc: the tags of the MetaGraphDef to load, "serve"
    by default): the lab's SavedModel, saved with tf.saved_model.save, has one MetaGraphDef tagged
    "serve"; asking for another tag fails to load, as TF's loader (and so TF Serving) refuses it."""
    workdir, _, _ = lab_steps_run
    path = str(workdir / "models" / "nn" / "1")
    loaded = model_server.LoadedVersion(tf, path, 1, ["serve"])
    assert "prediction" in loaded.signature_defs
    with pytest.raises(RuntimeError, match="MetaGraphDef associated with tags"):
        model_server.LoadedVersion(tf, path, 1, ["train"])


def test_an_error_over_1024_characters_is_cut_as_tf_serving_cuts_it(server):
    """model_servers/grpc_status_util.cc ToGRPCStatus: a gRPC error message over kErrorMessageLimit (1024)
    characters is its first 1024 and "...TRUNCATED". Forty inputs the signature does not have make
    predict_util.cc's "input size does not match signature" message that long."""
    request = nn_request()
    for n in range(40):
        column_tensor([1.0], request.inputs[f"extra_{n:02d}_" + "x" * 30])
    error = refusal(stub(server).Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()
    assert details.startswith("input size does not match signature: 41!=1 len({extra_00_")
    assert len(details) == 1024 + len("...TRUNCATED") and details.endswith("...TRUNCATED")


def test_cors_headers_and_the_preflight(server):
    """--rest_api_enable_cors_support (model_servers/main.cc): every REST answer, errors too, carries
    http_rest_api_util.cc AddCORSHeaders' three headers; http_server.cc ProcessRequest answers an OPTIONS
    preflight 200 with an empty body when its Origin is an http(s) origin, else FAILED_PRECONDITION (400)."""
    import http.client

    def call(method, path, headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", server["rest"], timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        finally:
            conn.close()

    cors = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
            "Access-Control-Allow-Headers": "Content-Type"}
    for method, path, body in (("GET", "/v1/models/nn", None),
                               ("POST", "/v1/models/nn:predict",
                                b'{"instances": [[1.0]], "signature_name": "prediction"}'),
                               ("GET", "/v1/models/nope", None)):
        status, headers, _ = call(method, path, body=body)
        assert status in (200, 404) and {k: headers.get(k) for k in cors} == cors, (method, path, headers)
    status, headers, body = call("OPTIONS", "/v1/models/nn:predict", {"Origin": "https://example.org",
                                                                     "Access-Control-Request-Method": "POST"})
    assert (status, body) == (200, b"") and headers["Access-Control-Allow-Origin"] == "*"
    status, headers, body = call("OPTIONS", "/v1/models/nn:predict")
    assert (status, body) == (400, b"")


def health_check(channel, service: str) -> bytes:
    """grpc.health.v1.Health/Check (grpc's doc/health-checking.md) with the request's bytes written by hand:
    HealthCheckRequest {string service = 1}; returns the answer's bytes."""
    data = service.encode()
    request = (b"\x0a" + bytes([len(data)]) + data) if data else b""
    return channel.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=10)


def test_the_grpc_health_service_answers_as_grpc_cpp_default_one(server):
    """--enable_grpc_healthcheck_service (model_servers/server.cc: grpc::EnableDefaultHealthCheckService, then
    SetServingStatus("ModelService") and ("PredictionService")): Check of the server (""), ModelService and
    PredictionService answers HealthCheckResponse {status: SERVING} (bytes 08 01); an unknown name NOT_FOUND."""
    channel = server["client"]._channel
    for service in ("", "ModelService", "PredictionService"):
        assert health_check(channel, service) == b"\x08\x01", service
    error = refusal(lambda request, timeout: health_check(channel, "tensorflow.serving.Nope"), None)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_while_a_first_load_waits_for_its_retry_stops_the_server_at_once(server):
    """The server does not listen before its first loads are done (load_servables_fast.cc); a SIGTERM during the
    wait for a retry (a minute here) ends it then, without listening."""
    import signal
    import time

    port = ports.free_port()
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}", "--model_name=tagged",
                             f"--model_base_path={server['root'] / 'tagged'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # bounded: the first attempt fails within seconds of the start
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "{name: tagged version: 1} failed" in line:
                break
        assert any("{name: tagged version: 1} failed" in line for line in lines), lines[-5:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    assert "Running gRPC ModelServer" not in out and "Failed to start server" not in out


def test_a_reload_does_not_wait_for_a_model_that_has_no_version_its_policy_wants(server):
    """server_core.cc WaitUntilModelsAvailable would hold the reload until such a model loads, for ever; the
    stand-in answers at once (a README difference), so no call holds a worker thread without end."""
    original = server["config"].read_text()
    policy = '\n    model_version_policy {{ specific {{ versions: 7 }} }}'
    entry = TAGGED.replace('"tagged"', '"later"').replace('model_platform: "tensorflow"',
                                                          'model_platform: "tensorflow"' + policy)
    request = reload_request(server, with_model(original, entry.format(tagged=server["root"] / "census")))
    try:
        assert model_service(server).HandleReloadConfigRequest(request, timeout=10)
    finally:
        assert model_service(server).HandleReloadConfigRequest(reload_request(server, original), timeout=60)
