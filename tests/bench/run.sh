#!/bin/sh
# Builds the benchmark models and runs the benchmarks (figures, not pass/fail tests).
# usage: tests/bench/run.sh [WORKDIR]
set -eu
cd "$(dirname "$0")/../.."
./scripts/deps.sh --test
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
work=${1:-build/bench-models}
mkdir -p "$work"
models=$(.venv/bin/python tests/bench/make_models.py "$work" | tail -n 1)
echo "== bench_mask"
./build/tests/bench/bench_mask || echo "bench_mask: a target was missed (FAIL above)"
echo "== bench_insert"
# shellcheck disable=SC2086
./build/tests/bench/bench_insert $models || echo "bench_insert: a target was missed (FAIL above)"
echo "== bench_stages (prune/export vs cp and vs the TensorFlow way; BENCH_SKIP_LARGE=1 skips the 1.5 GB model)"
.venv/bin/python tests/bench/bench_stages.py "$work" ${BENCH_SKIP_LARGE:+--skip-large}
echo "== bench_daemon (HTTP: wrk GET /v1/jobs/{id} during a 1 GB upload, upload vs cp, RSS during a 1.5 GB upload; needs wrk)"; .venv/bin/python tests/bench/bench_daemon.py ${BENCH_SKIP_LARGE:+--skip-large} || echo "bench_daemon: a target was missed (FAIL above)"
echo "== bench_web (the dashboard in headless Chromium with 10,000 jobs: first render, transfer, events to the page)"
.venv/bin/python tests/bench/bench_web.py || echo "bench_web: a target was missed (FAIL above)"
echo "== bench_client and bench_amct (the Python package, pip-installed into .venv: client vs curl, create_prune_retrain_model vs CLI + import_meta_graph)"
.venv/bin/pip install -q .
.venv/bin/python tests/bench/bench_client.py || echo "bench_client: a target was missed (FAIL above)"
.venv/bin/python tests/bench/bench_amct.py || echo "bench_amct: a target was missed (FAIL above)"
