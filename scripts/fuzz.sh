#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for SECONDS (default
# 30), starting from the committed corpus in fuzz/corpus/<target>/ (read
# only: new inputs go to a scratch directory). Prints one line per target,
#   fuzz target=<name> execs=<n> crashes=<0|1> seconds=<s>
# and exits non-zero when a target crashed; the crashing input is left in
# fuzz/artifacts/<target>/ (add it to the corpus as a regression once fixed).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly compiler flags (-Z sanitizer); on a stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. cargo-fuzz itself is installed
# with `cargo install cargo-fuzz --locked` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(batch_decode reference_read profile_decode)
fi
case "$seconds" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Debug assertions (and so integer-overflow checks) on: an overflow is a
# bug the fuzzer should report, not a silent wrap.
build_flags=(--debug-assertions --fuzz-dir fuzz)
echo "== building ${targets[*]}"
for t in "${targets[@]}"; do
  cargo fuzz build "${build_flags[@]}" "$t" 2>&1 | grep -Ev '^\s*(Compiling|Finished)' || true
  test -x "fuzz/target/x86_64-unknown-linux-gnu/release/$t" ||
    { echo "fuzz target=$t execs=0 crashes=0 error=build-failed"; exit 1; }
done

status=0
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "fuzz/artifacts/$t"
  start=$(date +%s)
  set +e
  # -rss_limit_mb: an input that makes us allocate gigabytes is a crash too.
  cargo fuzz run "${build_flags[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$execs" ]; then
    # a crash ends the run before the final stats: the last progress line
    execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  crashes=0
  if [ $rc -ne 0 ]; then
    crashes=1
    status=1
    echo "---- $t failed (exit $rc); the end of its log:"
    tail -n 40 "$log"
    ls -1 "fuzz/artifacts/$t/" 2>/dev/null | sed 's/^/artifact: /'
  fi
  echo "fuzz target=$t execs=${execs:-0} crashes=$crashes seconds=$took"
  rm -rf "$scratch" "$log"
done
exit $status
