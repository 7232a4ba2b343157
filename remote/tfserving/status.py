"""Errors as TensorFlow Serving reports them: a status code's name and a message cut to its limit.

Follows tensorflow_serving/model_servers/grpc_status_util.cc (ToGRPCStatus, kErrorMessageLimit) and
absl::Status / grpc's status codes.
"""

from __future__ import annotations


# Characters an error message may have before it is cut, with "...TRUNCATED" after them, as TF Serving cuts
# every gRPC error (model_servers/grpc_status_util.cc ToGRPCStatus, kErrorMessageLimit = 1024). Names and values
# a message quotes from a request are cut much shorter still (clip(..., 60)): it never echoes a request.
MAX_ERROR_CHARS = 1024


def clip(text, limit: int = MAX_ERROR_CHARS) -> str:
    """text cut to limit characters: a whole message as TF Serving cuts it (its first 1,024 characters and
    "...TRUNCATED"), a part quoted from a request to limit characters ending in "..."."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[:limit] + "...TRUNCATED" if limit == MAX_ERROR_CHARS else text[:limit - 3] + "..."


class ServingError(Exception):
    """A request error with the gRPC status code TF Serving would give."""

    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name
        self.message = message


def status_name(code: int, default: str = "UNKNOWN") -> str:
    """A status code's name (5 -> "NOT_FOUND"), as grpc and absl::Status name it."""
    import grpc

    return next((c.name for c in grpc.StatusCode if c.value[0] == code), default)


def session_error(exc) -> ServingError:
    """A TensorFlow runtime error (tf.errors.OpError) as the status TF Serving passes on."""
    name = status_name(exc.error_code, "INVALID_ARGUMENT")
    if name in ("OK", "UNKNOWN", "INTERNAL"):
        name = "INVALID_ARGUMENT"  # bad data in a request, most likely
    return ServingError(name, clip(((exc.message or str(exc)).strip().splitlines() or ["error"])[0]))
