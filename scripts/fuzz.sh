#!/usr/bin/env bash
# `make fuzz`: the property tests with fresh seeds and more cases, for
# exploring; `make test` runs them with one fixed seed, so that its failures
# replay anywhere. Each run prints its seed; a failure prints the command that
# replays it. FUZZ_RUNS (default 3) runs; FUZZ_CASES, when set, is every
# property's case count (else each property's own).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/lib/libonnxruntime.so.1.31.1}"
export ORT_DYLIB_PATH
runs="${FUZZ_RUNS:-3}"
if [ -n "${FUZZ_CASES:-}" ]; then
  export PROPTEST_CASES="$FUZZ_CASES"
fi
for i in $(seq 1 "$runs"); do
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  echo "== fuzz run $i of $runs: PROPTEST_RNG_SEED=$seed ${PROPTEST_CASES:+PROPTEST_CASES=$PROPTEST_CASES}"
  PROPTEST_RNG_SEED="$seed" cargo test -q --test properties
  PROPTEST_RNG_SEED="$seed" cargo test -q --lib preprocess::email
done
