"""The server core: the models served, their version policies, the polling of each base path for version
folders, loads with retries and warmup, unloads, config reloads, and which version a ModelSpec names.

Follows tensorflow_serving/model_servers/server_core.cc, sources/storage_path/file_system_storage_path_source.cc,
core/aspired_versions_manager.cc and basic_manager.cc, core/loader_harness.cc, util/retrier.cc and
servables/tensorflow/saved_model_warmup.cc.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .status import ServingError, clip, status_name
from .bundle import LoadedVersion, PREDICT_METHOD
from .tflite import TfLiteVersion
from .predict import predict

if TYPE_CHECKING:
    from .batching import BatchingParameters

log = logging.getLogger("tflab.model_server")


# Removed models whose ended versions GetModelStatus still lists (a config reload can name any number). Our choice.
MAX_RETIRED_MODELS = 1000


def parse_policy(config) -> tuple:
    """A ModelConfig's model_version_policy as ("latest", n) | ("all",) | ("specific", versions)."""
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return ("all",)
    if which == "specific":
        return ("specific", frozenset(policy.specific.versions))
    return ("latest", max(1, policy.latest.num_versions or 1))


@dataclass
class ModelState:
    """One model: its versions loaded now, and the state of every version it has seen."""

    name: str
    base_path: str
    policy: tuple = ("latest", 1)
    labels: dict = field(default_factory=dict)  # label -> version
    loaded: dict = field(default_factory=dict)  # version -> LoadedVersion
    states: dict = field(default_factory=dict)  # version -> (state name, error message[, status code])
    retries: dict = field(default_factory=dict)  # version -> (failed attempts, monotonic time of the next, error)
    lock: threading.Lock = field(default_factory=threading.Lock)
    removed: bool = False

    @property
    def current(self) -> LoadedVersion | None:
        loaded = self.loaded
        return loaded[max(loaded)] if loaded else None


class Models:
    """Every model the server serves (one from --model_name, or a --model_config_file's list)."""

    def __init__(self, tags: list[str], warmup: bool = False):
        self.tags = tags
        self.warmup = warmup
        self.session_config = None  # a ConfigProto (--tensorflow_*_parallelism)
        self.batching: BatchingParameters | None = None  # --enable_batching
        self.by_name: dict[str, ModelState] = {}
        # The version states of models a config reload removed, by name: GetModelStatus still lists them, ended,
        # as TF Serving's ServableStateMonitor keeps every servable's last state (servable_state_monitor.cc).
        self.retired: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.poll_lock = threading.Lock()  # one poll or reload at a time: a version is loaded once
        # --max_num_load_retries and --load_retry_interval_micros (model_servers/main.cc: 5 and 1 minute).
        self.max_load_retries = 5
        self.load_retry_interval = 60.0
        self.allow_unavailable_labels = False  # --allow_version_labels_for_unavailable_models
        self.starting: set = set()  # the models of the first config whose first load decides if the server starts
        self.start_error: str | None = None
        self.unloaded = threading.Event()  # a version was unloaded since the memory was last released
        self.prefer_tflite = False  # --prefer_tflite_model: a version folder's model.tflite is served through TF Lite
        self.method_name_check = False  # --enable_signature_method_name_check (LoadedVersion.method_name_check)

    def check_labels(self, entries: list[tuple]) -> None:
        """server_core.cc UpdateModelVersionLabelMap: a label may name only a version available now; with
        --allow_version_labels_for_unavailable_models also one not available yet, unless the label names
        another version now (a label is not moved to a version that cannot serve). Checked before anything
        of a new config is applied, so at start (nothing loaded yet) labels need that flag, as the docs say."""
        for name, base_path, _, labels in entries:
            model = self.by_name.get(name)
            if model is not None and model.base_path != base_path:
                model = None
            available = set(model.loaded) if model is not None else set()
            current = model.labels if model is not None else {}  # at start, no label map yet
            for label, version in sorted(labels.items()):  # a proto map has no order; this one is the same each time
                if version in available:
                    continue
                if self.allow_unavailable_labels and current.get(label, version) == version:
                    continue
                raise ServingError("FAILED_PRECONDITION", f"Request to assign label to version {version} of model "
                                                          f"{clip(name, 60)}, which is not currently available for "
                                                          "inference")

    def configure(self, entries: list[tuple]) -> None:
        """Serve exactly these (name, base_path, policy, labels) entries (TF Serving's ReloadConfig); a label
        check that fails applies none of it."""
        with self.lock:
            self.check_labels(entries)
            new = {}
            for name, base_path, policy, labels in entries:
                model = self.by_name.get(name)
                if model is None or model.base_path != base_path:
                    model = ModelState(name, base_path)
                model.policy, model.labels = policy, dict(labels)
                new[name] = model
            for name, model in self.by_name.items():
                if new.get(name) is not model:
                    model.removed = True
                    unload_all(model)
                    self.unloaded.set()
                    with model.lock:
                        ended = {v: st if st[0] == "END" else ("END", "") for v, st in model.states.items()}
                    self.retired[name] = {**self.retired.pop(name, {}), **ended}
                    while len(self.retired) > MAX_RETIRED_MODELS:  # the oldest go first
                        del self.retired[next(iter(self.retired))]
            self.by_name = new

    def get(self, name: str) -> ModelState | None:
        return self.by_name.get(name)

    def settled(self, names) -> tuple[bool, list[str]]:
        """Whether the latest version each named model wants has loaded or ended (as the
        WaitUntilServablesReachState calls of load_servables_fast.cc and server_core.cc wait for), and, for those
        that ended unloaded, "{name: M version: V} due to error: CODE: message". A model with no version on
        disk yet is not settled."""
        failures = []
        for name in sorted(names):
            model = self.by_name.get(name)
            if model is None:
                continue
            wanted = wanted_versions(model.policy, numeric_versions(model.base_path))
            if not wanted:
                return False, []
            latest = max(wanted)
            with model.lock:
                state = model.states.get(latest, ("",))
                loaded = latest in model.loaded
            if loaded:
                continue
            if state[0] != "END":
                return False, []
            error = ""
            if len(state) > 1 and state[1]:
                error = f" due to error: {status_name(state[2] if len(state) > 2 else 9)}: {state[1]}"
            failures.append(f"{{{{name: {name} version: {latest}}}{error}}}, ")
        return True, failures

    def check_start(self, stop: threading.Event) -> None:
        """The server has started once every model of the first config has its latest version loaded or ended;
        if one ended unloaded, it stops with TF Serving's message (load_servables_fast.cc, main.cc)."""
        if not self.starting:
            return
        done, failures = self.settled(self.starting)
        if not done:
            return
        self.starting = set()
        if failures:
            self.start_error = f"UNKNOWN: {len(failures)} servable(s) did not become available: {{{''.join(failures)}}}"
            print(f"Failed to start server. Error: {clip(self.start_error)}", flush=True)
            stop.set()

    def wait_settled(self, names, stop: threading.Event, active=None) -> None:
        """After a config reload, wait for the models it added (server_core.cc WaitUntilModelsAvailable; those
        with a version on disk that their policy wants: TF Serving would wait for the others without end, holding
        the call) and raise UNKNOWN if one did not become available. The config stays applied either way.

        A version that fails to load is retried (--max_num_load_retries, --load_retry_interval_micros: five
        minutes by default), and TF Serving's call waits through every retry, as this one does while the client
        waits. When the client has given up (active(), the call's context.is_active, turns false: its deadline
        passed or it cancelled), this returns DEADLINE_EXCEEDED at once instead of holding a worker thread for a
        call nobody will read; the loads go on as the config says. (TF Serving's handler keeps its thread until
        the load settles; its client gets DEADLINE_EXCEEDED all the same.)"""
        names = {n for n in names if (m := self.by_name.get(n)) is not None
                 and wanted_versions(m.policy, numeric_versions(m.base_path))}
        while names and not stop.is_set():
            if active is not None and not active():
                log.info("ReloadConfig: the client gave up before the models it added were available; they go on "
                         "loading")
                raise ServingError("DEADLINE_EXCEEDED", "the client gave up before the models were available")
            done, failures = self.settled(names)
            if done:
                if failures:
                    raise ServingError("UNKNOWN", f"{len(failures)} model(s) did not become available: "
                                                  f"{{{''.join(failures)}}}")
                return
            stop.wait(0.05)

    def all(self) -> list[ModelState]:
        return list(self.by_name.values())


def version_folders(base_path: str) -> dict[int, str]:
    """The version folders under base_path as {version: folder name}, ascending. As TF Serving reads them
    (sources/storage_path/file_system_storage_path_source.cc IndexChildrenByVersion, AspireVersion): a folder
    whose name reads as a number (absl::SimpleAtoi into an int64) is that version, loaded from the folder as
    named, so 00000123 is version 123 loaded from <base>/00000123; of two folders naming the same version (00000123
    and 123) the last in name order is loaded, with a warning. Here only ASCII digits are read (SimpleAtoi also
    takes a sign and surrounding blanks)."""
    try:
        names = sorted(os.listdir(base_path))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    found: dict[int, str] = {}
    for name in names:
        if not (name.isascii() and name.isdigit()) or int(name) >= 2 ** 63:
            continue
        if not os.path.isdir(os.path.join(base_path, name)):
            continue
        version = int(name)
        if version in found:
            log.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s will be "
                        "ignored.", version, clip(name, 60), clip(found[version], 60))
        found[version] = name
    return dict(sorted(found.items()))


def numeric_versions(base_path: str) -> list[int]:
    """The versions under base_path, ascending (version_folders)."""
    return list(version_folders(base_path))


def wanted_versions(policy: tuple, on_disk: list[int]) -> set[int]:
    """The versions a version policy serves among those on disk (TF Serving's servable_version_policy)."""
    if policy[0] == "all":
        return set(on_disk)
    if policy[0] == "specific":
        return {v for v in on_disk if v in policy[1]}
    return set(on_disk[-policy[1]:])


def unload_all(model: ModelState) -> None:
    with model.lock:
        for v in model.loaded:  # each session ends with the last request that holds it
            model.states[v] = ("END", "")
        model.loaded = {}


def warm_up(name: str, loaded: LoadedVersion) -> None:
    """Replay assets.extra/tf_serving_warmup_requests (PredictionLog records), as --enable_model_warmup does."""
    import tensorflow as tf

    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(loaded.path, "assets.extra", "tf_serving_warmup_requests")
    if not os.path.exists(path):
        return
    count = 0
    for record in tf.compat.v1.io.tf_record_iterator(path):
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        if entry.WhichOneof("log_type") == "predict_log":
            predict(loaded, entry.predict_log.request)
        count += 1
        if count >= 1000:  # TF Serving's kMaxNumRecordsPerFile
            break
    log.info("warmed up %s version %d with %d requests", name, loaded.version, count)


def poll_once(model: ModelState, models: Models | None = None) -> None:
    """Load the versions the policy wants that are not loaded; unload those it no longer wants."""
    import tensorflow as tf

    if model.removed:
        return
    folders = version_folders(model.base_path)
    on_disk = list(folders)
    wanted = wanted_versions(model.policy, on_disk)
    for version in [v for v in model.retries if v not in wanted]:  # basic_manager.cc CancelLoadServableRetry
        _, _, error = model.retries.pop(version)
        log.info("Retrying of Loading servable: {name: %s version: %d} was cancelled.", model.name, version)
        with model.lock:
            model.states[version] = ("END",) + error
    for version in sorted(wanted):
        if version in model.loaded or model.states.get(version, ("", ""))[0] == "END":
            continue  # loaded, or failed/unloaded before: do not retry every poll
        failed, next_at, _ = model.retries.get(version, (0, 0.0, None))
        if time.monotonic() < next_at:
            continue  # its next attempt is not due yet
        if failed:
            log.info("Retrying of Loading servable: {name: %s version: %d} retry: %d", model.name, version, failed)
        with model.lock:
            model.states[version] = ("LOADING", "")
        try:
            path = os.path.join(model.base_path, folders[version])
            kind = TfLiteVersion if models is not None and models.prefer_tflite and \
                os.path.isfile(os.path.join(path, "model.tflite")) else LoadedVersion
            loaded = kind(tf, path, version,
                        models.tags if models else ["serve"], models.session_config if models else None)
            loaded.batching = models.batching if models else None
            loaded.method_name_check = models.method_name_check if models else False
            if models is not None and models.warmup:
                warm_up(model.name, loaded)
            warm_default(loaded)
        except Exception as exc:  # a broken export must not stop the server
            load_failed(model, version, failed + 1, exc, models)
            continue
        model.retries.pop(version, None)
        with model.lock:
            model.loaded = {**model.loaded, version: loaded}
            model.states[version] = ("AVAILABLE", "")
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name, version)
        print(f"serving {model.name} version {version} from {loaded.path}", flush=True)
    # Unload what the policy no longer wants, once what it wants is loaded (availability first).
    stale = [v for v in model.loaded if v not in wanted]
    if stale and any(v in model.loaded for v in wanted):
        with model.lock:
            model.loaded = {v: lv for v, lv in model.loaded.items() if v in wanted}
            for v in stale:
                model.states[v] = ("END", "")
        for v in stale:
            log.info("unloaded %s version %d", model.name, v)
        if models is not None:
            models.unloaded.set()


def load_failed(model: ModelState, version: int, failed: int, exc, models: Models | None) -> None:
    """A failed attempt to load a version (core/loader_harness.cc Load, util/retrier.cc Retry): another is due
    after --load_retry_interval_micros until --max_num_load_retries retries have failed; then the version ends
    with the last error (its state stays LOADING in between, as there)."""
    servable = f"{{name: {model.name} version: {version}}}"
    log.error("Loading servable: %s failed: %s", servable, clip(exc))
    error = (clip(load_error_message(exc, models.tags if models is not None else ["serve"])),
             load_error_code(exc))
    retries = models.max_load_retries if models is not None else 0
    if failed <= retries:
        model.retries[version] = (failed, time.monotonic() + models.load_retry_interval, error)
        return
    model.retries.pop(version, None)
    if retries > 0:
        log.info("Retrying of Loading servable: %s exhausted max_num_retries: %d", servable, retries)
    with model.lock:
        model.states[version] = ("END",) + error


def next_retry_in(models: Models) -> float | None:
    """Seconds until the first load retry is due, if one is waiting."""
    due = [at for model in models.all() for _, at, _ in list(model.retries.values())]
    return max(0.0, min(due) - time.monotonic()) if due else None


def load_error_message(exc, tags: list[str]) -> str:
    """Why a version did not load: for a SavedModel without a MetaGraphDef of the --saved_model_tags, the words of
    TensorFlow's C++ loader, which TF Serving's status carries (tensorflow/cc/saved_model/reader.cc
    FindMetaGraphDef); otherwise Python's loader's message."""
    if "MetaGraphDef associated with tags" in str(exc):
        return (f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. To inspect available "
                "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")
    return f"could not load: {exc}"


def load_error_code(exc) -> int:
    """The status code GetModelStatus gives a version that failed to load: TensorFlow's own for its errors,
    NOT_FOUND when the SavedModel has no MetaGraphDef with the --saved_model_tags (as TF's C++ loader says,
    loader.cc "Could not find meta graph def matching supplied tags"), else FAILED_PRECONDITION."""
    import tensorflow as tf

    if isinstance(exc, tf.errors.OpError) and exc.error_code:
        return exc.error_code
    if "MetaGraphDef associated with tags" in str(exc):
        return 5  # NOT_FOUND
    return 9  # FAILED_PRECONDITION


def warm_default(loaded: LoadedVersion) -> None:
    """One call of a [None, k] float signature, so the first request does not pay for the first run."""
    for name, sig in loaded.signature_defs.items():
        if len(sig.inputs) != 1 or sig.method_name != PREDICT_METHOD:
            continue
        (key, info), = sig.inputs.items()
        dims = [d.size for d in info.tensor_shape.dim]
        if info.dtype == 1 and len(dims) == 2 and dims[1] > 0:
            loaded.runner(name, (key,), tuple(sorted(sig.outputs)))(np.zeros([1, dims[1]], np.float32))


def release_memory() -> None:
    """Give back the memory of unloaded versions. Two things hold it after the last reference to a version goes:
    a tf.Graph and its operations refer to each other (Operation._graph, the graph's _nodes_by_id), so a dropped
    graph waits for Python's cyclic collector, whose full collections are rare (without this, 150 models added
    and removed kept +140 MB, then +45, +24 and +75 MB more on each later cycle); and the C++ memory the sessions
    freed stays in glibc's arenas, counted in the process's resident memory, until malloc_trim gives it back
    (measured: a collection alone keeps the first cycle's +130 MB, with malloc_trim RSS returns to where it was)."""
    import gc

    started = time.perf_counter()
    found = gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere there is none and only the collection is done
    except (OSError, AttributeError):
        pass
    log.info("released the memory of unloaded versions (%d objects collected, %.0f ms)", found,
             (time.perf_counter() - started) * 1e3)


def watch(models: Models, interval: float, stop: threading.Event) -> None:
    """Poll every model's base path until stop is set; after versions were unloaded, release their memory."""
    while not stop.is_set():
        if models.unloaded.is_set():  # one poll interval after the unload: requests that held them have ended
            models.unloaded.clear()
            release_memory()
        for model in models.all():
            try:
                with models.poll_lock:
                    poll_once(model, models)
            except Exception:  # keep watching whatever happens
                log.exception("polling %s failed", model.base_path)
        models.check_start(stop)
        retry = next_retry_in(models)
        stop.wait(interval if retry is None else min(interval, retry))


def watch_config(path: str, interval: float, reload, stop: threading.Event) -> None:
    """--model_config_file_poll_wait_seconds (model_servers/server.cc PollFilesystemAndReloadConfig): re-read the
    model config file every interval and apply it as a config reload; a file that cannot be read or applied is
    logged and the models served stay as they are."""
    while not stop.wait(interval):
        try:
            entries = read_model_config(path)
        except Exception as exc:  # noqa: BLE001 (a half-written or broken file: try again next time)
            log.error("Failed to read ModelServerConfig file: %s", clip(getattr(exc, "message", exc)))
            continue
        try:
            reload(entries)
        except Exception as exc:  # noqa: BLE001
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", clip(getattr(exc, "message", exc)))


# --------------------------------------------------------------------------- request handling


def select_version(models: Models, spec) -> tuple[ModelState, LoadedVersion]:
    """The model and loaded version a ModelSpec names, or TF Serving's error (server_core.cc, basic_manager.cc)."""
    name = spec.name
    if not name:  # server_core.cc ServableRequestFromModelSpec
        raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
    which = spec.WhichOneof("version_choice")
    model = models.by_name.get(name)
    if which is None:  # the latest version
        loaded = model.loaded if model is not None else None
        if loaded:
            return model, loaded[max(loaded)] if len(loaded) > 1 else next(iter(loaded.values()))
        # core/basic_manager.cc ServingMap::GetUntypedServableHandle: only loaded versions are found, so a model
        # with none loaded yet is as unknown as a model not in the config.
        raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({clip(name, 60)})")
    if which == "version_label":
        label = spec.version_label
        if model is None or label not in model.labels:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {clip(label, 60)}")
        version = model.labels[label]
    else:
        version = spec.version.value
    loaded = model.loaded if model is not None else {}
    if version not in loaded:
        raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({clip(name, 60)}, {version})")
    return model, loaded[version]


def config_entries(config) -> list[tuple]:
    """A ModelServerConfig's model list as (name, base_path, policy, labels), checked as ServerCore does."""
    entries, names = [], set()
    for item in config.model_config_list.config:
        if not item.name or not item.base_path:
            raise ServingError("INVALID_ARGUMENT", "every model in the config needs a name and a base_path")
        if item.name in names:
            raise ServingError("INVALID_ARGUMENT", f"Illegal to list model {clip(item.name, 60)} multiple times "
                                                   "in config list")
        if item.model_platform and item.model_platform != "tensorflow":
            raise ServingError("INVALID_ARGUMENT", f"Model {clip(item.name, 60)} requested unsupported platform "
                                                   f"{clip(item.model_platform, 40)}")
        names.add(item.name)
        entries.append((item.name, os.path.abspath(item.base_path), parse_policy(item), dict(item.version_labels)))
    return entries


def read_model_config(path: str) -> list[tuple]:
    """--model_config_file: a ModelServerConfig in text format (g3doc/serving_config.md)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        # The words of protobuf's C++ text-format parser, which TF Serving's ParseProtoTextFile (util/proto_util.h)
        # uses: "Error parsing text-format <message type>: <line>:<column>: <what>".
        import re

        where = f"{exc.GetLine()}:{exc.GetColumn()}: " if exc.GetLine() is not None else ""
        what = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise ServingError("INVALID_ARGUMENT", f"Error parsing text-format {config.DESCRIPTOR.full_name}: "
                                               f"{where}{clip(what, 200)}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ServingError("INVALID_ARGUMENT", "only model_config_list is supported")
    return config_entries(config)
