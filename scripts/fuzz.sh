#!/bin/sh
# Fuzzes proxyd's parsers: builds the cargo-fuzz targets in fuzz/ and runs each with libFuzzer
# for SECONDS (default 30), starting from its seed corpus fuzz/corpus/TARGET/ (and the
# dictionary fuzz/dict/TARGET.dict when there is one). Fails when any target crashes, panics,
# hangs or runs out of memory; the input that did it is left in fuzz/artifacts/TARGET/, and
# `cargo fuzz run TARGET fuzz/artifacts/TARGET/<file>` (with RUSTC_BOOTSTRAP=1) replays it.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]       all targets, or the ones named
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only flags to
# rustc; RUSTC_BOOTSTRAP=1 lets a stable toolchain take them. No sanitizer by default (the
# code is safe Rust: a panic is the finding); FUZZ_SANITIZER=address builds with ASan.
# Inputs the fuzzer finds go to a scratch directory, so the repository's corpus stays small.
# CI replays the seed corpus only (tests/fuzz_smoke.rs).
set -eu
cd "$(dirname "$0")/.."

seconds=${1:-30}
case $seconds in
'' | *[!0-9]*)
  echo "usage: $0 [SECONDS] [TARGET...]" >&2
  exit 2
  ;;
esac
[ $# -gt 0 ] && shift

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 2
fi

RUSTC_BOOTSTRAP=1
CARGO_INCREMENTAL=0
export RUSTC_BOOTSTRAP CARGO_INCREMENTAL
sanitizer=${FUZZ_SANITIZER:-none}

if [ $# -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do
    t=${f##*/}
    set -- "$@" "${t%.rs}"
  done
fi

echo "building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --fuzz-dir fuzz -s "$sanitizer"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM

failed=""
for t in "$@"; do
  mkdir -p "$scratch/$t"
  dict=""
  if [ -f "fuzz/dict/$t.dict" ]; then
    dict="-dict=fuzz/dict/$t.dict"
  fi
  echo "== $t: ${seconds}s"
  # New inputs go to the first corpus directory (the scratch one).
  if cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 ${dict:+"$dict"} \
    >"$scratch/$t.log" 2>&1; then
    grep -E '^Done [0-9]+ runs|^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" || true
  else
    echo "!! $t failed:"
    tail -n 60 "$scratch/$t.log"
    failed="$failed $t"
  fi
done

if [ -n "$failed" ]; then
  echo "fuzzing found crashes in:$failed (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "all fuzz targets ran ${seconds}s each without a crash"
