#!/usr/bin/env bash
# Prepare a lab host for tflab, idempotently: a Python with TensorFlow, TensorBoard, JupyterLab,
# grpcio and tensorflow-serving-api, and a way to serve models. Logged to WORKDIR/bootstrap.log.
#
#   bootstrap.sh WORKDIR [PYTHON]
#
# PYTHON: an interpreter that already has everything (it is checked, nothing is installed), else a
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

has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  has_gpu=1
  say "GPU: $(nvidia-smi -L | head -1)"
else
  say "no NVIDIA GPU found: TensorFlow runs on the CPU"
fi

# ---- Python
check_python() {
  "$1" -c "import tensorflow, tensorboard, grpc, tensorflow_serving.apis, jupyterlab, matplotlib" >/dev/null 2>&1
}
if [ -n "$WANT_PYTHON" ]; then
  if ! check_python "$WANT_PYTHON"; then
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
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
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
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tensorflow-model-server; then serving=binary; fi
fi
if [ "$serving" = builtin ]; then
  say "no Docker with a GPU and no tensorflow_model_server: tflab's stand-in server will serve"
fi
echo "$serving" > "$WORKDIR/serving"
echo "$WANT" > "$MARK"
say "done $(date -u +%FT%TZ): serving with $serving"
