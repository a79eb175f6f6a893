#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints on both targets, the
# release component builds, then every test: the fast native tier (unit, flow,
# properties, architecture, manifest, the local world) and the slow tier behind
# the `e2e` feature (component imports, end to end through wasmtime serve, the
# fault matrix, client conformance, load, `make run` itself).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> clippy (native, all targets)"
cargo clippy --workspace --all-targets --locked --features mas-coordinator/e2e -- -D warnings
echo "==> clippy (wasm32-wasip2 component, default and spin-kv builds)"
cargo clippy -p mas-coordinator --lib --target wasm32-wasip2 --locked -- -D warnings
cargo clippy -p mas-coordinator --lib --target wasm32-wasip2 --features spin-kv --locked -- -D warnings
echo "==> building the component (release, wasm32-wasip2) and its spin-kv variant"
cargo build -p mas-coordinator --release --target wasm32-wasip2 --locked
cargo build -p mas-coordinator --profile spin-kv --features spin-kv --target wasm32-wasip2 --locked
# tests/run_script.rs runs scripts/run.sh, which builds the world in release:
# built here, so that is a no-op inside the test.
echo "==> building the local DIAL world (release, for the run-script test)"
cargo build -p mas-world --release --locked
echo "==> cargo test --workspace (fast native tier and the e2e tier)"
cargo test --workspace --locked --features mas-coordinator/e2e
