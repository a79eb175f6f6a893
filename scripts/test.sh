#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints on both targets, the
# release component build, then every test (unit, native flow, component
# imports, manifest, end-to-end through wasmtime serve, client conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> clippy (native, all targets)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> clippy (wasm32-wasip2 component, default and spin-kv builds)"
cargo clippy -p mas-coordinator --lib --target wasm32-wasip2 --locked -- -D warnings
cargo clippy -p mas-coordinator --lib --target wasm32-wasip2 --features spin-kv --locked -- -D warnings
echo "==> building the component (release, wasm32-wasip2) and its spin-kv variant"
cargo build -p mas-coordinator --release --target wasm32-wasip2 --locked
cargo build -p mas-coordinator --profile spin-kv --features spin-kv --target wasm32-wasip2 --locked
echo "==> cargo test --workspace"
cargo test --workspace --locked
