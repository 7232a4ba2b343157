#!/usr/bin/env python3
"""tflab's stand-in for `tensorflow_model_server`: the same gRPC API over a SavedModel.

TensorFlow Serving's binary is not installable everywhere (no PyPI or Debian package), so
tflab falls back to this small server, on this machine (`--local`) and on lab hosts that
have neither Docker nor the apt package. It takes TensorFlow Serving's flags (model_servers/main.cc;
those it does not implement are a one-line warning) and answers as TensorFlow Serving does, so code
written for either works against both:

- PredictionService: Predict (answers in the typed fields, float_val..., as predict_util.cc does),
  GetModelMetadata; Classify, Regress and MultiInference over tf.Example inputs, run and checked as
  classifier.cc, regressor.cc and multi_inference.cc do;
- ModelService: GetModelStatus, HandleReloadConfigRequest (a new model_config_list);
- the REST API (g3doc/api_rest.md): status, metadata, predict in the row and columnar formats,
  classify and regress, with versions and labels in the path;
- --model_config_file (several models, version policies latest/all/specific, version labels checked against
  the versions available, --allow_version_labels_for_unavailable_models) and
  --model_config_file_poll_wait_seconds, --monitoring_config_file (Prometheus metrics over REST),
  --enable_batching (allowed_batch_sizes, padding and large batch splitting included), --grpc_socket_path,
  --saved_model_tags, --enable_signature_method_name_check, --enable_model_warmup, --max_num_load_retries,
  --load_retry_interval_micros, --tensorflow_*_parallelism, --prefer_tflite_model (a model.tflite through
  TensorFlow's TF Lite interpreter, as servables/tensorflow/tflite_session.cc serves it).

Each version runs, as in TF Serving, in a TensorFlow session over the SavedModel's graph, fed and
fetched by the tensor names of its SignatureDefs. As TF Serving does, it watches each model's base path
for numeric version folders, serves those its version policy wants (the highest one by default), and
loads a newly exported version without a restart (the old one ends); a version that fails to load is
retried, and a model of the first config whose version never loads stops the server, as there; its ports
open once the first config has loaded (server.cc). A fed tensor's shape is not checked against the
signature's, as TensorFlow's runtime does not check it. Errors carry TF Serving's status codes and messages.
What an unloaded version held is given back (release_memory), and the metrics label only served models.

Any local user (and anyone through the SSH tunnel) can reach it, so requests are bounded: see the
limits below. A request over a limit gets a short error (gRPC INVALID_ARGUMENT or RESOURCE_EXHAUSTED,
HTTP 400/408/411/413), never a crash, a hang or an echo of its payload.

It ships to lab hosts as a plain file and imports only TensorFlow, numpy, grpcio,
tensorflow-serving-api and the standard library.

Usage: python3 model_server.py --port=9000 (--model_name=nn --model_base_path=/path/to/nn | --model_config_file=F)
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

import numpy as np

log = logging.getLogger("tflab.model_server")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
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
# What the server exits with when it cannot start because a model did not load or a label names a version that
# is not available: TF Serving's main.cc prints "Failed to start server. Error: ..." and returns -1.
FAILED_TO_START = 255
# The longest the main thread waits before it runs a signal handler that another thread's signal left pending.
SIGNAL_CHECK_SECONDS = 0.2
# How long a request waits for its batch to run before it gives up (DEADLINE_EXCEEDED). Our choice.
BATCH_WAIT_SECONDS = 60.0
# --rest_api_enable_cors_support: the headers every REST answer then carries (http_rest_api_util.cc AddCORSHeaders).
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"))
# The model_name label the metrics count a request under when it names a model the server does not serve. Our
# choice (TF Serving labels it with whatever name the request carries: see Metrics).
UNKNOWN_MODEL_LABEL = "(unknown)"
# Removed models whose ended versions GetModelStatus still lists (a config reload can name any number). Our choice.
MAX_RETIRED_MODELS = 1000
# Characters an error message may have before it is cut, with "...TRUNCATED" after them, as TF Serving cuts
# every gRPC error (model_servers/grpc_status_util.cc ToGRPCStatus, kErrorMessageLimit = 1024). Names and values
# a message quotes from a request are cut much shorter still (clip(..., 60)): it never echoes a request.
MAX_ERROR_CHARS = 1024
# Bytes the serialized tf.Examples of one Classify, Regress or MultiInference may make once each is joined
# to the shared context (util.cc InputToSerializedExampleTensor copies the context into every example, so a
# 4 MiB message could otherwise ask for 100,000 copies of a 4 MiB context). Our choice: four full messages.
MAX_EXAMPLE_BYTES_PER_REQUEST = 4 * MAX_GRPC_MESSAGE_BYTES

# --enable_signature_method_name_check (model_servers/main.cc, off by default): whether a signature's
# method_name must match the API (servables/tensorflow/util.cc GetSignatureMethodNameCheckFeature, a
# process-wide switch there too). Off, Classify and Regress take any signature shaped as they need, which is
# how TF2 SavedModels (whose signatures all say tensorflow/serving/predict) are classified and regressed.
method_name_check = False

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
    """text cut to limit characters: a whole message as TF Serving cuts it (its first 1,024 characters and
    "...TRUNCATED"), a part quoted from a request to limit characters ending in "..."."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[:limit] + "...TRUNCATED" if limit == MAX_ERROR_CHARS else text[:limit - 3] + "..."


class ServingError(Exception):
    """A request error with the gRPC status code TF Serving would give."""

    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name
        self.message = message


class LoadedVersion:
    """One loaded version of a model: a TensorFlow session over its SavedModel's graph, as TF Serving runs it.

    TF Serving feeds and fetches the tensors a SignatureDef names (predict_util.cc RunPredict ->
    Session::Run); so does this, through one cached session callable per (signature, outputs).
    """

    def __init__(self, tf, path: str, version: int, tags: list[str], config=None):
        self.version = version
        self.path = path
        graph = tf.Graph()
        with graph.as_default():
            self.session = tf.compat.v1.Session(graph=graph, config=config)
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, tags, path)
        self.signature_defs = dict(meta_graph.signature_def)
        self.callables: dict = {}
        self.lock = threading.Lock()
        self.batching: BatchingParameters | None = None  # --enable_batching
        self.batchers: dict = {}
        self.specs: dict = {}

    def spec(self, tf, signature_name: str) -> tuple:
        """A signature's inputs as {key: (tf dtype, numpy dtype or None for strings)} and its sorted output keys,
        read once from its SignatureDef."""
        found = self.specs.get(signature_name)
        if found is None:
            sig = self.signature_defs[signature_name]
            inputs = {}
            for key, info in sig.inputs.items():
                want = tf.as_dtype(info.dtype)
                inputs[key] = (want, None if want == tf.string else np.dtype(want.as_numpy_dtype))
            found = self.specs[signature_name] = (inputs, tuple(sorted(sig.outputs)))
        return found

    def runner(self, signature_name: str, input_keys: tuple, output_keys: tuple):
        """A session callable feeding input_keys and fetching output_keys of a signature (cached)."""
        key = (signature_name, input_keys, output_keys)
        fn = self.callables.get(key)
        if fn is None:
            sig = self.signature_defs[signature_name]
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions()
            options.feed.extend(sig.inputs[k].name for k in input_keys)
            options.fetch.extend(sig.outputs[k].name for k in output_keys)
            with self.lock:  # TF_SessionMakeCallable: ten times less Python per call than Session.run
                fn = self.session._make_callable_from_options(options)
                if len(self.callables) < 256:
                    self.callables[key] = fn
        return fn

    def tensor_runner(self, feeds: tuple, fetches: tuple):
        """A session callable feeding and fetching tensors by name (Classify, Regress, MultiInference) (cached)."""
        key = ("tensors", feeds, fetches)
        fn = self.callables.get(key)
        if fn is None:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions()
            options.feed.extend(feeds)
            options.fetch.extend(fetches)
            with self.lock:
                fn = self.session._make_callable_from_options(options)
                if len(self.callables) < 256:
                    self.callables[key] = fn
        return fn

    def batcher(self, key: tuple, fn) -> "Batcher":
        """The batch queue of one (signature, inputs, outputs, input dtypes and inner shapes)."""
        batcher = self.batchers.get(key)
        if batcher is None:
            with self.lock:
                batcher = self.batchers.get(key)
                if batcher is None:
                    batcher = self.batchers[key] = Batcher(fn, self.batching)
        return batcher



def tflite_signature_defs(content: bytes) -> dict:
    """The SignatureDefs a TF Lite model carries in its metadata, as TF Serving reads them
    (tflite_session.cc -> tensorflow/lite/tools/signature/signature_def_util.cc GetSignatureDefMap): the metadata
    entry "signature_defs_metadata" names a buffer holding a FlexBuffer map of signature key -> serialized
    SignatureDef. {} when there is none."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != b"signature_defs_metadata":
            continue
        data = model.Buffers(entry.Buffer()).DataAsNumpy()
        if not isinstance(data, np.ndarray):
            return {}
        found = {}
        table = flexbuffers.GetRoot(data.tobytes()).AsMap
        for key, value in zip(table.Keys, table.Values):
            key, sig = key.AsKey, meta_graph_pb2.SignatureDef()
            sig.ParseFromString(value.AsStringBytes if value.IsString else value.AsBlob)
            found[key] = sig
        return found
    return {}


class TfLiteVersion(LoadedVersion):
    """One version served from its model.tflite (--prefer_tflite_model) through TensorFlow's TF Lite interpreter
    (tf.lite.Interpreter), as TF Serving's TfLiteSession serves it (servables/tensorflow/saved_model_bundle_factory.cc
    LoadTfLiteModel, tflite_session.cc): the SignatureDefs stored in the model's metadata (tflite_signature_defs),
    each tensor name matched to a TF Lite tensor, with its ":N" suffix dropped when only that matches; a model
    without them gets one, serving_default, of every input and output tensor keyed by its name without a ":N"
    suffix (TfToTfLiteLegacyTensorName), method tensorflow/serving/predict. (Like TF Serving, it does not read the
    signatures TF Lite's converter writes into the model's own signature table.) An input whose
    shape differs from the tensor's is resized to it before the run (TfLiteSession::Run ResizeInputTensor). One
    interpreter per version, one run at a time (TF Serving keeps a pool of them: --num_tflite_pools...)."""

    def __init__(self, tf, path: str, version: int, tags: list[str], config=None):
        import warnings

        from tensorflow.core.protobuf import meta_graph_pb2

        self.version = version
        self.path = path
        with open(os.path.join(path, "model.tflite"), "rb") as f:
            content = f.read()
        with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT will replace it
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=content)
        self.interpreter.allocate_tensors()
        details = {d["index"]: d for d in self.interpreter.get_input_details() + self.interpreter.get_output_details()}
        self.indices = {d["name"]: index for index, d in details.items()}  # TF Lite tensor name -> index
        self.shapes = {index: tuple(int(n) for n in d["shape"]) for index, d in details.items()}  # inputs' now

        def info(index: int):  # tflite_session.cc TfLiteTensorToTensorInfo: name, dtype, the tensor's dims
            item = meta_graph_pb2.TensorInfo(name=details[index]["name"],
                                             dtype=tf.as_dtype(details[index]["dtype"]).as_datatype_enum)
            for size in details[index]["shape"]:
                item.tensor_shape.dim.add().size = int(size)
            return item

        def fix_name(tensor_info, what: str) -> None:  # tflite_session.cc FixTfLiteTensorName
            for name in (tensor_info.name, tensor_info.name.split(":", 1)[0]):
                if name in self.indices:
                    tensor_info.name = name
                    return
            raise ServingError("INTERNAL", f"{what} references an unknown tensor: Unknown tensor "
                                           f"'{clip(tensor_info.name, 80)}'.")

        self.signature_defs = tflite_signature_defs(content)
        for sig in self.signature_defs.values():
            for alias, tensor_info in sig.inputs.items():
                fix_name(tensor_info, f"Signature input {clip(alias, 60)}")
            for alias, tensor_info in sig.outputs.items():
                fix_name(tensor_info, f"Signature output {clip(alias, 60)}")
        if not self.signature_defs:  # "No signature def found in TFLite model. Generating one."
            sig = self.signature_defs[DEFAULT_SIGNATURE] = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for d in self.interpreter.get_input_details():
                sig.inputs[d["name"].split(":", 1)[0]].CopyFrom(info(d["index"]))
            for d in self.interpreter.get_output_details():
                sig.outputs[d["name"].split(":", 1)[0]].CopyFrom(info(d["index"]))
        self.session = None
        self.callables: dict = {}
        self.lock = threading.Lock()
        self.batching = None
        self.batchers: dict = {}
        self.specs: dict = {}

    def runner(self, signature_name: str, input_keys: tuple, output_keys: tuple):
        sig = self.signature_defs[signature_name]
        return self.tensor_runner(tuple(sig.inputs[k].name for k in input_keys),
                                  tuple(sig.outputs[k].name for k in output_keys))

    def tensor_runner(self, feeds: tuple, fetches: tuple):
        """A callable feeding and fetching TF Lite tensors by name: inputs resized when their shape differs, one
        run at a time on the version's interpreter, outputs copied out of it."""
        try:
            inputs = [self.indices[name] for name in feeds]
            outputs = [self.indices[name] for name in fetches]
        except KeyError as exc:
            raise ServingError("INTERNAL", f"Unknown tensor '{clip(exc.args[0], 80)}'.") from None
        interpreter = self.interpreter

        def run(*arrays):
            with self.lock:
                resized = False
                for index, array in zip(inputs, arrays):
                    if self.shapes[index] != array.shape:
                        interpreter.resize_tensor_input(index, list(array.shape))
                        self.shapes[index] = array.shape
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                for index, array in zip(inputs, arrays):
                    interpreter.set_tensor(index, array)
                interpreter.invoke()
                return [interpreter.get_tensor(index).copy() for index in outputs]
        return run


@dataclass(frozen=True)
class BatchingParameters:
    """--batching_parameters_file (servables/tensorflow/session_bundle_config.proto BatchingParameters), with
    the defaults of TensorFlow's BasicBatchScheduler where a field is not given."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple = ()  # a batch is padded up to the first of these that holds it
    pad_variable_length_inputs: bool = False  # tasks whose inner dimensions differ are padded to the largest
    enable_large_batch_splitting: bool = False  # a task is split across batches to fill them
    max_execution_batch_size: int = 0  # with splitting, the rows a batch runs (0: max_batch_size)

    @property
    def execution_size(self) -> int:
        """The most rows one batch runs (bundle_factory_util.h GetQueueOptions): max_execution_batch_size when
        large batches are split (max_batch_size when it is not given), else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    def padded_size(self, size: int) -> int:
        """The size a batch of size rows runs at (batching_util.cc RoundToLowestAllowedBatchSize): the first
        allowed size that holds it, or itself when there are none (or none is large enough)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size


def read_batching_parameters(path: str | None) -> BatchingParameters:
    """The fields this server implements, from a BatchingParameters text proto; warns about the others."""
    import re

    if not path:
        return BatchingParameters()
    with open(path) as f:
        text = f.read()
    text = re.sub(r"#[^\n]*", "", text)  # text-format comments
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                 "max_execution_batch_size"):
        found = re.search(rf"\b{name}\s*:?\s*\{{\s*value\s*:\s*(\d+)\s*\}}", text)
        if found:
            values[name] = int(found.group(1))
    # repeated int64 allowed_batch_sizes: one "allowed_batch_sizes: N" per entry, or the list form "[N, M]".
    sizes = []
    for one, many in re.findall(r"\ballowed_batch_sizes\s*:\s*(?:(-?\d+)|\[([-\d,\s]*)\])", text):
        sizes.extend(int(v) for v in ([one] if one else re.findall(r"-?\d+", many)))
    if sizes:
        values["allowed_batch_sizes"] = tuple(sizes)
    found = re.search(r"\bpad_variable_length_inputs\s*:\s*(\w+)", text)
    if found:
        values["pad_variable_length_inputs"] = found.group(1).lower() in ("true", "t", "1")
    found = re.search(r"\benable_large_batch_splitting\s*:?\s*\{\s*value\s*:\s*(\w+)\s*\}", text)  # a BoolValue
    if found:
        values["enable_large_batch_splitting"] = found.group(1).lower() in ("true", "t", "1")
    for name in ("thread_pool_name", "mixed_priority_batching_policy", "batch_padding_policy"):
        if re.search(rf"\b{name}\b", text):
            print(f"model_server: warning: {name} in the batching parameters is not implemented here; ignored",
                  file=sys.stderr, flush=True)
    params = BatchingParameters(**values)
    if min(params.max_batch_size, params.max_enqueued_batches, params.num_batch_threads) < 1:
        raise ServingError("INVALID_ARGUMENT", "max_batch_size, max_enqueued_batches and num_batch_threads must be "
                                               "at least 1")
    if params.enable_large_batch_splitting and params.max_batch_size < params.execution_size:
        # TensorFlow's shared_batch_scheduler.h AddQueue (max_batch_size is the queue's input_batch_size_limit)
        raise ServingError("INVALID_ARGUMENT", "When enable_large_batch_splitting is true, input_batch_size_limit "
                                               "must be greater than or equal to max_execution_batch_size. "
                                               f"(max_batch_size {params.max_batch_size}, max_execution_batch_size "
                                               f"{params.execution_size})")
    if params.allowed_batch_sizes and params.allowed_batch_sizes[-1] != params.max_batch_size:
        # servables/tensorflow/bundle_factory_util.cc WrapSessionForBatching (TF Serving's only check on them)
        raise ServingError("INVALID_ARGUMENT", "Last entry in allowed_batch_sizes must match max_batch_size; last "
                                               f"entry was {params.allowed_batch_sizes[-1]}; expected "
                                               f"{params.max_batch_size}")
    return params


def pad_inner(array, dims: tuple):
    """array padded after its last element along dimensions 1.. up to dims, with its first element
    (batching_util.cc AddPadding / PadTensor: "using existing values in padding")."""
    if tuple(array.shape[1:]) == tuple(dims):
        return array
    if array.size == 0:
        raise ServingError("INVALID_ARGUMENT", "Got empty tensor in batch of non-empty tensors.")
    padded = np.full((array.shape[0],) + tuple(dims), array.flat[0], dtype=array.dtype)
    padded[tuple(slice(0, n) for n in array.shape)] = array
    return padded


def merge_batch(parts_per_task: list, params: "BatchingParameters") -> tuple:
    """The inputs of a batch's tasks as one array per input (batching_session.cc MergeInputTensors): with
    pad_variable_length_inputs each task's tensor padded to the largest inner dimensions among the tasks,
    then, when allowed_batch_sizes asks for more rows, copies of the last task's first row appended.
    Returns (arrays, rows including the padding)."""
    size = sum(part[0].shape[0] for part in parts_per_task)
    target = params.padded_size(size)
    merged = []
    for parts in zip(*parts_per_task):
        parts = list(parts)
        if params.pad_variable_length_inputs and len(parts) > 1:
            dims = tuple(max(sizes) for sizes in zip(*(p.shape[1:] for p in parts)))
            parts = [pad_inner(p, dims) for p in parts]
        if target > size:
            parts.append(np.repeat(parts[-1][:1], target - size, axis=0))
        merged.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return merged, target


class Batcher:
    """Requests to one signature merged into one session run along their first dimension, with TF Serving's
    batching rules (BatchingSession over a BasicBatchScheduler): a batch runs when it holds its most rows
    (max_batch_size, or max_execution_batch_size when large batches are split) or when its first request has
    waited batch_timeout_micros, and at most num_batch_threads batches run at once. With allowed_batch_sizes,
    the batch is padded up to the next allowed size and the padding rows dropped from the outputs. With
    enable_large_batch_splitting, a request that does not fit the open batch fills it and its remaining rows go
    on in the next batches (TensorFlow's input_split_metadata.cc: the room left, then whole batches, then the
    rest, which later requests can join); its outputs are the pieces' outputs joined in order
    (batching_session.cc SplitInputTask).

    The batches run in the requests' own threads, not in threads of their own: a request that finds a batch
    slot free leads a batch of the oldest waiting rows (its own first); when a batch ends and rows are still
    waiting, the slot passes to the request that owns the oldest of them. Each request is one wake-up fewer
    than with batch threads, and a request alone runs at once, as without batching.

    A task is a dict: its arrays and rows, the pieces' outputs by first row, the first error of a piece, its
    rows not yet run ("pending"), whether it was handed a batch slot ("lead") and the event its thread waits
    on ("wake"); a piece is (task, first row, rows)."""

    def __init__(self, fn, params: BatchingParameters):
        import collections

        self.fn = fn
        self.params = params
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # a leader gathering a batch waits on it for more rows
        self.waiting: collections.deque = collections.deque()  # pieces not taken by a batch yet, oldest first
        self.waiting_rows = 0
        self.running = 0  # batch slots taken (at most num_batch_threads)
        self.gathering = False  # a leader is waiting for more rows: the one open batch the others join

    def submit(self, arrays: list, rows: int) -> list:
        """Run arrays (rows rows each) as part of a batch; returns their own rows of the outputs."""
        params = self.params
        if rows > params.max_batch_size:  # batch_scheduler.h: max_batch_size bounds a task, split or not
            raise ServingError("INVALID_ARGUMENT", f"Task size {rows} is larger than maximum input batch size "
                                                   f"{params.max_batch_size}")
        task = {"arrays": arrays, "rows": rows, "pending": rows, "outputs": {}, "lead": False,
                "wake": threading.Event(), "at": time.monotonic()}
        with self.lock:
            if self.waiting_rows + rows > params.max_enqueued_batches * params.execution_size:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is "
                                                  "full")
            self.waiting.append((task, 0, rows))
            self.waiting_rows += rows
            self.arrived.notify()
            if self.running < params.num_batch_threads and not self.gathering:
                self.running += 1
                task["lead"] = True
        give_up = task["at"] + BATCH_WAIT_SECONDS
        while True:
            with self.lock:
                lead, task["lead"] = task["lead"], False
                done = task["pending"] == 0
            if lead:
                self.lead()
                continue
            if done:
                break
            if not task["wake"].wait(max(0.0, give_up - time.monotonic())):
                self.abandon(task)
                raise ServingError("DEADLINE_EXCEEDED", f"the batch did not run within {BATCH_WAIT_SECONDS:g} s")
            task["wake"].clear()
        if "error" in task:
            raise task["error"]
        return task["values"]

    def take(self, room: int) -> tuple[list, int]:
        """Up to room rows of the oldest waiting pieces (the first one split when it does not fit and splitting
        is on); the lock is held."""
        taken, size = [], 0
        while self.waiting and size < room:
            task, first, rows = self.waiting[0]
            if rows > room - size:
                if not self.params.enable_large_batch_splitting:
                    break
                rows = room - size
                self.waiting[0] = (task, first + rows, self.waiting[0][2] - rows)
            else:
                self.waiting.popleft()
            taken.append((task, first, rows))
            size += rows
        self.waiting_rows -= size
        return taken, size

    def lead(self) -> None:
        """Gather and run one batch in this thread, then pass the slot on."""
        limit = self.params.execution_size
        with self.lock:
            batch, size = self.take(limit)
            if batch:
                deadline = batch[0][0]["at"] + self.params.batch_timeout_micros / 1e6
                self.gathering = True
                while size < limit and (remaining := deadline - time.monotonic()) > 0:
                    self.arrived.wait(remaining)
                    more, added = self.take(limit - size)
                    batch += more
                    size += added
                self.gathering = False
                if self.waiting and self.running < self.params.num_batch_threads:  # the next batch opens now
                    self.running += 1
                    self.hand_slot()
        if batch:
            self.run(batch)
        with self.lock:
            self.hand_slot()

    def hand_slot(self) -> None:
        """Give a taken batch slot to the owner of the oldest waiting rows that holds none yet, or free it when
        there is none or a batch is open (its leader hands one on when it closes); the lock is held."""
        if not self.gathering:
            for task, _, _ in self.waiting:
                if not task["lead"]:
                    task["lead"] = True
                    task["wake"].set()
                    return
        self.running -= 1

    def run(self, batch: list) -> None:
        """Run a batch and give each piece its rows of the outputs (or the error)."""
        try:
            whole = batch[0][0]
            if len(batch) == 1 and batch[0][2] == whole["rows"] == self.params.padded_size(whole["rows"]):
                self.deliver(whole, 0, whole["rows"], self.fn(*whole["arrays"]))  # one request as it came
                return
            parts = [[a[first:first + rows] for a in task["arrays"]] for task, first, rows in batch]
            merged, padded = merge_batch(parts, self.params)
            values = self.fn(*merged)
            offset = 0
            for task, first, rows in batch:
                self.deliver(task, first, rows, [v[offset:offset + rows] if v.ndim and v.shape[0] == padded else v
                                                 for v in values])
                offset += rows
        except Exception as exc:  # every request of the batch gets the error
            for task, first, rows in batch:
                if task["pending"]:
                    self.deliver(task, first, rows, None, exc)

    def deliver(self, task: dict, first: int, rows: int, values, error: Exception | None = None) -> None:
        """One piece of a task ran: keep its outputs (or the first error); once every row ran, the task's
        outputs are its pieces' joined in row order and its thread wakes."""
        with self.lock:
            if task.get("abandoned"):
                return
            if error is not None:
                task.setdefault("error", error)
            else:
                task["outputs"][first] = values
            task["pending"] -= rows
            if task["pending"] > 0:
                return
            if "error" not in task:
                pieces = [task["outputs"][k] for k in sorted(task["outputs"])]
                task["values"] = pieces[0] if len(pieces) == 1 else [
                    np.concatenate(parts) if parts[0].ndim else parts[0] for parts in zip(*pieces)]
        task["wake"].set()

    def abandon(self, task: dict) -> None:
        """A request that gave up: its waiting rows leave the queue, and a slot handed to it passes on."""
        with self.lock:
            kept = [piece for piece in self.waiting if piece[0] is not task]
            self.waiting_rows -= sum(rows for t, _, rows in self.waiting if t is task)
            self.waiting.clear()
            self.waiting.extend(kept)
            task["abandoned"] = True
            if task["lead"]:
                task["lead"] = False
                self.hand_slot()


def parse_policy(config) -> tuple:
    """A ModelConfig's model_version_policy as ("latest", n) | ("all",) | ("specific", versions)."""
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return ("all",)
    if which == "specific":
        return ("specific", frozenset(policy.specific.versions))
    return ("latest", max(1, policy.latest.num_versions or 1))


@dataclass
class ModelState:
    """One model: its versions loaded now, and the state of every version it has seen."""

    name: str
    base_path: str
    policy: tuple = ("latest", 1)
    labels: dict = field(default_factory=dict)  # label -> version
    loaded: dict = field(default_factory=dict)  # version -> LoadedVersion
    states: dict = field(default_factory=dict)  # version -> (state name, error message[, status code])
    retries: dict = field(default_factory=dict)  # version -> (failed attempts, monotonic time of the next, error)
    lock: threading.Lock = field(default_factory=threading.Lock)
    removed: bool = False

    @property
    def current(self) -> LoadedVersion | None:
        loaded = self.loaded
        return loaded[max(loaded)] if loaded else None


class Models:
    """Every model the server serves (one from --model_name, or a --model_config_file's list)."""

    def __init__(self, tf, tags: list[str], warmup: bool = False):
        self.tf = tf
        self.tags = tags
        self.warmup = warmup
        self.session_config = None  # a ConfigProto (--tensorflow_*_parallelism)
        self.batching: BatchingParameters | None = None  # --enable_batching
        self.by_name: dict[str, ModelState] = {}
        # The version states of models a config reload removed, by name: GetModelStatus still lists them, ended,
        # as TF Serving's ServableStateMonitor keeps every servable's last state (servable_state_monitor.cc).
        self.retired: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.poll_lock = threading.Lock()  # one poll or reload at a time: a version is loaded once
        # --max_num_load_retries and --load_retry_interval_micros (model_servers/main.cc: 5 and 1 minute).
        self.max_load_retries = 5
        self.load_retry_interval = 60.0
        self.allow_unavailable_labels = False  # --allow_version_labels_for_unavailable_models
        self.starting: set = set()  # the models of the first config whose first load decides if the server starts
        self.start_error: str | None = None
        self.unloaded = threading.Event()  # a version was unloaded since the memory was last released
        self.prefer_tflite = False  # --prefer_tflite_model: a version folder's model.tflite is served through TF Lite

    def check_labels(self, entries: list[tuple]) -> None:
        """server_core.cc UpdateModelVersionLabelMap: a label may name only a version available now; with
        --allow_version_labels_for_unavailable_models also one not available yet, unless the label names
        another version now (a label is not moved to a version that cannot serve). Checked before anything
        of a new config is applied, so at start (nothing loaded yet) labels need that flag, as the docs say."""
        for name, base_path, _, labels in entries:
            model = self.by_name.get(name)
            if model is not None and model.base_path != base_path:
                model = None
            available = set(model.loaded) if model is not None else set()
            current = model.labels if model is not None else {}  # at start, no label map yet
            for label, version in sorted(labels.items()):  # a proto map has no order; this one is the same each time
                if version in available:
                    continue
                if self.allow_unavailable_labels and current.get(label, version) == version:
                    continue
                raise ServingError("FAILED_PRECONDITION", f"Request to assign label to version {version} of model "
                                                          f"{clip(name, 60)}, which is not currently available for "
                                                          "inference")

    def configure(self, entries: list[tuple]) -> None:
        """Serve exactly these (name, base_path, policy, labels) entries (TF Serving's ReloadConfig); a label
        check that fails applies none of it."""
        with self.lock:
            self.check_labels(entries)
            new = {}
            for name, base_path, policy, labels in entries:
                model = self.by_name.get(name)
                if model is None or model.base_path != base_path:
                    model = ModelState(name, base_path)
                model.policy, model.labels = policy, dict(labels)
                new[name] = model
            for name, model in self.by_name.items():
                if new.get(name) is not model:
                    model.removed = True
                    unload_all(model)
                    self.unloaded.set()
                    with model.lock:
                        ended = {v: st if st[0] == "END" else ("END", "") for v, st in model.states.items()}
                    self.retired[name] = {**self.retired.pop(name, {}), **ended}
                    while len(self.retired) > MAX_RETIRED_MODELS:  # the oldest go first
                        del self.retired[next(iter(self.retired))]
            self.by_name = new

    def get(self, name: str) -> ModelState | None:
        return self.by_name.get(name)

    def settled(self, names) -> tuple[bool, list[str]]:
        """Whether the latest version each named model wants has loaded or ended (as the
        WaitUntilServablesReachState calls of load_servables_fast.cc and server_core.cc wait for), and, for those
        that ended unloaded, "{name: M version: V} due to error: CODE: message". A model with no version on
        disk yet is not settled."""
        failures = []
        for name in sorted(names):
            model = self.by_name.get(name)
            if model is None:
                continue
            wanted = wanted_versions(model.policy, numeric_versions(model.base_path))
            if not wanted:
                return False, []
            latest = max(wanted)
            with model.lock:
                state = model.states.get(latest, ("",))
                loaded = latest in model.loaded
            if loaded:
                continue
            if state[0] != "END":
                return False, []
            error = ""
            if len(state) > 1 and state[1]:
                error = f" due to error: {status_name(state[2] if len(state) > 2 else 9)}: {state[1]}"
            failures.append(f"{{{{name: {name} version: {latest}}}{error}}}, ")
        return True, failures

    def check_start(self, stop: threading.Event) -> None:
        """The server has started once every model of the first config has its latest version loaded or ended;
        if one ended unloaded, it stops with TF Serving's message (load_servables_fast.cc, main.cc)."""
        if not self.starting:
            return
        done, failures = self.settled(self.starting)
        if not done:
            return
        self.starting = set()
        if failures:
            self.start_error = f"UNKNOWN: {len(failures)} servable(s) did not become available: {{{''.join(failures)}}}"
            print(f"Failed to start server. Error: {clip(self.start_error)}", flush=True)
            stop.set()

    def wait_settled(self, names, stop: threading.Event, active=None) -> None:
        """After a config reload, wait for the models it added (server_core.cc WaitUntilModelsAvailable; those
        with a version on disk that their policy wants: TF Serving would wait for the others without end, holding
        the call) and raise UNKNOWN if one did not become available. The config stays applied either way.

        A version that fails to load is retried (--max_num_load_retries, --load_retry_interval_micros: five
        minutes by default), and TF Serving's call waits through every retry, as this one does while the client
        waits. When the client has given up (active(), the call's context.is_active, turns false: its deadline
        passed or it cancelled), this returns DEADLINE_EXCEEDED at once instead of holding a worker thread for a
        call nobody will read; the loads go on as the config says. (TF Serving's handler keeps its thread until
        the load settles; its client gets DEADLINE_EXCEEDED all the same.)"""
        names = {n for n in names if (m := self.by_name.get(n)) is not None
                 and wanted_versions(m.policy, numeric_versions(m.base_path))}
        while names and not stop.is_set():
            if active is not None and not active():
                log.info("ReloadConfig: the client gave up before the models it added were available; they go on "
                         "loading")
                raise ServingError("DEADLINE_EXCEEDED", "the client gave up before the models were available")
            done, failures = self.settled(names)
            if done:
                if failures:
                    raise ServingError("UNKNOWN", f"{len(failures)} model(s) did not become available: "
                                                  f"{{{''.join(failures)}}}")
                return
            stop.wait(0.05)

    def all(self) -> list[ModelState]:
        return list(self.by_name.values())


def version_folders(base_path: str) -> dict[int, str]:
    """The version folders under base_path as {version: folder name}, ascending. As TF Serving reads them
    (sources/storage_path/file_system_storage_path_source.cc IndexChildrenByVersion, AspireVersion): a folder
    whose name reads as a number (absl::SimpleAtoi into an int64) is that version, loaded from the folder as
    named, so 00000123 is version 123 loaded from <base>/00000123; of two folders naming the same version (00000123
    and 123) the last in name order is loaded, with a warning. Here only ASCII digits are read (SimpleAtoi also
    takes a sign and surrounding blanks)."""
    try:
        names = sorted(os.listdir(base_path))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    found: dict[int, str] = {}
    for name in names:
        if not (name.isascii() and name.isdigit()) or int(name) >= 2 ** 63:
            continue
        if not os.path.isdir(os.path.join(base_path, name)):
            continue
        version = int(name)
        if version in found:
            log.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s will be "
                        "ignored.", version, clip(name, 60), clip(found[version], 60))
        found[version] = name
    return dict(sorted(found.items()))


def numeric_versions(base_path: str) -> list[int]:
    """The versions under base_path, ascending (version_folders)."""
    return list(version_folders(base_path))


def wanted_versions(policy: tuple, on_disk: list[int]) -> set[int]:
    """The versions a version policy serves among those on disk (TF Serving's servable_version_policy)."""
    if policy[0] == "all":
        return set(on_disk)
    if policy[0] == "specific":
        return {v for v in on_disk if v in policy[1]}
    return set(on_disk[-policy[1]:])


def unload_all(model: ModelState) -> None:
    with model.lock:
        for v in model.loaded:  # each session ends with the last request that holds it
            model.states[v] = ("END", "")
        model.loaded = {}


def warm_up(tf, name: str, loaded: LoadedVersion) -> None:
    """Replay assets.extra/tf_serving_warmup_requests (PredictionLog records), as --enable_model_warmup does."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(loaded.path, "assets.extra", "tf_serving_warmup_requests")
    if not os.path.exists(path):
        return
    count = 0
    for record in tf.compat.v1.io.tf_record_iterator(path):
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        if entry.WhichOneof("log_type") == "predict_log":
            predict(tf, loaded, entry.predict_log.request)
        count += 1
        if count >= 1000:  # TF Serving's kMaxNumRecordsPerFile
            break
    log.info("warmed up %s version %d with %d requests", name, loaded.version, count)


def poll_once(tf, model: ModelState, models: Models | None = None) -> None:
    """Load the versions the policy wants that are not loaded; unload those it no longer wants."""
    if model.removed:
        return
    folders = version_folders(model.base_path)
    on_disk = list(folders)
    wanted = wanted_versions(model.policy, on_disk)
    for version in [v for v in model.retries if v not in wanted]:  # basic_manager.cc CancelLoadServableRetry
        _, _, error = model.retries.pop(version)
        log.info("Retrying of Loading servable: {name: %s version: %d} was cancelled.", model.name, version)
        with model.lock:
            model.states[version] = ("END",) + error
    for version in sorted(wanted):
        if version in model.loaded or model.states.get(version, ("", ""))[0] == "END":
            continue  # loaded, or failed/unloaded before: do not retry every poll
        failed, next_at, _ = model.retries.get(version, (0, 0.0, None))
        if time.monotonic() < next_at:
            continue  # its next attempt is not due yet
        if failed:
            log.info("Retrying of Loading servable: {name: %s version: %d} retry: %d", model.name, version, failed)
        with model.lock:
            model.states[version] = ("LOADING", "")
        try:
            path = os.path.join(model.base_path, folders[version])
            kind = TfLiteVersion if models is not None and models.prefer_tflite and \
                os.path.isfile(os.path.join(path, "model.tflite")) else LoadedVersion
            loaded = kind(tf, path, version,
                        models.tags if models else ["serve"], models.session_config if models else None)
            loaded.batching = models.batching if models else None
            if models is not None and models.warmup:
                warm_up(tf, model.name, loaded)
            warm_default(tf, loaded)
        except Exception as exc:  # a broken export must not stop the server
            load_failed(tf, model, version, failed + 1, exc, models)
            continue
        model.retries.pop(version, None)
        with model.lock:
            model.loaded = {**model.loaded, version: loaded}
            model.states[version] = ("AVAILABLE", "")
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name, version)
        print(f"serving {model.name} version {version} from {loaded.path}", flush=True)
    # Unload what the policy no longer wants, once what it wants is loaded (availability first).
    stale = [v for v in model.loaded if v not in wanted]
    if stale and any(v in model.loaded for v in wanted):
        with model.lock:
            model.loaded = {v: lv for v, lv in model.loaded.items() if v in wanted}
            for v in stale:
                model.states[v] = ("END", "")
        for v in stale:
            log.info("unloaded %s version %d", model.name, v)
        if models is not None:
            models.unloaded.set()


def load_failed(tf, model: ModelState, version: int, failed: int, exc, models: Models | None) -> None:
    """A failed attempt to load a version (core/loader_harness.cc Load, util/retrier.cc Retry): another is due
    after --load_retry_interval_micros until --max_num_load_retries retries have failed; then the version ends
    with the last error (its state stays LOADING in between, as there)."""
    servable = f"{{name: {model.name} version: {version}}}"
    log.error("Loading servable: %s failed: %s", servable, clip(exc))
    error = (clip(load_error_message(exc, models.tags if models is not None else ["serve"])),
             load_error_code(tf, exc))
    retries = models.max_load_retries if models is not None else 0
    if failed <= retries:
        model.retries[version] = (failed, time.monotonic() + models.load_retry_interval, error)
        return
    model.retries.pop(version, None)
    if retries > 0:
        log.info("Retrying of Loading servable: %s exhausted max_num_retries: %d", servable, retries)
    with model.lock:
        model.states[version] = ("END",) + error


def next_retry_in(models: Models) -> float | None:
    """Seconds until the first load retry is due, if one is waiting."""
    due = [at for model in models.all() for _, at, _ in list(model.retries.values())]
    return max(0.0, min(due) - time.monotonic()) if due else None


def load_error_message(exc, tags: list[str]) -> str:
    """Why a version did not load: for a SavedModel without a MetaGraphDef of the --saved_model_tags, the words of
    TensorFlow's C++ loader, which TF Serving's status carries (tensorflow/cc/saved_model/reader.cc
    FindMetaGraphDef); otherwise Python's loader's message."""
    if "MetaGraphDef associated with tags" in str(exc):
        return (f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. To inspect available "
                "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")
    return f"could not load: {exc}"


def load_error_code(tf, exc) -> int:
    """The status code GetModelStatus gives a version that failed to load: TensorFlow's own for its errors,
    NOT_FOUND when the SavedModel has no MetaGraphDef with the --saved_model_tags (as TF's C++ loader says,
    loader.cc "Could not find meta graph def matching supplied tags"), else FAILED_PRECONDITION."""
    if isinstance(exc, tf.errors.OpError) and exc.error_code:
        return exc.error_code
    if "MetaGraphDef associated with tags" in str(exc):
        return 5  # NOT_FOUND
    return 9  # FAILED_PRECONDITION


def warm_default(tf, loaded: LoadedVersion) -> None:
    """One call of a [None, k] float signature, so the first request does not pay for the first run."""
    for name, sig in loaded.signature_defs.items():
        if len(sig.inputs) != 1 or sig.method_name != PREDICT_METHOD:
            continue
        (key, info), = sig.inputs.items()
        dims = [d.size for d in info.tensor_shape.dim]
        if info.dtype == 1 and len(dims) == 2 and dims[1] > 0:
            loaded.runner(name, (key,), tuple(sorted(sig.outputs)))(np.zeros([1, dims[1]], np.float32))


def release_memory() -> None:
    """Give back the memory of unloaded versions. Two things hold it after the last reference to a version goes:
    a tf.Graph and its operations refer to each other (Operation._graph, the graph's _nodes_by_id), so a dropped
    graph waits for Python's cyclic collector, whose full collections are rare (without this, 150 models added
    and removed kept +140 MB, then +45, +24 and +75 MB more on each later cycle); and the C++ memory the sessions
    freed stays in glibc's arenas, counted in the process's resident memory, until malloc_trim gives it back
    (measured: a collection alone keeps the first cycle's +130 MB, with malloc_trim RSS returns to where it was)."""
    import gc

    started = time.perf_counter()
    found = gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere there is none and only the collection is done
    except (OSError, AttributeError):
        pass
    log.info("released the memory of unloaded versions (%d objects collected, %.0f ms)", found,
             (time.perf_counter() - started) * 1e3)


def watch(tf, models: Models, interval: float, stop: threading.Event) -> None:
    """Poll every model's base path until stop is set; after versions were unloaded, release their memory."""
    while not stop.is_set():
        if models.unloaded.is_set():  # one poll interval after the unload: requests that held them have ended
            models.unloaded.clear()
            release_memory()
        for model in models.all():
            try:
                with models.poll_lock:
                    poll_once(tf, model, models)
            except Exception:  # keep watching whatever happens
                log.exception("polling %s failed", model.base_path)
        models.check_start(stop)
        retry = next_retry_in(models)
        stop.wait(interval if retry is None else min(interval, retry))


def watch_config(path: str, interval: float, reload, stop: threading.Event) -> None:
    """--model_config_file_poll_wait_seconds (model_servers/server.cc PollFilesystemAndReloadConfig): re-read the
    model config file every interval and apply it as a config reload; a file that cannot be read or applied is
    logged and the models served stay as they are."""
    while not stop.wait(interval):
        try:
            entries = read_model_config(path)
        except Exception as exc:  # noqa: BLE001 (a half-written or broken file: try again next time)
            log.error("Failed to read ModelServerConfig file: %s", clip(getattr(exc, "message", exc)))
            continue
        try:
            reload(entries)
        except Exception as exc:  # noqa: BLE001
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", clip(getattr(exc, "message", exc)))


# --------------------------------------------------------------------------- request handling


def select_version(models: Models, spec) -> tuple[ModelState, LoadedVersion]:
    """The model and loaded version a ModelSpec names, or TF Serving's error (server_core.cc, basic_manager.cc)."""
    name = spec.name
    if not name:  # server_core.cc ServableRequestFromModelSpec
        raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
    which = spec.WhichOneof("version_choice")
    model = models.by_name.get(name)
    if which is None:  # the latest version
        loaded = model.loaded if model is not None else None
        if loaded:
            return model, loaded[max(loaded)] if len(loaded) > 1 else next(iter(loaded.values()))
        # core/basic_manager.cc ServingMap::GetUntypedServableHandle: only loaded versions are found, so a model
        # with none loaded yet is as unknown as a model not in the config.
        raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({clip(name, 60)})")
    if which == "version_label":
        label = spec.version_label
        if model is None or label not in model.labels:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {clip(label, 60)}")
        version = model.labels[label]
    else:
        version = spec.version.value
    loaded = model.loaded if model is not None else {}
    if version not in loaded:
        raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({clip(name, 60)}, {version})")
    return model, loaded[version]


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


def read_input(tf, alias: str, proto, budget: int) -> tuple:
    """A request TensorProto as (numpy array, elements), checked first: float32 with a full tensor_content or
    float_val directly, anything else through check_tensor_proto and tf.make_ndarray."""
    if proto.dtype == 1 and not proto.tensor_shape.unknown_rank:  # DT_FLOAT, the lab's dtype
        dims = [d.size for d in proto.tensor_shape.dim]
        if dims and min(dims) >= 0 and dims[0] <= MAX_ROWS_PER_REQUEST:
            count = math.prod(dims)
            if count <= budget:
                content = proto.tensor_content
                if content:
                    if len(content) == 4 * count:
                        return np.frombuffer(content, "<f4").reshape(dims), count
                elif len(proto.float_val) == count:
                    return np.array(proto.float_val, np.float32).reshape(dims), count
    count = check_tensor_proto(tf, alias, proto, budget)
    try:
        return tensor_from_proto(tf, proto), count
    except Exception as exc:
        raise ServingError("INVALID_ARGUMENT", f"could not read an input tensor: {clip(exc, 100)}") from exc


def tensor_from_proto(tf, proto):
    """A request TensorProto (already checked) as a numpy array: the common float32 forms directly."""
    if proto.dtype == 1:  # DT_FLOAT, the lab's dtype: skip tf.make_ndarray's generic path
        shape = [d.size for d in proto.tensor_shape.dim]
        count = math.prod(shape)
        if proto.tensor_content:
            return np.frombuffer(proto.tensor_content, "<f4").reshape(shape)
        values = proto.float_val
        if len(values) == count:
            return np.array(values, np.float32).reshape(shape)
    return tf.make_ndarray(proto)


def signature_for(loaded: LoadedVersion, spec):
    """The SignatureDef a Predict names, or FAILED_PRECONDITION as predict_util.cc says it."""
    name = spec.signature_name or DEFAULT_SIGNATURE
    sig = loaded.signature_defs.get(name)
    if sig is None:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{clip(name, 80)}" not found.')
    return name, sig


def check_inputs(tf, specs: dict, inputs: dict) -> None:
    """The request's inputs against the SignatureDef (specs, from LoadedVersion.spec): names (predict_util.cc,
    cc/saved_model/util.cc) and dtypes. Not shapes: TF Serving feeds each tensor in place of the placeholder the
    signature names (predict_util.cc RunPredict -> Session::Run), and TensorFlow's C++ runtime checks a feed's
    dtype, never its shape against the placeholder's (only Python's Session.run does), so a [1] tensor fed where
    the signature declares [None, 1] runs, and a shape the graph's ops cannot take fails with the op's own
    error. What a request may carry is bounded on the request itself (rows, elements: check_tensor_proto)."""
    if inputs.keys() != specs.keys():
        check_input_names(set(specs), set(inputs))
    for key, value in inputs.items():
        want, np_dtype = specs[key]
        if (value.dtype.kind not in "OSU") if np_dtype is None else (value.dtype != np_dtype):
            raise ServingError("INVALID_ARGUMENT",
                               f"Expects arg[{clip(key, 60)}] to be {dtype_name(want)} but "
                               f"{dtype_name(tf.as_dtype(value.dtype))} is provided")


def check_input_names(expected: set, given: set) -> None:
    """Refuse missing or unknown input names with TF Serving's messages."""
    if len(given) != len(expected):
        raise ServingError("INVALID_ARGUMENT", clip(
            f"input size does not match signature: {len(given)}!={len(expected)} len({{{','.join(sorted(given))}}}) "
            f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(given - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - given))}}}."))
    unknown = sorted(given - expected)
    if unknown:
        raise ServingError("INVALID_ARGUMENT",
                           clip(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                                f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}."))


def output_keys(sig, output_filter, default: tuple | None = None) -> tuple:
    """The outputs to fetch: the filter's (checked as predict_util.cc PreProcessPrediction does), else all."""
    if not output_filter and default is not None:
        return default
    seen = []
    for alias in output_filter:
        if alias not in sig.outputs:
            raise ServingError("INVALID_ARGUMENT", clip(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(sig.outputs))}}}."))
        if alias in seen:
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {clip(alias, 60)}")
        seen.append(alias)
    return tuple(seen) if seen else tuple(sorted(sig.outputs))


def status_name(code: int, default: str = "UNKNOWN") -> str:
    """A status code's name (5 -> "NOT_FOUND"), as grpc and absl::Status name it."""
    import grpc

    return next((c.name for c in grpc.StatusCode if c.value[0] == code), default)


def session_error(exc) -> ServingError:
    """A TensorFlow runtime error (tf.errors.OpError) as the status TF Serving passes on."""
    name = status_name(exc.error_code, "INVALID_ARGUMENT")
    if name in ("OK", "UNKNOWN", "INTERNAL"):
        name = "INVALID_ARGUMENT"  # bad data in a request, most likely
    return ServingError(name, clip(((exc.message or str(exc)).strip().splitlines() or ["error"])[0]))


def call_batched(loaded: LoadedVersion, key: tuple, fn, arrays: list):
    """fn(*arrays), through the version's batch queue for key when --enable_batching is on and the arrays
    share a first dimension (the batch); directly otherwise."""
    if loaded.batching is not None and all(a.ndim for a in arrays) and len({a.shape[0] for a in arrays}) == 1:
        if loaded.batching.pad_variable_length_inputs:  # tasks of any inner shape share the queue
            kinds = tuple((a.dtype.str, a.ndim) for a in arrays)
        else:
            kinds = tuple((a.dtype.str, a.shape[1:]) for a in arrays)
        return loaded.batcher(key + (kinds,), fn).submit(arrays, arrays[0].shape[0])
    return fn(*arrays)


def run(tf, loaded: LoadedVersion, signature_name: str, sig, inputs: dict, outputs: tuple) -> dict:
    """Run a signature on checked inputs; returns alias -> numpy array."""
    keys = tuple(sorted(inputs))
    fn = loaded.runner(signature_name, keys, outputs)
    arrays = [inputs[k] for k in keys]
    try:
        values = call_batched(loaded, (signature_name, keys, outputs), fn, arrays)
    except tf.errors.OpError as exc:  # TensorFlow's own status, passed on as TF Serving does
        raise session_error(exc) from exc
    return dict(zip(outputs, values))


def predict(tf, loaded: LoadedVersion, request) -> dict:
    """Predict on a loaded version: check, convert, run. Returns (signature name, alias -> array)."""
    name, sig = signature_for(loaded, request.model_spec)
    if method_name_check and sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise ServingError("INTERNAL", f"Expected prediction signature method_name to be one of "
                                       f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                                       f"Was: {clip(sig.method_name, 60)}")
    specs, all_outputs = loaded.spec(tf, name)
    outputs = output_keys(sig, request.output_filter, all_outputs)
    declared = 0
    inputs = {}
    for key, proto in request.inputs.items():  # each checked before it is allocated
        inputs[key], count = read_input(tf, key, proto, MAX_ELEMENTS_PER_REQUEST - declared)
        declared += count
    check_inputs(tf, specs, inputs)
    return name, run(tf, loaded, name, sig, inputs, outputs)


# --------------------------------------------------------------------------- Classify, Regress, MultiInference
# servables/tensorflow/classifier.cc, regressor.cc, multi_inference.cc and util.cc: the request's tf.Examples,
# serialized, are fed as one string vector to the signature's single input "inputs"; the outputs "classes"
# and "scores" (classify) or "outputs" (regress) become a ClassificationResult or a RegressionResult.

METHOD_KINDS = {CLASSIFY_METHOD: "classification", REGRESS_METHOD: "regression"}


def signature_text(sig) -> str:
    """A SignatureDef as its DebugString (protobuf text format), which TF Serving's messages quote."""
    from google.protobuf import text_format

    return text_format.MessageToString(sig)


def check_method_name(sig, method: str) -> None:
    if sig.method_name != method:
        raise ServingError("INVALID_ARGUMENT", f"Expected {METHOD_KINDS[method]} signature method_name to be "
                                               f"{method}. Was: {clip(sig.method_name, 60)}")


def preprocess_inference(sig, method: str) -> tuple:
    """A classify or regress signature checked as PreProcessClassification / PreProcessRegression check it;
    returns (its input tensor's name, the names of the output tensors to fetch)."""
    if method_name_check:
        check_method_name(sig, method)
    if len(sig.inputs) != 1:
        raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
    if method == CLASSIFY_METHOD:
        if len(sig.outputs) not in (1, 2):
            raise ServingError("INVALID_ARGUMENT", f"Expected one or two output Tensors, found {len(sig.outputs)}")
        if "inputs" not in sig.inputs:
            raise ServingError("INVALID_ARGUMENT", clip(f"No classification inputs found in SignatureDef: "
                                                        f"{signature_text(sig)}"))
        names = [sig.outputs[k].name for k in ("classes", "scores") if k in sig.outputs]
        if not names:
            raise ServingError("INVALID_ARGUMENT", clip(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {signature_text(sig)}"))
        return sig.inputs["inputs"].name, names
    if len(sig.outputs) != 1:
        raise ServingError("INVALID_ARGUMENT", "Expected one output Tensor.")
    if "inputs" not in sig.inputs:
        raise ServingError("INVALID_ARGUMENT", clip(f"No regression inputs found in SignatureDef: {signature_text(sig)}"))
    if "outputs" not in sig.outputs:
        raise ServingError("INVALID_ARGUMENT", clip(f"No regression outputs found in SignatureDef: "
                                                    f"{signature_text(sig)}"))
    return sig.inputs["inputs"].name, [sig.outputs["outputs"].name]


def inference_signature(loaded: LoadedVersion, spec, method: str) -> tuple:
    """GetClassificationSignatureDef / GetRegressionSignatureDef: the signature a ModelSpec names, with its
    method_name checked (--enable_signature_method_name_check) or else its inputs and outputs."""
    name = spec.signature_name or DEFAULT_SIGNATURE
    sig = loaded.signature_defs.get(name)
    if sig is None:
        raise ServingError("INVALID_ARGUMENT", f"No signature was found with the name: {clip(name, 80)}")
    if method_name_check:
        check_method_name(sig, method)
    else:
        preprocess_inference(sig, method)
    return name, sig


def input_examples(input_proto) -> tuple:
    """(examples, context or None) of an Input (apis/input.proto: example_list or example_list_with_context)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return input_proto.example_list.examples, None
    if kind == "example_list_with_context":
        return input_proto.example_list_with_context.examples, input_proto.example_list_with_context.context
    return (), None


def check_example_limits(input_proto) -> None:
    """Refuse more than MAX_ROWS_PER_REQUEST examples, and examples that joined to their context would make
    more than MAX_EXAMPLE_BYTES_PER_REQUEST bytes; counted on the proto, before anything is copied."""
    examples, context = input_examples(input_proto)
    check_rows("examples", len(examples))
    if context is not None:
        total = input_proto.ByteSize() + len(examples) * context.ByteSize()
        if total > MAX_EXAMPLE_BYTES_PER_REQUEST:
            raise ServingError("INVALID_ARGUMENT", f"the {len(examples)} examples joined to their context make "
                                                   f"about {total} bytes; this server takes at most "
                                                   f"{MAX_EXAMPLE_BYTES_PER_REQUEST} per request")


def serialized_examples(input_proto):
    """util.cc InputToSerializedExampleTensor: one serialized tf.Example per example, the context's bytes in
    front of each (a serialized message followed by another parses as the two merged, the example's
    features winning); "Input is empty." when there are none."""
    examples, context = input_examples(input_proto)
    if not examples:
        raise ServingError("INVALID_ARGUMENT", "Input is empty.")
    if context is None:
        return np.array([e.SerializeToString() for e in examples], dtype=object)
    head = context.SerializeToString()
    return np.array([head + e.SerializeToString() for e in examples], dtype=object)


def tensor_shape_text(value) -> str:
    """A tensor's shape as TensorShape::DebugString writes it: [2,3]."""
    return "[" + ",".join(str(d) for d in value.shape) + "]"


def data_type_name(tf, value) -> str:
    """A numpy array's dtype as TensorFlow's DataType_Name: DT_FLOAT, DT_STRING..."""
    from tensorflow.core.framework import types_pb2

    if value.dtype.kind in "OSU":
        return "DT_STRING"
    return types_pb2.DataType.Name(tf.as_dtype(value.dtype).as_datatype_enum)


def classification_result(tf, sig, num_examples: int, names: tuple, values: list, result) -> None:
    """classifier.cc PostProcessClassificationResult: checks the classes and scores tensors, then fills result."""
    classes_name = sig.outputs["classes"].name if "classes" in sig.outputs else None
    scores_name = sig.outputs["scores"].name if "scores" in sig.outputs else None
    classes = scores = None
    for name, value in zip(names, values):
        if name == classes_name:
            classes = value
        elif name == scores_name:
            scores = value
    for what, value, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if value is None:
            continue
        if value.ndim != 2:
            raise ServingError("INVALID_ARGUMENT", f"Expected Tensor shape: [batch_size num_classes] but got "
                                                   f"{tensor_shape_text(value)}")
        got = data_type_name(tf, value)
        if got != want:
            raise ServingError("INVALID_ARGUMENT", f"Expected {what} Tensor of {want}. Got: {got}")
        if value.shape[0] != num_examples:
            raise ServingError("INVALID_ARGUMENT", f"Expected {what} output batch size of {num_examples}. "
                                                   f"Got: {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ServingError("INVALID_ARGUMENT", f"Tensors class and score should match in dim_size(1). Got "
                                               f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    labels = classes.tolist() if classes is not None else None
    score_rows = scores.tolist() if scores is not None else None
    for i in range(num_examples):
        entries = result.classifications.add().classes
        for c in range(num_classes):
            entry = entries.add()
            if labels is not None:
                label = labels[i][c]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if score_rows is not None:
                entry.score = score_rows[i][c]


def regression_result(tf, sig, num_examples: int, names: tuple, values: list, result) -> None:
    """regressor.cc PostProcessRegressionResult: checks the outputs tensor, then fills result."""
    wanted = sig.outputs["outputs"].name
    value = next((v for n, v in zip(names, values) if n == wanted), None)
    if value is None:
        raise ServingError("INVALID_ARGUMENT", f"Could not find output tensor '{clip(wanted, 80)}'")
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise ServingError("INVALID_ARGUMENT", "Expected output Tensor shape to be either [batch_size] or "
                                               f"[batch_size, 1] but got {tensor_shape_text(value)}")
    if value.shape[0] != num_examples:
        raise ServingError("INVALID_ARGUMENT", f"Input batch size did not match output batch size: {num_examples} "
                                               f"vs. {value.shape[0]}")
    got = data_type_name(tf, value)
    if got != "DT_FLOAT":
        raise ServingError("INVALID_ARGUMENT", f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    if value.size != num_examples:
        raise ServingError("INVALID_ARGUMENT", f"Expected output batch size to be {num_examples}.  Got: "
                                               f"{value.size}")
    regressions = result.regressions
    for v in value.ravel().tolist():
        regressions.add().value = v


def fill_model_spec(spec, name: str, signature_name: str, version: int) -> None:
    """util.cc MakeModelSpec: the answer's ModelSpec, an empty signature name as serving_default."""
    spec.name = name
    spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


def classify_or_regress(tf, loaded: LoadedVersion, spec, input_proto, method: str, result) -> str:
    """RunClassify / RunRegress on a loaded version: fills result (a ClassificationResult or a
    RegressionResult); returns the signature's name. Runs through the batch queue with --enable_batching, as
    TF Serving's BatchingSession batches a run that feeds and fetches a whole signature."""
    check_example_limits(input_proto)
    name, sig = inference_signature(loaded, spec, method)
    input_name, output_names = preprocess_inference(sig, method)
    examples = serialized_examples(input_proto)
    fetches = tuple(dict.fromkeys(output_names))
    fn = loaded.tensor_runner((input_name,), fetches)
    try:
        values = call_batched(loaded, ("tensors", (input_name,), fetches), fn, [examples])
    except tf.errors.OpError as exc:
        raise session_error(exc) from exc
    by_name = dict(zip(fetches, values))
    outputs = [by_name[n] for n in output_names]
    fill = classification_result if method == CLASSIFY_METHOD else regression_result
    fill(tf, sig, len(examples), output_names, outputs, result)
    return name


def multi_inference(tf, models: Models, request):
    """multi_inference.cc TensorFlowMultiInferenceRunner::Infer (through multi_inference_helper.cc, which
    takes the version the first task names): several classify/regress signatures of one model over the same
    examples, in one session run."""
    from tensorflow_serving.apis import inference_pb2, model_pb2

    first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
    _, loaded = select_version(models, first)
    check_example_limits(request.input)
    model_name, seen, feeds, fetches, plan = "", set(), {}, {}, []
    for task in request.tasks:
        if not task.model_spec.name:
            raise ServingError("INVALID_ARGUMENT", "Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif task.model_spec.name != model_name:
            raise ServingError("INVALID_ARGUMENT",
                               "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise ServingError("INVALID_ARGUMENT", f"Duplicate evaluation of signature: {clip(name, 80)}")
        seen.add(name)
        sig = loaded.signature_defs.get(name)
        if sig is None:
            raise ServingError("INVALID_ARGUMENT", f"Requested signature not found in model graph: {clip(name, 80)}")
        if task.method_name not in METHOD_KINDS:
            raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {clip(task.method_name, 60)}")
        input_name, output_names = preprocess_inference(sig, task.method_name)
        feeds[input_name] = None
        fetches.update(dict.fromkeys(output_names))
        plan.append((task, name, sig))
    examples = serialized_examples(request.input)
    feed_names, fetch_names = tuple(sorted(feeds)), tuple(sorted(fetches))
    fn = loaded.tensor_runner(feed_names, fetch_names)
    try:
        values = fn(*([examples] * len(feed_names)))
    except tf.errors.OpError as exc:
        raise session_error(exc) from exc
    response = inference_pb2.MultiInferenceResponse()
    for task, name, sig in plan:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            classification_result(tf, sig, len(examples), fetch_names, values, result.classification_result)
        else:
            regression_result(tf, sig, len(examples), fetch_names, values, result.regression_result)
        fill_model_spec(result.model_spec, task.model_spec.name, task.model_spec.signature_name, loaded.version)
    return response


# An output's numpy dtype -> (its DataType's number in tensorflow/core/framework/types.proto, the TensorProto
# field it fills, the view that field takes).
OUTPUT_FIELDS = {
    np.dtype(np.float32): (1, "float_val", None), np.dtype(np.float64): (2, "double_val", None),  # DT_FLOAT, DOUBLE
    np.dtype(np.int64): (9, "int64_val", None), np.dtype(np.int32): (3, "int_val", None),  # DT_INT64, DT_INT32
    np.dtype(np.int16): (5, "int_val", None), np.dtype(np.int8): (6, "int_val", None),  # DT_INT16, DT_INT8
    np.dtype(np.uint8): (4, "int_val", None), np.dtype(np.uint16): (17, "int_val", None),  # DT_UINT8, DT_UINT16
    np.dtype(np.uint32): (22, "uint32_val", None), np.dtype(np.uint64): (23, "uint64_val", None),  # DT_UINT32, 64
    np.dtype(np.bool_): (10, "bool_val", None), np.dtype(np.float16): (19, "half_val", np.uint16),  # DT_BOOL, HALF
    np.dtype(np.complex64): (8, "scomplex_val", np.float32),  # DT_COMPLEX64
    np.dtype(np.complex128): (18, "dcomplex_val", np.float64),  # DT_COMPLEX128
}
DT_STRING = 7


def fill_tensor_proto(proto, value) -> None:
    """An output array into a TensorProto's typed field, as TensorFlow's Tensor::AsProtoField fills it
    (every element written out, no tensor_content), which is what TF Serving answers (predict_util.cc)."""
    if type(value) is not np.ndarray:
        value = np.asarray(value)
    dims = proto.tensor_shape.dim
    for d in value.shape:
        dims.add().size = d
    known = OUTPUT_FIELDS.get(value.dtype)
    if known is not None:
        dtype, field, view = known
        proto.dtype = dtype
        flat = value.ravel()
        getattr(proto, field).extend((flat.view(view) if view is not None else flat).tolist())
    elif value.dtype.kind in "OSU":
        proto.dtype = DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in value.ravel().tolist())
    else:  # bfloat16 and the rest: TensorFlow's own conversion
        import tensorflow as tf

        proto.Clear()
        proto.CopyFrom(tf.make_tensor_proto(value))


# tflab's idle watchdog (remote/watchdog.py) counts model requests by this file's time, which every
# request moves (at most once a second); run-lab sets it. Not a TF Serving flag: an environment variable.
ACTIVITY_FILE = os.environ.get("TFLAB_ACTIVITY_FILE")
_last_stamp = [0.0]


def stamp_activity() -> None:
    """Mark that a request came (for the watchdog), cheaply."""
    now = time.time()
    if ACTIVITY_FILE and now - _last_stamp[0] >= 1.0:
        _last_stamp[0] = now
        try:
            with open(ACTIVITY_FILE, "a"):
                os.utime(ACTIVITY_FILE, None)
        except OSError:
            pass


class Metrics:
    """Request counts and latencies per model and API, under TF Serving's metric names
    (servables/tensorflow/util.cc: /tensorflow/serving/request_count, /tensorflow/serving/request_latency),
    exported as Prometheus text as util/prometheus_exporter.cc does (':' for '/').

    Labels name only the models the server serves. TF Serving labels each request with the name it carries
    (prediction_service_impl.cc and http_server.cc pass request.model_spec().name() to util.cc
    RecordModelRequestCount and RecordRequestLatency, whose monitoring cells are never deleted), so there any
    name a client makes up becomes a series kept for the process's life: 100 requests naming 1 MB names keep
    100 MB and make the metrics page 100 MB. Here a request naming a model the server does not serve counts
    under model_name="(unknown)", and a model a config reload removes takes its series with it."""

    # request_latency's buckets (util.cc: exponential, scale 10 us, growth 1.8, 33 buckets).
    BUCKETS = [10 * 1.8 ** i for i in range(33)]

    def __init__(self, served=None):
        self.lock = threading.Lock()
        self.served = served  # name -> whether the server serves it (None: every name is labelled)
        self.counts: dict = {}  # (model, status) -> n
        self.latency: dict = {}  # (model, api, entrypoint) -> [bucket counts..., sum, count]

    def forget(self, names) -> None:
        """Drop the series of models that are no longer served."""
        names = set(names)
        with self.lock:
            for table in (self.counts, self.latency):
                for key in [k for k in table if k[0] in names]:
                    del table[key]

    def record(self, model: str, api: str, entrypoint: str, code: str, micros: float) -> None:
        """One request: its count under its status code's name (util.cc RecordModelRequestCount), and its
        latency when it succeeded (prediction_service_impl.cc, http_server.cc RecordRequestLatency)."""
        import bisect

        if self.served is not None and not self.served(model):
            model = UNKNOWN_MODEL_LABEL
        with self.lock:
            key = (model, code)
            self.counts[key] = self.counts.get(key, 0) + 1
            if code == "OK":
                h = self.latency.setdefault((model, api, entrypoint), [0] * (len(self.BUCKETS) + 1) + [0.0, 0])
                h[bisect.bisect_left(self.BUCKETS, micros)] += 1
                h[-2] += micros
                h[-1] += 1

    def prometheus(self) -> str:
        def esc(v):
            return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self.lock:
            counts = dict(self.counts)
            latency = {k: list(v) for k, v in self.latency.items()}
        for (model, status), n in sorted(counts.items()):
            lines.append(f':tensorflow:serving:request_count{{model_name="{esc(model)}",status="{status}"}} {n}')
        lines.append("# TYPE :tensorflow:serving:request_latency histogram")
        for (model, api, entry), h in sorted(latency.items()):
            labels = f'model_name="{esc(model)}",API="{api}",entrypoint="{entry}"'
            running = 0
            for bound, n in zip(self.BUCKETS + [math.inf], h):
                running += n
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {h[-2]:g}")
            lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {h[-1]}")
        return "\n".join(lines) + "\n"


def make_grpc_services(tf, models: Models, metrics: Metrics | None = None, reload=None):
    """The PredictionService and ModelService servicers over the models."""
    import grpc
    from tensorflow_serving.apis import (classification_pb2, model_management_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc, regression_pb2)

    local = threading.local()

    def abort(context, err: ServingError):
        local.code = err.code_name
        context.abort(getattr(grpc.StatusCode, err.code_name), clip(err.message))

    def recorded(api: str):
        """Metrics for Predict, Classify and Regress, as prediction_service_impl.cc records them (and the
        watchdog's activity stamp, which is all that is left without metrics)."""
        def wrap(method):
            if metrics is None:
                def stamped(self, request, context):
                    try:
                        return method(self, request, context)
                    finally:
                        stamp_activity()
                return stamped

            def call(self, request, context):
                started = time.perf_counter()
                local.code = "UNKNOWN"
                try:
                    answer = method(self, request, context)
                    local.code = "OK"
                    return answer
                finally:
                    stamp_activity()
                    metrics.record(request.model_spec.name, api, "GRPC", local.code,
                                   (time.perf_counter() - started) * 1e6)
            return call
        return wrap

    def need_spec(request):
        if not request.HasField("model_spec"):
            raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")

    def runtime_error(exc) -> ServingError:
        """An unexpected error while running a request (a TensorFlow error on bad data) as INVALID_ARGUMENT."""
        return ServingError("INVALID_ARGUMENT", (str(exc).strip().splitlines() or ["error"])[0])

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        @recorded("Predict")
        def Predict(self, request, context):
            try:
                need_spec(request)
                _, loaded = select_version(models, request.model_spec)
                name, outputs = predict(tf, loaded, request)
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:  # a TensorFlow runtime error on bad data
                return abort(context, runtime_error(exc))
            response = predict_pb2.PredictResponse()
            spec = response.model_spec
            spec.name = request.model_spec.name
            spec.version.value = loaded.version
            spec.signature_name = name
            for key, value in outputs.items():
                fill_tensor_proto(response.outputs[key], value)
            return response

        @recorded("Classify")
        def Classify(self, request, context):
            """classification_service.cc, then classifier.cc RunClassify."""
            return self._task(request, context, classification_pb2.ClassificationResponse(), CLASSIFY_METHOD)

        @recorded("Regress")
        def Regress(self, request, context):
            """regression_service.cc, then regressor.cc RunRegress."""
            return self._task(request, context, regression_pb2.RegressionResponse(), REGRESS_METHOD)

        def _task(self, request, context, response, method):
            """Classify or Regress: the model's signature of that method run on the request's examples."""
            try:
                need_spec(request)
                _, loaded = select_version(models, request.model_spec)
                classify_or_regress(tf, loaded, request.model_spec, request.input, method, response.result)
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:
                return abort(context, runtime_error(exc))
            fill_model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name,
                            loaded.version)
            return response

        def MultiInference(self, request, context):
            """multi_inference_helper.cc RunMultiInferenceWithServerCore (not counted in the metrics, as there)."""
            try:
                response = multi_inference(tf, models, request)
            except ServingError as err:
                return abort(context, err)
            except Exception as exc:
                return abort(context, runtime_error(exc))
            stamp_activity()
            return response

        def GetModelMetadata(self, request, context):
            try:
                response = model_metadata(models, request)
            except ServingError as err:
                return abort(context, err)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                return model_status(models, request)
            except ServingError as err:
                return abort(context, err)

        def HandleReloadConfigRequest(self, request, context):
            """model_service_impl.cc: the outcome is the call's status (and the response's, which a failed call
            does not carry)."""
            try:
                if request.config.WhichOneof("config") != "model_config_list":
                    raise ServingError("INVALID_ARGUMENT", "ServerModelConfig type not supported by "
                                                           "HandleReloadConfigRequest. Only ModelConfigList is "
                                                           "currently supported")
                entries = config_entries(request.config)
                if reload is not None:
                    reload(entries, context.is_active)
            except ServingError as err:
                log.error("ReloadConfig failed: %s", clip(err.message))
                return abort(context, err)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.SetInParent()
            return response

    return PredictionService(), ModelService(), prediction_service_pb2_grpc, model_service_pb2_grpc


def health_service(serving: threading.Event):
    """--enable_grpc_healthcheck_service (model_servers/server.cc): gRPC's standard health service,
    grpc.health.v1.Health (grpc's doc/health-checking.md), as gRPC C++'s default one answers it: Check of ""
    (the server), "ModelService" and "PredictionService" is SERVING while the server serves (NOT_SERVING once it
    stops), any other name NOT_FOUND. Its two messages are built here from their proto definition, so that no
    other package is needed. Watch, a stream that would hold a worker thread per watcher, is not offered."""
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tflab/grpc_health_v1.proto", package="grpc.health.v1",
                                               syntax="proto3")
    proto.message_type.add(name="HealthCheckRequest").field.add(name="service", number=1, type=field.TYPE_STRING,
                                                                label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=field.TYPE_ENUM, label=field.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([proto.name], pool)
    request_class = classes["grpc.health.v1.HealthCheckRequest"]
    response_class = classes["grpc.health.v1.HealthCheckResponse"]

    def check(request, context):
        if request.service not in ("", "ModelService", "PredictionService"):
            context.abort(grpc.StatusCode.NOT_FOUND, "")
        return response_class(status=1 if serving.is_set() else 2)

    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=request_class.FromString,
                                                     response_serializer=response_class.SerializeToString)})


def model_metadata(models: Models, request):
    """GetModelMetadata (servables/tensorflow/get_model_metadata_impl.cc)."""
    from tensorflow_serving.apis import get_model_metadata_pb2 as md

    if not request.HasField("model_spec"):
        raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
    fields = list(request.metadata_field)
    if not fields:
        raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != "signature_def":
            raise ServingError("INVALID_ARGUMENT", f"Metadata field {clip(f, 60)} is not supported")
    _, loaded = select_version(models, request.model_spec)
    sig_map = md.SignatureDefMap()
    for name, sig in loaded.signature_defs.items():
        sig_map.signature_def[name].CopyFrom(sig)
    response = md.GetModelMetadataResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = loaded.version
    response.metadata["signature_def"].Pack(sig_map)
    return response


def model_status(models: Models, request):
    """GetModelStatus (model_servers/get_model_status_impl.cc): labels are ignored, as there."""
    from tensorflow_serving.apis import get_model_status_pb2

    if not request.HasField("model_spec"):
        raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    model = models.get(spec.name)
    states = dict(models.retired.get(spec.name, {}))
    if model is not None:
        with model.lock:
            states.update(model.states)
    name = clip(spec.name, 60)
    if version is not None and version not in states:
        raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
    if not states:
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in sorted(states):
        if version is not None and v != version:
            continue
        state, message = states[v][:2]
        item = response.model_version_status.add()
        item.version = v
        item.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        item.status.SetInParent()  # always present, as ToStatusProto sets it
        if message:
            item.status.error_code = states[v][2] if len(states[v]) > 2 else 9  # else FAILED_PRECONDITION
            item.status.error_message = message
    return response


def config_entries(config) -> list[tuple]:
    """A ModelServerConfig's model list as (name, base_path, policy, labels), checked as ServerCore does."""
    entries, names = [], set()
    for item in config.model_config_list.config:
        if not item.name or not item.base_path:
            raise ServingError("INVALID_ARGUMENT", "every model in the config needs a name and a base_path")
        if item.name in names:
            raise ServingError("INVALID_ARGUMENT", f"Illegal to list model {clip(item.name, 60)} multiple times "
                                                   "in config list")
        if item.model_platform and item.model_platform != "tensorflow":
            raise ServingError("INVALID_ARGUMENT", f"Model {clip(item.name, 60)} requested unsupported platform "
                                                   f"{clip(item.model_platform, 40)}")
        names.add(item.name)
        entries.append((item.name, os.path.abspath(item.base_path), parse_policy(item), dict(item.version_labels)))
    return entries


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


def json_float(value: float, float32: bool) -> str:
    """A float as TF Serving's json_tensor.cc WriteDecimal writes it: the shortest "%g" form when it reads
    back as the same float32 (or float64), else max_digits10 digits; ".0" on whole numbers; NaN, Infinity."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    text = "%g" % value
    back = float(text)
    if (float(np.float32(back)) if float32 else back) != value:
        text = "%.9g" % value if float32 else "%.17g" % value
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def json_values(value, name: str) -> str:
    """A numpy array (or one element) as JSON text, floats in json_tensor's formatting."""
    import base64

    value = np.asarray(value)
    kind = value.dtype.kind
    if kind == "f":
        f32 = value.dtype.itemsize <= 4
        fmt = lambda v: json_float(v, f32)  # noqa: E731
    elif kind == "b":
        fmt = lambda v: "true" if v else "false"  # noqa: E731
    elif kind in "iu":
        fmt = str
    elif kind in "OSU":
        if name.endswith("_bytes"):  # json_tensor.cc IsNamedTensorBytes: base64 as {"b64": ...}
            fmt = lambda v: json.dumps({"b64": base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode()})  # noqa: E731
        else:
            fmt = lambda v: json.dumps(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))  # noqa: E731
    else:
        raise ServingError("INVALID_ARGUMENT", f"Failed to write JSON value for tensor type: {value.dtype}")

    def walk(v) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(walk(x) for x in v) + "]"
        return fmt(v)

    return walk(value.tolist()) if value.ndim else fmt(value.item())


def predictions_json(outputs: dict, columnar: bool) -> str:
    """The predict answer: {"outputs": ...} for the columnar format, {"predictions": [...]} for rows
    (json_tensor.cc MakeColumnarFormatJsonFromTensors, MakeRowFormatJsonFromTensors)."""
    names = sorted(outputs)
    if not names:
        raise ServingError("INVALID_ARGUMENT", "Cannot convert empty tensor map to JSON")
    if columnar:
        if len(names) == 1:
            return '{"outputs": ' + json_values(outputs[names[0]], names[0]) + "}"
        return '{"outputs": {' + ", ".join(json.dumps(n) + ": " + json_values(outputs[n], n) for n in names) + "}}"
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise ServingError("INVALID_ARGUMENT", f"Tensor name: {clip(n, 60)} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise ServingError("INVALID_ARGUMENT", f"Tensor name: {clip(n, 60)} has inconsistent batch size: "
                                                   f"{outputs[n].shape[0]} expecting: {batch}")
        batch = outputs[n].shape[0]
    if len(names) == 1:
        return '{"predictions": ' + json_values(outputs[names[0]], names[0]) + "}"
    rows = []
    for i in range(batch):
        rows.append("{" + ", ".join(json.dumps(n) + ": " + json_values(outputs[n][i], n) for n in names) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def json_to_array(tf, value, info, name: str):
    """A JSON value as a numpy array of the TensorInfo's dtype, refused as json_tensor.cc refuses it."""
    import base64

    dtype = tf.as_dtype(info.dtype)
    if dtype == tf.string:
        def decode(v):
            if isinstance(v, dict) and list(v) == ["b64"] and isinstance(v["b64"], str):
                try:
                    return base64.b64decode(v["b64"], validate=True)
                except ValueError:
                    raise ServingError("INVALID_ARGUMENT", "Unable to base64 decode") from None
            if isinstance(v, str):
                return v.encode()
            if isinstance(v, list):
                return [decode(x) for x in v]
            raise ServingError("INVALID_ARGUMENT", f"JSON Value: {clip(json.dumps(v), 60)} Type: "
                                                   f"{type(v).__name__} is not of expected type: string")
        array = np.asarray(decode(value), dtype=object)
    else:
        probe = np.asarray(value)
        if probe.dtype.kind not in "fiub" or (probe.dtype.kind == "b" and dtype != tf.bool):
            what = "list of uneven sizes" if probe.dtype.kind == "O" else probe.dtype.kind
            raise ServingError("INVALID_ARGUMENT", clip(
                f"JSON Value for {name} ({what}): {json.dumps(value)[:60]} is not of expected type: "
                f"{dtype_name(dtype)}"))
        if dtype.is_integer and probe.dtype.kind == "f" and not np.all(np.mod(probe, 1) == 0):
            raise ServingError("INVALID_ARGUMENT", f"JSON Value for {clip(name, 60)}: a float where "
                                                   f"{dtype_name(dtype)} is expected")
        array = probe.astype(dtype.as_numpy_dtype)
    return array


def json_type(value) -> str:
    """A JSON value's type as json_tensor.cc JsonTypeString names it."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def feature_value(name: str, value) -> tuple:
    """One JSON value of a feature as (kind, value) (json_tensor.cc AddValueToFeature): a whole number (or a
    boolean, as 0/1) is int64, a decimal float, a string or {"b64": ...} bytes; anything else is refused."""
    import base64

    if isinstance(value, bool):
        return "int64_list", int(value)
    if isinstance(value, int):
        if -2 ** 63 <= value < 2 ** 63:
            return "int64_list", value
        if 0 <= value < 2 ** 64:
            raise ServingError("INVALID_ARGUMENT", f"Feature: {clip(name, 60)} has uint64_t element. Only int64_t "
                                                   "is supported.")
        try:  # beyond 64 bits rapidjson reads a number as a double
            return "float_list", float(value)
        except OverflowError:
            raise ServingError("INVALID_ARGUMENT", "JSON Parse error: Number too big to be stored in double.") from None
    if isinstance(value, float):
        return "float_list", value
    if isinstance(value, str):
        return "bytes_list", value.encode("utf-8", "surrogatepass")
    if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
        try:
            return "bytes_list", base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise ServingError("INVALID_ARGUMENT", "Unable to base64 decode") from None
    raise ServingError("INVALID_ARGUMENT", f"Feature: {clip(name, 60)} has element with unexpected JSON type: "
                                           f"{json_type(value)}")


def example_from_json(value, example) -> None:
    """A JSON object as a tf.Example, one feature per key (json_tensor.cc MakeExampleFromJsonObject)."""
    if not isinstance(value, dict):
        raise ServingError("INVALID_ARGUMENT", f"Example must be JSON object but got JSON {json_type(value)}")
    kinds = {"int64_list": "int64", "float_list": "float", "bytes_list": "bytes"}
    features = example.features.feature
    for name, content in value.items():
        kind, values = None, []
        for item in content if isinstance(content, list) else [content]:
            item_kind, item_value = feature_value(name, item)
            if kind is not None and item_kind != kind:
                raise ServingError("INVALID_ARGUMENT", f"Unexpected element type in feature: {clip(name, 60)} "
                                                       f"expecting type: {kinds[kind]}")
            kind = item_kind
            values.append(item_value)
        feature = features[name]
        feature.Clear()
        if kind is not None:
            getattr(feature, kind).value.extend(values)


def examples_from_json(body: dict, doc, input_proto) -> None:
    """A classify/regress request body's "context" and "examples" into an Input
    (json_tensor.cc FillClassifyRegressRequestFromJson; its messages, "When method is classify" included)."""
    has_context = "context" in body
    if has_context:
        context = input_proto.example_list_with_context.context
        context.SetInParent()
        example_from_json(body["context"], context)
    if "examples" not in body:
        raise ServingError("INVALID_ARGUMENT", f"JSON Value: {doc()} When method is classify, key 'examples' is "
                                               "expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise ServingError("INVALID_ARGUMENT", f"JSON Value: {doc()} Expecting 'examples' value to be an list/array")
    if not examples:
        raise ServingError("INVALID_ARGUMENT", f"JSON Value: {doc()} 'examples' value is an empty array")
    check_rows("examples", len(examples))
    target = (input_proto.example_list_with_context if has_context else input_proto.example_list).examples
    for item in examples:
        example_from_json(item, target.add())


def classification_json(result) -> str:
    """json_tensor.cc MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise ServingError("INVALID_ARGUMENT", "Cannot convert empty ClassificationResults to JSON")
    rows = ("[" + ", ".join(f"[{json.dumps(c.label)}, {json_float(c.score, True)}]" for c in item.classes) + "]"
            for item in result.classifications)
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_json(result) -> str:
    """json_tensor.cc MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    if not result.regressions:
        raise ServingError("INVALID_ARGUMENT", "Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(json_float(r.value, True) for r in result.regressions) + "]}"


def make_rest_handler(tf, models: Models, timeout_seconds: float | None = DEFAULT_REST_TIMEOUT_MS / 1000,
                      metrics: Metrics | None = None, metrics_path: str | None = None, cors: bool = False):
    """A handler for TF Serving's REST API (g3doc/api_rest.md; model_servers/http_rest_api_handler.cc).

    Every answer, errors included, is JSON with a Content-Length; errors are {"error": "..."} as in TF
    Serving, with its HTTP codes (http_server.cc ToHTTPStatusCode). A connection is closed after each
    answer (HTTP/1.0), and every socket read or write times out after timeout_seconds. With cors
    (--rest_api_enable_cors_support), every answer carries the CORS headers of http_rest_api_util.cc
    AddCORSHeaders; a CORS preflight (OPTIONS) is answered as http_server.cc answers it, flag or not.
    """
    import re
    import urllib.parse
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

    # The two path grammars of http_rest_api_util.cc (kPredictionApiGegex, kModelStatusApiRegex).
    post_path = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                           r":(classify|regress|predict)", re.IGNORECASE)
    get_path = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                          re.IGNORECASE)
    http_codes = {"OK": 200, "CANCELLED": 499, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
                  "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                  "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
                  "UNAVAILABLE": 503, "UNAUTHENTICATED": 401}

    class Handler(BaseHTTPRequestHandler):
        server_version = "tflab-model-server"
        timeout = timeout_seconds  # StreamRequestHandler.setup() puts it on the socket
        body_unread = False  # a request body is (maybe) still on the socket

        def log_message(self, fmt, *args):  # quiet: the gRPC side logs what matters
            log.debug("rest: " + fmt, *args)

        def reply(self, status: int, body, content_type: str = "application/json") -> None:
            if isinstance(body, dict):
                if "error" in body:
                    body = {"error": clip(body["error"])}
                body = json.dumps(body)
            data = body.encode() if isinstance(body, str) else body
            self.close_connection = True
            try:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if cors:
                    for name, value in CORS_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client is gone
                return
            if self.body_unread:
                self.linger()

        def fail(self, err: ServingError) -> None:
            self.reply(http_codes.get(err.code_name, 500), {"error": err.message})

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

        def spec(self, match) -> object:
            """A ModelSpec from a matched path (http_rest_api_util.cc ParseModelInfo, FillModelSpec...)."""
            spec = predict_pb2.PredictRequest().model_spec.__class__()
            spec.name = urllib.parse.unquote(match.group(1) or "")
            if match.group(2):
                spec.version.value = int(match.group(2))
            elif match.group(3):
                spec.version_label = urllib.parse.unquote(match.group(3))
            return spec

        def malformed(self) -> None:
            self.fail(ServingError("INVALID_ARGUMENT", f"Malformed request: {self.command} {self.path}"))

        def do_OPTIONS(self):
            """http_server.cc ProcessRequest: a preflight whose Origin names an http(s) origin is answered 200 with
            nothing else; without one, FAILED_PRECONDITION "Origin header is missing in CORS preflight", whose
            message is not written (400, an empty body)."""
            self.body_unread = self.headers.get("Content-Length", "0").strip() not in ("", "0")
            origin = self.headers.get("Origin", "")
            self.reply(200 if re.search(r"https?://", origin) else 400, b"", None)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if metrics_path and path == metrics_path and metrics is not None:
                return self.reply(200, metrics.prometheus(), "text/plain; version=0.0.4")
            match = get_path.fullmatch(path)
            if not match:
                return self.malformed()
            if not match.group(1):
                return self.fail(ServingError("INVALID_ARGUMENT", "Missing model name in request."))
            started = time.perf_counter()
            spec = self.spec(match)
            metadata = bool(match.group(4))
            try:
                if metadata:
                    request = get_model_metadata_pb2.GetModelMetadataRequest()
                    request.model_spec.CopyFrom(spec)
                    request.metadata_field.append("signature_def")
                    response = model_metadata(models, request)
                    sig_map = get_model_metadata_pb2.SignatureDefMap()
                    response.metadata["signature_def"].Unpack(sig_map)
                    options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                    body = ('{\n"model_spec":' + json_format.MessageToJson(response.model_spec, **options) +
                            ',\n"metadata": {"signature_def": ' + json_format.MessageToJson(sig_map, **options) +
                            "}\n}\n")
                else:
                    request = get_model_status_pb2.GetModelStatusRequest()
                    request.model_spec.CopyFrom(spec)
                    response = model_status(models, request)
                    body = json_format.MessageToJson(response, always_print_fields_with_no_presence=True)
            except ServingError as err:
                self.record(spec.name, "", err.code_name, started)
                return self.fail(err)
            self.record(spec.name, "", "OK", started)
            return self.reply(200, body)

        def record(self, model_name: str, api: str, code: str, started: float) -> None:
            """http_server.cc: every REST request counted, its latency under the path's verb when it succeeded."""
            stamp_activity()
            if metrics is not None:
                metrics.record(model_name, api, "REST", code, (time.perf_counter() - started) * 1e6)

        def do_POST(self):
            self.body_unread = True
            match = post_path.fullmatch(self.path.split("?", 1)[0])
            if not match:
                return self.malformed()
            started = time.perf_counter()
            spec = self.spec(match)
            verb = match.group(4).lower()
            raw = self.read_body()
            if raw is None:
                return None
            try:
                answer = self.predict(spec, raw) if verb == "predict" else self.classify_or_regress(spec, verb, raw)
            except ServingError as err:
                self.record(spec.name, verb, err.code_name, started)
                return self.fail(err)
            except Exception as exc:  # bad values (ValueError, TypeError, RecursionError), a TensorFlow error
                self.record(spec.name, verb, "INVALID_ARGUMENT", started)
                return self.reply(400, {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0]})
            self.record(spec.name, verb, "OK", started)
            return self.reply(200, answer)

        def parse(self, raw: bytes) -> dict:
            """The body as a JSON object, refused as json_tensor.cc ParseJson refuses it."""
            if not raw:
                raise ServingError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
            try:
                body = json.loads(raw)
            except RecursionError:
                raise ServingError("INVALID_ARGUMENT", "JSON Parse error: the document is nested too deeply") from None
            except ValueError as exc:  # not JSON, or not UTF-8
                raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from None
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT",
                                   f"JSON Value: {clip(raw.decode('utf-8', 'replace'), 60)} Is not object")
            signature = body.get("signature_name", "")
            if not isinstance(signature, str):
                raise ServingError("INVALID_ARGUMENT", f"JSON Value: {clip(raw.decode('utf-8', 'replace'), 60)} not "
                                   "formatted correctly. 'signature_name' key must be a string value.")
            return body

        def classify_or_regress(self, spec, verb: str, raw: bytes) -> str:
            """http_rest_api_handler.cc ProcessClassifyRequest / ProcessRegressRequest: the JSON examples into an
            Input (json_tensor.cc FillClassifyRegressRequestFromJson), Classify or Regress, the result as JSON
            (MakeJsonFromClassificationResult / MakeJsonFromRegressionResult)."""
            from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

            body = self.parse(raw)
            spec.signature_name = body.get("signature_name", "")
            input_proto = input_pb2.Input()
            examples_from_json(body, lambda: clip(raw.decode("utf-8", "replace"), 60), input_proto)
            _, loaded = select_version(models, spec)
            if verb == "classify":
                result = classification_pb2.ClassificationResult()
                classify_or_regress(tf, loaded, spec, input_proto, CLASSIFY_METHOD, result)
                return classification_json(result)
            result = regression_pb2.RegressionResult()
            classify_or_regress(tf, loaded, spec, input_proto, REGRESS_METHOD, result)
            return regression_json(result)

        def predict(self, spec, raw: bytes) -> str:
            """json_tensor.cc FillPredictRequestFromJson, then Predict, then MakeJsonFromTensors."""
            body = self.parse(raw)
            signature = body.get("signature_name", "")
            spec.signature_name = signature
            _, loaded = select_version(models, spec)  # http_rest_api_handler.cc GetInfoMap
            name = signature or DEFAULT_SIGNATURE
            sig = loaded.signature_defs.get(name)
            if sig is None:
                raise ServingError("INVALID_ARGUMENT", f'Serving signature name: "{clip(name, 80)}" not found in '
                                                       "signature def")
            infos = dict(sig.inputs)
            if not infos:
                raise ServingError("INVALID_ARGUMENT", f"Failed to get input map for signature: "
                                                       f"{clip(signature, 80) or 'DEFAULT'}")
            doc = lambda: clip(raw.decode("utf-8", "replace"), 60)  # noqa: E731
            if "instances" in body and "inputs" in body:
                raise ServingError("INVALID_ARGUMENT", f"JSON Value: {doc()} Not formatted correctly expecting only "
                                                       "one of 'inputs' or 'instances' keys to exist ")
            if "instances" in body:
                columnar = False
                instances = body["instances"]
                if not isinstance(instances, list):
                    raise ServingError("INVALID_ARGUMENT", f"JSON Value: {doc()} Expecting 'instances' to be an "
                                                           "list/array")
                if not instances:
                    raise ServingError("INVALID_ARGUMENT", f"JSON Value: {doc()} No values in 'instances' array")
                check_rows("instances", len(instances))
                inputs = self.rows(instances, infos)
            elif "inputs" in body:
                columnar = True
                value = body["inputs"]
                is_named = isinstance(value, dict) and not (list(value) == ["b64"])
                if not is_named:
                    if len(infos) > 1:
                        raise ServingError("INVALID_ARGUMENT", "inputs is a plain value/list, but expecting an object "
                                                               "as multiple input tensors required as per tensorinfo_map")
                    (key, info), = infos.items()
                    inputs = {key: json_to_array(tf, value, info, key)}
                else:
                    inputs = {}
                    for key in sorted(infos):
                        if key not in value:
                            raise ServingError("INVALID_ARGUMENT", f"Missing named input: {clip(key, 60)} in 'inputs' "
                                                                   "object.")
                        inputs[key] = json_to_array(tf, value[key], infos[key], key)
            else:
                raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
            for key, value in inputs.items():
                if value.ndim:
                    check_rows(key, value.shape[0])
                if value.size > MAX_ELEMENTS_PER_REQUEST:
                    raise ServingError("INVALID_ARGUMENT", f"{clip(key, 60)} has {value.size} elements; this server "
                                                           f"takes at most {MAX_ELEMENTS_PER_REQUEST} per request")
            check_inputs(tf, loaded.spec(tf, name)[0], inputs)
            outputs = run(tf, loaded, name, sig, inputs, tuple(sorted(sig.outputs)))
            return predictions_json(outputs, columnar)

        def rows(self, instances: list, infos: dict) -> dict:
            """The row format: a plain list (one input) or a list of objects, one key per input."""
            def is_object(v):
                return isinstance(v, dict) and list(v) != ["b64"]

            objects = is_object(instances[0])
            if not objects and len(infos) > 1:
                raise ServingError("INVALID_ARGUMENT", "instances is a plain list, but expecting list of objects as "
                                                       "multiple input tensors required as per tensorinfo_map")
            if not objects:
                for i, item in enumerate(instances):
                    if is_object(item):
                        raise ServingError("INVALID_ARGUMENT", f"Expecting value/list but got object at item {i} "
                                                               "of input list")
                (key, info), = infos.items()
                return {key: json_to_array(tf, instances, info, key)}
            columns = {k: [] for k in infos}
            for i, item in enumerate(instances):
                if not is_object(item):
                    raise ServingError("INVALID_ARGUMENT", f"Expecting object but got list at item {i} of input list")
                for k in item:
                    if k not in infos:
                        raise ServingError("INVALID_ARGUMENT", f"Failed to process element: {i} key: {clip(k, 60)} of "
                                                               f"'instances' list. Error: JSON object: does not have "
                                                               f"named input: {clip(k, 60)}")
                if set(item) != set(infos):
                    raise ServingError("INVALID_ARGUMENT", f"Failed to process element: {i} of 'instances' list. JSON "
                                                           f"object: {clip(json.dumps(item), 60)} keys must be equal "
                                                           f"to: {','.join(sorted(infos))}")
                for k, v in item.items():
                    columns[k].append(v)
            return {k: json_to_array(tf, v, infos[k], k) for k, v in columns.items()}

        def other(self):
            return self.malformed()

        do_PUT = do_DELETE = do_PATCH = do_HEAD = other

    return Handler


# --------------------------------------------------------------------------- main

# TensorFlow Serving's flags (model_servers/main.cc) that this stand-in accepts without implementing:
# each is named in a one-line warning when given.
UNIMPLEMENTED_FLAGS = {
    "enable_per_model_batching_params",
    "num_load_threads", "num_unload_threads", "flush_filesystem_caches", "use_alts_credentials",
    "platform_config_file", "grpc_channel_arguments", "num_request_iterations_for_warmup",
    "enable_profiler", "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "xla_cpu_compilation_enabled", "enable_cors_support",
    "remove_unused_fields_from_bundle_metagraph", "response_tensor_serialization_option",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tflab's TensorFlow Serving stand-in (gRPC PredictionService).")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this UNIX socket")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST API)")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default="", help="folder holding numeric version folders")
    p.add_argument("--model_config_file", default="", help="a ModelServerConfig text proto: several models, "
                   "version policies, version labels")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                   help="re-read --model_config_file every this many seconds (0: read once, at start)")
    p.add_argument("--monitoring_config_file", default="", help="a MonitoringConfig text proto: prometheus_config "
                   "{enable: true, path: ...} serves metrics over REST")
    p.add_argument("--enable_batching", nargs="?", const="true", default="false",
                   help="merge concurrent Predicts into batches (TF Serving's batching)")
    p.add_argument("--batching_parameters_file", default="", help="a BatchingParameters text proto")
    p.add_argument("--saved_model_tags", default="serve", help="comma-separated MetaGraphDef tags to load")
    p.add_argument("--enable_signature_method_name_check", nargs="?", const="true", default="false",
                   help="a signature's method_name must match the API (off: Classify and Regress take any "
                        "signature with their inputs and outputs, as TF2 SavedModels need)")
    p.add_argument("--enable_model_warmup", nargs="?", const="true", default="true",
                   help="replay assets.extra/tf_serving_warmup_requests when a version loads")
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="retries of a version that fails to load (TF Serving's default: 5)")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="wait between load retries (default one minute)")
    p.add_argument("--allow_version_labels_for_unavailable_models", nargs="?", const="true", default="false",
                   help="a config may give a new version label to a version not loaded yet (as at start)")
    p.add_argument("--prefer_tflite_model", nargs="?", const="true", default="false",
                   help="serve a version folder's model.tflite through TF Lite when it has one")
    p.add_argument("--enable_grpc_healthcheck_service", nargs="?", const="true", default="false",
                   help="serve gRPC's standard health service (grpc.health.v1.Health Check)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--threads", "--grpc_max_threads", dest="threads", type=int, default=8,
                   help="gRPC worker threads")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=DEFAULT_REST_TIMEOUT_MS,
                   help="REST: each socket read or write of a connection times out after this (0: never)")
    p.add_argument("--rest_api_enable_cors_support", nargs="?", const="true", default="false",
                   help="REST: CORS headers in every answer")
    p.add_argument("--rest_api_num_threads", type=int, default=DEFAULT_REST_THREADS,
                   help="REST: connections handled at once; more wait their turn (default 4 per CPU)")
    for flag in ("tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
                 "tensorflow_inter_op_parallelism"):
        p.add_argument(f"--{flag}", type=int, default=0, help="TensorFlow's thread pools (0: TensorFlow picks)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    args, extra = p.parse_known_args(argv)
    unknown = []
    skip_value = False
    for i, item in enumerate(extra):
        if skip_value:
            skip_value = False
            continue
        if not item.startswith("--"):
            unknown.append(item)
            continue
        flag = item[2:].split("=", 1)[0]
        if flag in UNIMPLEMENTED_FLAGS:
            print(f"model_server: warning: --{flag} is a TensorFlow Serving flag that tflab's stand-in does not "
                  "implement; ignored", file=sys.stderr, flush=True)
            skip_value = "=" not in item and i + 1 < len(extra) and not extra[i + 1].startswith("--")
        else:
            unknown.append(item)
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.model_base_path and not args.model_config_file and not args.version:
        p.error("one of --model_base_path or --model_config_file is required")
    if args.model_base_path and args.model_config_file:
        p.error("--model_base_path and --model_config_file cannot both be given")
    return args


def read_model_config(path: str) -> list[tuple]:
    """--model_config_file: a ModelServerConfig in text format (g3doc/serving_config.md)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        # The words of protobuf's C++ text-format parser, which TF Serving's ParseProtoTextFile (util/proto_util.h)
        # uses: "Error parsing text-format <message type>: <line>:<column>: <what>".
        import re

        where = f"{exc.GetLine()}:{exc.GetColumn()}: " if exc.GetLine() is not None else ""
        what = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise ServingError("INVALID_ARGUMENT", f"Error parsing text-format {config.DESCRIPTOR.full_name}: "
                                               f"{where}{clip(what, 200)}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ServingError("INVALID_ARGUMENT", "only model_config_list is supported")
    return config_entries(config)


def read_monitoring_path(path: str) -> str | None:
    """--monitoring_config_file: the Prometheus path when prometheus_config enables it (serving_config.md)."""
    import re

    with open(path) as f:
        text = f.read()
    block = re.search(r"prometheus_config\s*:?\s*\{([^}]*)\}", text)
    if not block or not re.search(r"\benable\s*:\s*true\b", block.group(1)):
        return None
    found = re.search(r'\bpath\s*:\s*"([^"]*)"', block.group(1))
    return found.group(1) if found and found.group(1) else "/monitoring/prometheus/metrics"


def wait_in_main_thread(stop: threading.Event, seconds: float | None = None) -> None:
    """stop.wait(seconds) in short slices. CPython runs a signal's handler in the main thread only, and when the
    kernel gives SIGTERM to another thread (TensorFlow's, grpc's: any thread that does not block it may take
    it), nothing wakes a main thread blocked in a wait: the handler would run only when that wait ends. Each
    slice's end lets it run."""
    end = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set():
        remaining = SIGNAL_CHECK_SECONDS if end is None else min(SIGNAL_CHECK_SECONDS, end - time.monotonic())
        if remaining <= 0:
            return
        stop.wait(remaining)


def is_true(value) -> bool:
    """A boolean flag's value as TF Serving's flag parser reads it (true/false, 1/0, yes/no)."""
    return str(value).lower() in ("true", "1", "yes")


def serve(args: argparse.Namespace, stop: threading.Event) -> int:
    """Run the servers until stop is set."""
    if args.version:
        print("TensorFlow ModelServer: tflab stand-in\nTensorFlow Library: (see the installed tensorflow)", flush=True)
        return 0
    import grpc
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)  # the TF1 loader's deprecation notice
    global method_name_check
    method_name_check = is_true(args.enable_signature_method_name_check)
    tags = [t.strip() for t in args.saved_model_tags.split(",") if t.strip()] or ["serve"]
    models = Models(tf, tags, warmup=is_true(args.enable_model_warmup))
    try:
        if args.model_config_file:
            entries = read_model_config(args.model_config_file)
        else:
            entries = [(args.model_name, os.path.abspath(args.model_base_path), ("latest", 1), {})]
        metrics_path = read_monitoring_path(args.monitoring_config_file) if args.monitoring_config_file else None
        if is_true(args.enable_batching):
            models.batching = read_batching_parameters(args.batching_parameters_file)
        elif args.batching_parameters_file:  # server.cc refuses the same
            raise ServingError("INVALID_ARGUMENT", "--batching_parameters_file is set without --enable_batching")
    except (OSError, ServingError, Exception) as exc:
        print(f"model_server: bad configuration: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)
        return 2
    models.max_load_retries = max(0, args.max_num_load_retries)
    models.load_retry_interval = max(0, args.load_retry_interval_micros) / 1e6  # negative: no wait (retrier.cc)
    models.allow_unavailable_labels = is_true(args.allow_version_labels_for_unavailable_models)
    models.prefer_tflite = is_true(args.prefer_tflite_model)
    try:
        models.configure(entries)
    except ServingError as err:  # a version label for a version not available (at start, none is)
        print(f"Failed to start server. Error: {err.code_name}: {clip(err.message)}", flush=True)
        return FAILED_TO_START
    models.starting = {name for name, *_ in entries}
    # main.cc: --tensorflow_session_parallelism sets both pools, the two specific flags override it. Where no
    # inter-op size is given, each request's ops run in the thread that serves it (ConfigProto's negative
    # inter_op_parallelism_threads): waking a pool thread for a small graph costs more than the graph
    # (0.1-0.2 ms against 0.035 ms per call for the lab's model; bench/README.md).
    inter = args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism or -1
    intra = args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism
    models.session_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter,
                                                     intra_op_parallelism_threads=intra)
    # Collected only where they are exported; labelled only with the names of models served.
    metrics = Metrics(served=lambda name: name in models.by_name) if metrics_path else None

    def reload(new_entries, active=None):
        """server_core.cc ReloadConfig: the labels checked, the models applied and polled; then it waits for
        the models the config added (while active(), when given, says the client still waits)."""
        with models.poll_lock:
            added = {name for name, *_ in new_entries} - set(models.by_name)
            removed = set(models.by_name) - {name for name, *_ in new_entries}
            models.configure(new_entries)
            if metrics is not None:
                metrics.forget(removed)
            for model in models.all():
                poll_once(tf, model, models)
        models.wait_settled(added, stop, active)

    # The first loads, with their retries, before any port is opened: TF Serving's Server::BuildAndStart
    # (model_servers/server.cc) creates its ServerCore, which loads the first config and waits for it
    # (load_servables_fast.cc), and only then adds its listening ports and starts; until then a client's
    # connection is refused rather than accepted and left waiting.
    for model in models.all():
        poll_once(tf, model, models)
    while not stop.is_set() and models.starting and (wait := next_retry_in(models)) is not None:
        wait_in_main_thread(stop, wait)
        for model in models.all():
            poll_once(tf, model, models)
    models.check_start(stop)
    if models.start_error:
        return FAILED_TO_START
    if stop.is_set():  # a signal while the first loads were retried: never listen
        return 0
    prediction, model_service, pred_grpc, model_grpc = make_grpc_services(tf, models, metrics, reload)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads),
                         maximum_concurrent_rpcs=max(1, args.threads) * MAX_RPCS_PER_THREAD,
                         options=[("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES)])
    pred_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_grpc.add_ModelServiceServicer_to_server(model_service, server)
    serving = threading.Event()  # set while the server serves: the health service's SERVING
    if is_true(args.enable_grpc_healthcheck_service):
        server.add_generic_rpc_handlers((health_service(serving),))
    address = f"{args.host}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
        bound = 0
    if bound == 0:
        print(f"model_server: cannot listen on {address}: the port is taken", file=sys.stderr, flush=True)
        return 3
    if args.grpc_socket_path:
        try:
            server.add_insecure_port(f"unix:{args.grpc_socket_path}")
        except RuntimeError:
            print(f"model_server: cannot listen on unix:{args.grpc_socket_path}", file=sys.stderr, flush=True)
            return 3
    server.start()
    serving.set()
    rest = None
    if args.rest_api_port:
        timeout = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None
        rest = BoundedHTTPServer((args.host, args.rest_api_port),
                                 make_rest_handler(tf, models, timeout, metrics, metrics_path,
                                                   is_true(args.rest_api_enable_cors_support)),
                                 args.rest_api_num_threads)
        threading.Thread(target=rest.serve_forever, name="rest", daemon=True).start()
        print(f"Exporting HTTP/REST API at:{args.host}:{args.rest_api_port} ...", flush=True)
    elif metrics_path:
        print("model_server: warning: the Prometheus metrics are served over REST; give --rest_api_port",
              file=sys.stderr, flush=True)
    print(f"Running gRPC ModelServer at {address} ...", flush=True)
    watcher = threading.Thread(target=watch, args=(tf, models, args.file_system_poll_wait_seconds, stop),
                               name="watch", daemon=True)
    watcher.start()
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        threading.Thread(target=watch_config, args=(args.model_config_file, args.model_config_file_poll_wait_seconds,
                                                    reload, stop), name="watch-config", daemon=True).start()
    wait_in_main_thread(stop)
    serving.clear()
    server.stop(grace=0.5).wait(2)
    if rest is not None:
        rest.shutdown()
    return FAILED_TO_START if models.start_error else 0


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
