#!/usr/bin/env bash
# Runs the README's curl walkthrough verbatim against a real daemon.
#
# Extracts the ```sh blocks between <!-- curl-walkthrough:begin --> and
# <!-- curl-walkthrough:end --> from README.md (or, with a warning, from
# docs/curl-walkthrough.md when README.md lacks the markers), prepares the inputs the
# walkthrough names (train.meta and infer.meta: a small model made with the test venv's
# TensorFlow), starts `sparsityd serve` on a free loopback port with a fresh data
# directory, runs the blocks with `bash -euo pipefail` in a scratch directory with
# SPARSITYD_URL exported, checks what they left behind, and stops the daemon (SIGTERM:
# it must exit 0).
#
# Env: SPARSITYD_BIN (default build/daemon/sparsityd), PYTHON (a python with tensorflow;
# default .venv/bin/python, then /work/venv/bin/python, then python3), KEEP=1 keeps the
# scratch directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${SPARSITYD_BIN:-$repo/build/daemon/sparsityd}
if [ -z "${PYTHON:-}" ]; then
  for p in "$repo/.venv/bin/python" /work/venv/bin/python; do
    if [ -x "$p" ]; then PYTHON=$p; break; fi
  done
fi
PYTHON=${PYTHON:-python3}

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "curl_walkthrough: $tool is required" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "curl_walkthrough: no binary at $bin" >&2; exit 1; }

begin='<!-- curl-walkthrough:begin -->'
end='<!-- curl-walkthrough:end -->'
src=$repo/README.md
if ! grep -qF "$begin" "$src" || ! grep -qF "$end" "$src"; then
  echo "curl_walkthrough: WARNING: README.md has no curl-walkthrough markers;" \
       "using docs/curl-walkthrough.md" >&2
  src=$repo/docs/curl-walkthrough.md
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sd-curl.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "curl_walkthrough: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The sh blocks between the markers, in order, as one script.
awk -v b="$begin" -v e="$end" '
  index($0, b) { on = 1; next }
  index($0, e) { on = 0; next }
  on && /^```sh[[:space:]]*$/ { code = 1; n++; next }
  on && code && /^```[[:space:]]*$/ { code = 0; print ""; next }
  on && code { print }
  END { if (n == 0) exit 1 }
' "$src" > "$work/walkthrough.sh" || {
  echo "curl_walkthrough: no \`\`\`sh blocks between the markers in $src" >&2; exit 1; }
echo "curl_walkthrough: $(grep -c '' "$work/walkthrough.sh") lines of sh from ${src#$repo/}"

# Inputs: the small test model (input x, output logits), training and inference builds.
mkdir -p "$work/run"
PYTHONPATH="$repo/tests/py${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2 \
  "$PYTHON" - "$work/run" <<'EOF'
import os, shutil, sys
import models
out = sys.argv[1]
for mode, name in (("train", "train.meta"), ("infer", "infer.meta")):
    b = models.build_small("resource", mode)
    p = models.write_model(b, os.path.join(out, "_" + mode), "meta")
    shutil.copy(p, os.path.join(out, name))
    shutil.rmtree(os.path.join(out, "_" + mode))
EOF

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SPARSITYD_URL="http://127.0.0.1:$port"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/var" >"$work/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
  if curl -sf "$SPARSITYD_URL/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.log" >&2; echo "daemon exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$SPARSITYD_URL/readyz" >/dev/null || { cat "$work/daemon.log" >&2; exit 1; }

# Run it verbatim; python3 is the venv's.
venv_bin=$(dirname "$PYTHON")
(cd "$work/run" && PATH="$venv_bin:$PATH" TF_CPP_MIN_LOG_LEVEL=2 \
  bash -euo pipefail "$work/walkthrough.sh") || {
  rc=$?
  echo "curl_walkthrough: the walkthrough failed (exit $rc); daemon log:" >&2
  tail -n 50 "$work/daemon.log" >&2
  exit 1
}

# What it must have left behind.
cd "$work/run"
for f in train_sparse.meta train.record.txt infer_sparse.meta frozen.pb model_2of4.pb job.json; do
  [ -s "$f" ] || { echo "curl_walkthrough: $f missing or empty" >&2; exit 1; }
done
jq -e '.stage == "check" and .state == "succeeded"' job.json >/dev/null
jq -e '[.result.layers[] | select(.reason == null)] | length > 0' job.json >/dev/null
jq -e '[.result.layers[] | select(.reason == null) | .is_2of4] | all' job.json >/dev/null
n=$(curl -sS "$SPARSITYD_URL/v1/jobs?state=succeeded" | jq '.jobs | length')
[ "$n" -eq 4 ] || { echo "curl_walkthrough: expected 4 succeeded jobs, got $n" >&2; exit 1; }

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || { echo "curl_walkthrough: daemon exited $rc after SIGTERM" >&2; exit 1; }
echo "curl_walkthrough: ok"
