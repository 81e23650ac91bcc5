#!/bin/sh
# Long fuzzing runs: tests/fuzz/run.sh [TARGET|all] [SECONDS]
#
# Builds build-fuzz (clang, libFuzzer, ASan+UBSan) if it is missing, then runs each target
# for SECONDS (default 1800), one after the other, on a work corpus outside the repository:
# ${FUZZ_WORK:-/tmp/sparsityd-fuzz}/<target>/corpus, seeded from tests/fuzz/corpus/<target>
# and kept between runs (new inputs accumulate). Crash, leak, timeout and out-of-memory
# reproducers go to <work>/<target>/artifacts/, the libFuzzer output to
# <work>/<target>/fuzz-<time>.log. At the end: one summary line per target. Exits 1 if
# any target found a crash, leak, timeout or out-of-memory (or the fuzzer failed), 2 on
# a usage error.
#
# Environment: FUZZ_WORK (work directory), FUZZ_BUILD (build directory, default
# <repo>/build-fuzz), FUZZ_ARGS (extra libFuzzer flags, e.g. "-seed=1 -jobs=..."),
# UBSAN_OPTIONS / ASAN_OPTIONS (defaults make UBSan reports fatal).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
work=${FUZZ_WORK:-/tmp/sparsityd-fuzz}
all="fuzz_graph fuzz_pbtext fuzz_record fuzz_upload fuzz_http"

usage() {
  echo "usage: $0 [fuzz_graph|fuzz_pbtext|fuzz_record|fuzz_upload|fuzz_http|all] [SECONDS]" >&2
  exit 2
}

[ $# -le 2 ] || usage
case ${1:-all} in
  all) targets=$all ;;
  fuzz_graph|fuzz_pbtext|fuzz_record|fuzz_upload|fuzz_http) targets=$1 ;;
  graph|pbtext|record|upload|http) targets=fuzz_$1 ;;
  -h|--help) usage ;;
  *) echo "run: unknown target '$1'" >&2; usage ;;
esac
secs=${2:-1800}
case $secs in ''|*[!0-9]*) echo "run: SECONDS must be a number" >&2; usage ;; esac

max_len() {
  case $1 in
    fuzz_graph) echo 2097152 ;;
    fuzz_upload) echo 1048576 ;;
    fuzz_http) echo 65536 ;;
    *) echo 262144 ;;
  esac
}

# ---- build ----
if [ ! -f "$build/build.ninja" ]; then
  echo "run: configuring $build"
  CC=${FUZZ_CC:-clang} meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false -Dbuildtype=debug
fi
if ! grep -q 'tests/fuzz/fuzz_graph' "$build/build.ninja"; then
  echo "run: $build is not configured with -Dfuzz=true" >&2
  exit 2
fi
set --
for t in $targets; do
  set -- "$@" "tests/fuzz/$t"
done
ninja -C "$build" "$@"

: "${UBSAN_OPTIONS:=halt_on_error=1:print_stacktrace=1}"
export UBSAN_OPTIONS

# ---- run ----
summary=""
failed=0
for t in $targets; do
  dir=$work/$t
  mkdir -p "$dir/corpus" "$dir/artifacts"
  # Seeds are copied, never overwriting what earlier runs found.
  for f in "$root/tests/fuzz/corpus/$t"/*; do
    [ -e "$dir/corpus/$(basename "$f")" ] || cp "$f" "$dir/corpus/"
  done
  stamp=$dir/.started
  touch "$stamp"
  log=$dir/fuzz-$(date +%Y%m%d-%H%M%S).log
  echo "run: $t for ${secs}s: corpus $dir/corpus, log $log"
  rc=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  timeout --signal=INT --kill-after=60 $((secs + 300)) \
    "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$(max_len "$t")" -dict="$root/tests/fuzz/$t.dict" -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" ${FUZZ_ARGS:-} "$dir/corpus" >"$log" 2>&1 || rc=$?

  # Final stats when the run ended normally; the last status line otherwise (a crash
  # stops the run before the stats are printed).
  status=$(grep -E '^#[0-9]+[[:space:]].* cov: ' "$log" | tail -n 1 || true)
  field() { printf '%s\n' "$status" | sed -n "s/.* $1: \([0-9]*\).*/\1/p"; }
  execs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n 1)
  eps=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -n 1)
  [ -n "$execs" ] || execs=$(printf '%s\n' "$status" | sed -n 's/^#\([0-9]*\).*/\1/p')
  [ -n "$eps" ] || eps=$(field exec/s)
  cov=$(field cov)
  ft=$(field ft)
  corp=$(printf '%s\n' "$status" | sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p')
  count() { find "$dir/artifacts" -name "$1-*" -newer "$stamp" | wc -l; }
  crashes=$(count crash)
  leaks=$(count leak)
  timeouts=$(count timeout)
  ooms=$(count oom)
  verdict=ok
  if [ $((crashes + leaks + timeouts + ooms)) -gt 0 ]; then
    verdict="FOUND (see $dir/artifacts)"
    failed=1
  elif [ "$rc" -ne 0 ]; then
    verdict="FAILED (exit $rc, see $log)"
    failed=1
  fi
  fmt='%-12s execs %-10s exec/s %-6s cov %-6s ft %-7s corpus %-6s'
  fmt="$fmt crashes %s leaks %s timeouts %s ooms %s  %s"
  # shellcheck disable=SC2059 # the format is ours
  line=$(printf "$fmt" "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" \
    "$crashes" "$leaks" "$timeouts" "$ooms" "$verdict")
  summary="$summary$line
"
  echo "run: $line"
done

echo
echo "summary (${secs}s per target, work dir $work):"
printf '%s' "$summary"
exit "$failed"
