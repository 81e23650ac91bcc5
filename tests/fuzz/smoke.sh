#!/bin/sh
# The fuzz smoke test meson runs per target (suite 'fuzz'): a short, bounded libFuzzer run
# over the checked-in seed corpus plus a fresh work corpus in a temporary directory.
# Fails on any crash, leak, timeout or out-of-memory; the reproducer is kept in
# ARTIFACT_DIR. FUZZ_SMOKE_SECONDS overrides SECONDS.
#
# REGRESSIONS, when given and present, is run too: known crashers keep failing the test
# until they are fixed (then they move into the seed corpus).
#
# usage: smoke.sh BINARY SEED_CORPUS DICT MAX_LEN SECONDS ARTIFACT_DIR [REGRESSIONS]
set -eu
if [ $# -ne 6 ] && [ $# -ne 7 ]; then
  echo "usage: $0 BINARY SEED_CORPUS DICT MAX_LEN SECONDS ARTIFACT_DIR [REGRESSIONS]" >&2
  exit 2
fi
bin=$1 seeds=$2 dict=$3 max_len=$4 secs=${FUZZ_SMOKE_SECONDS:-$5} art=$6 reg=${7:-}
set -- "$seeds"
if [ -n "$reg" ] && [ -d "$reg" ]; then
  set -- "$@" "$reg"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sparsityd-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$art"

# UBSan only reports unless told to stop; a report must fail the run.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# libFuzzer's default -error_exitcode is 77, which meson reads as "skipped".
rc=0
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
  -dict="$dict" -error_exitcode=1 -print_final_stats=1 -artifact_prefix="$art/" \
  "$work" "$@" || rc=$?
[ "$rc" -ne 77 ] || rc=1
if [ "$rc" -ne 0 ]; then
  echo "smoke: $(basename "$bin") failed (exit $rc); reproducer(s) in $art:" >&2
  ls -l "$art" >&2 || true
fi
exit "$rc"
