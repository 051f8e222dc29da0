#!/usr/bin/env bash
# The benchmark suite in one command: builds in release, runs every figure of BENCHMARKS.md
# (repeated, median and spread), the criterion micro-benchmarks, and draws the chart.
#
#   scripts/bench.sh                 # full run, ~8 min on 2 cores after the build; results in target/bench/
#                                    # (under $CARGO_TARGET_DIR if set)
#   scripts/bench.sh --smoke         # tiny version, well under a minute (CI keeps it working)
#   scripts/bench.sh --runs 3        # other arguments go to the runner (loadgen --help)
#
# Loopback only, ephemeral ports, temporary folders. Nothing fails on a timing: the exit code
# is non-zero only if a measurement could not be made (a message lost, a request refused).
# The bulk figure sends a real file (256 MiB; --smoke: 8 MiB) from a temporary folder: allow
# about three times that in free space there (the file, the received copy, the fsync reference).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
for a in "$@"; do [[ $a == --smoke ]] && smoke=1; done
target=${CARGO_TARGET_DIR:-target}
out=$target/bench
((smoke)) && out=$target/bench-smoke

cargo build --release --quiet -p directory -p peer -p bench --bins
# 10k simulated peers use only ~20 UDP sockets, but leave room anyway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$target/release/loadgen" --out "$out" "$@"

if ((smoke)); then
  # Keep the micro-benchmarks compiling and running: one quick pass, no statistics.
  cargo bench --quiet -p bench --bench micro -- --test >/dev/null
else
  cargo bench --quiet -p bench --bench micro -- --noplot >"$out/micro.txt" 2>&1 ||
    { tail -20 "$out/micro.txt" >&2; echo "bench.sh: micro-benchmarks failed" >&2; exit 1; }
  grep -E '^(codec|store)/|time:' "$out/micro.txt" || true
fi

if command -v python3 >/dev/null && python3 -c 'import matplotlib' 2>/dev/null; then
  python3 bench/plot.py "$out"
else
  echo "bench.sh: no python3 with matplotlib (pip install matplotlib); skipping the chart" >&2
fi
echo "results: $out/results.md, $out/results.json, $out/presence.csv, $out/presence.png"
