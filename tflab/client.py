"""A TensorFlow Serving gRPC client that does not import TensorFlow.

tensorflow-serving-api's generated modules import `tensorflow.core.framework.*_pb2`, and any
`tensorflow.*` import normally runs `tensorflow/__init__.py`: about 2.8 s before the first
prediction. The protobuf modules themselves are plain generated Python. `serving_apis()` loads
them with a placeholder `tensorflow` package whose path is the installed one, so only those
files run, then removes the placeholder so a later `import tensorflow` in the same process
works as usual. Tensors are built and read by hand (float32, little-endian), so numpy is not
needed either.
"""

from __future__ import annotations

import importlib.util
import math
import re
import struct
import sys
import time
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from tflab.errors import InputError, NotFoundError, RequestError, UnreachableError
from tflab.waiting import NotYet, poll

DT_FLOAT = 1  # tensorflow.core.framework.types_pb2.DT_FLOAT
INT64_MAX = 2**63 - 1  # ModelSpec.version is a google.protobuf.Int64Value
# gRPC's own target schemes pass through as they are (https://grpc.github.io/grpc/core/md_doc_naming.html).
GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
HOST = re.compile(r"[A-Za-z0-9_.%-]{1,253}")
IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]+)?")
ADDRESS_HINT = "use --address host:port, e.g. 127.0.0.1:9000 (an IPv6 address in brackets: [::1]:9000)"


def check_address(address: str) -> str:
    """A gRPC address as host:port ([ipv6]:port), or a target with one of gRPC's schemes; an InputError
    otherwise (gRPC itself would wrap a port above 65535, use 443 for a missing one, or print a trace)."""
    if address.startswith(GRPC_SCHEMES) and len(address) > address.index(":") + 1:
        return address
    if address.startswith("["):
        host, bracket, tail = address[1:].partition("]")
        ok = bracket and tail.startswith(":") and IPV6.fullmatch(host)
        port = tail[1:]
    else:
        host, colon, port = address.rpartition(":")
        ok = colon and HOST.fullmatch(host) and not host.startswith("-")
        if colon and ":" in host:
            raise InputError(f"--address {address!r}: an IPv6 address needs brackets", hint=ADDRESS_HINT)
    if not ok:
        raise InputError(f"--address {address!r} is not host:port", hint=ADDRESS_HINT)
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise InputError(f"--address {address!r} has a bad port ({port!r}; ports are 1-65535)", hint=ADDRESS_HINT)
    return address


def float32_values(values) -> list[float]:
    """The values as Python floats that float32 holds (finite, at most about 3.4e38 in size); an
    InputError naming the first value that it does not."""
    out = []
    for value in values:
        x = float(value)
        try:
            struct.pack("<f", x)
            ok = math.isfinite(x)
        except OverflowError:
            ok = False
        if not ok:
            raise InputError(f"{value!r} is not a finite float32 value (the model's input is float32: at most "
                             f"about 3.4e38 in size, no nan or inf)", hint="give numbers such as 1, -2.5 or 3e4")
        out.append(x)
    return out


@lru_cache(maxsize=1)
def serving_apis() -> types.SimpleNamespace:
    """Import the TF Serving request/response modules and stubs without running TensorFlow."""
    placeholder = None
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the tensorflow package (which holds the serving protos) is not installed")
        placeholder = types.ModuleType("tensorflow")
        placeholder.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = placeholder
    try:
        from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                             model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
    finally:
        if placeholder is not None and sys.modules.get("tensorflow") is placeholder:
            del sys.modules["tensorflow"]
    return types.SimpleNamespace(predict_pb2=predict_pb2, prediction_service_pb2_grpc=prediction_service_pb2_grpc,
                                 model_service_pb2_grpc=model_service_pb2_grpc,
                                 get_model_status_pb2=get_model_status_pb2,
                                 get_model_metadata_pb2=get_model_metadata_pb2, model_pb2=model_pb2)


def column_tensor(values: list[float], tensor):
    """Fill a TensorProto with values as float32 of shape [len(values), 1]."""
    tensor.dtype = DT_FLOAT
    tensor.tensor_shape.dim.add().size = len(values)
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_content = struct.pack(f"<{len(values)}f", *float32_values(values))
    return tensor


def tensor_floats(tensor) -> list[float]:
    """Read a float32 TensorProto as a flat list of Python floats."""
    if tensor.dtype != DT_FLOAT:
        raise RequestError(f"the server answered with dtype {tensor.dtype}, not float32",
                           hint="this signature does not output float32: check --signature (the lab's is 'prediction')")
    count = 1
    for dim in tensor.tensor_shape.dim:
        count *= dim.size
    if tensor.tensor_content:
        return list(struct.unpack(f"<{len(tensor.tensor_content) // 4}f", tensor.tensor_content))
    values = list(tensor.float_val)
    if len(values) == 1 and count > 1:  # TF compresses a tensor of one repeated value
        values = values * count
    return values


@dataclass(frozen=True)
class VersionStatus:
    """One version's state as ModelService.GetModelStatus reports it."""

    version: int
    state: str
    error: str = ""


@dataclass(frozen=True)
class PredictResult:
    """Predictions for the inputs, and the version and signature that answered."""

    inputs: list[float]
    outputs: list[float]
    version: int
    signature: str
    seconds: float


class ServingClient:
    """A gRPC client for TensorFlow Serving's PredictionService and ModelService."""

    def __init__(self, address: str, timeout: float = 5.0):
        import grpc

        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InputError(f"--timeout {timeout} is not a number of seconds", hint="give a finite number > 0, e.g. 5")
        self.address = check_address(address)
        self.timeout = timeout
        self._grpc = grpc
        self._apis = serving_apis()
        self._channel = grpc.insecure_channel(address)
        self._predict = self._apis.prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = self._apis.model_service_pb2_grpc.ModelServiceStub(self._channel)

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (idempotent)."""
        self._channel.close()

    def _error(self, err, what: str, model: str) -> Exception:
        code = err.code()
        details = err.details() or ""
        G = self._grpc.StatusCode
        if code in (G.UNAVAILABLE, G.DEADLINE_EXCEEDED):
            first = details.splitlines()[0].strip() if details.strip() else ""
            return UnreachableError(
                f"no answer from a model server at {self.address} ({code.name.lower()}{': ' + first if first else ''})",
                hint="start one with `tflab serve --model-base-path DIR`, or check --address")
        if code == G.NOT_FOUND:
            return NotFoundError(f"{what}: {details}", hint=f"check the model name (--model) and that {model} is exported")
        details = " ".join(details.split())  # one line, whatever the server sent
        if code == G.FAILED_PRECONDITION and "signature" in details.lower():
            hint = (f"check --signature: the lab's model has 'prediction' (and serving_default); the model's "
                    f"signatures are listed by `curl http://HOST:8501/v1/models/{model}/metadata` (the REST port) "
                    f"or `saved_model_cli show --all --dir <its version folder>`")
        elif code == G.INVALID_ARGUMENT:
            hint = ("the server refused the request's values: the lab's model takes one float32 column named "
                    "'input' (check --signature and --version)")
        else:
            hint = "the model server's log says more"
        return RequestError(f"{what}: {code.name}: {details}", hint=hint, code=code.name)

    def status(self, model: str, version: int | None = None) -> list[VersionStatus]:
        """The versions of a model the server knows and their states."""
        apis = self._apis
        request = apis.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None and not 1 <= version <= INT64_MAX:
            raise InputError(f"--version {version} is not a model version", hint=f"versions are 1 to {INT64_MAX}")
        if version:
            request.model_spec.version.value = version
        try:
            response = self._models.GetModelStatus(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            raise self._error(err, "model status", model) from err
        State = apis.get_model_status_pb2.ModelVersionStatus.State
        return [VersionStatus(s.version, State.Name(s.state), s.status.error_message)
                for s in response.model_version_status]

    def wait_available(self, model: str, *, version: int | None = None, timeout: float = 60.0,
                       alive: Callable[[], None] | None = None) -> int:
        """Poll GetModelStatus until the model (or that version) is AVAILABLE; returns the version.

        `alive`, when given, is called between polls and should raise if the server died.
        """
        def check() -> int:
            states = self.status(model)
            ready = [s.version for s in states if s.state == "AVAILABLE" and (version is None or s.version == version)]
            if ready:
                return max(ready)
            failed = [s for s in states if s.error and (version is None or s.version == version)]
            if failed:
                raise RequestError(f"model {model} version {failed[0].version} failed to load: {failed[0].error}",
                                   hint="the model server's log says why; export the model again (run-lab)")
            raise NotYet(", ".join(f"version {s.version} {s.state}" for s in states) or "no version")

        return poll(check, timeout=timeout, what=f"model {model} was not AVAILABLE at {self.address}", interval=0.05,
                    backoff=1.5, max_interval=0.5, retry_on=(UnreachableError, NotFoundError),
                    alive=alive or (lambda: None), hint="look at the server's log; a large model may need a longer wait")

    def predict(self, xs: list[float], model: str = "nn", signature: str = "prediction",
                version: int | None = None, input_key: str = "input", output_key: str = "output") -> PredictResult:
        """Call Predict with one float32 column of inputs; returns one output per input."""
        request = self._apis.predict_pb2.PredictRequest()
        if version is not None and not 1 <= version <= INT64_MAX:
            raise InputError(f"--version {version} is not a model version", hint=f"versions are 1 to {INT64_MAX}")
        if not xs:
            raise InputError("no inputs to predict", hint="give one or more numbers, e.g. tflab predict 1 2 3.5")
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version:
            request.model_spec.version.value = version
        column_tensor(float32_values(xs), request.inputs[input_key])
        started = time.perf_counter()
        try:
            response = self._predict.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            raise self._error(err, "predict", model) from err
        seconds = time.perf_counter() - started
        if output_key not in response.outputs:
            raise RequestError(f"the answer has no output '{output_key}' (it has {sorted(response.outputs)})",
                               hint="check --signature: the lab's 'prediction' signature outputs 'output'")
        outputs = tensor_floats(response.outputs[output_key])
        return PredictResult(list(xs), outputs, response.model_spec.version.value,
                             response.model_spec.signature_name, seconds)
