#!/bin/sh
# Installs what sparsityd needs and is missing: Debian packages for the build (and,
# with --test, for the tests), plus a Python venv with TensorFlow for the real-TF tests.
# Safe to run again: it only installs what is absent.
set -eu
cd "$(dirname "$0")/.."

build_pkgs="meson ninja-build pkg-config gcc libc6-dev protobuf-c-compiler libprotobuf-c-dev
libmicrohttpd-dev libjansson-dev libsqlite3-dev libuv1-dev libssl-dev"
# clang + libclang-rt-14-dev: libFuzzer for the fuzz targets (tests/fuzz, -Dfuzz=true)
test_pkgs="check protobuf-compiler valgrind python3 python3-venv python3-pip curl jq
clang libclang-rt-14-dev"

want="$build_pkgs"
[ "${1:-}" = "--test" ] && want="$want $test_pkgs"

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "deps: installing$missing"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
  # The venv is (re)filled whenever tests/py/requirements.txt changes; the stamp is its hash.
  want_sum=$(sha256sum tests/py/requirements.txt | cut -d' ' -f1)
  if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want_sum" ]; then
    echo "deps: filling .venv from tests/py/requirements.txt (TensorFlow is a test dependency only)"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r tests/py/requirements.txt
    echo "$want_sum" > .venv/.requirements.sha256
  fi
fi
