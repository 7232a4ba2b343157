"""SavedModels the serving conformance tests build, and helpers to call them.

"census" is a TF1-style SavedModel whose signatures take serialized tf.Example protos, as TF Serving's
classify and regress APIs feed them (servables/tensorflow/classifier.cc, regressor.cc: one string input
"inputs"; outputs "classes"/"scores" or "outputs"). TF2's tf.saved_model.save writes every signature with
method_name "tensorflow/serving/predict" (it has no way to say classify or regress), so the
classification and regression signatures are built as TF1 builds them:
tf.compat.v1.saved_model.classification_signature_def / regression_signature_def, which set the method
names, saved with tf.compat.v1.saved_model.Builder. A few more signatures are malformed on purpose, each
to meet one of TF Serving's checks.

The features: "x" (float, required) and "shift" (float, 0 by default); the model works on x + shift:
scores = softmax((x + shift) * [1, -1, 0.5]) over the classes low, mid, high; regression 2 (x + shift) + 1.
"""

from __future__ import annotations

CLASS_WEIGHTS = (1.0, -1.0, 0.5)
CLASS_LABELS = (b"low", b"mid", b"high")


def export_census(tf, path: str, tags=("serve",)) -> None:
    """The census model at path (a version folder), its MetaGraphDef saved under tags."""
    v1 = tf.compat.v1
    sm = v1.saved_model
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([1], tf.float32),
            "shift": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        x = features["x"] + features["shift"]  # [n, 1]
        weights = tf.Variable([list(CLASS_WEIGHTS)], name="weights")
        scores = tf.nn.softmax(x * weights, name="scores")  # [n, 3] float32
        n = tf.shape(x)[0]
        classes = tf.tile(tf.constant([list(CLASS_LABELS)]), [n, 1], name="classes")  # [n, 3] string
        value = tf.identity(2.0 * x + 1.0, name="value")  # [n, 1] float32
        other = v1.placeholder(tf.string, [None], name="other_example")
        info = sm.build_tensor_info

        def signature(inputs: dict, outputs: dict, method: str):
            return sm.build_signature_def({k: info(v) for k, v in inputs.items()},
                                          {k: info(v) for k, v in outputs.items()}, method)

        classify, regress, predict = (sm.CLASSIFY_METHOD_NAME, sm.REGRESS_METHOD_NAME, sm.PREDICT_METHOD_NAME)
        signatures = {
            "serving_default": sm.classification_signature_def(serialized, classes, scores),
            "regress": sm.regression_signature_def(serialized, value),
            "scores_only": signature({"inputs": serialized}, {"scores": scores}, classify),
            "classes_only": signature({"inputs": serialized}, {"classes": classes}, classify),
            "predict": sm.predict_signature_def({"x": x}, {"scores": scores, "value": value}),
            # A TF2-style regression signature: the structure regressor.cc needs, method_name predict.
            "tf2_regress": signature({"inputs": serialized}, {"outputs": tf.reshape(value, [-1])}, predict),
            # A method name no API has (Predict runs it unless --enable_signature_method_name_check).
            "custom_method": signature({"x": x}, {"value": value}, "tflab/custom"),
            # One malformed signature per check of classifier.cc / regressor.cc.
            "scores_1d": signature({"inputs": serialized}, {"scores": scores[:, 0]}, classify),
            "scores_double": signature({"inputs": serialized}, {"scores": tf.cast(scores, tf.float64)}, classify),
            "classes_int": signature({"inputs": serialized}, {"classes": tf.cast(x * 0, tf.int64) + [[1, 2, 3]]},
                                     classify),
            "classes_scores_differ": signature({"inputs": serialized},
                                               {"classes": classes, "scores": scores[:, :2]}, classify),
            "scores_extra_row": signature({"inputs": serialized}, {"scores": tf.concat([scores, scores[:1]], 0)},
                                          classify),
            "no_class_outputs": signature({"inputs": serialized}, {"probabilities": scores}, classify),
            "two_inputs": signature({"inputs": serialized, "more": other}, {"scores": scores}, classify),
            "misnamed_input": signature({"examples": serialized}, {"outputs": value}, regress),
            "regress_wide": signature({"inputs": serialized}, {"outputs": tf.concat([value, value], 1)}, regress),
            "regress_double": signature({"inputs": serialized}, {"outputs": tf.cast(value, tf.float64)}, regress),
            "regress_extra_row": signature({"inputs": serialized}, {"outputs": tf.concat([value, value[:1]], 0)},
                                           regress),
            # A second regression over its own input tensor (MultiInference feeds every input the same examples).
            "regress_other_input": signature({"inputs": other},
                                             {"outputs": tf.cast(tf.strings.length(other), tf.float32)}, regress),
        }
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = sm.Builder(path)
            builder.add_meta_graph_and_variables(session, list(tags), signature_def_map=signatures)
            builder.save()


def export_rows(tf, path: str, tags=("serve",)) -> None:
    """A model that shows the batch it ran in: x float32 [None, None] -> sum (per row), rows (the batch's
    rows, padding included) and width (the batch's second dimension, padding included)."""
    v1 = tf.compat.v1
    sm = v1.saved_model
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, None], name="x")
        n, width = tf.shape(x)[0], tf.shape(x)[1]
        outputs = {"sum": tf.reduce_sum(x, 1), "rows": tf.fill([n], n), "width": tf.fill([n], width)}
        with v1.Session(graph=graph) as session:
            builder = sm.Builder(path)
            builder.add_meta_graph_and_variables(
                session, list(tags), signature_def_map={"serving_default": sm.predict_signature_def({"x": x}, outputs)})
            builder.save()


def example(**features):
    """A tf.Example with float features (tf.train.Example, without importing TensorFlow's Python API)."""
    from tensorflow.core.example import example_pb2

    proto = example_pb2.Example()
    for name, value in features.items():
        proto.features.feature[name].float_list.value.append(value)
    return proto


def fill_input(input_proto, xs, context: dict | None = None, shifts=None) -> None:
    """An Input with one example per x (and its shift, when shifts is given), and the context when given."""
    if context is not None:
        target = input_proto.example_list_with_context
        target.context.CopyFrom(example(**context))
    else:
        target = input_proto.example_list
    for i, x in enumerate(xs):
        features = {"x": x} if shifts is None or shifts[i] is None else {"x": x, "shift": shifts[i]}
        target.examples.add().CopyFrom(example(**features))


def run_directly(tf, path: str, signature: str, serialized: list) -> dict:
    """What the SavedModel itself computes for these serialized examples: its signature called in this process
    (tf.saved_model.load), not through any server. Returns output key -> numpy array."""
    loaded = tf.saved_model.load(path)
    outputs = loaded.signatures[signature](inputs=tf.constant(serialized, tf.string))
    return {key: value.numpy() for key, value in outputs.items()}


def stub(server):
    """A PredictionService stub on a served model's channel (the fixtures' dict with its client)."""
    from tflab.client import serving_apis

    return serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(server["client"]._channel)


def export_half_plus(tf, path: str, b: float = 2.0) -> None:
    """TF Serving's test model, built as its testdata/saved_model_half_plus_two.py builds it (TF1): y = 0.5 x + b,
    x float32 declared [None, 1], in the predict signature serving_default ({"x"} -> {"y"}). b = 2 is upstream's
    half_plus_two, b = 3 its half_plus_three."""
    v1 = tf.compat.v1
    sm = v1.saved_model
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 1], name="x")
        a, offset = tf.Variable(0.5, name="a"), tf.Variable(b, name="b")
        y = tf.identity(a * x + offset, name="y")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = sm.Builder(path)
            builder.add_meta_graph_and_variables(
                session, ["serve"], signature_def_map={"serving_default": sm.predict_signature_def({"x": x}, {"y": y})})
            builder.save()


def export_half_plus_tflite(tf, path: str, b: float = 2.0, with_signature_def: bool = False) -> None:
    """<path>/model.tflite: y = 0.5 x + b converted with tf.lite.TFLiteConverter from a TF1 session, as upstream's
    saved_model_half_plus_two.py writes saved_model_half_plus_two_tflite (input "x", output "y", shape [1, 1]).
    with_signature_def: as its saved_model_half_plus_two_tflite_with_sigdef, the input tensor is "tflite_input" and
    the model's metadata carries the predict SignatureDef {"x": tflite_input:0} -> {"y": y:0} under
    serving_default, stored as tensorflow/lite/tools/signature/signature_def_util.cc SetSignatureDefMap stores it
    (metadata "signature_defs_metadata": a FlexBuffer map of key -> serialized SignatureDef; that tool is not in
    TensorFlow's Python package, so it is written here with the flatbuffers package TF Lite's tools use)."""
    import os

    import numpy as np
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 1], name="tflite_input" if with_signature_def else "x")
        a, offset = tf.Variable(0.5, name="a"), tf.Variable(b, name="b")
        y = tf.identity(a * x + offset, name="y")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            content = v1.lite.TFLiteConverter.from_session(session, [x], [y]).convert()
            signature = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
    if with_signature_def:
        table = flexbuffers.Builder()
        with table.Map():
            table.Key("serving_default")
            # A FlexBuffer string holding the serialized proto's bytes, as C++'s fbb.String(key, serialized) writes
            # (the Python builder's String() takes text only).
            table._WriteBlob(signature.SerializeToString(), append_zero=True, type_=flexbuffers.Type.STRING)
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(bytes(table.Finish()), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = "signature_defs_metadata", len(model.buffers) - 1
        model.metadata = list(model.metadata or []) + [entry]
        content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.tflite"), "wb") as f:
        f.write(content)
