"""One loaded version of a SavedModel: a TensorFlow session over its graph, fed and fetched by the tensor
names of its SignatureDefs.

Follows tensorflow_serving/servables/tensorflow/saved_model_bundle_factory.cc and
tensorflow/cc/saved_model/signature_constants.h (the method names and the default signature).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from .batching import Batcher

if TYPE_CHECKING:
    from .batching import BatchingParameters


PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


class LoadedVersion:
    """One loaded version of a model: a TensorFlow session over its SavedModel's graph, as TF Serving runs it.

    TF Serving feeds and fetches the tensors a SignatureDef names (predict_util.cc RunPredict ->
    Session::Run); so does this, through one cached session callable per (signature, outputs).
    """

    # --enable_signature_method_name_check (model_servers/main.cc, off by default): whether a signature's
    # method_name must match the API (servables/tensorflow/util.cc GetSignatureMethodNameCheckFeature, a
    # process-wide switch there; here the server's Models hands it to each version it loads). Off, Classify and
    # Regress take any signature shaped as they need, which is how TF2 SavedModels (whose signatures all say
    # tensorflow/serving/predict) are classified and regressed.
    method_name_check = False

    def __init__(self, tf, path: str, version: int, tags: list[str], config=None):
        self.version = version
        self.path = path
        graph = tf.Graph()
        with graph.as_default():
            self.session = tf.compat.v1.Session(graph=graph, config=config)
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, tags, path)
        self.signature_defs = dict(meta_graph.signature_def)
        self.callables: dict = {}
        self.lock = threading.Lock()
        self.batching: BatchingParameters | None = None  # --enable_batching
        self.batchers: dict = {}
        self.specs: dict = {}

    def spec(self, signature_name: str) -> tuple:
        """A signature's inputs as {key: (tf dtype, numpy dtype or None for strings)} and its sorted output keys,
        read once from its SignatureDef."""
        import tensorflow as tf

        found = self.specs.get(signature_name)
        if found is None:
            sig = self.signature_defs[signature_name]
            inputs = {}
            for key, info in sig.inputs.items():
                want = tf.as_dtype(info.dtype)
                inputs[key] = (want, None if want == tf.string else np.dtype(want.as_numpy_dtype))
            found = self.specs[signature_name] = (inputs, tuple(sorted(sig.outputs)))
        return found

    def runner(self, signature_name: str, input_keys: tuple, output_keys: tuple):
        """A session callable feeding input_keys and fetching output_keys of a signature (cached)."""
        key = (signature_name, input_keys, output_keys)
        fn = self.callables.get(key)
        if fn is None:
            sig = self.signature_defs[signature_name]
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions()
            options.feed.extend(sig.inputs[k].name for k in input_keys)
            options.fetch.extend(sig.outputs[k].name for k in output_keys)
            with self.lock:  # TF_SessionMakeCallable: ten times less Python per call than Session.run
                fn = self.session._make_callable_from_options(options)
                if len(self.callables) < 256:
                    self.callables[key] = fn
        return fn

    def tensor_runner(self, feeds: tuple, fetches: tuple):
        """A session callable feeding and fetching tensors by name (Classify, Regress, MultiInference) (cached)."""
        key = ("tensors", feeds, fetches)
        fn = self.callables.get(key)
        if fn is None:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions()
            options.feed.extend(feeds)
            options.fetch.extend(fetches)
            with self.lock:
                fn = self.session._make_callable_from_options(options)
                if len(self.callables) < 256:
                    self.callables[key] = fn
        return fn

    def batcher(self, key: tuple, fn) -> "Batcher":
        """The batch queue of one (signature, inputs, outputs, input dtypes and inner shapes)."""
        batcher = self.batchers.get(key)
        if batcher is None:
            with self.lock:
                batcher = self.batchers.get(key)
                if batcher is None:
                    batcher = self.batchers[key] = Batcher(fn, self.batching)
        return batcher
