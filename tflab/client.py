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
import struct
import sys
import time
import types
from dataclasses import dataclass
from functools import lru_cache

from tflab.errors import NotFoundError, RequestError, UnreachableError

DT_FLOAT = 1  # tensorflow.core.framework.types_pb2.DT_FLOAT


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
    tensor.tensor_content = struct.pack(f"<{len(values)}f", *values)
    return tensor


def tensor_floats(tensor) -> list[float]:
    """Read a float32 TensorProto as a flat list of Python floats."""
    if tensor.dtype != DT_FLOAT:
        raise RequestError(f"the server answered with dtype {tensor.dtype}, not float32")
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

        self.address = address
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
            return UnreachableError(
                f"no answer from a model server at {self.address} ({code.name.lower()}: {details.splitlines()[0] if details else ''})".rstrip(" ():"),
                hint="start one with `tflab serve --model-base-path DIR`, or check --address")
        if code == G.NOT_FOUND:
            return NotFoundError(f"{what}: {details}", hint=f"check the model name (--model) and that {model} is exported")
        return RequestError(f"{what}: {code.name}: {details}", code=code.name)

    def status(self, model: str, version: int | None = None) -> list[VersionStatus]:
        """The versions of a model the server knows and their states."""
        apis = self._apis
        request = apis.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
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
                       alive=None) -> int:
        """Poll GetModelStatus until the model (or that version) is AVAILABLE; returns the version.

        `alive`, when given, is called between polls and should raise if the server died.
        """
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = "no answer yet"
        while True:
            try:
                states = self.status(model)
                ready = [s.version for s in states if s.state == "AVAILABLE" and (version is None or s.version == version)]
                if ready:
                    return max(ready)
                failed = [s for s in states if s.error and (version is None or s.version == version)]
                if failed:
                    raise RequestError(f"model {model} version {failed[0].version} failed to load: {failed[0].error}")
                last = ", ".join(f"version {s.version} {s.state}" for s in states) or "no version"
            except (UnreachableError, NotFoundError) as err:
                last = str(err)
            if alive is not None:
                alive()
            if time.monotonic() >= deadline:
                raise UnreachableError(f"model {model} was not AVAILABLE at {self.address} within {timeout:.0f} s ({last})",
                                       hint="look at the server's log; a large model may need a longer wait")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def predict(self, xs: list[float], model: str = "nn", signature: str = "prediction",
                version: int | None = None, input_key: str = "input", output_key: str = "output") -> PredictResult:
        """Call Predict with one float32 column of inputs; returns one output per input."""
        request = self._apis.predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version:
            request.model_spec.version.value = version
        column_tensor([float(x) for x in xs], request.inputs[input_key])
        started = time.perf_counter()
        try:
            response = self._predict.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            raise self._error(err, "predict", model) from err
        seconds = time.perf_counter() - started
        if output_key not in response.outputs:
            raise RequestError(f"the answer has no output '{output_key}' (it has {sorted(response.outputs)})")
        outputs = tensor_floats(response.outputs[output_key])
        return PredictResult(list(xs), outputs, response.model_spec.version.value,
                             response.model_spec.signature_name, seconds)
