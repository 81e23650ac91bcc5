#!/bin/sh
# Installs what is missing, builds, and runs sparsityd with the given arguments
# (default: `serve`, the daemon on 127.0.0.1:8080 with its data under ./var).
# Example: ./scripts/run.sh insert --model m.meta ...
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
if [ $# -eq 0 ]; then set -- serve; fi
exec ./build/daemon/sparsityd "$@"
