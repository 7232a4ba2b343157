"""JSON to tensors and back for the REST API, in the row and columnar formats.

Follows tensorflow_serving/util/json_tensor.cc.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .status import ServingError, clip
from .predict import check_rows


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


# The range of a JSON integer each dtype takes, as rapidjson's IsInt/IsInt64/IsUint/IsUint64 test it in
# json_tensor.cc AddValueToTensor (int8, int16 and uint8 take any int32, as there).
INTEGER_RANGES = {"int32": (-2 ** 31, 2 ** 31), "int16": (-2 ** 31, 2 ** 31), "int8": (-2 ** 31, 2 ** 31),
                  "uint8": (-2 ** 31, 2 ** 31), "int64": (-2 ** 63, 2 ** 63), "uint32": (0, 2 ** 32),
                  "uint64": (0, 2 ** 64)}
# The largest whole number a float type holds exactly (json_tensor.cc IsLosslessDecimal's kMaxInt).
FLOAT_LIMITS = {"float": (2 ** 24 - 1, float(np.finfo(np.float32).max)), "double": (2 ** 53 - 1, math.inf)}


def is_json_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_double(value) -> float:
    """A JSON number as the double rapidjson reads it; one beyond a double's range is its parse error."""
    try:
        return float(value)
    except OverflowError:
        raise ServingError("INVALID_ARGUMENT", "JSON Parse error: Number too big to be stored in double.") from None


def json_text(value) -> str:
    """A JSON value as json_tensor.cc JsonValueToString writes it in an error: decimals by WriteDecimal (a
    float's shortest form when the value is one), objects and arrays by rapidjson's PrettyWriter; cut to 60
    characters, as every part of a request an error quotes."""
    if isinstance(value, int) and not isinstance(value, bool) and -2 ** 63 <= value < 2 ** 64:
        text = str(value)
    elif is_json_number(value):  # a decimal, or a whole number beyond 64 bits (rapidjson reads it as a double)
        number = json_double(value)
        text = json_float(number, float(np.float32(number)) == number)
    else:
        text = json.dumps(value, indent=4 if isinstance(value, (dict, list)) else None, ensure_ascii=False)
    return clip(text, 60)


def type_error(value, dtype: str) -> ServingError:
    """json_tensor.cc TypeError: the JSON value, its JSON type and the dtype the signature expects."""
    return ServingError("INVALID_ARGUMENT", f"JSON Value: {json_text(value)} Type: {json_type(value)} is not of "
                                            f"expected type: {dtype}")


def check_json_value(value, dtype: str) -> None:
    """Refuse one JSON value (a leaf of a tensor) that json_tensor.cc AddValueToTensor refuses for dtype
    (and FillTensorProto, for an object: base64 bytes for a string, else a type error)."""
    if dtype == "string":
        if isinstance(value, dict):
            if not (len(value) == 1 and isinstance(value.get("b64"), str)):  # IsValBase64Object
                raise ServingError("INVALID_ARGUMENT", f"JSON Value: {json_text(value)} not formatted correctly "
                                                       "for base64 data")
        elif not isinstance(value, str):
            raise type_error(value, dtype)
    elif dtype in FLOAT_LIMITS:
        if not is_json_number(value):
            raise type_error(value, dtype)
        whole, largest = FLOAT_LIMITS[dtype]
        whole_number = isinstance(value, int) and -2 ** 63 <= value < 2 ** 64
        double = json_double(value)
        if abs(value) > whole if whole_number else (math.isfinite(double) and abs(double) > largest):
            raise ServingError("INVALID_ARGUMENT", f"Cannot convert JSON value: {json_text(value)} to {dtype} "
                                                   "without loss of precision.")
    elif dtype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[dtype]
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value < high):
            raise type_error(value, dtype)
    elif dtype == "bool":
        if not isinstance(value, bool):
            raise type_error(value, dtype)
    else:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {json_text(value)} to type: {dtype}")


def dense_shape(value) -> list:
    """json_tensor.cc GetDenseTensorShape: the shape read along each list's first element."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def check_tensor(value, dtype: str) -> tuple:
    """Refuse a JSON tensor as json_tensor.cc FillTensorProto does, at the first value (in the document's
    order) that is at the wrong level, in a list of the wrong size, or of the wrong type.

    Returns:
        (shape, number of values).
    """
    shape = dense_shape(value)
    rank, count = len(shape), 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            if level != rank:
                raise ServingError("INVALID_ARGUMENT", f"JSON Value: {json_text(item)} found at incorrect level: "
                                                       f"{level + 1} in the JSON DOM. Expected at level: {rank}")
            check_json_value(item, dtype)
            count += 1
            continue
        if level >= rank:
            raise ServingError("INVALID_ARGUMENT", f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise ServingError("INVALID_ARGUMENT", f"Encountered list at unexpected size: {len(item)} at level: "
                                                   f"{level} expected size: {shape[level]}")
        stack.extend((x, level + 1) for x in reversed(item))
    return shape, count


def info_dtype(info) -> str:
    """A TensorInfo's dtype as DataTypeString names it (float, int32, string...)."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(info.dtype)[3:].lower()


def check_instance(item, name: str, info, seen: dict) -> None:
    """json_tensor.cc AddInstanceItem: one element of "instances" (or one input of it) as a tensor of the
    TensorInfo's dtype, of the size and shape of the first element's; seen keeps (size, shape) per input."""
    shape, size = check_tensor(item, info_dtype(info))
    if name not in seen:
        seen[name] = (size, shape)
        return
    first_size, first_shape = seen[name]
    if size != first_size:
        raise ServingError("INVALID_ARGUMENT", f"Expecting tensor size: {first_size} but got: {size}")
    if shape != first_shape:
        raise ServingError("INVALID_ARGUMENT", f"Expecting shape [{','.join(map(str, first_shape))}] but got: "
                                               f"[{','.join(map(str, shape))}]")


def instance_error(index: int, err: ServingError, key: str | None = None) -> ServingError:
    """json_tensor.cc FillTensorMapFromInstancesList: an element's error inside its own, with the status's
    code as absl::Status::ToString writes it."""
    where = f"{index}" if key is None else f"{index} key: {clip(key, 60)}"
    return ServingError("INVALID_ARGUMENT", f"Failed to process element: {where} of 'instances' list. Error: "
                                            f"{err.code_name}: {err.message}")


def json_to_array(value, info):
    """A JSON value as a numpy array of the TensorInfo's dtype, refused as json_tensor.cc refuses it."""
    import tensorflow as tf

    import base64

    check_tensor(value, info_dtype(info))
    dtype = tf.as_dtype(info.dtype)
    if dtype == tf.string:
        def decode(v):
            if isinstance(v, dict):
                try:
                    return base64.b64decode(v["b64"], validate=True)
                except ValueError:
                    raise ServingError("INVALID_ARGUMENT", "Unable to base64 decode") from None
            if isinstance(v, list):
                return [decode(x) for x in v]
            return v.encode()
        return np.asarray(decode(value), dtype=object)
    return np.asarray(value, dtype=dtype.as_numpy_dtype)


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
        return "float_list", json_double(value)  # beyond 64 bits rapidjson reads a number as a double
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
