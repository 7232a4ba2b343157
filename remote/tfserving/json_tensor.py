"""JSON to tensors and back for the REST API, in the row and columnar formats.

Follows tensorflow_serving/util/json_tensor.cc.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .status import ServingError, clip
from .predict import check_rows, dtype_name


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


def json_to_array(value, info, name: str):
    """A JSON value as a numpy array of the TensorInfo's dtype, refused as json_tensor.cc refuses it."""
    import tensorflow as tf

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
