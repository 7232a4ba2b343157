"""The REST API (g3doc/api_rest.md) over a bounded HTTP server.

Follows tensorflow_serving/model_servers/http_rest_api_handler.cc, http_rest_api_util.cc and http_server.cc.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from .status import ServingError, clip
from .limits import DEFAULT_REST_TIMEOUT_MS, MAX_ELEMENTS_PER_REQUEST, MAX_REST_BODY_BYTES
from .bundle import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD
from .predict import check_inputs, check_rows, run
from .core import select_version
from .inference import classify_or_regress
from .json_tensor import (check_instance, classification_json, examples_from_json, instance_error, json_text,
                          json_to_array, predictions_json, regression_json)
from .metrics import Activity
from .metadata import model_metadata, model_status

if TYPE_CHECKING:
    from .core import Models
    from .metrics import Metrics

log = logging.getLogger("tflab.model_server")


# After refusing a request whose body it did not read, the server drains what the client still sends
# for up to this long before closing, so the close does not reset the connection before the client
# reads the answer (Apache httpd's lingering close, server/connection.c: SECONDS_TO_LINGER 2).
LINGER_SECONDS = 2.0
# --rest_api_enable_cors_support: the headers every REST answer then carries (http_rest_api_util.cc AddCORSHeaders).
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"))


# --------------------------------------------------------------------------- REST


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most max_threads handler threads (TF Serving's --rest_api_num_threads).

    A connection beyond the cap waits, unread, until a handler thread ends (each ends within the REST
    timeout of a silent client); further ones wait in the listen backlog. Never a thread per connection.
    """

    daemon_threads = True
    request_queue_size = 128  # the listen backlog where connections wait their turn

    def __init__(self, address, handler, max_threads: int, api: RestApi | None = None):
        super().__init__(address, handler)
        self.api = api  # what each RestHandler serves
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


# The two path grammars of http_rest_api_util.cc (kPredictionApiGegex, kModelStatusApiRegex).
POST_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                       r":(classify|regress|predict)", re.IGNORECASE)
GET_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                      re.IGNORECASE)
# A status code's HTTP status (http_server.cc ToHTTPStatusCode).
HTTP_CODES = {"OK": 200, "CANCELLED": 499, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
              "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
              "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
              "UNAVAILABLE": 503, "UNAUTHENTICATED": 401}


@dataclass
class RestApi:
    """What the REST API serves, and how (the server hands it to each RestHandler): the models, the
    --rest_api_timeout_in_ms of every socket read or write (None: none), the Prometheus metrics and their path
    (--monitoring_config_file), --rest_api_enable_cors_support, and the watchdog's activity stamp."""

    models: Models
    timeout_seconds: float | None = DEFAULT_REST_TIMEOUT_MS / 1000
    metrics: Metrics | None = None
    metrics_path: str | None = None
    cors: bool = False
    activity: Activity = field(default_factory=lambda: Activity(None))


class RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST API (g3doc/api_rest.md; model_servers/http_rest_api_handler.cc).

    Every answer, errors included, is JSON with a Content-Length; errors are {"error": "..."} as in TF
    Serving, with its HTTP codes (http_server.cc ToHTTPStatusCode). A connection is closed after each
    answer (HTTP/1.0), and every socket read or write times out after the API's timeout_seconds. With cors
    (--rest_api_enable_cors_support), every answer carries the CORS headers of http_rest_api_util.cc
    AddCORSHeaders; a CORS preflight (OPTIONS) is answered as http_server.cc answers it, flag or not.
    """

    server_version = "tflab-model-server"
    body_unread = False  # a request body is (maybe) still on the socket
    api: RestApi  # the server's (BoundedHTTPServer.api)

    def setup(self):
        self.api = self.server.api
        self.timeout = self.api.timeout_seconds  # StreamRequestHandler.setup() puts it on the socket
        super().setup()

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
            if self.api.cors:
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
        self.reply(HTTP_CODES.get(err.code_name, 500), {"error": err.message})

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
        from tensorflow_serving.apis import predict_pb2

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
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

        path = self.path.split("?", 1)[0]
        if self.api.metrics_path and path == self.api.metrics_path and self.api.metrics is not None:
            return self.reply(200, self.api.metrics.prometheus(), "text/plain; version=0.0.4")
        match = GET_PATH.fullmatch(path)
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
                response = model_metadata(self.api.models, request)
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(sig_map)
                options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                body = ('{\n"model_spec":' + json_format.MessageToJson(response.model_spec, **options) +
                        ',\n"metadata": {"signature_def": ' + json_format.MessageToJson(sig_map, **options) +
                        "}\n}\n")
            else:
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.CopyFrom(spec)
                response = model_status(self.api.models, request)
                body = json_format.MessageToJson(response, always_print_fields_with_no_presence=True)
        except ServingError as err:
            self.record(spec.name, "", err.code_name, started)
            return self.fail(err)
        self.record(spec.name, "", "OK", started)
        return self.reply(200, body)

    def record(self, model_name: str, api: str, code: str, started: float) -> None:
        """http_server.cc: every REST request counted, its latency under the path's verb when it succeeded."""
        self.api.activity.stamp()
        if self.api.metrics is not None:
            self.api.metrics.record(model_name, api, "REST", code, (time.perf_counter() - started) * 1e6)

    def do_POST(self):
        self.body_unread = True
        match = POST_PATH.fullmatch(self.path.split("?", 1)[0])
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
        _, loaded = select_version(self.api.models, spec)
        if verb == "classify":
            result = classification_pb2.ClassificationResult()
            classify_or_regress(loaded, spec, input_proto, CLASSIFY_METHOD, result)
            return classification_json(result)
        result = regression_pb2.RegressionResult()
        classify_or_regress(loaded, spec, input_proto, REGRESS_METHOD, result)
        return regression_json(result)

    def predict(self, spec, raw: bytes) -> str:
        """json_tensor.cc FillPredictRequestFromJson, then Predict, then MakeJsonFromTensors."""
        body = self.parse(raw)
        signature = body.get("signature_name", "")
        spec.signature_name = signature
        _, loaded = select_version(self.api.models, spec)  # http_rest_api_handler.cc GetInfoMap
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
                inputs = {key: json_to_array(value, info)}
            else:
                inputs = {}
                for key in sorted(infos):
                    if key not in value:
                        raise ServingError("INVALID_ARGUMENT", f"Missing named input: {clip(key, 60)} in 'inputs' "
                                                               "object.")
                    inputs[key] = json_to_array(value[key], infos[key])
        else:
            raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        for key, value in inputs.items():
            if value.ndim:
                check_rows(key, value.shape[0])
            if value.size > MAX_ELEMENTS_PER_REQUEST:
                raise ServingError("INVALID_ARGUMENT", f"{clip(key, 60)} has {value.size} elements; this server "
                                                       f"takes at most {MAX_ELEMENTS_PER_REQUEST} per request")
        check_inputs(loaded.spec(name)[0], inputs)
        outputs = run(loaded, name, sig, inputs, tuple(sorted(sig.outputs)))
        return predictions_json(outputs, columnar)

    def rows(self, instances: list, infos: dict) -> dict:
        """The row format: a plain list (one input) or a list of objects, one key per input."""
        def is_object(v):
            return isinstance(v, dict) and list(v) != ["b64"]

        objects = is_object(instances[0])
        if not objects and len(infos) > 1:
            raise ServingError("INVALID_ARGUMENT", "instances is a plain list, but expecting list of objects as "
                                                   "multiple input tensors required as per tensorinfo_map")
        seen: dict = {}
        if not objects:
            (key, info), = infos.items()
            for i, item in enumerate(instances):
                if is_object(item):
                    raise ServingError("INVALID_ARGUMENT", f"Expecting value/list but got object at item {i} "
                                                           "of input list")
                try:
                    check_instance(item, key, info, seen)
                except ServingError as err:
                    raise instance_error(i, err) from None
            return {key: json_to_array(instances, info)}
        columns = {k: [] for k in infos}
        for i, item in enumerate(instances):
            if not is_object(item):
                raise ServingError("INVALID_ARGUMENT", f"Expecting object but got list at item {i} of input list")
            for k, v in item.items():
                try:
                    if k not in infos:
                        raise ServingError("INVALID_ARGUMENT", f"JSON object: does not have named input: "
                                                               f"{clip(k, 60)}")
                    check_instance(v, k, infos[k], seen)
                except ServingError as err:
                    raise instance_error(i, err, k) from None
                columns[k].append(v)
            if set(item) != set(infos):
                raise ServingError("INVALID_ARGUMENT", f"Failed to process element: {i} of 'instances' list. JSON "
                                                       f"object: {json_text(item)} keys must be equal "
                                                       f"to: {','.join(sorted(infos))}")
        return {k: json_to_array(v, infos[k]) for k, v in columns.items()}

    def other(self):
        return self.malformed()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = other
