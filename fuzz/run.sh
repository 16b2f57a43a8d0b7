#!/usr/bin/env bash
# Runs every fuzz target, one after the other, from freshly written seed corpora, and prints
# the executions of each. See RELIABILITY.md ("Fuzzing").
#
#   fuzz/run.sh [SECONDS] [TARGET...]   SECONDS per target (default 60); all targets by default
#   RUNS=10000000 fuzz/run.sh 0         a number of executions per target instead of a time
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); the workspace itself
# never does. Builds with debug assertions (integer overflow is a panic, as in tests) and
# without a sanitizer: the crates forbid `unsafe`, a panic is what the targets look for, and
# AddressSanitizer would halve the executions. One libFuzzer process at a time (no -jobs or
# -fork: its default).
# The corpus grows in fuzz/corpus/<target>; a crash is saved in fuzz/artifacts/<target>/ and
# stops the script with its reproduction command.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(phoenix_v1_json phoenix_v2_json phoenix_v2_binary pubsub_frame redis_envelope
    redis_parts tracker_replication macro_args)
fi
runs="${RUNS:-0}"
build=(-O -a -s none)

cargo +nightly fuzz build "${build[@]}"
bin_dir="target/x86_64-unknown-linux-gnu/release"
# Without a sanitizer libFuzzer warns that some of its hooks are missing: expected here.
SEEDS_DIR=seeds "$bin_dir/write_seeds" 2>&1 >/dev/null | { grep -v '^WARNING: Failed to find function' || true; } >&2

summary=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log="artifacts/$target/last-run.log"
  limit=(-max_total_time="$seconds")
  [ "$runs" -gt 0 ] && limit=(-runs="$runs")
  echo "==> $target (${limit[*]})"
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run "${build[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    "${limit[@]}" -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" >"$log" 2>&1
  status=$?
  set -e
  elapsed=$(($(date +%s) - start))
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  per_second=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  line="$target: ${execs:-?} executions in ${elapsed}s (${per_second:-?}/s), corpus $corpus"
  if [ "$status" -ne 0 ]; then
    echo "$line: CRASH (exit $status), see $log"
    grep -E '^(thread|panicked|==[0-9]+==|SUMMARY)|Test unit written' "$log" | head -5 || true
    echo "reproduce: cargo +nightly fuzz run ${build[*]} $target artifacts/$target/<crash file>"
    exit "$status"
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzzing: ${#summary[@]} targets, no crash"
printf '  %s\n' "${summary[@]}"
