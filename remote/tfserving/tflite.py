"""--prefer_tflite_model: a version served from its model.tflite through TF Lite's interpreter.

Follows tensorflow_serving/servables/tensorflow/tflite_session.cc and saved_model_bundle_factory.cc
(LoadTfLiteModel).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .status import ServingError, clip
from .bundle import DEFAULT_SIGNATURE, LoadedVersion, PREDICT_METHOD


def tflite_signature_defs(content: bytes) -> dict:
    """The SignatureDefs a TF Lite model carries in its metadata, as TF Serving reads them
    (tflite_session.cc -> tensorflow/lite/tools/signature/signature_def_util.cc GetSignatureDefMap): the metadata
    entry "signature_defs_metadata" names a buffer holding a FlexBuffer map of signature key -> serialized
    SignatureDef. {} when there is none."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != b"signature_defs_metadata":
            continue
        data = model.Buffers(entry.Buffer()).DataAsNumpy()
        if not isinstance(data, np.ndarray):
            return {}
        found = {}
        table = flexbuffers.GetRoot(data.tobytes()).AsMap
        for key, value in zip(table.Keys, table.Values):
            key, sig = key.AsKey, meta_graph_pb2.SignatureDef()
            sig.ParseFromString(value.AsStringBytes if value.IsString else value.AsBlob)
            found[key] = sig
        return found
    return {}


class TfLiteVersion(LoadedVersion):
    """One version served from its model.tflite (--prefer_tflite_model) through TensorFlow's TF Lite interpreter
    (tf.lite.Interpreter), as TF Serving's TfLiteSession serves it (servables/tensorflow/saved_model_bundle_factory.cc
    LoadTfLiteModel, tflite_session.cc): the SignatureDefs stored in the model's metadata (tflite_signature_defs),
    each tensor name matched to a TF Lite tensor, with its ":N" suffix dropped when only that matches; a model
    without them gets one, serving_default, of every input and output tensor keyed by its name without a ":N"
    suffix (TfToTfLiteLegacyTensorName), method tensorflow/serving/predict. (Like TF Serving, it does not read the
    signatures TF Lite's converter writes into the model's own signature table.) An input whose
    shape differs from the tensor's is resized to it before the run (TfLiteSession::Run ResizeInputTensor). One
    interpreter per version, one run at a time (TF Serving keeps a pool of them: --num_tflite_pools...)."""

    def __init__(self, tf, path: str, version: int, tags: list[str], config=None):
        import warnings

        from tensorflow.core.protobuf import meta_graph_pb2

        self.version = version
        self.path = path
        with open(os.path.join(path, "model.tflite"), "rb") as f:
            content = f.read()
        with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT will replace it
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=content)
        self.interpreter.allocate_tensors()
        details = {d["index"]: d for d in self.interpreter.get_input_details() + self.interpreter.get_output_details()}
        self.indices = {d["name"]: index for index, d in details.items()}  # TF Lite tensor name -> index
        self.shapes = {index: tuple(int(n) for n in d["shape"]) for index, d in details.items()}  # inputs' now

        def info(index: int):  # tflite_session.cc TfLiteTensorToTensorInfo: name, dtype, the tensor's dims
            item = meta_graph_pb2.TensorInfo(name=details[index]["name"],
                                             dtype=tf.as_dtype(details[index]["dtype"]).as_datatype_enum)
            for size in details[index]["shape"]:
                item.tensor_shape.dim.add().size = int(size)
            return item

        def fix_name(tensor_info, what: str) -> None:  # tflite_session.cc FixTfLiteTensorName
            for name in (tensor_info.name, tensor_info.name.split(":", 1)[0]):
                if name in self.indices:
                    tensor_info.name = name
                    return
            raise ServingError("INTERNAL", f"{what} references an unknown tensor: Unknown tensor "
                                           f"'{clip(tensor_info.name, 80)}'.")

        self.signature_defs = tflite_signature_defs(content)
        for sig in self.signature_defs.values():
            for alias, tensor_info in sig.inputs.items():
                fix_name(tensor_info, f"Signature input {clip(alias, 60)}")
            for alias, tensor_info in sig.outputs.items():
                fix_name(tensor_info, f"Signature output {clip(alias, 60)}")
        if not self.signature_defs:  # "No signature def found in TFLite model. Generating one."
            sig = self.signature_defs[DEFAULT_SIGNATURE] = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for d in self.interpreter.get_input_details():
                sig.inputs[d["name"].split(":", 1)[0]].CopyFrom(info(d["index"]))
            for d in self.interpreter.get_output_details():
                sig.outputs[d["name"].split(":", 1)[0]].CopyFrom(info(d["index"]))
        self.session = None
        self.callables: dict = {}
        self.lock = threading.Lock()
        self.batching = None
        self.batchers: dict = {}
        self.specs: dict = {}

    def runner(self, signature_name: str, input_keys: tuple, output_keys: tuple):
        sig = self.signature_defs[signature_name]
        return self.tensor_runner(tuple(sig.inputs[k].name for k in input_keys),
                                  tuple(sig.outputs[k].name for k in output_keys))

    def tensor_runner(self, feeds: tuple, fetches: tuple):
        """A callable feeding and fetching TF Lite tensors by name: inputs resized when their shape differs, one
        run at a time on the version's interpreter, outputs copied out of it."""
        try:
            inputs = [self.indices[name] for name in feeds]
            outputs = [self.indices[name] for name in fetches]
        except KeyError as exc:
            raise ServingError("INTERNAL", f"Unknown tensor '{clip(exc.args[0], 80)}'.") from None
        interpreter = self.interpreter

        def run(*arrays):
            with self.lock:
                resized = False
                for index, array in zip(inputs, arrays):
                    if self.shapes[index] != array.shape:
                        interpreter.resize_tensor_input(index, list(array.shape))
                        self.shapes[index] = array.shape
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                for index, array in zip(inputs, arrays):
                    interpreter.set_tensor(index, array)
                interpreter.invoke()
                return [interpreter.get_tensor(index).copy() for index in outputs]
        return run
