#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine: installs what is missing,
# builds three times (plain; AddressSanitizer + UndefinedBehaviorSanitizer; clang with
# libFuzzer), runs the unit suites under the sanitizers and under valgrind, a short run of
# every fuzz target, then the pytest suites (real TensorFlow, a real daemon). The Python
# tests import the package as users get it: `pip install .` into .venv, every run.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh --test
echo "== pip install . into .venv (the sparsityd package and binary the Python tests use)"
.venv/bin/pip install -q .

[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build

[ -f build-san/build.ninja ] || meson setup build-san -Db_sanitize=address,undefined \
  -Db_lundef=false -Dbuildtype=debug >/dev/null
ninja -C build-san
echo "== unit tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-san --suite unit --print-errorlogs

echo "== unit tests under valgrind"
meson test -C build --suite unit --print-errorlogs \
  --wrapper "valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect" \
  --timeout-multiplier 10

echo "== fuzz smoke runs (libFuzzer, clang, ASan + UBSan; tests/fuzz/run.sh runs them long)"
[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzz=true \
  -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug >/dev/null
meson test -C build-fuzz --suite fuzz --print-errorlogs

echo "== HTTP suites against the daemon built with ASan + UBSan (a report fails them)"
# meson's 'http' suite (tests/py/meson.build): the TensorFlow-free pytest files, run by
# .venv's Python against build-san's sparsityd. The big test model shrinks to 4 layers:
# under ASan its prune would outlast the tests' time windows.
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 SPARSITYD_TEST_BIG_LAYERS=4 \
  meson test -C build-san --suite http --print-errorlogs

echo "== real-TensorFlow tests"
SPARSITYD_BIN="$PWD/build/daemon/sparsityd" .venv/bin/python -m pytest tests/py -q -p no:cacheprovider "$@"
