#!/bin/sh
# Installs what is missing, builds, and runs sparsityd with the given arguments
# (default: `--help`). Example: ./scripts/run.sh insert --model m.meta ...
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
if [ $# -eq 0 ]; then set -- --help; fi
exec ./build/daemon/sparsityd "$@"
