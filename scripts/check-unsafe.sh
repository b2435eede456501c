#!/usr/bin/env bash
# Checks the core's unsafe, lock-free code beyond the ordinary tests:
#  1. loom explores the interleavings of the ring's push/pop models;
#  2. Miri (nightly) runs the ring's unit and property tests, catching
#     undefined behaviour and data races under weak-memory emulation;
#     where the toolchain has no Miri, valgrind memcheck runs the threaded
#     ring tests instead.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== loom model of the ring"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test --release -q -p modeltap-core --lib ring::loom_tests

if ! cargo +nightly miri --version >/dev/null 2>&1; then
  rustup component add miri rust-src --toolchain nightly >/dev/null 2>&1 || true
fi
if cargo +nightly miri --version >/dev/null 2>&1; then
  echo "== Miri: ring unit and property tests"
  MIRIFLAGS="-Zmiri-disable-isolation" \
    cargo +nightly miri test -q -p modeltap-core --lib ring::tests
  MIRIFLAGS="-Zmiri-disable-isolation" \
    cargo +nightly miri test -q -p modeltap-core --test ring_props
else
  echo "== Miri is not available on this toolchain: valgrind memcheck over the ring tests"
  command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
  cargo test -q -p modeltap-core --lib --no-run
  bin=$(cargo test -q -p modeltap-core --lib --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("target", {}).get("kind") == ["lib"]:
        print(m["executable"])')
  valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite \
    "$bin" ring::tests --test-threads=1
fi
