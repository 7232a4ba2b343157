#!/usr/bin/env bash
# Prepare a lab host for tflab, idempotently: a Python with TensorFlow, TensorBoard, JupyterLab,
# grpcio and tensorflow-serving-api, and a way to serve models. Logged to WORKDIR/bootstrap.log.
#
#   bootstrap.sh WORKDIR [PYTHON]
#
# PYTHON: an interpreter that already has everything (each module is looked for, nothing is installed), else a
# virtual environment is made at WORKDIR/venv (the GPU build of TensorFlow where nvidia-smi works).
# Serving, in order: the tensorflow/serving GPU image (Docker and an NVIDIA GPU, as on the Deep
# Learning Base AMI), tensorflow_model_server on PATH or from an apt repository already configured,
# else tflab's stand-in (remote/model_server.py).
#
# Results: WORKDIR/python (the interpreter), WORKDIR/serving (docker-gpu | docker-gpu-sudo | binary |
# builtin), and the marker WORKDIR/bootstrap.done. A second run finds the marker and does nothing.
# Runs that overlap (the one started by the instance's user data at boot, and run-lab's) take turns
# on a lock.
set -euo pipefail

WORKDIR=${1:?usage: bootstrap.sh WORKDIR [PYTHON]}
WANT_PYTHON=${2:-}
mkdir -p "$WORKDIR"
LOG="$WORKDIR/bootstrap.log"
MARK="$WORKDIR/bootstrap.done"
PACKAGES="tensorboard jupyterlab grpcio tensorflow-serving-api matplotlib numpy"
# What the marker stands for: a different interpreter request means another bootstrap.
WANT="python=${WANT_PYTHON:-venv} packages=$PACKAGES v2"

say() { echo "[bootstrap] $*"; }

exec 9>"$WORKDIR/bootstrap.lock"
if ! flock -n 9; then
  say "another bootstrap is running (started at boot?); waiting for it. Its log, $LOG:"
  touch "$LOG"
  tail -n 20 -F "$LOG" 2>/dev/null &
  tailer=$!
  flock 9
  kill "$tailer" 2>/dev/null || true
fi

if [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$WANT" ]; then
  say "already done ($(cat "$WORKDIR/serving") serving, $(cat "$WORKDIR/python"))"
  exit 0
fi

exec > >(tee -a "$LOG") 2>&1
say "started $(date -u +%FT%TZ) on $(hostname)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# apt-get waits (bounded) for the dpkg lock: on a first boot, unattended-upgrades (or cloud-init's own
# package step) may hold it for minutes, and apt-get would fail at once ("Could not get lock").
DPKG_LOCK=${TFLAB_DPKG_LOCK:-/var/lib/dpkg/lock-frontend}
APT_LOCK_WAIT=${TFLAB_APT_LOCK_WAIT:-600}
dpkg_locked() {  # dpkg takes an fcntl write lock on it (lockf here; flock would not see it)
  as_root python3 -c 'import fcntl, sys
try:
    f = open(sys.argv[1], "a")
except OSError:
    sys.exit(1)
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(0)
sys.exit(1)' "$DPKG_LOCK" 2>/dev/null
}
apt_get() {
  local waited=0
  if dpkg_locked; then
    say "the dpkg lock ($DPKG_LOCK) is held (unattended-upgrades after the first boot?): waiting for it, at most ${APT_LOCK_WAIT} s"
    while dpkg_locked; do
      if [ "$waited" -ge "$APT_LOCK_WAIT" ]; then
        say "error: the dpkg lock is still held after ${APT_LOCK_WAIT} s; not run: apt-get $*"
        return 1
      fi
      sleep 1; waited=$((waited + 1))
    done
    say "the dpkg lock is free (after ${waited} s)"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@"
}

has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  has_gpu=1
  say "GPU: $(nvidia-smi -L | head -1)"
else
  say "no NVIDIA GPU found: TensorFlow runs on the CPU"
fi

# ---- Python
MODULES="tensorflow tensorboard grpc tensorflow_serving.apis jupyterlab matplotlib"
check_python() {  # the venv tflab installs: each module imports (an interrupted install is done again)
  "$1" -c "import ${MODULES// /, }" >/dev/null 2>&1
}
has_modules() {  # the user's interpreter: each module is installed (found, not imported: TensorFlow's import
  # alone takes seconds, and the lab's steps import it first thing, saying why when it fails)
  "$1" -c 'import importlib.util, sys
sys.exit(any(importlib.util.find_spec(name) is None for name in sys.argv[1:]))' $MODULES >/dev/null 2>&1
}
if [ -n "$WANT_PYTHON" ]; then
  if ! has_modules "$WANT_PYTHON"; then
    say "error: $WANT_PYTHON lacks one of: tensorflow tensorboard grpcio tensorflow-serving-api jupyterlab matplotlib"
    exit 3
  fi
  PY=$(command -v "$WANT_PYTHON" || echo "$WANT_PYTHON")
  say "using $PY (it has everything)"
else
  PY="$WORKDIR/venv/bin/python"
  if ! check_python "$PY"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then
      say "installing python3-venv"
      apt_get update -qq && apt_get install -y -qq python3-venv
    fi
    [ -x "$PY" ] || python3 -m venv "$WORKDIR/venv"
    tf="tensorflow"
    [ "$has_gpu" = 1 ] && tf="tensorflow[and-cuda]"
    say "installing $tf $PACKAGES into $WORKDIR/venv (a few minutes)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "$tf" $PACKAGES
  fi
  say "using $PY"
fi
echo "$PY" > "$WORKDIR/python"

# ---- Serving
# Docker is probed the way tflab will run it: as this user (docker-gpu), else through `sudo -n`
# (docker-gpu-sudo), never one way here and the other when serving.
serving=builtin
if [ "$has_gpu" = 1 ] && command -v docker >/dev/null 2>&1; then
  docker_kind=""
  if docker info >/dev/null 2>&1; then
    docker_kind=docker-gpu; docker_cmd="docker"
  elif command -v sudo >/dev/null 2>&1 && sudo -n docker info >/dev/null 2>&1; then
    docker_kind=docker-gpu-sudo; docker_cmd="sudo -n docker"
  else
    say "docker is installed but answers neither as $(id -un) nor through sudo -n: not used"
  fi
  if [ -n "$docker_kind" ]; then
    say "pulling tensorflow/serving:latest-gpu ($docker_cmd)"
    if $docker_cmd pull -q tensorflow/serving:latest-gpu; then serving=$docker_kind; fi
  fi
fi
if [ "$serving" = builtin ] && command -v tensorflow_model_server >/dev/null 2>&1; then
  serving=binary
fi
if [ "$serving" = builtin ] && command -v apt-cache >/dev/null 2>&1 && \
   apt-cache policy tensorflow-model-server 2>/dev/null | grep -q "Candidate: [0-9]"; then
  say "installing tensorflow-model-server (apt, CPU only)"
  if apt_get install -y -qq tensorflow-model-server; then serving=binary; fi
fi
if [ "$serving" = builtin ]; then
  say "no Docker with a GPU and no tensorflow_model_server: tflab's stand-in server will serve"
fi
echo "$serving" > "$WORKDIR/serving"
echo "$WANT" > "$MARK"
say "done $(date -u +%FT%TZ): serving with $serving"
