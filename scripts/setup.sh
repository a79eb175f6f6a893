#!/usr/bin/env bash
# Installs what building and testing the coordinator needs, when it is missing:
# the wasm32-wasip2 Rust target, wasmtime-cli 48.0.8 (the WASI HTTP host used
# by the run command and the end-to-end tests), and a Python venv (.venv) with
# wasm-tools and the conformance-test clients. Safe to run repeatedly.
#   scripts/setup.sh            everything
#   scripts/setup.sh --runtime  only the Rust target and wasmtime (for `make run`)
set -euo pipefail
cd "$(dirname "$0")/.."

WASMTIME_VERSION=48.0.8
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

say() { printf '==> %s\n' "$*" >&2; }

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

if ! "$CARGO_BIN/wasmtime" --version 2>/dev/null | grep -q "wasmtime $WASMTIME_VERSION"; then
    say "installing wasmtime-cli $WASMTIME_VERSION (first time only; compiles for ~10-15 minutes)"
    cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked
fi

if [ "${1:-}" = "--runtime" ]; then
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    say "creating the Python venv .venv"
    python3 -m venv .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || [ tests/conformance/requirements.txt -nt "$stamp" ]; then
    say "installing wasm-tools and the conformance clients into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/conformance/requirements.txt
    touch "$stamp"
fi
