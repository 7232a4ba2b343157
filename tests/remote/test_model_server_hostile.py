"""The stand-in model server against hostile or broken requests, over real sockets to a real server process.

The server is reachable by any local user and through SSH tunnels, so a crafted request must get a
well-formed refusal, cost little memory and leave the server serving. Every wait here is bounded.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import grpc
import pytest

import model_server
from tests.conftest import REMOTE, wait_until
from tflab import ports
from tflab.client import ServingClient, column_tensor, serving_apis

pytestmark = pytest.mark.slow

REST_TIMEOUT_MS = 1000  # --rest_api_timeout_in_ms: short, so stalled connections end quickly here
REST_THREADS = 2  # --rest_api_num_threads
GRPC_THREADS = 2  # --threads
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(lab_steps_run, tmp_path_factory):
    """The lab's model (version 1) served by its own model_server.py process with small limits."""
    workdir, report, _ = lab_steps_run
    base = tmp_path_factory.mktemp("hostile") / "nn"
    shutil.copytree(workdir / "models" / "nn" / "1", base / "1")
    port, rest = ports.free_port(), ports.free_port()
    log_path = base.parent / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REMOTE / "model_server.py"), f"--port={port}",
                             f"--rest_api_port={rest}", "--model_name=nn", f"--model_base_path={base}",
                             "--file_system_poll_wait_seconds=0.2", f"--threads={GRPC_THREADS}",
                             f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}", f"--rest_api_num_threads={REST_THREADS}"],
                            stdout=log, stderr=subprocess.STDOUT)
    client = ServingClient(f"127.0.0.1:{port}", timeout=10)
    try:
        client.wait_available("nn", timeout=120)
        t = report["training"]
        yield {"port": port, "rest": rest, "client": client, "proc": proc, "log": log_path,
               "expect": lambda x: x * t["slope"] + t["intercept"]}
    finally:
        client.close()
        proc.terminate()
        proc.wait(15)
        log.close()


def assert_still_serving(server):
    """The process lives and answers a normal Predict over gRPC and over REST."""
    assert server["proc"].poll() is None, server["log"].read_text()[-3000:]
    assert server["client"].predict([1.0]).outputs == pytest.approx([server["expect"](1.0)], rel=1e-5)
    status, _, body = http(server, post_bytes(b'{"signature_name": "prediction", "instances": [[1.0]]}'))
    assert status == 200
    assert json.loads(body)["predictions"][0][0] == pytest.approx(server["expect"](1.0), rel=1e-5)


# --------------------------------------------------------------------------- memory


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class PeakMemory:
    """The server's peak resident memory during a block, above its resident memory before it.

    Resets the kernel's high-water mark (VmHWM) through /proc/<pid>/clear_refs ("5"), so a large
    allocation that is freed again before the block ends is still seen.
    """

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.before = proc_status_kb(self.pid, "VmRSS")
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
        return self

    def __exit__(self, *exc):
        self.growth_mb = (proc_status_kb(self.pid, "VmHWM") - self.before) / 1024
        return False


# --------------------------------------------------------------------------- gRPC


def predict_request(values=None, *, shape, float_val=None, content=None, dtype=1):
    apis = serving_apis()
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = "nn"
    request.model_spec.signature_name = "prediction"
    tensor = request.inputs["input"]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    if float_val is not None:
        tensor.float_val.extend(float_val)
    if content is not None:
        tensor.tensor_content = content
    return request


def grpc_predict(server, request, timeout=30):
    apis = serving_apis()
    stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(server["client"]._channel)
    return stub.Predict(request, timeout=timeout)


def grpc_refusal(server, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        grpc_predict(server, request)
    return info.value


def test_a_tiny_request_declaring_millions_of_rows_is_refused_before_anything_is_allocated(server):
    """38 bytes declaring [20000000, 1] with one float_val: TensorFlow's rule (tensor.cc FromProtoField, and
    tf.make_ndarray) fills the missing values with the last one, so unchecked this allocates the whole tensor."""
    request = predict_request(shape=[20_000_000, 1], float_val=[1.0])
    assert len(request.SerializeToString()) < 64
    with PeakMemory(server["proc"].pid) as memory:
        error = grpc_refusal(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {model_server.MAX_ROWS_PER_REQUEST} rows per request" in error.details()
    assert memory.growth_mb < 100
    # Few rows but a huge declared element count, and a shape that would need 8 GB: refused the same way.
    for shape in ([1, 20_000_000], [2_000_000_000, 1], [1, 2**62]):
        with PeakMemory(server["proc"].pid) as memory:
            error = grpc_refusal(server, predict_request(shape=shape, float_val=[1.0]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, shape
        assert "tensor parsing error: input" in error.details() or "rows per request" in error.details()
        assert memory.growth_mb < 100, shape
    assert_still_serving(server)


def test_a_tensor_whose_values_do_not_fit_its_shape_is_refused_as_tf_serving_does(server):
    """tensor_content must hold exactly the declared elements (tensor.cc Helper::Decode), and a typed field may
    not hold more; TF Serving answers INVALID_ARGUMENT "tensor parsing error: <alias>" (cc/saved_model/util.cc)."""
    cases = [
        predict_request(shape=[2, 1], content=struct.pack("<3f", 1, 2, 3)),  # 12 bytes for 8
        predict_request(shape=[200, 1], content=struct.pack("<3f", 1, 2, 3)),  # 12 bytes for 800
        predict_request(shape=[2, 1], float_val=[1.0, 2.0, 3.0]),  # 3 values for 2 elements
        predict_request(shape=[-5, 1], float_val=[1.0]),  # a negative dimension
        predict_request(shape=[1, 1], float_val=[1.0], dtype=20),  # DT_RESOURCE: not a request dtype
    ]
    for request in cases:
        error = grpc_refusal(server, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert "tensor parsing error: input" in error.details(), error.details()
    # TensorFlow's compressed form stays accepted: one value for three elements is that value three times.
    response = grpc_predict(server, predict_request(shape=[3, 1], float_val=[2.0]))
    output = response.outputs["output"]
    # The answer fills float_val with every element, as TensorFlow's Tensor::AsProtoField does (predict_util.cc).
    values = struct.unpack("<3f", output.tensor_content) if output.tensor_content else list(output.float_val)
    assert list(values) == pytest.approx([server["expect"](2.0)] * 3, rel=1e-5)
    assert_still_serving(server)


def test_a_batch_over_the_row_limit_is_refused_over_grpc_and_rest_and_the_limit_itself_is_served(server):
    limit = model_server.MAX_ROWS_PER_REQUEST
    rows = [float(i % 7) for i in range(limit + 1)]
    request = serving_apis().predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "nn", "prediction"
    column_tensor(rows, request.inputs["input"])
    error = grpc_refusal(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"input has {limit + 1} rows; this server takes at most {limit} rows per request" in error.details()
    result = server["client"].predict(rows[:limit])
    assert len(result.outputs) == limit
    assert result.outputs[:7] == pytest.approx([server["expect"](x) for x in rows[:7]], rel=1e-5)

    body = json.dumps({"signature_name": "prediction", "instances": [[x] for x in rows]}).encode()
    status, _, answer = http(server, post_bytes(body))
    assert status == 400
    assert f"at most {limit} rows per request" in json.loads(answer)["error"]
    assert_still_serving(server)


def test_classify_examples_are_bounded_in_number_and_in_bytes_once_joined_to_their_context(server):
    """servables/tensorflow/util.cc InputToSerializedExampleTensor copies the context into every example: a 1 MiB
    context with 200 empty examples fits in a 4 MiB message but would make 200 MiB. Classify, Regress,
    MultiInference and REST :classify/:regress refuse more than MAX_ROWS_PER_REQUEST examples, and more than
    MAX_EXAMPLE_BYTES_PER_REQUEST bytes once joined, before copying anything (and before looking at the signature)."""
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(server["client"]._channel)
    limit, cap = model_server.MAX_ROWS_PER_REQUEST, model_server.MAX_EXAMPLE_BYTES_PER_REQUEST
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "nn"
    examples = request.input.example_list.examples
    for _ in range(limit + 1):
        examples.add()
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"examples has {limit + 1} rows; this server takes at most {limit} rows per request" in info.value.details()

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "nn"
    joined = request.input.example_list_with_context
    joined.context.features.feature["blob"].bytes_list.value.append(b"A" * MB)
    for _ in range(200):
        joined.examples.add()
    multi = inference_pb2.MultiInferenceRequest()
    multi.input.CopyFrom(request.input)
    task = multi.tasks.add()
    task.model_spec.name, task.method_name = "nn", "tensorflow/serving/regress"
    for call, message in ((stub.Regress, request), (stub.MultiInference, multi)):
        with PeakMemory(server["proc"].pid) as memory:
            with pytest.raises(grpc.RpcError) as info:
                call(message, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "joined to their context" in info.value.details() and str(cap) in info.value.details()
        assert "AAAA" not in info.value.details()
        assert memory.growth_mb < 100

    body = json.dumps({"context": {"blob": "A" * MB}, "examples": [{}] * 200}).encode()
    with PeakMemory(server["proc"].pid) as memory:
        status, _, answer = http(server, post_bytes(body, path="/v1/models/nn:regress"))
    error = json_error(answer)
    assert status == 400 and "joined to their context" in error and "AAAA" not in error
    assert memory.growth_mb < 100
    body = json.dumps({"examples": [{}] * (limit + 1)}).encode()
    status, _, answer = http(server, post_bytes(body, path="/v1/models/nn:classify"))
    assert status == 400 and f"at most {limit} rows per request" in json_error(answer)
    assert_still_serving(server)


def test_a_message_over_the_grpc_size_cap_gets_resource_exhausted(server):
    """The cap is explicit now (model_server.MAX_GRPC_MESSAGE_BYTES); grpcio's own default was the same 4 MiB."""
    cap = model_server.MAX_GRPC_MESSAGE_BYTES
    count = cap // 4 + 1024
    request = predict_request(shape=[count, 1], content=b"\0" * (4 * count))
    with grpc.insecure_channel(f"127.0.0.1:{server['port']}") as channel:
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(server)


def test_rpcs_beyond_the_concurrency_cap_get_resource_exhausted_and_serving_resumes(server):
    """Calls that never send their request hold a slot each; once the cap is reached a further call is refused
    at once with RESOURCE_EXHAUSTED (grpc.server's maximum_concurrent_rpcs) instead of queueing forever."""
    cap = GRPC_THREADS * model_server.MAX_RPCS_PER_THREAD
    apis = serving_apis()
    release = threading.Event()

    def never_sends():
        release.wait(60)
        return
        yield  # a generator that yields nothing

    with grpc.insecure_channel(f"127.0.0.1:{server['port']}") as channel:
        stalled_call = channel.stream_unary("/tensorflow.serving.PredictionService/Predict",
                                            request_serializer=apis.predict_pb2.PredictRequest.SerializeToString,
                                            response_deserializer=apis.predict_pb2.PredictResponse.FromString)
        stalled = [stalled_call.future(never_sends(), timeout=60) for _ in range(cap)]
        try:
            stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            codes = []
            for _ in range(10):  # the stalled calls reach the server asynchronously: a few bounded tries
                try:
                    stub.Predict(predict_request(shape=[1, 1], float_val=[1.0]), timeout=2)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                if codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
            assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
        finally:
            for call in stalled:
                call.cancel()
            release.set()
    wait_until(lambda: _predicts(server), timeout=30, interval=0.2, what="a normal Predict after the stalled calls")
    assert_still_serving(server)


def _predicts(server) -> bool:
    try:
        return bool(server["client"].predict([1.0]).outputs)
    except Exception:
        return False


# --------------------------------------------------------------------------- REST


def post_bytes(body: bytes, *, length: int | str | None = -2, path: str = "/v1/models/nn:predict",
               extra: str = "") -> bytes:
    """A raw HTTP POST; length -2 means the true Content-Length, None means no such header."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
    if length is not None:
        head += f"Content-Length: {len(body) if length == -2 else length}\r\n"
    return head.encode() + b"\r\n" + body


def http(server, raw: bytes, *, wait: float = 15.0):
    """Send raw bytes, read until the server closes (bounded): (status, headers, body).

    Asserts the answer is a well-formed HTTP response whose body is exactly Content-Length bytes.
    """
    with socket.create_connection(("127.0.0.1", server["rest"]), timeout=wait) as sock:
        sock.sendall(raw)
        data = read_until_closed(sock, wait)
    return parse_response(data)


def read_until_closed(sock: socket.socket, wait: float) -> bytes:
    deadline = time.monotonic() + wait
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server kept the connection open for {wait} s; got {b''.join(chunks)[:300]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_response(data: bytes):
    assert b"\r\n\r\n" in data, f"no HTTP response, got {data[:300]!r}"
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), lines[0]
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body), (headers, body[:300])
    return status, headers, body


def json_error(body: bytes) -> str:
    answer = json.loads(body)
    assert list(answer) == ["error"] and isinstance(answer["error"], str), answer
    return answer["error"]


@pytest.mark.parametrize("body", [
    b'"abc"', b"[[1.0]]", b"42", b"null", b"true",
    b"[" * 10_000 + b"]" * 10_000,
    b'{"instances": ' + b"[" * 10_000 + b"1.0" + b"]" * 10_000 + b"}",
    b'{"instances": ' + b"[" * 100 + b"1.0" + b"]" * 100 + b"}",
    b"{", b"\xff\xfe{}", b'{"instances": [[1.0]], "signature_name": ["a"]}',
    b'{"inputs": {"input": {"a": 1}}, "signature_name": "prediction"}',
], ids=["string", "list", "number", "null", "bool", "deep-list", "deep-instances", "100-deep-instances",
        "truncated", "not-utf8", "signature-list", "inputs-object"])
def test_json_that_is_not_a_predict_object_gets_a_400_json_error(server, body):
    status, headers, answer = http(server, post_bytes(body))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert len(json_error(answer)) <= 300
    assert_still_serving(server)


def test_an_oversized_body_gets_413_without_being_read_or_echoed(server):
    """A 50 MiB Content-Length is refused from the headers: the client has sent only 256 KiB when it reads 413."""
    payload = b'{"instances": [["' + b"A" * (256 * 1024)
    with PeakMemory(server["proc"].pid) as memory:
        with socket.create_connection(("127.0.0.1", server["rest"]), timeout=15) as sock:
            sock.sendall(post_bytes(payload, length=50 * MB))
            status, _, answer = parse_response(read_until_closed(sock, 15))
    assert status == 413
    error = json_error(answer)
    assert str(model_server.MAX_REST_BODY_BYTES) in error and "AAAA" not in error
    assert len(answer) < 1000
    assert memory.growth_mb < 100
    assert_still_serving(server)


def test_an_error_quotes_at_most_a_short_prefix_of_the_input(server):
    big = "x" * (1 * MB)
    for body in ({"instances": [[big]], "signature_name": "prediction"}, {"instances": [[1.0]], "signature_name": big},
                 {"inputs": {big: [[1.0]]}, "signature_name": "prediction"}):
        status, _, answer = http(server, post_bytes(json.dumps(body).encode()))
        assert status in (400, 404)
        assert len(answer) < 1000 and "x" * 400 not in json_error(answer)
    status, _, answer = http(server, post_bytes(b"{}", path="/v1/models/" + "y" * 60_000 + ":predict"))
    assert status == 404 and len(answer) < 1000
    # gRPC errors are clipped the same way.
    request = predict_request(shape=[1, 1], float_val=[1.0])
    request.model_spec.signature_name = "z" * MB
    error = grpc_refusal(server, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and len(error.details()) < 1000
    assert_still_serving(server)


@pytest.mark.parametrize("length, extra, code", [
    (None, "", 411),  # no Content-Length
    (None, "Transfer-Encoding: chunked\r\n", 411),  # chunked bodies are not read here: ask for a length
    (-1, "", 400),  # would read to the end of the stream
    ("abc", "", 400),
    ("1e3", "", 400),
    ("", "", 400),
])
def test_a_post_without_a_valid_content_length_gets_a_clear_refusal(server, length, extra, code):
    # The client keeps its side open: a server reading "to the end" would never answer.
    with socket.create_connection(("127.0.0.1", server["rest"]), timeout=15) as sock:
        sock.sendall(post_bytes(b'{"instances": [[1.0]]}', length=length, extra=extra))
        status, _, answer = parse_response(read_until_closed(sock, 15))
    assert status == code
    assert "Content-Length" in json_error(answer)
    assert_still_serving(server)


def test_a_stalled_connection_is_closed_after_the_rest_api_timeout(server):
    """--rest_api_timeout_in_ms (TF Serving's flag; 30000 by default) bounds how long a silent client holds a
    connection: half a body gets 408 and the connection is closed; a connection that sends nothing is closed."""
    with socket.create_connection(("127.0.0.1", server["rest"]), timeout=15) as half_body:
        half_body.sendall(post_bytes(b'{"instances": [[1.0', length=100))
        with socket.create_connection(("127.0.0.1", server["rest"]), timeout=15) as silent:
            status, _, answer = parse_response(read_until_closed(half_body, 10))
            assert status == 408 and json_error(answer)
            assert read_until_closed(silent, 10) == b""
    assert_still_serving(server)


def test_connections_beyond_the_thread_cap_wait_instead_of_each_getting_a_thread(server):
    """--rest_api_num_threads (TF Serving's flag) bounds the handler threads: ten idle connections add at most
    that many threads, and a real request behind them is answered once the idle ones time out."""
    pid = server["proc"].pid
    before = proc_status_kb(pid, "Threads")
    idle = [socket.create_connection(("127.0.0.1", server["rest"]), timeout=15) for _ in range(10)]
    try:
        most = before
        for _ in range(15):  # sample the thread count for about 1.5 s while the idle connections wait
            most = max(most, proc_status_kb(pid, "Threads"))
            time.sleep(0.1)
        assert most - before <= REST_THREADS + 2, (before, most)
        status, _, body = http(server, post_bytes(b'{"signature_name": "prediction", "instances": [[2.0]]}'),
                               wait=30)
        assert status == 200
        assert json.loads(body)["predictions"][0][0] == pytest.approx(server["expect"](2.0), rel=1e-5)
        for sock in idle:  # every idle connection was closed by the server, none was left hanging
            assert read_until_closed(sock, 15) == b""
    finally:
        for sock in idle:
            sock.close()
    assert_still_serving(server)
