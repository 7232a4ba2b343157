"""Predict: a request's TensorProtos checked and read, the signature run, the outputs written back.

Follows tensorflow_serving/servables/tensorflow/predict_util.cc (RunPredict) and TensorFlow's
tensor.cc / tensor.proto for the typed value fields.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .status import ServingError, clip, session_error
from .limits import MAX_ELEMENTS_PER_REQUEST, MAX_ROWS_PER_REQUEST
from .bundle import CLASSIFY_METHOD, DEFAULT_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD

if TYPE_CHECKING:
    from .bundle import LoadedVersion


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


def dtype_name(dtype) -> str:
    """A dtype as TensorFlow's C++ core names it in errors (float, double, int32...)."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)[3:].lower()


def check_rows(alias: str, rows: int) -> None:
    """Refuse a batch of more than MAX_ROWS_PER_REQUEST rows."""
    if rows > MAX_ROWS_PER_REQUEST:
        raise ServingError("INVALID_ARGUMENT", f"{clip(alias, 60)} has {rows} rows; this server takes at most "
                                               f"{MAX_ROWS_PER_REQUEST} rows per request")


def check_tensor_proto(alias: str, proto, budget: int) -> int:
    """Check a request's TensorProto before tf.make_ndarray allocates it; returns its element count.

    TensorFlow's own rules (tensorflow/core/framework/tensor.cc, Tensor::FromProto): the shape must be
    valid, tensor_content must hold exactly the declared elements (Helper::Decode), and a typed field
    may hold fewer values than elements (the rest is its last value, or zero when it is empty). TF
    Serving refuses what FromProto refuses with INVALID_ARGUMENT "tensor parsing error: <alias>"
    (tensorflow/cc/saved_model/util.cc). On top of that: more values than elements are refused, and so
    are more rows than MAX_ROWS_PER_REQUEST and more elements than budget.
    """
    import tensorflow as tf

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


def read_input(alias: str, proto, budget: int) -> tuple:
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
    count = check_tensor_proto(alias, proto, budget)
    try:
        return tensor_from_proto(proto), count
    except Exception as exc:
        raise ServingError("INVALID_ARGUMENT", f"could not read an input tensor: {clip(exc, 100)}") from exc


def tensor_from_proto(proto):
    """A request TensorProto (already checked) as a numpy array: the common float32 forms directly."""
    import tensorflow as tf

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


def check_inputs(specs: dict, inputs: dict) -> None:
    """The request's inputs against the SignatureDef (specs, from LoadedVersion.spec): names (predict_util.cc,
    cc/saved_model/util.cc) and dtypes. Not shapes: TF Serving feeds each tensor in place of the placeholder the
    signature names (predict_util.cc RunPredict -> Session::Run), and TensorFlow's C++ runtime checks a feed's
    dtype, never its shape against the placeholder's (only Python's Session.run does), so a [1] tensor fed where
    the signature declares [None, 1] runs, and a shape the graph's ops cannot take fails with the op's own
    error. What a request may carry is bounded on the request itself (rows, elements: check_tensor_proto)."""
    import tensorflow as tf

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


def run(loaded: LoadedVersion, signature_name: str, sig, inputs: dict, outputs: tuple) -> dict:
    """Run a signature on checked inputs; returns alias -> numpy array."""
    import tensorflow as tf

    keys = tuple(sorted(inputs))
    fn = loaded.runner(signature_name, keys, outputs)
    arrays = [inputs[k] for k in keys]
    try:
        values = call_batched(loaded, (signature_name, keys, outputs), fn, arrays)
    except tf.errors.OpError as exc:  # TensorFlow's own status, passed on as TF Serving does
        raise session_error(exc) from exc
    return dict(zip(outputs, values))


def predict(loaded: LoadedVersion, request) -> dict:
    """Predict on a loaded version: check, convert, run. Returns (signature name, alias -> array)."""
    name, sig = signature_for(loaded, request.model_spec)
    if loaded.method_name_check and sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise ServingError("INTERNAL", f"Expected prediction signature method_name to be one of "
                                       f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                                       f"Was: {clip(sig.method_name, 60)}")
    specs, all_outputs = loaded.spec(name)
    outputs = output_keys(sig, request.output_filter, all_outputs)
    declared = 0
    inputs = {}
    for key, proto in request.inputs.items():  # each checked before it is allocated
        inputs[key], count = read_input(key, proto, MAX_ELEMENTS_PER_REQUEST - declared)
        declared += count
    check_inputs(specs, inputs)
    return name, run(loaded, name, sig, inputs, outputs)


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
