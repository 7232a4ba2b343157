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

It ships to lab hosts as a plain file and imports only TensorFlow, grpcio,
tensorflow-serving-api and the standard library.

Usage: python3 model_server.py --port=9000 --model_name=nn --model_base_path=/path/to/nn
                               [--rest_api_port=8501] [--host=127.0.0.1]
                               [--file_system_poll_wait_seconds=1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("tflab.model_server")

PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"


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
        context.abort(getattr(grpc.StatusCode, err.code_name), err.message)

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            spec = request.model_spec
            try:
                version = spec.version.value if spec.HasField("version") else None
                if spec.version_label:
                    raise ServingError("INVALID_ARGUMENT", "version labels are not configured on this server")
                loaded = select_version(model, spec.name, version)
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


def make_rest_handler(tf, model: ModelState):
    """A handler for TF Serving's REST API: model status and row-format predict."""
    import numpy as np

    class Handler(BaseHTTPRequestHandler):
        server_version = "tflab-model-server"

        def log_message(self, fmt, *args):  # quiet: the gRPC side logs what matters
            log.debug("rest: " + fmt, *args)

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
            parsed = self.parse_path()
            if not parsed or parsed[2] != "predict":
                return self.reply(404, {"error": "Malformed request: POST " + self.path})
            name, version, _ = parsed
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                loaded = select_version(model, name, version)
                signature = body.get("signature_name", "")
                fn = loaded.signatures.get(signature or DEFAULT_SIGNATURE)
                if fn is None:
                    raise ServingError("FAILED_PRECONDITION",
                                       f'Serving signature name: "{signature}" not found in signature def')
                _, specs = fn.structured_input_signature
                if "instances" in body and len(specs) == 1:
                    (key, spec), = specs.items()
                    inputs = {key: np.asarray(body["instances"], dtype=spec.dtype.as_numpy_dtype)}
                elif "inputs" in body and isinstance(body["inputs"], dict):
                    inputs = {k: np.asarray(v, dtype=specs[k].dtype.as_numpy_dtype) if k in specs else np.asarray(v)
                              for k, v in body["inputs"].items()}
                else:
                    raise ServingError("INVALID_ARGUMENT", "the body needs 'instances' or 'inputs'")
                outputs = run_signature(tf, loaded, signature, inputs)
            except ServingError as err:
                code = {"NOT_FOUND": 404, "UNAVAILABLE": 503}.get(err.code_name, 400)
                return self.reply(code, {"error": err.message})
            except (ValueError, TypeError) as exc:
                return self.reply(400, {"error": str(exc)})
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
    p.add_argument("--threads", type=int, default=8)
    return p.parse_args(argv)


def serve(args: argparse.Namespace, stop: threading.Event) -> int:
    """Run the servers until stop is set."""
    import grpc
    import tensorflow as tf

    model = ModelState(args.model_name, os.path.abspath(args.model_base_path))
    prediction, model_service, pred_grpc, model_grpc = make_grpc_services(tf, model)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
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
        rest = ThreadingHTTPServer((args.host, args.rest_api_port), make_rest_handler(tf, model))
        rest.daemon_threads = True
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
