#!/usr/bin/env bash
# Install tflab into ./.venv on a fresh Debian/Ubuntu machine (Python 3.10+).
#   scripts/install.sh          tflab and everything the lab needs
#   scripts/install.sh --test   the same plus the test needs (pytest, moto, an OpenSSH server, Chromium)
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "install.sh: need root (or sudo) for: $*" >&2; return 1; fi
}
apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || { echo "install.sh: no apt-get; install $* by hand" >&2; return 1; }
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "install.sh: tflab needs Python 3.10 or newer ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${ver}-venv" || apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi

extras=""
[ "$want_test" = 1 ] && extras="[test]"
# Quiet unless something goes wrong; the first install downloads TensorFlow (~600 MB).
.venv/bin/python -m pip install --disable-pip-version-check -q -e ".${extras}" 2>&1 \
  | grep -v -E "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import tflab, tensorflow_serving, grpc" || { echo "install.sh: the install failed" >&2; exit 1; }

# The tests run a real sshd, and tunnels through the system's ssh client (and the paramiko fallback).
if [ "$want_test" = 1 ] && { [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null; }; then
  apt_install openssh-server openssh-client
fi
# tests/browser drives Debian's Chromium through Playwright (pip); Playwright's own browser download is not used.
if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null; then
  apt_install chromium
fi
# tests/cloudbox (the EC2 in a box) boots each instance as a systemd-nspawn container over a debootstrap image.
if [ "$want_test" = 1 ] && { ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; }; then
  apt_install systemd-container debootstrap iproute2
fi
# tests/users.py gives the test users (two loopback "machines") a system Python of the venv's version:
# another user cannot enter a pyenv or a venv base under /root.
if [ "$want_test" = 1 ]; then
  ver=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  [ -x "/usr/bin/python$ver" ] || [ -x "/usr/local/bin/python$ver" ] || apt_install "python$ver" || true
fi
echo "tflab installed in $(pwd)/.venv (run: .venv/bin/tflab --help)" >&2
