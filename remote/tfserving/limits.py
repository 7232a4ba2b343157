"""The bounds every request is held to, and the REST defaults of the server's flags.

Follows tensorflow_serving/model_servers/server.cc (the gRPC message size) and server.h (http_timeout_in_ms,
http_num_threads); the other bounds are tflab's own choices, each explained where it is defined.
"""

from __future__ import annotations

import os


# --------------------------------------------------------------------------- limits
# Rows (a tensor's first dimension, the batch) one Predict may carry, over gRPC and REST. Our choice:
# the lab's model takes [None, 1], so 100,000 rows is 400 KB of float32, far beyond any lab use.
# (TF Serving has no such limit; its batching, off by default, has max_batch_size.)
MAX_ROWS_PER_REQUEST = 100_000
# gRPC receive limit: grpcio's own default (4 MiB), made explicit. TF Serving takes up to 2 GiB
# (tensorflow_serving/model_servers/server.cc: builder.SetMaxMessageSize(INT32_MAX)).
MAX_GRPC_MESSAGE_BYTES = 4 * 1024 * 1024
# Elements the input tensors of one Predict may declare in all: as many float32 values as a full
# message carries. A typed field (float_val...) shorter than its shape is filled with its last value
# (TensorFlow's tensor.cc FromProtoField; tf.make_ndarray does the same), so without this bound 38
# bytes could declare billions. Checked on the TensorProto before anything is allocated.
MAX_ELEMENTS_PER_REQUEST = MAX_GRPC_MESSAGE_BYTES // 4
# gRPC calls running or waiting per worker thread (--threads); past that grpc answers RESOURCE_EXHAUSTED
# at once (grpc.server's maximum_concurrent_rpcs) rather than queueing without bound. Our choice.
MAX_RPCS_PER_THREAD = 4
# REST body: the same 4 MiB as a gRPC message (100,000 rows of JSON take 0.7 to 2.5 MB); a larger
# Content-Length gets 413 from the headers, before the body is read.
MAX_REST_BODY_BYTES = MAX_GRPC_MESSAGE_BYTES
# REST defaults of TF Serving's flags --rest_api_timeout_in_ms and --rest_api_num_threads
# (tensorflow_serving/model_servers/server.h: http_timeout_in_ms = 30000, http_num_threads =
# 4 * NumSchedulableCPUs). Here the timeout bounds each socket read or write of a connection.
DEFAULT_REST_TIMEOUT_MS = 30_000
DEFAULT_REST_THREADS = 4 * (os.cpu_count() or 1)
# Bytes the serialized tf.Examples of one Classify, Regress or MultiInference may make once each is joined
# to the shared context (util.cc InputToSerializedExampleTensor copies the context into every example, so a
# 4 MiB message could otherwise ask for 100,000 copies of a 4 MiB context). Our choice: four full messages.
MAX_EXAMPLE_BYTES_PER_REQUEST = 4 * MAX_GRPC_MESSAGE_BYTES
