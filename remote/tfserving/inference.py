"""Classify, Regress and MultiInference over tf.Example inputs.

Follows tensorflow_serving/servables/tensorflow/classifier.cc, regressor.cc, multi_inference.cc and util.cc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .status import ServingError, clip, session_error
from .limits import MAX_EXAMPLE_BYTES_PER_REQUEST
from .bundle import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD
from .predict import call_batched, check_rows
from .core import select_version

if TYPE_CHECKING:
    from .bundle import LoadedVersion
    from .core import Models


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


def preprocess_inference(sig, method: str, check_method_name_too: bool = False) -> tuple:
    """A classify or regress signature checked as PreProcessClassification / PreProcessRegression check it
    (its method_name too with check_method_name_too, --enable_signature_method_name_check); returns (its input
    tensor's name, the names of the output tensors to fetch)."""
    if check_method_name_too:
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
    if loaded.method_name_check:
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


def data_type_name(value) -> str:
    """A numpy array's dtype as TensorFlow's DataType_Name: DT_FLOAT, DT_STRING..."""
    import tensorflow as tf

    from tensorflow.core.framework import types_pb2

    if value.dtype.kind in "OSU":
        return "DT_STRING"
    return types_pb2.DataType.Name(tf.as_dtype(value.dtype).as_datatype_enum)


def classification_result(sig, num_examples: int, names: tuple, values: list, result) -> None:
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
        got = data_type_name(value)
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


def regression_result(sig, num_examples: int, names: tuple, values: list, result) -> None:
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
    got = data_type_name(value)
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


def classify_or_regress(loaded: LoadedVersion, spec, input_proto, method: str, result) -> str:
    """RunClassify / RunRegress on a loaded version: fills result (a ClassificationResult or a
    RegressionResult); returns the signature's name. Runs through the batch queue with --enable_batching, as
    TF Serving's BatchingSession batches a run that feeds and fetches a whole signature."""
    import tensorflow as tf

    check_example_limits(input_proto)
    name, sig = inference_signature(loaded, spec, method)
    input_name, output_names = preprocess_inference(sig, method, loaded.method_name_check)
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
    fill(sig, len(examples), output_names, outputs, result)
    return name


def multi_inference(models: Models, request):
    """multi_inference.cc TensorFlowMultiInferenceRunner::Infer (through multi_inference_helper.cc, which
    takes the version the first task names): several classify/regress signatures of one model over the same
    examples, in one session run."""
    import tensorflow as tf

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
        input_name, output_names = preprocess_inference(sig, task.method_name, loaded.method_name_check)
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
            classification_result(sig, len(examples), fetch_names, values, result.classification_result)
        else:
            regression_result(sig, len(examples), fetch_names, values, result.regression_result)
        fill_model_spec(result.model_spec, task.model_spec.name, task.model_spec.signature_name, loaded.version)
    return response
