#!/usr/bin/env python3
"""tflab's stand-in for `tensorflow_model_server`: the same gRPC API over a SavedModel.

TensorFlow Serving's binary is not installable everywhere (no PyPI or Debian package), so
tflab falls back to this small server, on this machine (`--local`) and on lab hosts that
have neither Docker nor the apt package. It takes TensorFlow Serving's flags (model_servers/main.cc;
those it does not implement are a one-line warning) and answers as TensorFlow Serving does, so code
written for either works against both:

- PredictionService: Predict (answers in the typed fields, float_val..., as predict_util.cc does),
  GetModelMetadata; Classify, Regress and MultiInference over tf.Example inputs, run and checked as
  classifier.cc, regressor.cc and multi_inference.cc do;
- ModelService: GetModelStatus, HandleReloadConfigRequest (a new model_config_list);
- the REST API (g3doc/api_rest.md): status, metadata, predict in the row and columnar formats,
  classify and regress, with versions and labels in the path;
- --model_config_file (several models, version policies latest/all/specific, version labels checked against
  the versions available, --allow_version_labels_for_unavailable_models) and
  --model_config_file_poll_wait_seconds, --monitoring_config_file (Prometheus metrics over REST),
  --enable_batching (allowed_batch_sizes, padding and large batch splitting included), --grpc_socket_path,
  --saved_model_tags, --enable_signature_method_name_check, --enable_model_warmup, --max_num_load_retries,
  --load_retry_interval_micros, --tensorflow_*_parallelism, --prefer_tflite_model (a model.tflite through
  TensorFlow's TF Lite interpreter, as servables/tensorflow/tflite_session.cc serves it).

Each version runs, as in TF Serving, in a TensorFlow session over the SavedModel's graph, fed and
fetched by the tensor names of its SignatureDefs. As TF Serving does, it watches each model's base path
for numeric version folders, serves those its version policy wants (the highest one by default), and
loads a newly exported version without a restart (the old one ends); a version that fails to load is
retried, and a model of the first config whose version never loads stops the server, as there; its ports
open once the first config has loaded (server.cc). A fed tensor's shape is not checked against the
signature's, as TensorFlow's runtime does not check it. Errors carry TF Serving's status codes and messages.
What an unloaded version held is given back (release_memory), and the metrics label only served models.

Any local user (and anyone through the SSH tunnel) can reach it, so requests are bounded: see the
limits below. A request over a limit gets a short error (gRPC INVALID_ARGUMENT or RESOURCE_EXHAUSTED,
HTTP 400/408/411/413), never a crash, a hang or an echo of its payload.

It ships to lab hosts with the rest of remote/ as plain files: this entry point and the package tfserving/,
one module per unit of TensorFlow Serving (flags, server, core, bundle, tflite, batching, predict, inference,
grpc_services, json_tensor, rest, metrics, metadata, status, limits). It imports only TensorFlow, numpy, grpcio,
tensorflow-serving-api and the standard library.

Usage: python3 model_server.py --port=9000 (--model_name=nn --model_base_path=/path/to/nn | --model_config_file=F)
                               [--rest_api_port=8501] [--host=127.0.0.1]
                               [--file_system_poll_wait_seconds=1] [--threads=8]
                               [--rest_api_timeout_in_ms=30000] [--rest_api_num_threads=4*CPUs]
"""

from __future__ import annotations

import os
import sys

from tfserving.batching import BATCH_WAIT_SECONDS, Batcher, BatchingParameters, merge_batch, read_batching_parameters
from tfserving.bundle import LoadedVersion
from tfserving.core import version_folders
from tfserving.json_tensor import json_float
from tfserving.limits import (MAX_EXAMPLE_BYTES_PER_REQUEST, MAX_GRPC_MESSAGE_BYTES, MAX_REST_BODY_BYTES,
                              MAX_ROWS_PER_REQUEST, MAX_RPCS_PER_THREAD)
from tfserving.server import main, serve
from tfserving.status import ServingError

__all__ = ["BATCH_WAIT_SECONDS", "Batcher", "BatchingParameters", "LoadedVersion", "MAX_EXAMPLE_BYTES_PER_REQUEST",
           "MAX_GRPC_MESSAGE_BYTES", "MAX_REST_BODY_BYTES", "MAX_ROWS_PER_REQUEST", "MAX_RPCS_PER_THREAD",
           "ServingError", "json_float", "main", "merge_batch", "read_batching_parameters", "serve",
           "version_folders"]

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip TensorFlow's slow teardown
