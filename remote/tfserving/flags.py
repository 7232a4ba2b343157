"""The command line: TensorFlow Serving's flags, those not implemented a one-line warning.

Follows tensorflow_serving/model_servers/main.cc.
"""

from __future__ import annotations

import argparse
import sys

from .limits import DEFAULT_REST_THREADS, DEFAULT_REST_TIMEOUT_MS


# --------------------------------------------------------------------------- main

# TensorFlow Serving's flags (model_servers/main.cc) that this stand-in accepts without implementing:
# each is named in a one-line warning when given.
UNIMPLEMENTED_FLAGS = {
    "enable_per_model_batching_params",
    "num_load_threads", "num_unload_threads", "flush_filesystem_caches", "use_alts_credentials",
    "platform_config_file", "grpc_channel_arguments", "num_request_iterations_for_warmup",
    "enable_profiler", "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "xla_cpu_compilation_enabled", "enable_cors_support",
    "remove_unused_fields_from_bundle_metagraph", "response_tensor_serialization_option",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tflab's TensorFlow Serving stand-in (gRPC PredictionService).")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this UNIX socket")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST API)")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default="", help="folder holding numeric version folders")
    p.add_argument("--model_config_file", default="", help="a ModelServerConfig text proto: several models, "
                   "version policies, version labels")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                   help="re-read --model_config_file every this many seconds (0: read once, at start)")
    p.add_argument("--monitoring_config_file", default="", help="a MonitoringConfig text proto: prometheus_config "
                   "{enable: true, path: ...} serves metrics over REST")
    p.add_argument("--enable_batching", nargs="?", const="true", default="false",
                   help="merge concurrent Predicts into batches (TF Serving's batching)")
    p.add_argument("--batching_parameters_file", default="", help="a BatchingParameters text proto")
    p.add_argument("--saved_model_tags", default="serve", help="comma-separated MetaGraphDef tags to load")
    p.add_argument("--enable_signature_method_name_check", nargs="?", const="true", default="false",
                   help="a signature's method_name must match the API (off: Classify and Regress take any "
                        "signature with their inputs and outputs, as TF2 SavedModels need)")
    p.add_argument("--enable_model_warmup", nargs="?", const="true", default="true",
                   help="replay assets.extra/tf_serving_warmup_requests when a version loads")
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="retries of a version that fails to load (TF Serving's default: 5)")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="wait between load retries (default one minute)")
    p.add_argument("--allow_version_labels_for_unavailable_models", nargs="?", const="true", default="false",
                   help="a config may give a new version label to a version not loaded yet (as at start)")
    p.add_argument("--prefer_tflite_model", nargs="?", const="true", default="false",
                   help="serve a version folder's model.tflite through TF Lite when it has one")
    p.add_argument("--enable_grpc_healthcheck_service", nargs="?", const="true", default="false",
                   help="serve gRPC's standard health service (grpc.health.v1.Health Check)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--threads", "--grpc_max_threads", dest="threads", type=int, default=8,
                   help="gRPC worker threads")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=DEFAULT_REST_TIMEOUT_MS,
                   help="REST: each socket read or write of a connection times out after this (0: never)")
    p.add_argument("--rest_api_enable_cors_support", nargs="?", const="true", default="false",
                   help="REST: CORS headers in every answer")
    p.add_argument("--rest_api_num_threads", type=int, default=DEFAULT_REST_THREADS,
                   help="REST: connections handled at once; more wait their turn (default 4 per CPU)")
    for flag in ("tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
                 "tensorflow_inter_op_parallelism"):
        p.add_argument(f"--{flag}", type=int, default=0, help="TensorFlow's thread pools (0: TensorFlow picks)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    args, extra = p.parse_known_args(argv)
    unknown = []
    skip_value = False
    for i, item in enumerate(extra):
        if skip_value:
            skip_value = False
            continue
        if not item.startswith("--"):
            unknown.append(item)
            continue
        flag = item[2:].split("=", 1)[0]
        if flag in UNIMPLEMENTED_FLAGS:
            print(f"model_server: warning: --{flag} is a TensorFlow Serving flag that tflab's stand-in does not "
                  "implement; ignored", file=sys.stderr, flush=True)
            skip_value = "=" not in item and i + 1 < len(extra) and not extra[i + 1].startswith("--")
        else:
            unknown.append(item)
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.model_base_path and not args.model_config_file and not args.version:
        p.error("one of --model_base_path or --model_config_file is required")
    if args.model_base_path and args.model_config_file:
        p.error("--model_base_path and --model_config_file cannot both be given")
    return args


def is_true(value) -> bool:
    """A boolean flag's value as TF Serving's flag parser reads it (true/false, 1/0, yes/no)."""
    return str(value).lower() in ("true", "1", "yes")
