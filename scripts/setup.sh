#!/usr/bin/env bash
# Installs what building and testing the coordinator needs, when it is missing:
# the wasm32-wasip2 Rust target, wasmtime-cli 48.0.8 (the WASI HTTP host used
# by the run command, the end-to-end tests and the benchmarks; with only the
# features serving needs, see below), and a Python venv (.venv) with
# wasm-tools, the conformance-test clients and the A2A SDK of the A2A test
# agent (tests/a2a/server.py). Safe to run repeatedly.
#   scripts/setup.sh            everything
#   scripts/setup.sh --runtime  only the Rust target and wasmtime (`make run`, `make bench`)
set -euo pipefail
cd "$(dirname "$0")/.."

WASMTIME_VERSION=48.0.8
# Only what serving the component needs (`wasmtime serve`, as `make run`, the
# e2e tests and the benchmarks use it). Measured on two cores: about 7.5
# minutes (14 CPU-minutes) instead of 10-14 (18 CPU-minutes) for the default
# features, and a 46 MB binary instead of 67 MB.
#   serve                  the `serve` command: wasi:http, the component model,
#                          -S cli, --env, --addr, --max-instance-reuse-count
#   run                    `serve` is built on the `run` command's shared code
#                          (wasmtime-cli compiles src/common.rs only with `run`)
#   component-model-async  48.0.8's serve.rs does not compile without it
#                          (it uses `futures` and the WASIp3 handler unconditionally)
#   cranelift              compiles the component to native code
#   pooling-allocator      serve's default allocator, and the -O pooling-* options
#   parallel-compilation   compiles the component's functions on every core
#                          (0.55 s instead of 0.9 s on two cores)
#   cache                  keeps the compiled component (~/.cache/wasmtime): a
#                          start takes 0.03 s instead of 0.6 s once it is cached;
#                          it adds 4 s to the install (zstd, a C library, builds
#                          beside the rest)
#   clap/default           `--help` and the usual messages for a mistyped option
# Left out, as nothing here uses them: winch, pulley, wasi-nn, wasi-tls,
# wasi-keyvalue, wasi-config, wat, threads, gc proposals, debugging, profiling,
# logging (WASMTIME_LOG) and the other commands (compile, wast, objdump,
# explore, wizer, ...). An existing wasmtime of the right version (with any
# features, e.g. a default install) is kept.
WASMTIME_FEATURES=serve,run,component-model-async,cranelift,pooling-allocator,parallel-compilation,cache,clap/default
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

say() { printf '==> %s\n' "$*" >&2; }

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

# $WASMTIME (as run.sh and the tests honour it) names the binary to use instead.
wasmtime="${WASMTIME:-$CARGO_BIN/wasmtime}"
if ! "$wasmtime" --version 2>/dev/null | grep -qE "^wasmtime ${WASMTIME_VERSION//./\\.}( |\$)"; then
    if [ -n "${WASMTIME:-}" ]; then
        echo "error: WASMTIME=$WASMTIME is not wasmtime $WASMTIME_VERSION; unset it to have it installed" >&2
        exit 1
    fi
    say "installing wasmtime-cli $WASMTIME_VERSION (first time only; compiles for about 7 minutes on two cores)"
    cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked \
        --no-default-features --features "$WASMTIME_FEATURES"
fi

if [ "${1:-}" = "--runtime" ]; then
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    say "creating the Python venv .venv"
    python3 -m venv .venv
fi
# One pip call for both lists, so that they resolve together.
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || [ tests/conformance/requirements.txt -nt "$stamp" ] \
    || [ tests/a2a/requirements.txt -nt "$stamp" ]; then
    say "installing wasm-tools, the conformance clients and the A2A SDK into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check \
        -r tests/conformance/requirements.txt -r tests/a2a/requirements.txt
    touch "$stamp"
fi

# The aidial-client snippet of docs/dial-core.md runs in a venv of its own (tests/readme.rs):
# aidial-client needs an older openai than the conformance clients above.
if [ ! -x .venv-aidial/bin/python ]; then
    say "creating the Python venv .venv-aidial (the aidial-client snippet of docs/dial-core.md)"
    python3 -m venv .venv-aidial
fi
stamp=.venv-aidial/.requirements-installed
if [ ! -f "$stamp" ] || [ tests/conformance/requirements-aidial.txt -nt "$stamp" ]; then
    say "installing aidial-client into .venv-aidial"
    .venv-aidial/bin/pip install --quiet --disable-pip-version-check -r tests/conformance/requirements-aidial.txt
    touch "$stamp"
fi
