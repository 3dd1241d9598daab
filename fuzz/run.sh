#!/bin/bash
# Runs fuzz targets for a number of executions each and prints libFuzzer's
# final stats (BENCHMARKS.md records them). Usage: fuzz/run.sh RUNS TARGET...
# Built without a sanitizer (MXFED_FUZZ_SANITIZER=address to add ASan): the
# crates fuzzed forbid `unsafe`, and ASan made policy_requests 8x slower
# (614 against 5,250 executions a second). libFuzzer still stops on a panic,
# a timeout, and an RSS over -rss_limit_mb (2 GB).
set -u
cd "$(dirname "$0")"
runs=$1; shift
for t in "$@"; do
  start=$(date +%s)
  cargo +nightly fuzz run -O -s "${MXFED_FUZZ_SANITIZER:-none}" "$t" -- -runs="$runs" -max_len=4096 -print_final_stats=1 2>&1 |
    grep -E '^(Done|stat::|==[0-9]+==ERROR|.*panicked)' | sed "s/^/$t: /"
  echo "$t: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
done
