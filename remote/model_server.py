#!/usr/bin/env python3
"""tflab's stand-in for `tensorflow_model_server`: the same gRPC API over a SavedModel.

TensorFlow Serving's binary is not installable everywhere (no PyPI or Debian package), so
tflab falls back to this small server, on this machine (`--local`) and on lab hosts that
have neither Docker nor the apt package. It takes TensorFlow Serving's own flags and speaks
its API from tensorflow-serving-api, so the same client works against either:

- PredictionService.Predict and GetModelMetadata,
- ModelService.GetModelStatus,
- optionally the REST API's GET /v1/models/<name> and POST /v1/models/<name>:predict.

As TF Serving does, it watches --model_base_path for numeric version folders, serves the
highest one, and loads a newly exported version without a restart (the old one ends).
Errors carry TF Serving's status codes: unknown model or version NOT_FOUND, unknown signature
FAILED_PRECONDITION, a wrong input key, dtype or shape INVALID_ARGUMENT.

Any local user (and anyone through the SSH tunnel) can reach it, so requests are bounded: see the
limits below. A request over a limit gets a short error (gRPC INVALID_ARGUMENT or RESOURCE_EXHAUSTED,
HTTP 400/408/411/413), never a crash, a hang or an echo of its payload.

It ships to lab hosts as a plain file and imports only TensorFlow, grpcio,
tensorflow-serving-api and the standard library.

Usage: python3 model_server.py --port=9000 --model_name=nn --model_base_path=/path/to/nn
                               [--rest_api_port=8501] [--host=127.0.0.1]
                               [--file_system_poll_wait_seconds=1] [--threads=8]
                               [--rest_api_timeout_in_ms=30000] [--rest_api_num_threads=4*CPUs]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("tflab.model_server")

PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"

# --------------------------------------------------------------------------- limits
# Rows (a tensor's first dimension, the batch) one Predict may carry, over gRPC and REST. Our choice:
# the lab's model takes [None, 1], so 100,000 rows is 400 KB of float32, far beyond any lab use.
# (TF Serving has no such limit; its batching, off by default, has max_batch_size.)
MAX_ROWS_PER_REQUEST = 100_000
# gRPC receive limit: grpcio's own default (4 MiB), made explicit. TF Serving takes up to 2 GiB
# (tensorflow_serving/model_servers/server.cc: builder.SetMaxMessageSize(INT32_MAX)).
MAX_GRPC_MESSAGE_BYTES = 4 * 1024 * 1024
# Elements the input tensors of one Predict may declare in all: as many float32 values as a full
# message carries. A typed field (float_val...) shorter than its shape is filled with its last value
# (TensorFlow's tensor.cc FromProtoField; tf.make_ndarray does the same), so without this bound 38
# bytes could declare billions. Checked on the TensorProto before anything is allocated.
MAX_ELEMENTS_PER_REQUEST = MAX_GRPC_MESSAGE_BYTES // 4
# gRPC calls running or waiting per worker thread (--threads); past that grpc answers RESOURCE_EXHAUSTED
# at once (grpc.server's maximum_concurrent_rpcs) rather than queueing without bound. Our choice.
MAX_RPCS_PER_THREAD = 4
# REST body: the same 4 MiB as a gRPC message (100,000 rows of JSON take 0.7 to 2.5 MB); a larger
# Content-Length gets 413 from the headers, before the body is read.
MAX_REST_BODY_BYTES = MAX_GRPC_MESSAGE_BYTES
# REST defaults of TF Serving's flags --rest_api_timeout_in_ms and --rest_api_num_threads
# (tensorflow_serving/model_servers/server.h: http_timeout_in_ms = 30000, http_num_threads =
# 4 * NumSchedulableCPUs). Here the timeout bounds each socket read or write of a connection.
DEFAULT_REST_TIMEOUT_MS = 30_000
DEFAULT_REST_THREADS = 4 * (os.cpu_count() or 1)
# After refusing a request whose body it did not read, the server drains what the client still sends
# for up to this long before closing, so the close does not reset the connection before the client
# reads the answer (Apache httpd's lingering close, server/connection.c: SECONDS_TO_LINGER 2).
LINGER_SECONDS = 2.0
# Characters an error message may have: it never quotes more than a short prefix of a request.
MAX_ERROR_CHARS = 300

# The repeated field holding each dtype's values, and values per element (tensor.proto; as
# tf.make_ndarray reads them). Other dtypes (resource, variant...) are refused in a request.
VALUE_FIELDS = {
    "DT_FLOAT": ("float_val", 1), "DT_DOUBLE": ("double_val", 1), "DT_INT64": ("int64_val", 1),
    "DT_INT32": ("int_val", 1), "DT_INT16": ("int_val", 1), "DT_INT8": ("int_val", 1),
    "DT_UINT8": ("int_val", 1), "DT_UINT16": ("int_val", 1), "DT_QINT8": ("int_val", 1),
    "DT_QUINT8": ("int_val", 1), "DT_QINT16": ("int_val", 1), "DT_QUINT16": ("int_val", 1),
    "DT_QINT32": ("int_val", 1), "DT_UINT32": ("uint32_val", 1), "DT_UINT64": ("uint64_val", 1),
    "DT_BOOL": ("bool_val", 1), "DT_STRING": ("string_val", 1), "DT_HALF": ("half_val", 1),
    "DT_BFLOAT16": ("half_val", 1), "DT_COMPLEX64": ("scomplex_val", 2), "DT_COMPLEX128": ("dcomplex_val", 2),
}


def clip(text, limit: int = MAX_ERROR_CHARS) -> str:
    """text cut to limit characters (an error message never echoes a whole request)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ServingError(Exception):
    """A request error with the gRPC status code TF Serving would give."""

    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name
        self.message = message


@dataclass(frozen=True)
class LoadedVersion:
    """One loaded version of the model: its signatures and their SignatureDefs."""

    version: int
    path: str
    signatures: dict  # name -> concrete function
    signature_defs: dict  # name -> SignatureDef proto (as TF Serving reports them)
    keepalive: object = None  # the loaded SavedModel object, which owns the functions


@dataclass
class ModelState:
    """What the server serves now, and the state of every version it has seen."""

    name: str
    base_path: str
    current: LoadedVersion | None = None
    states: dict = field(default_factory=dict)  # version -> (state name, error message)
    lock: threading.Lock = field(default_factory=threading.Lock)


def numeric_versions(base_path: str) -> list[int]:
    """The version folders under base_path, ascending (only complete, all-digit names)."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(base_path, n)))


def load_version(tf, base_path: str, version: int) -> LoadedVersion:
    """Load one SavedModel version and read its SignatureDefs from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(base_path, str(version))
    loaded = tf.saved_model.load(path)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signature_defs = dict(proto.meta_graphs[0].signature_def)
    return LoadedVersion(version, path, dict(loaded.signatures), signature_defs, keepalive=loaded)


def poll_once(tf, model: ModelState) -> None:
    """Load the highest version if it is newer than the one served (TF Serving's latest-1 policy)."""
    versions = numeric_versions(model.base_path)
    if not versions:
        return
    newest = versions[-1]
    current = model.current
    if current is not None and current.version >= newest:
        return
    if model.states.get(newest, ("", ""))[0] == "END":  # failed before; do not retry every poll
        return
    with model.lock:
        model.states[newest] = ("LOADING", "")
    try:
        loaded = load_version(tf, model.base_path, newest)
        # Warm up, as TF Serving can: the first call traces nothing but allocates.
        fn = loaded.signatures.get(DEFAULT_SIGNATURE) or next(iter(loaded.signatures.values()))
        _, kwargs = fn.structured_input_signature
        if len(kwargs) == 1:
            (key, spec), = kwargs.items()
            if spec.dtype == tf.float32 and spec.shape.rank == 2 and spec.shape[1] is not None:
                fn(**{key: tf.zeros([1, spec.shape[1]], tf.float32)})
    except Exception as exc:  # a broken export must not stop the server
        log.error("could not load %s version %d: %s", model.name, newest, exc)
        with model.lock:
            model.states[newest] = ("END", f"could not load: {exc}")
        return
    with model.lock:
        old = model.current
        model.current = loaded
        model.states[newest] = ("AVAILABLE", "")
        if old is not None:
            model.states[old.version] = ("END", "")
    log.info("Successfully loaded servable version {name: %s version: %d}", model.name, newest)
    print(f"serving {model.name} version {newest} from {loaded.path}", flush=True)


def watch(tf, model: ModelState, interval: float, stop: threading.Event) -> None:
    """Poll the base path until stop is set."""
    while not stop.is_set():
        try:
            poll_once(tf, model)
        except Exception:  # keep watching whatever happens
            log.exception("polling %s failed", model.base_path)
        stop.wait(interval)


# --------------------------------------------------------------------------- request handling


def select_version(model: ModelState, name: str, version: int | None) -> LoadedVersion:
    """The loaded version a request names, or NOT_FOUND as TF Serving says it."""
    if name != model.name:
        spec = f"Specific({name}, {version})" if version else f"Latest({name})"
        raise ServingError("NOT_FOUND", f"Servable not found for request: {spec}")
    current = model.current
    if current is None:
        raise ServingError("NOT_FOUND" if version else "UNAVAILABLE",
                           f"Servable not found for request: Latest({name})" if not version
                           else f"Servable not found for request: Specific({name}, {version})")
    if version and version != current.version:
        raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
    return current


def dtype_name(dtype) -> str:
    """A dtype as TensorFlow's C++ core names it in errors (float, double, int32...)."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)[3:].lower()


def check_rows(alias: str, rows: int) -> None:
    """Refuse a batch of more than MAX_ROWS_PER_REQUEST rows."""
    if rows > MAX_ROWS_PER_REQUEST:
        raise ServingError("INVALID_ARGUMENT", f"{clip(alias, 60)} has {rows} rows; this server takes at most "
                                               f"{MAX_ROWS_PER_REQUEST} rows per request")


def check_tensor_proto(tf, alias: str, proto, budget: int) -> int:
    """Check a request's TensorProto before tf.make_ndarray allocates it; returns its element count.

    TensorFlow's own rules (tensorflow/core/framework/tensor.cc, Tensor::FromProto): the shape must be
    valid, tensor_content must hold exactly the declared elements (Helper::Decode), and a typed field
    may hold fewer values than elements (the rest is its last value, or zero when it is empty). TF
    Serving refuses what FromProto refuses with INVALID_ARGUMENT "tensor parsing error: <alias>"
    (tensorflow/cc/saved_model/util.cc). On top of that: more values than elements are refused, and so
    are more rows than MAX_ROWS_PER_REQUEST and more elements than budget.
    """
    from tensorflow.core.framework import types_pb2

    def refuse(why: str) -> ServingError:
        return ServingError("INVALID_ARGUMENT", f"tensor parsing error: {clip(alias, 60)} ({why})")

    if proto.tensor_shape.unknown_rank:
        raise refuse("the shape has an unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise refuse(f"invalid shape {clip(dims, 80)}")
    if dims:
        check_rows(alias, dims[0])
    count = math.prod(dims)
    if count > budget:
        raise refuse(f"the shape {clip(dims, 80)} declares {count} elements; this server takes at most "
                     f"{MAX_ELEMENTS_PER_REQUEST} per request")
    try:
        field, per_element = VALUE_FIELDS[types_pb2.DataType.Name(proto.dtype)]
    except (KeyError, ValueError):
        raise refuse(f"unsupported dtype {proto.dtype}") from None
    if proto.tensor_content:
        if field == "string_val":
            raise refuse("string values go in string_val")
        need = count * tf.as_dtype(proto.dtype).size
        if len(proto.tensor_content) != need:
            raise refuse(f"tensor_content has {len(proto.tensor_content)} bytes, the shape {clip(dims, 80)} "
                         f"needs {need}")
    else:
        values = len(getattr(proto, field))
        if values % per_element or values // per_element > count:
            raise refuse(f"{values} values in {field} for the {count} elements of shape {clip(dims, 80)}")
    return count


def run_signature(tf, loaded: LoadedVersion, signature_name: str, inputs: dict, output_filter=()) -> dict:
    """Check the inputs against the signature and run it; returns name -> numpy array."""
    signature_name = signature_name or DEFAULT_SIGNATURE
    fn = loaded.signatures.get(signature_name)
    if fn is None:
        raise ServingError("FAILED_PRECONDITION",
                           f'Serving signature name: "{signature_name}" not found in signature def')
    _, specs = fn.structured_input_signature
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise ServingError("INVALID_ARGUMENT",
                           f"input tensor alias not found in signature: {', '.join(unknown)}. "
                           f"Inputs expected to be in the set {{{','.join(sorted(specs))}}}.")
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise ServingError("INVALID_ARGUMENT",
                           f"Missing one or more inputs: {', '.join(missing)}. "
                           f"Inputs expected to be in the set {{{','.join(sorted(specs))}}}.")
    tensors = {}
    for key, value in inputs.items():
        spec = specs[key]
        if value.dtype != spec.dtype.as_numpy_dtype:
            raise ServingError("INVALID_ARGUMENT",
                               f"Expects arg[{key}] to be {dtype_name(spec.dtype)} but "
                               f"{dtype_name(tf.as_dtype(value.dtype))} is provided")
        if not spec.shape.is_compatible_with(value.shape):
            raise ServingError("INVALID_ARGUMENT",
                               f"input '{key}' has shape {list(value.shape)}, "
                               f"the signature expects {spec.shape.as_list()}")
        tensors[key] = tf.constant(value)
    outputs = fn(**tensors)
    if output_filter:
        wrong = sorted(set(output_filter) - set(outputs))
        if wrong:
            raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {', '.join(wrong)}")
        outputs = {k: v for k, v in outputs.items() if k in output_filter}
    return {k: v.numpy() for k, v in outputs.items()}


def make_grpc_services(tf, model: ModelState):
    """The PredictionService and ModelService servicers over the model state."""
    import grpc
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc)

    def abort(context, err: ServingError):
        context.abort(getattr(grpc.StatusCode, err.code_name), clip(err.message))

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            spec = request.model_spec
            try:
                version = spec.version.value if spec.HasField("version") else None
                if spec.version_label:
                    raise ServingError("INVALID_ARGUMENT", "version labels are not configured on this server")
                loaded = select_version(model, spec.name, version)
                declared = 0
                for key, proto in request.inputs.items():  # before anything is allocated
                    declared += check_tensor_proto(tf, key, proto, MAX_ELEMENTS_PER_REQUEST - declared)
                try:
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                except Exception as exc:
                    raise ServingError("INVALID_ARGUMENT", f"could not read an input tensor: {exc}") from exc
                outputs = run_signature(tf, loaded, spec.signature_name, inputs, list(request.output_filter))
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:  # a TensorFlow runtime error on bad data
                return abort(context, ServingError("INVALID_ARGUMENT", str(exc).strip().splitlines()[0]))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

        def GetModelMetadata(self, request, context):
            from tensorflow_serving.apis import get_model_metadata_pb2 as md

            spec = request.model_spec
            try:
                version = spec.version.value if spec.HasField("version") else None
                loaded = select_version(model, spec.name, version)
                fields = list(request.metadata_field)
                if fields != ["signature_def"]:
                    raise ServingError("INVALID_ARGUMENT", "Metadata field signature_def is required and is "
                                       "the only one supported")
            except ServingError as err:
                return abort(context, err)
            sig_map = md.SignatureDefMap()
            for name, sig in loaded.signature_defs.items():
                sig_map.signature_def[name].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = loaded.version
            response.metadata["signature_def"].Pack(sig_map)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            with model.lock:
                states = dict(model.states)
            if spec.name != model.name or not states or (version and version not in states):
                what = f"version {version} of model {spec.name}" if version else f"any versions of model {spec.name}"
                return abort(context, ServingError("NOT_FOUND", f"Could not find {what}"))
            response = get_model_status_pb2.GetModelStatusResponse()
            for v in sorted(states):
                if version and v != version:
                    continue
                state, message = states[v]
                item = response.model_version_status.add()
                item.version = v
                item.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                if message:
                    item.status.error_code = 9  # FAILED_PRECONDITION
                    item.status.error_message = message
            return response

    return PredictionService(), ModelService(), prediction_service_pb2_grpc, model_service_pb2_grpc


# --------------------------------------------------------------------------- REST


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most max_threads handler threads (TF Serving's --rest_api_num_threads).

    A connection beyond the cap waits, unread, until a handler thread ends (each ends within the REST
    timeout of a silent client); further ones wait in the listen backlog. Never a thread per connection.
    """

    daemon_threads = True
    request_queue_size = 128  # the listen backlog where connections wait their turn

    def __init__(self, address, handler, max_threads: int):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max(1, max_threads))
        self.closing = threading.Event()

    def process_request(self, request, client_address):
        while not self.slots.acquire(timeout=0.5):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)  # starts the handler thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):  # a client gone mid-answer: one line, not a traceback
        log.debug("rest: connection from %s ended: %s", client_address, sys.exc_info()[1])

    def shutdown(self):
        self.closing.set()
        super().shutdown()


def make_rest_handler(tf, model: ModelState, timeout_seconds: float | None = DEFAULT_REST_TIMEOUT_MS / 1000):
    """A handler for TF Serving's REST API: model status and row-format predict.

    Every answer, errors included, is JSON with a Content-Length; errors are {"error": "..."} as in TF
    Serving. A connection is closed after each answer (HTTP/1.0), and every socket read or write times
    out after timeout_seconds.
    """
    import numpy as np

    class Handler(BaseHTTPRequestHandler):
        server_version = "tflab-model-server"
        timeout = timeout_seconds  # StreamRequestHandler.setup() puts it on the socket
        body_unread = False  # a request body is (maybe) still on the socket

        def log_message(self, fmt, *args):  # quiet: the gRPC side logs what matters
            log.debug("rest: " + fmt, *args)

        def reply(self, status: int, body: dict) -> None:
            if "error" in body:
                body = {"error": clip(body["error"])}
            data = json.dumps(body).encode()
            self.close_connection = True
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client is gone
                return
            if self.body_unread:
                self.linger()

        def linger(self) -> None:
            """Drain what the client still sends, for at most LINGER_SECONDS, so that closing with unread data
            (which resets a TCP connection) does not destroy the answer before the client reads it."""
            sock = self.connection
            deadline = time.monotonic() + LINGER_SECONDS
            try:
                sock.shutdown(socket.SHUT_WR)
                while (remaining := deadline - time.monotonic()) > 0:
                    sock.settimeout(remaining)
                    if not sock.recv(65536):
                        break
            except OSError:  # timed out or reset: close now
                pass

        def read_body(self) -> bytes | None:
            """The request body, or None once an error has been answered."""
            raw = self.headers.get("Content-Length")
            if raw is None:
                self.reply(411, {"error": "a POST needs a Content-Length header (chunked bodies are not read)"})
                return None
            raw = raw.strip()
            if not (raw.isascii() and raw.isdigit()):
                self.reply(400, {"error": f"invalid Content-Length: {clip(raw, 40)!r}"})
                return None
            length = int(raw)
            if length > MAX_REST_BODY_BYTES:
                self.reply(413, {"error": f"the body has {length} bytes; this server takes at most "
                                          f"{MAX_REST_BODY_BYTES} bytes per request"})
                return None
            try:
                data = self.rfile.read(length)
            except (TimeoutError, socket.timeout):
                self.reply(408, {"error": f"the body did not arrive within {self.timeout:g} s"})
                return None
            if len(data) < length:
                self.reply(400, {"error": f"the body ended after {len(data)} of {length} bytes"})
                return None
            self.body_unread = False
            return data

        def parse_path(self):
            path = self.path.split("?", 1)[0]
            prefix = "/v1/models/"
            if not path.startswith(prefix):
                return None
            rest = path[len(prefix):]
            verb = None
            if ":" in rest:
                rest, verb = rest.split(":", 1)
            parts = rest.split("/")
            version = int(parts[2]) if len(parts) == 3 and parts[1] == "versions" and parts[2].isdigit() else None
            return parts[0], version, verb

        def do_GET(self):
            parsed = self.parse_path()
            if not parsed or parsed[2]:
                return self.reply(404, {"error": "Malformed request: GET " + self.path})
            name, version, _ = parsed
            with model.lock:
                states = dict(model.states)
            if name != model.name or not states:
                return self.reply(404, {"error": f"Could not find any versions of model {name}"})
            return self.reply(200, {"model_version_status": [
                {"version": str(v), "state": s, "status": {"error_code": "OK" if not m else "FAILED_PRECONDITION",
                                                           "error_message": m}}
                for v, (s, m) in sorted(states.items()) if not version or v == version]})

        def do_POST(self):
            self.body_unread = True
            parsed = self.parse_path()
            if not parsed or parsed[2] != "predict":
                return self.reply(404, {"error": "Malformed request: POST " + self.path})
            name, version, _ = parsed
            raw = self.read_body()
            if raw is None:
                return None
            try:  # TF Serving's messages (tensorflow_serving/util/json_tensor.cc)
                body = json.loads(raw or b"{}")
            except RecursionError:
                return self.reply(400, {"error": "JSON Parse error: the document is nested too deeply"})
            except ValueError as exc:  # not JSON, or not UTF-8
                return self.reply(400, {"error": f"JSON Parse error: {exc}"})
            if not isinstance(body, dict):
                return self.reply(400, {"error": f"JSON Value: {clip(raw.decode('utf-8', 'replace'), 60)} "
                                                 "Is not object"})
            try:
                loaded = select_version(model, name, version)
                signature = body.get("signature_name", "")
                fn = loaded.signatures.get(signature or DEFAULT_SIGNATURE)
                if fn is None:
                    raise ServingError("FAILED_PRECONDITION",
                                       f'Serving signature name: "{signature}" not found in signature def')
                _, specs = fn.structured_input_signature
                if "instances" in body and len(specs) == 1:
                    (key, spec), = specs.items()
                    if isinstance(body["instances"], list):
                        check_rows(key, len(body["instances"]))
                    inputs = {key: np.asarray(body["instances"], dtype=spec.dtype.as_numpy_dtype)}
                elif "inputs" in body and isinstance(body["inputs"], dict):
                    inputs = {k: np.asarray(v, dtype=specs[k].dtype.as_numpy_dtype) if k in specs else np.asarray(v)
                              for k, v in body["inputs"].items()}
                else:
                    raise ServingError("INVALID_ARGUMENT", "the body needs 'instances' or 'inputs'")
                for key, value in inputs.items():
                    if value.ndim:
                        check_rows(key, value.shape[0])
                outputs = run_signature(tf, loaded, signature, inputs)
            except ServingError as err:
                code = {"NOT_FOUND": 404, "UNAVAILABLE": 503}.get(err.code_name, 400)
                return self.reply(code, {"error": err.message})
            except Exception as exc:  # bad values (ValueError, TypeError, RecursionError), a TensorFlow error
                return self.reply(400, {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0]})
            if len(outputs) == 1:
                (value,) = outputs.values()
                return self.reply(200, {"predictions": value.tolist()})
            return self.reply(200, {"predictions": [dict(zip(outputs, row))
                                                    for row in zip(*(v.tolist() for v in outputs.values()))]})

    return Handler


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tflab's TensorFlow Serving stand-in (gRPC PredictionService).")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST API)")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", required=True, help="folder holding numeric version folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=8, help="gRPC worker threads")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=DEFAULT_REST_TIMEOUT_MS,
                   help="REST: each socket read or write of a connection times out after this (0: never)")
    p.add_argument("--rest_api_num_threads", type=int, default=DEFAULT_REST_THREADS,
                   help="REST: connections handled at once; more wait their turn (default 4 per CPU)")
    return p.parse_args(argv)


def serve(args: argparse.Namespace, stop: threading.Event) -> int:
    """Run the servers until stop is set."""
    import grpc
    import tensorflow as tf

    model = ModelState(args.model_name, os.path.abspath(args.model_base_path))
    prediction, model_service, pred_grpc, model_grpc = make_grpc_services(tf, model)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads),
                         maximum_concurrent_rpcs=max(1, args.threads) * MAX_RPCS_PER_THREAD,
                         options=[("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES)])
    pred_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_grpc.add_ModelServiceServicer_to_server(model_service, server)
    address = f"{args.host}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
        bound = 0
    if bound == 0:
        print(f"model_server: cannot listen on {address}: the port is taken", file=sys.stderr, flush=True)
        return 3
    poll_once(tf, model)  # serve what is there before saying we run
    server.start()
    rest = None
    if args.rest_api_port:
        timeout = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None
        rest = BoundedHTTPServer((args.host, args.rest_api_port), make_rest_handler(tf, model, timeout),
                                 args.rest_api_num_threads)
        threading.Thread(target=rest.serve_forever, name="rest", daemon=True).start()
        print(f"Exporting HTTP/REST API at:{args.host}:{args.rest_api_port} ...", flush=True)
    print(f"Running gRPC ModelServer at {address} ...", flush=True)
    watcher = threading.Thread(target=watch, args=(tf, model, args.file_system_poll_wait_seconds, stop),
                               name="watch", daemon=True)
    watcher.start()
    stop.wait()
    server.stop(grace=0.5).wait(2)
    if rest is not None:
        rest.shutdown()
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return serve(args, stop)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip TensorFlow's slow teardown
