"""The stand-in model server under TensorFlow Serving flags that change how it serves.

One server process serves the module with --saved_model_tags=serve,tflab, --enable_signature_method_name_check,
--model_config_file_poll_wait_seconds=1 and batching with allowed_batch_sizes and pad_variable_length_inputs;
its models ("census" and "rows", tests/remote/serving_models.py) are saved under the tags serve,tflab. Each
test names the upstream file (github.com/tensorflow/serving, tensorflow_serving/...) it follows. Real
requests over 127.0.0.1; every wait is bounded; no timing is asserted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

import model_server
import tfserving.batching
from tests.conftest import REMOTE, wait_until
from tests.remote.serving_models import export_census, export_rows, fill_input, run_directly, stub
from tflab import ports
from tflab.client import DT_FLOAT, ServingClient, column_tensor, serving_apis

pytestmark = pytest.mark.slow

TAGS = ("serve", "tflab")
CONFIG_ENTRY = """  config {{
    name: "{name}"
    base_path: "{path}"
    model_platform: "tensorflow"
  }}
"""
BATCHING_PARAMETERS = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 1000 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 2
allowed_batch_sizes: 4
allowed_batch_sizes: 8
pad_variable_length_inputs: true
"""
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


def model_config(root, names) -> str:
    return "model_config_list {\n" + "".join(CONFIG_ENTRY.format(name=n, path=root / n) for n in names) + "}\n"


def write_atomically(path, text: str) -> None:
    """Replace a file in one step, so that the server's poll never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def server(tf, tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    export_census(tf, str(root / "census" / "1"), tags=TAGS)
    export_rows(tf, str(root / "rows" / "1"), tags=TAGS)
    config = root / "models.config"
    config.write_text(model_config(root, ["census", "rows"]))
    batching = root / "batching.config"
    batching.write_text(BATCHING_PARAMETERS)
    port, rest = ports.free_port(), ports.free_port()
    log_path = root / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}",
                             f"--rest_api_port={rest}", f"--model_config_file={config}",
                             "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=0.2",
                             f"--saved_model_tags={','.join(TAGS)}", "--enable_signature_method_name_check",
                             "--enable_batching=true", f"--batching_parameters_file={batching}"],
                            stdout=log, stderr=subprocess.STDOUT)
    client = ServingClient(f"127.0.0.1:{port}", timeout=10)
    try:
        client.wait_available("census", timeout=120)
        client.wait_available("rows", timeout=60)
        yield {"port": port, "rest": rest, "client": client, "proc": proc, "log": log_path, "root": root,
               "config": config}
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
        log.close()


def refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def classify_request(name="census", signature="", xs=(0.5, 2.0, -1.0)):
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    fill_input(request.input, xs)
    return request


def rows_request(matrix):
    """A Predict on the rows model with x = matrix (float32, rows x width)."""
    request = serving_apis().predict_pb2.PredictRequest()
    request.model_spec.name = "rows"
    x = request.inputs["x"]
    x.dtype = DT_FLOAT
    for size in np.shape(matrix):
        x.tensor_shape.dim.add().size = size
    x.float_val.extend(np.asarray(matrix, np.float32).ravel().tolist())
    return request


# --------------------------------------------------------------------------- --saved_model_tags


def test_saved_model_tags_name_the_meta_graph_that_is_served(server, tf):
    """--saved_model_tags (model_servers/main.cc, server.cc: the comma-separated tag set of the MetaGraphDef to
    load): census, saved under serve,tflab only, is served when the flag names that set, and classifies as the
    SavedModel itself computes. (The default set refusing it: test_serving_conformance.py
    test_a_model_saved_under_other_tags_is_not_loaded_and_says_why.)"""
    assert [(s.version, s.state) for s in server["client"].status("census")] == [(1, "AVAILABLE")]
    request = classify_request()
    response = stub(server).Classify(request, timeout=10)
    examples = [e.SerializeToString() for e in request.input.example_list.examples]
    direct = run_directly(tf, str(server["root"] / "census" / "1"), "serving_default", examples)
    got = [c.score for item in response.result.classifications for c in item.classes]
    assert got == pytest.approx(direct["scores"].ravel().tolist(), abs=1e-6)
    assert [c.label for c in response.result.classifications[0].classes] == ["low", "mid", "high"]


# --------------------------------------------------------------------------- --enable_signature_method_name_check


def test_the_method_name_check_refuses_a_signature_of_another_method(server):
    """--enable_signature_method_name_check (model_servers/main.cc; servables/tensorflow/util.cc
    GetSignatureMethodNameCheckFeature): classifier.cc / regressor.cc GetClassificationSignatureDef /
    GetRegressionSignatureDef refuse a signature whose method_name is not theirs (INVALID_ARGUMENT
    "Expected classification signature method_name to be ..."), multi_inference.cc through
    PreProcessClassification, predict_util.cc VerifySignature one whose method_name no API has (INTERNAL).
    A TF2-style regression signature (method_name predict), which Regress runs without the check, is refused."""
    from tensorflow_serving.apis import inference_pb2, regression_pb2

    error = refusal(stub(server).Classify, classify_request(signature="regress"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Expected classification signature method_name to be "
        "tensorflow/serving/classify. Was: tensorflow/serving/regress")
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "census", "tf2_regress"
    fill_input(request.input, [1.0])
    error = refusal(stub(server).Regress, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Expected regression signature method_name to be "
        "tensorflow/serving/regress. Was: tensorflow/serving/predict")
    request.model_spec.signature_name = "regress"
    assert [r.value for r in stub(server).Regress(request, timeout=10).result.regressions] == [3.0]
    multi = inference_pb2.MultiInferenceRequest()
    fill_input(multi.input, [1.0])
    task = multi.tasks.add()
    task.model_spec.name, task.model_spec.signature_name, task.method_name = "census", "regress", CLASSIFY
    error = refusal(stub(server).MultiInference, multi)
    assert error.details() == ("Expected classification signature method_name to be tensorflow/serving/classify. "
                               "Was: tensorflow/serving/regress")
    predict = serving_apis().predict_pb2.PredictRequest()
    predict.model_spec.name, predict.model_spec.signature_name = "census", "custom_method"
    column_tensor([1.0], predict.inputs["x"])
    error = refusal(stub(server).Predict, predict)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INTERNAL, "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
        "tensorflow/serving/classify, tensorflow/serving/regress}. Was: tflab/custom")


# --------------------------------------------------------------------------- allowed_batch_sizes and padding


def test_a_batch_is_padded_to_the_next_allowed_size_and_answered_without_the_padding(server, tf):
    """batching/README.md (allowed_batch_sizes: "padding invalid-size batches with dummy data to round up to the
    next valid size"), batching_session.cc MergeInputTensors / SplitOutputTensors and batching_util.cc
    RoundToLowestAllowedBatchSize: with sizes 2, 4, 8 a request of 1 row runs in a batch of 2, 3 rows in 4, 5 in 8
    (the rows model answers the batch's size), each answered with its own rows only; more than max_batch_size is
    refused (batch_scheduler.h). Classify batches its serialized examples the same way."""
    for count, padded in ((1, 2), (3, 4), (5, 8), (8, 8)):
        matrix = np.arange(count * 2, dtype=np.float32).reshape(count, 2)
        response = stub(server).Predict(rows_request(matrix), timeout=30)
        assert list(response.outputs["rows"].int_val) == [padded] * count
        assert list(response.outputs["width"].int_val) == [2] * count
        assert list(response.outputs["sum"].float_val) == matrix.sum(1).tolist()
        assert [d.size for d in response.outputs["sum"].tensor_shape.dim] == [count]
    error = refusal(stub(server).Predict, rows_request(np.zeros((9, 1))))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Task size 9 is larger than maximum input batch size 8")
    request = classify_request(xs=(0.5, 2.0, -1.0))  # 3 examples, run as 4
    response = stub(server).Classify(request, timeout=30)
    examples = [e.SerializeToString() for e in request.input.example_list.examples]
    direct = run_directly(tf, str(server["root"] / "census" / "1"), "serving_default", examples)
    assert len(response.result.classifications) == 3
    got = [c.score for item in response.result.classifications for c in item.classes]
    assert got == pytest.approx(direct["scores"].ravel().tolist(), abs=1e-6)


def test_tasks_of_different_widths_are_padded_to_the_widest_when_pad_variable_length_inputs_is_set():
    """batching_session.cc MergeInputTensors with pad_variable_length_inputs and batching_util.cc AddPadding:
    each task's tensor is padded along its inner dimensions to the largest in the batch, with its own first
    element; then allowed_batch_sizes pads the batch with copies of the last task's first row. The batch runs
    as soon as it holds max_batch_size rows, so the two tasks here always share one."""
    params = model_server.BatchingParameters(max_batch_size=8, batch_timeout_micros=60_000_000,
                                             max_enqueued_batches=4, num_batch_threads=1,
                                             allowed_batch_sizes=(4, 8), pad_variable_length_inputs=True)
    narrow = np.array([[1, 2], [3, 4], [5, 6]], np.float32)  # 3 rows, width 2
    wide = np.arange(10, 25, dtype=np.float32).reshape(5, 3)  # 5 rows, width 3
    merged, rows = model_server.merge_batch([[narrow], [wide]], params)
    assert rows == 8 and merged[0].shape == (8, 3)
    assert merged[0][:3].tolist() == [[1, 2, 1], [3, 4, 1], [5, 6, 1]]  # padded with narrow's first element
    merged, rows = model_server.merge_batch([[narrow]], params)  # 3 rows: padded to 4 with the first row
    assert rows == 4 and merged[0].tolist() == narrow.tolist() + [[1, 2]]

    seen = []

    def fn(x):
        seen.append(x.shape)
        return [x.sum(1), np.full(len(x), len(x))]

    batcher = model_server.Batcher(fn, params)
    results = {}
    threads = [threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, batcher.submit([a], len(a))))
               for k, a in (("narrow", narrow), ("wide", wide))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == [(8, 3)]
    assert results["narrow"][0].tolist() == [4.0, 8.0, 12.0]  # 1+2+1, 3+4+1, 5+6+1: the padding counts
    assert results["wide"][0].tolist() == wide.sum(1).tolist()
    assert results["narrow"][1].tolist() == [8] * 3 and results["wide"][1].tolist() == [8] * 5


def test_allowed_batch_sizes_are_validated_as_tf_serving_validates_them(tmp_path):
    """servables/tensorflow/bundle_factory_util.cc WrapSessionForBatching: the last allowed size must equal
    max_batch_size (1000 when not given: the batch scheduler's default), else INVALID_ARGUMENT "Last entry in
    allowed_batch_sizes must match max_batch_size"; the server does not start with such a file."""
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: [2, 6]  # a comment\n")
    with pytest.raises(model_server.ServingError, match="Last entry in allowed_batch_sizes must match "
                                                        "max_batch_size; last entry was 6; expected 8"):
        model_server.read_batching_parameters(str(path))
    path.write_text("allowed_batch_sizes: 100\n")
    with pytest.raises(model_server.ServingError, match="last entry was 100; expected 1000"):
        model_server.read_batching_parameters(str(path))
    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 8\n"
                    "pad_variable_length_inputs: true\n")
    params = model_server.read_batching_parameters(str(path))
    assert (params.allowed_batch_sizes, params.pad_variable_length_inputs) == ((2, 8), True)
    assert [params.padded_size(n) for n in (1, 2, 3, 8, 9)] == [2, 2, 8, 8, 9]
    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    proc = subprocess.run([sys.executable, str(REMOTE / "model_server.py"), f"--port={ports.free_port()}",
                           "--model_base_path=/nonexistent", "--enable_batching", f"--batching_parameters_file={path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8" in proc.stderr


def test_a_large_request_is_split_across_batches_and_answered_in_order():
    """enable_large_batch_splitting and max_execution_batch_size (session_bundle_config.proto; bundle_factory_util.h
    GetQueueOptions): a request that does not fit the open batch fills what is left of it, then whole batches of
    max_execution_batch_size rows, then its last rows open a batch later requests join (TensorFlow's
    input_split_metadata.cc); its outputs are its pieces' joined in order (batching_session.cc SplitInputTask)."""
    params = model_server.BatchingParameters(max_batch_size=16, batch_timeout_micros=3_000_000,
                                             max_enqueued_batches=8, num_batch_threads=1,
                                             enable_large_batch_splitting=True, max_execution_batch_size=4)
    seen = []

    def fn(x):
        seen.append(len(x))
        return [x.sum(1), np.full(len(x), len(x))]

    batcher = model_server.Batcher(fn, params)
    small = np.arange(6, dtype=np.float32).reshape(3, 2)
    big = np.arange(100, 120, dtype=np.float32).reshape(10, 2)
    results = {}
    first = threading.Thread(target=lambda: results.__setitem__("small", batcher.submit([small], 3)))
    first.start()
    wait_until(lambda: batcher.running, 10, what="the small request to open a batch")
    second = threading.Thread(target=lambda: results.__setitem__("big", batcher.submit([big], 10)))
    second.start()
    for t in (first, second):
        t.join(60)
    # 3 rows + the big request's first row; then 4; 4; its last row alone (once the timeout passed).
    assert seen == [4, 4, 4, 1]
    assert results["small"][0].tolist() == small.sum(1).tolist() and results["small"][1].tolist() == [4] * 3
    assert results["big"][0].tolist() == big.sum(1).tolist()
    assert results["big"][1].tolist() == [4] + [4] * 4 + [4] * 4 + [1]


def held_batcher():
    """A batcher with one slot and no batch timeout whose batches each wait for release; returns it, the list of
    the batch sizes it ran, and release."""
    params = model_server.BatchingParameters(max_batch_size=16, batch_timeout_micros=0, max_enqueued_batches=4,
                                             num_batch_threads=1)
    seen, release = [], threading.Event()

    def fn(x):
        seen.append(len(x))
        assert release.wait(30)
        return [x.sum(1)]

    return model_server.Batcher(fn, params), seen, release


def one_row_caller(batcher, results: dict):
    """call(k): submits one row of two k's and keeps the row sums it is answered in results[k]."""
    def call(k):
        results[k] = batcher.submit([np.full((1, 2), k, np.float32)], 1)[0].tolist()
    return call


def test_requests_that_arrive_while_every_batch_slot_is_busy_run_together_in_the_next_batch():
    """num_batch_threads (session_bundle_config.proto: batches processed in parallel) with batch_timeout_micros 0:
    a lone request runs at once; requests that arrive while the only slot is busy wait, and all run in the next
    batch once it frees (TF Serving's BasicBatchScheduler: a batch is closed when a thread is free to take it)."""
    batcher, seen, release = held_batcher()
    results = {}
    call = one_row_caller(batcher, results)
    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    wait_until(lambda: seen == [1], 10, what="the first request to run alone")
    threads += [threading.Thread(target=call, args=(k,)) for k in (1, 2, 3)]
    for t in threads[1:]:
        t.start()
    wait_until(lambda: batcher.waiting_rows == 3, 10, what="three requests to wait for the slot")
    release.set()
    for t in threads:
        t.join(60)
    assert seen == [1, 3]
    assert results == {k: [2.0 * k] for k in range(4)}
    assert batcher.running == 0 and not batcher.waiting


def test_requests_within_the_batch_timeout_share_the_one_open_batch_even_with_a_free_slot():
    """batch_timeout_micros (session_bundle_config.proto; BasicBatchScheduler keeps one open batch per queue):
    a request that comes while the open batch waits for its timeout joins it, though a second batch slot is
    free; the batch runs once the timeout passed (here: it never fills)."""
    params = model_server.BatchingParameters(max_batch_size=16, batch_timeout_micros=2_000_000,
                                             max_enqueued_batches=4, num_batch_threads=2)
    seen = []
    batcher = model_server.Batcher(lambda x: (seen.append(len(x)), [x.sum(1)])[1], params)
    results = {}
    call = one_row_caller(batcher, results)
    threads = [threading.Thread(target=call, args=(1,))]
    threads[0].start()
    wait_until(lambda: batcher.gathering, 10, what="the first request to open a batch")
    threads.append(threading.Thread(target=call, args=(2,)))
    threads[1].start()
    for t in threads:
        t.join(60)
    assert seen == [2] and results == {1: [2.0], 2: [4.0]}
    assert batcher.running == 0 and not batcher.waiting


def test_a_request_that_gives_up_waiting_leaves_the_queue_and_no_slot_behind(monkeypatch):
    """A request waits at most BATCH_WAIT_SECONDS for its batch (then DEADLINE_EXCEEDED); its rows leave the
    queue and the batch slot it may have been handed passes on, so later requests still run."""
    monkeypatch.setattr(tfserving.batching, "BATCH_WAIT_SECONDS", 0.5)  # read where the Batcher lives
    batcher, seen, release = held_batcher()
    first = threading.Thread(target=lambda: batcher.submit([np.ones((1, 2), np.float32)], 1))
    first.start()
    wait_until(lambda: seen == [1], 10, what="the first request to hold the only slot")
    with pytest.raises(model_server.ServingError, match="the batch did not run within 0.5 s"):
        batcher.submit([np.ones((2, 2), np.float32)], 2)
    assert not batcher.waiting and batcher.waiting_rows == 0
    release.set()
    first.join(60)
    assert batcher.submit([np.full((1, 2), 3, np.float32)], 1)[0].tolist() == [6.0]
    assert seen == [1, 1] and batcher.running == 0


@pytest.mark.parametrize("slots, timeout_micros, split", [(2, 500, True), (1, 0, True), (3, 200, False)])
def test_many_concurrent_requests_of_every_size_each_get_their_own_rows_back(slots, timeout_micros, split):
    """The batching rules together under load (16 threads x 40 requests of 1-8 rows, allowed sizes 2/4/8, with
    and without splitting at 4 rows): every request gets exactly its own rows' results, no batch runs more than
    its most rows, and no slot or row is left behind."""
    params = model_server.BatchingParameters(max_batch_size=8, batch_timeout_micros=timeout_micros,
                                             max_enqueued_batches=64, num_batch_threads=slots,
                                             allowed_batch_sizes=(2, 4, 8), enable_large_batch_splitting=split,
                                             max_execution_batch_size=4)
    sizes = []
    batcher = model_server.Batcher(lambda x: (sizes.append(len(x)), [x.sum(1)])[1], params)
    failures = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            rows = int(rng.integers(1, 9))
            x = rng.random((rows, 3), dtype=np.float32)
            (got,) = batcher.submit([x], rows)
            if got.shape != (rows,) or not np.allclose(got, x.sum(1)):
                failures.append((seed, rows))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and not failures
    assert set(sizes) <= ({2, 4} if split else {2, 4, 8})  # padded to an allowed size, never over the most rows
    assert batcher.running == 0 and not batcher.waiting and batcher.waiting_rows == 0


def test_a_server_splits_large_batches_when_its_batching_parameters_say_so(export_rows_model, tmp_path):
    """The same through a server (--enable_batching, --batching_parameters_file): a Predict of 7 rows runs as 4
    and 3 (padded to 4, allowed_batch_sizes) and is answered whole; max_batch_size still bounds one request
    (batch_scheduler.h); max_execution_batch_size over max_batch_size is refused at start (TensorFlow's
    shared_batch_scheduler.h: "When enable_large_batch_splitting is true, input_batch_size_limit must be greater
    than or equal to max_execution_batch_size.")."""
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 0 }\n"
                        "num_batch_threads { value: 1 }\nenable_large_batch_splitting { value: true }\n"
                        "max_execution_batch_size { value: 4 }\nallowed_batch_sizes: [2, 4, 16]\n")
    port = ports.free_port()
    argv = [sys.executable, str(REMOTE / "model_server.py"), f"--port={port}", "--model_name=rows",
            f"--model_base_path={export_rows_model}", "--enable_batching", f"--batching_parameters_file={batching}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = ServingClient(f"127.0.0.1:{port}", timeout=10)
    try:
        client.wait_available("rows", timeout=120)
        matrix = np.arange(14, dtype=np.float32).reshape(7, 2)
        response = stub({"client": client}).Predict(rows_request(matrix), timeout=30)
        assert list(response.outputs["sum"].float_val) == matrix.sum(1).tolist()
        assert list(response.outputs["rows"].int_val) == [4] * 7
        assert [d.size for d in response.outputs["sum"].tensor_shape.dim] == [7]
        error = refusal(stub({"client": client}).Predict, rows_request(np.zeros((17, 1))))
        assert error.details() == "Task size 17 is larger than maximum input batch size 16"
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
    batching.write_text("max_batch_size { value: 16 }\nenable_large_batch_splitting { value: true }\n"
                        "max_execution_batch_size { value: 32 }\n")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert ("When enable_large_batch_splitting is true, input_batch_size_limit must be greater than or equal to "
            "max_execution_batch_size.") in done.stderr


@pytest.fixture
def export_rows_model(tf, tmp_path):
    """The rows model, version 1, saved under the default tag; returns its base path."""
    export_rows(tf, str(tmp_path / "rows" / "1"))
    return tmp_path / "rows"


# --------------------------------------------------------------------------- --model_config_file_poll_wait_seconds


def test_a_model_added_to_the_config_file_is_served_without_a_restart(server):
    """--model_config_file_poll_wait_seconds (model_servers/main.cc; server.cc PollFilesystemAndReloadConfig:
    the file is re-read every period and applied as ServerCore::ReloadConfig; a file that cannot be read is
    logged, "Failed to read ModelServerConfig file", and changes nothing). tensorflow_model_server_test.py
    testModelConfigReload. A model added to the file is served, one removed from it is no longer."""
    root, config = server["root"], server["config"]
    original = config.read_text()
    shutil.copytree(root / "census", root / "census2")
    client = server["client"]
    try:
        write_atomically(config, model_config(root, ["census", "rows", "census2"]))
        assert client.wait_available("census2", timeout=60) == 1
        response = stub(server).Classify(classify_request(name="census2"), timeout=10)
        assert len(response.result.classifications) == 3 and response.model_spec.name == "census2"
        write_atomically(config, "model_config_list { config { name: ")  # broken: ignored, logged
        wait_until(lambda: "Failed to read ModelServerConfig file" in server["log"].read_text(), 30,
                   what="the poll to log the broken file")
        assert stub(server).Classify(classify_request(name="census2"), timeout=10).model_spec.name == "census2"
        write_atomically(config, original)

        # Removed: its version ended, and GetModelStatus still says so (servable_state_monitor.cc keeps it).
        wait_until(lambda: [s.state for s in client.status("census2")] == ["END"], 30, what="census2 to be removed")
        error = refusal(stub(server).Classify, classify_request(name="census2"))
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                                   "Servable not found for request: Latest(census2)")
        assert stub(server).Classify(classify_request(), timeout=10).model_spec.name == "census"
    finally:
        write_atomically(config, original)
    assert server["proc"].poll() is None


def test_a_broken_new_version_is_retried_then_ends_and_the_served_one_stays(tf, tmp_path):
    """--max_num_load_retries and --load_retry_interval_micros (model_servers/main.cc; util/retrier.cc Retry,
    core/loader_harness.cc Load): a version that fails to load is tried again that many times, that far apart,
    then ends with its error; the version served before stays served (only a model's first load decides
    whether the server starts, load_servables_fast.cc). A retry no longer due because the version left the
    disk is cancelled (basic_manager.cc CancelLoadServableRetry: "Retrying of ... was cancelled.")."""
    base = tmp_path / "m"
    export_census(tf, str(base / "1"))
    port = ports.free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}",
                                 f"--model_base_path={base}", "--model_name=m", "--file_system_poll_wait_seconds=0.1",
                                 "--max_num_load_retries=1", "--load_retry_interval_micros=3000000"],
                                stdout=log, stderr=subprocess.STDOUT)
    client = ServingClient(f"127.0.0.1:{port}", timeout=10)
    try:
        client.wait_available("m", timeout=120)

        def state(version: int):
            return next((s for s in client.status("m") if s.version == version), None)

        (base / "2").mkdir()
        (base / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
        ended = wait_until(lambda: (s := state(2)) is not None and s.state == "END" and s, 60, what="version 2 to end")
        assert "could not load" in ended.error
        text = log_path.read_text()
        assert "Loading servable: {name: m version: 2} failed" in text
        assert "Retrying of Loading servable: {name: m version: 2} retry: 1" in text
        assert "Retrying of Loading servable: {name: m version: 2} exhausted max_num_retries: 1" in text
        answer = stub({"client": client}).Classify(classify_request(name="m"), timeout=10)
        assert answer.model_spec.version.value == 1 and len(answer.result.classifications) == 3

        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel either")
        wait_until(lambda: "Loading servable: {name: m version: 3} failed" in log_path.read_text(), 30,
                   what="version 3's first attempt")
        shutil.rmtree(base / "3")  # its retry is due 3 s after that attempt
        wait_until(lambda: (s := state(3)) is not None and s.state == "END", 30, what="version 3 to end")
        text = log_path.read_text()
        assert "Retrying of Loading servable: {name: m version: 3} was cancelled." in text
        assert "{name: m version: 3} retry: 1" not in text
        assert state(1).state == "AVAILABLE" and proc.poll() is None
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
