"""GetModelMetadata and GetModelStatus.

Follows tensorflow_serving/model_servers/get_model_status_impl.cc and
servables/tensorflow/get_model_metadata_impl.cc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .status import ServingError, clip
from .core import select_version

if TYPE_CHECKING:
    from .core import Models


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
