"""--enable_batching: concurrent requests merged into batches, padded and split as TF Serving does.

Follows tensorflow_serving/batching/batching_session.cc, batching_util.cc and
servables/tensorflow/session_bundle_config.proto (BatchingParameters).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from .status import ServingError


# How long a request waits for its batch to run before it gives up (DEADLINE_EXCEEDED). Our choice.
BATCH_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class BatchingParameters:
    """--batching_parameters_file (servables/tensorflow/session_bundle_config.proto BatchingParameters), with
    the defaults of TensorFlow's BasicBatchScheduler where a field is not given."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple = ()  # a batch is padded up to the first of these that holds it
    pad_variable_length_inputs: bool = False  # tasks whose inner dimensions differ are padded to the largest
    enable_large_batch_splitting: bool = False  # a task is split across batches to fill them
    max_execution_batch_size: int = 0  # with splitting, the rows a batch runs (0: max_batch_size)

    @property
    def execution_size(self) -> int:
        """The most rows one batch runs (bundle_factory_util.h GetQueueOptions): max_execution_batch_size when
        large batches are split (max_batch_size when it is not given), else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    def padded_size(self, size: int) -> int:
        """The size a batch of size rows runs at (batching_util.cc RoundToLowestAllowedBatchSize): the first
        allowed size that holds it, or itself when there are none (or none is large enough)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size


def read_batching_parameters(path: str | None) -> BatchingParameters:
    """The fields this server implements, from a BatchingParameters text proto; warns about the others."""
    import re

    if not path:
        return BatchingParameters()
    with open(path) as f:
        text = f.read()
    text = re.sub(r"#[^\n]*", "", text)  # text-format comments
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                 "max_execution_batch_size"):
        found = re.search(rf"\b{name}\s*:?\s*\{{\s*value\s*:\s*(\d+)\s*\}}", text)
        if found:
            values[name] = int(found.group(1))
    # repeated int64 allowed_batch_sizes: one "allowed_batch_sizes: N" per entry, or the list form "[N, M]".
    sizes = []
    for one, many in re.findall(r"\ballowed_batch_sizes\s*:\s*(?:(-?\d+)|\[([-\d,\s]*)\])", text):
        sizes.extend(int(v) for v in ([one] if one else re.findall(r"-?\d+", many)))
    if sizes:
        values["allowed_batch_sizes"] = tuple(sizes)
    found = re.search(r"\bpad_variable_length_inputs\s*:\s*(\w+)", text)
    if found:
        values["pad_variable_length_inputs"] = found.group(1).lower() in ("true", "t", "1")
    found = re.search(r"\benable_large_batch_splitting\s*:?\s*\{\s*value\s*:\s*(\w+)\s*\}", text)  # a BoolValue
    if found:
        values["enable_large_batch_splitting"] = found.group(1).lower() in ("true", "t", "1")
    for name in ("thread_pool_name", "mixed_priority_batching_policy", "batch_padding_policy"):
        if re.search(rf"\b{name}\b", text):
            print(f"model_server: warning: {name} in the batching parameters is not implemented here; ignored",
                  file=sys.stderr, flush=True)
    params = BatchingParameters(**values)
    if min(params.max_batch_size, params.max_enqueued_batches, params.num_batch_threads) < 1:
        raise ServingError("INVALID_ARGUMENT", "max_batch_size, max_enqueued_batches and num_batch_threads must be "
                                               "at least 1")
    if params.enable_large_batch_splitting and params.max_batch_size < params.execution_size:
        # TensorFlow's shared_batch_scheduler.h AddQueue (max_batch_size is the queue's input_batch_size_limit)
        raise ServingError("INVALID_ARGUMENT", "When enable_large_batch_splitting is true, input_batch_size_limit "
                                               "must be greater than or equal to max_execution_batch_size. "
                                               f"(max_batch_size {params.max_batch_size}, max_execution_batch_size "
                                               f"{params.execution_size})")
    if params.allowed_batch_sizes and params.allowed_batch_sizes[-1] != params.max_batch_size:
        # servables/tensorflow/bundle_factory_util.cc WrapSessionForBatching (TF Serving's only check on them)
        raise ServingError("INVALID_ARGUMENT", "Last entry in allowed_batch_sizes must match max_batch_size; last "
                                               f"entry was {params.allowed_batch_sizes[-1]}; expected "
                                               f"{params.max_batch_size}")
    return params


def pad_inner(array, dims: tuple):
    """array padded after its last element along dimensions 1.. up to dims, with its first element
    (batching_util.cc AddPadding / PadTensor: "using existing values in padding")."""
    if tuple(array.shape[1:]) == tuple(dims):
        return array
    if array.size == 0:
        raise ServingError("INVALID_ARGUMENT", "Got empty tensor in batch of non-empty tensors.")
    padded = np.full((array.shape[0],) + tuple(dims), array.flat[0], dtype=array.dtype)
    padded[tuple(slice(0, n) for n in array.shape)] = array
    return padded


def merge_batch(parts_per_task: list, params: "BatchingParameters") -> tuple:
    """The inputs of a batch's tasks as one array per input (batching_session.cc MergeInputTensors): with
    pad_variable_length_inputs each task's tensor padded to the largest inner dimensions among the tasks,
    then, when allowed_batch_sizes asks for more rows, copies of the last task's first row appended.
    Returns (arrays, rows including the padding)."""
    size = sum(part[0].shape[0] for part in parts_per_task)
    target = params.padded_size(size)
    merged = []
    for parts in zip(*parts_per_task):
        parts = list(parts)
        if params.pad_variable_length_inputs and len(parts) > 1:
            dims = tuple(max(sizes) for sizes in zip(*(p.shape[1:] for p in parts)))
            parts = [pad_inner(p, dims) for p in parts]
        if target > size:
            parts.append(np.repeat(parts[-1][:1], target - size, axis=0))
        merged.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return merged, target


class Batcher:
    """Requests to one signature merged into one session run along their first dimension, with TF Serving's
    batching rules (BatchingSession over a BasicBatchScheduler): a batch runs when it holds its most rows
    (max_batch_size, or max_execution_batch_size when large batches are split) or when its first request has
    waited batch_timeout_micros, and at most num_batch_threads batches run at once. With allowed_batch_sizes,
    the batch is padded up to the next allowed size and the padding rows dropped from the outputs. With
    enable_large_batch_splitting, a request that does not fit the open batch fills it and its remaining rows go
    on in the next batches (TensorFlow's input_split_metadata.cc: the room left, then whole batches, then the
    rest, which later requests can join); its outputs are the pieces' outputs joined in order
    (batching_session.cc SplitInputTask).

    The batches run in the requests' own threads, not in threads of their own: a request that finds a batch
    slot free leads a batch of the oldest waiting rows (its own first); when a batch ends and rows are still
    waiting, the slot passes to the request that owns the oldest of them. Each request is one wake-up fewer
    than with batch threads, and a request alone runs at once, as without batching.

    A task is a dict: its arrays and rows, the pieces' outputs by first row, the first error of a piece, its
    rows not yet run ("pending"), whether it was handed a batch slot ("lead") and the event its thread waits
    on ("wake"); a piece is (task, first row, rows)."""

    def __init__(self, fn, params: BatchingParameters):
        import collections

        self.fn = fn
        self.params = params
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # a leader gathering a batch waits on it for more rows
        self.waiting: collections.deque = collections.deque()  # pieces not taken by a batch yet, oldest first
        self.waiting_rows = 0
        self.running = 0  # batch slots taken (at most num_batch_threads)
        self.gathering = False  # a leader is waiting for more rows: the one open batch the others join

    def submit(self, arrays: list, rows: int) -> list:
        """Run arrays (rows rows each) as part of a batch; returns their own rows of the outputs."""
        params = self.params
        if rows > params.max_batch_size:  # batch_scheduler.h: max_batch_size bounds a task, split or not
            raise ServingError("INVALID_ARGUMENT", f"Task size {rows} is larger than maximum input batch size "
                                                   f"{params.max_batch_size}")
        task = {"arrays": arrays, "rows": rows, "pending": rows, "outputs": {}, "lead": False,
                "wake": threading.Event(), "at": time.monotonic()}
        with self.lock:
            if self.waiting_rows + rows > params.max_enqueued_batches * params.execution_size:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted is "
                                                  "full")
            self.waiting.append((task, 0, rows))
            self.waiting_rows += rows
            self.arrived.notify()
            if self.running < params.num_batch_threads and not self.gathering:
                self.running += 1
                task["lead"] = True
        give_up = task["at"] + BATCH_WAIT_SECONDS
        while True:
            with self.lock:
                lead, task["lead"] = task["lead"], False
                done = task["pending"] == 0
            if lead:
                self.lead()
                continue
            if done:
                break
            if not task["wake"].wait(max(0.0, give_up - time.monotonic())):
                self.abandon(task)
                raise ServingError("DEADLINE_EXCEEDED", f"the batch did not run within {BATCH_WAIT_SECONDS:g} s")
            task["wake"].clear()
        if "error" in task:
            raise task["error"]
        return task["values"]

    def take(self, room: int) -> tuple[list, int]:
        """Up to room rows of the oldest waiting pieces (the first one split when it does not fit and splitting
        is on); the lock is held."""
        taken, size = [], 0
        while self.waiting and size < room:
            task, first, rows = self.waiting[0]
            if rows > room - size:
                if not self.params.enable_large_batch_splitting:
                    break
                rows = room - size
                self.waiting[0] = (task, first + rows, self.waiting[0][2] - rows)
            else:
                self.waiting.popleft()
            taken.append((task, first, rows))
            size += rows
        self.waiting_rows -= size
        return taken, size

    def lead(self) -> None:
        """Gather and run one batch in this thread, then pass the slot on."""
        limit = self.params.execution_size
        with self.lock:
            batch, size = self.take(limit)
            if batch:
                deadline = batch[0][0]["at"] + self.params.batch_timeout_micros / 1e6
                self.gathering = True
                while size < limit and (remaining := deadline - time.monotonic()) > 0:
                    self.arrived.wait(remaining)
                    more, added = self.take(limit - size)
                    batch += more
                    size += added
                self.gathering = False
                if self.waiting and self.running < self.params.num_batch_threads:  # the next batch opens now
                    self.running += 1
                    self.hand_slot()
        if batch:
            self.run(batch)
        with self.lock:
            self.hand_slot()

    def hand_slot(self) -> None:
        """Give a taken batch slot to the owner of the oldest waiting rows that holds none yet, or free it when
        there is none or a batch is open (its leader hands one on when it closes); the lock is held."""
        if not self.gathering:
            for task, _, _ in self.waiting:
                if not task["lead"]:
                    task["lead"] = True
                    task["wake"].set()
                    return
        self.running -= 1

    def run(self, batch: list) -> None:
        """Run a batch and give each piece its rows of the outputs (or the error)."""
        try:
            whole = batch[0][0]
            if len(batch) == 1 and batch[0][2] == whole["rows"] == self.params.padded_size(whole["rows"]):
                self.deliver(whole, 0, whole["rows"], self.fn(*whole["arrays"]))  # one request as it came
                return
            parts = [[a[first:first + rows] for a in task["arrays"]] for task, first, rows in batch]
            merged, padded = merge_batch(parts, self.params)
            values = self.fn(*merged)
            offset = 0
            for task, first, rows in batch:
                self.deliver(task, first, rows, [v[offset:offset + rows] if v.ndim and v.shape[0] == padded else v
                                                 for v in values])
                offset += rows
        except Exception as exc:  # every request of the batch gets the error
            for task, first, rows in batch:
                if task["pending"]:
                    self.deliver(task, first, rows, None, exc)

    def deliver(self, task: dict, first: int, rows: int, values, error: Exception | None = None) -> None:
        """One piece of a task ran: keep its outputs (or the first error); once every row ran, the task's
        outputs are its pieces' joined in row order and its thread wakes."""
        with self.lock:
            if task.get("abandoned"):
                return
            if error is not None:
                task.setdefault("error", error)
            else:
                task["outputs"][first] = values
            task["pending"] -= rows
            if task["pending"] > 0:
                return
            if "error" not in task:
                pieces = [task["outputs"][k] for k in sorted(task["outputs"])]
                task["values"] = pieces[0] if len(pieces) == 1 else [
                    np.concatenate(parts) if parts[0].ndim else parts[0] for parts in zip(*pieces)]
        task["wake"].set()

    def abandon(self, task: dict) -> None:
        """A request that gave up: its waiting rows leave the queue, and a slot handed to it passes on."""
        with self.lock:
            kept = [piece for piece in self.waiting if piece[0] is not task]
            self.waiting_rows -= sum(rows for t, _, rows in self.waiting if t is task)
            self.waiting.clear()
            self.waiting.extend(kept)
            task["abandoned"] = True
            if task["lead"]:
                task["lead"] = False
                self.hand_slot()
