#!/usr/bin/env bash
# Benchmarks: the coordinator's own cost (BENCHMARKS.md, bench/results.json).
#
#   scripts/bench.sh                 everything: ~7 minutes on 2 cores
#   scripts/bench.sh --quick         shorter measurement windows (~2 minutes)
#   scripts/bench.sh --no-variants   skip the run with instance reuse
#   scripts/bench.sh --no-micro      skip the criterion micro-benchmarks
#   scripts/bench.sh -- ARGS         pass ARGS on to mas-bench (e.g. --wasmtime-args "...")
#
# Steps: installs the wasm32-wasip2 target and wasmtime-cli 48.0.8 when missing
# (scripts/setup.sh --runtime),
# builds the release component and the host floor's two bench-only components
# (bench/floor, a workspace of its own, built into target/floor), runs the criterion micro-benchmarks
# (benches/hot_paths.rs), runs mas-bench once with `--max-instance-reuse-count 1000`
# (a variant for comparison, written under target/mas-bench/), then the main run
# with wasmtime's defaults, which writes bench/results.json and BENCHMARKS.md.
# The results file it replaces gives the "previous run" figures that BENCHMARKS.md
# shows beside the new ones (commit both files so the next run compares with it).
# It also runs gpa and ums on kept-alive and on new connections under each host:
# wasmtime serve, and `spin up` when a spin binary is there (on the PATH, or
# SPIN=/path/to/spin); without one the report says the Spin runs were skipped.
# The coordinator runs in its default COORDINATION_MODE (plan); every scenario's
# floor is checked byte for byte against the upstream requests the coordinator
# sends, and the two-agent scenario (two_agents) slows both agents in the world
# to show that independent agents cost the slower one, not the sum.
# Each run also measures the host floor under its own host and flags: `fixed`
# (one inbound exchange) and `relay` (the gpa scenario's GPA call forwarded to
# the world: one inbound and one outbound exchange), at 1 and 32 clients, and
# under `spin up` too when Spin is there (BENCHMARKS.md, "Host floor").
# Everything runs on 127.0.0.1 and stops by itself. Run it on an otherwise idle
# machine: other work on the cores skews every figure (the report says how busy
# the machine was).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

invocation="scripts/bench.sh${*:+ $*}"
quick=()
variants=1
micro=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=(--quick) ;;
        --no-variants) variants=0 ;;
        --no-micro) micro=0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done

# The wasm32-wasip2 target and wasmtime, installed the one way setup.sh does.
scripts/setup.sh --runtime
# $WASMTIME, when set, is the wasmtime to measure (as for the tests).
if [ -n "${WASMTIME:-}" ]; then extra=(--wasmtime "$WASMTIME" "${extra[@]}"); fi

say "building the release component and the benchmark tool"
cargo build --release --target wasm32-wasip2 -p mas-coordinator
cargo build --release -p mas-bench
say "building the host floor's components (bench/floor)"
cargo build --release --target wasm32-wasip2 --manifest-path bench/floor/Cargo.toml \
    --target-dir "${CARGO_TARGET_DIR:-target}/floor"
# With Spin available (spin on the PATH, or $SPIN), the same scenarios also run
# under `spin up` with the shipped spin.toml, which runs the spin-kv build.
if [ -n "${SPIN:-}" ] || command -v spin >/dev/null 2>&1; then
    say "spin found: building the spin-kv component for the spin up runs"
    cargo build --profile spin-kv --features spin-kv --target wasm32-wasip2 -p mas-coordinator
fi

if [ "$micro" = 1 ]; then
    say "micro-benchmarks: cargo bench --bench hot_paths"
    cargo bench --bench hot_paths
    say "allocations per upstream chunk: cargo bench --bench allocations"
    cargo bench --bench allocations
fi

compare=()
if [ "$variants" = 1 ]; then
    variant_out=target/mas-bench/results-reuse-1000.json
    say "end-to-end, variant: wasmtime serve --max-instance-reuse-count 1000"
    MAS_BENCH_COMMAND="$invocation (variant run)" \
        cargo run --release -p mas-bench -- "${quick[@]}" "${extra[@]}" \
        --wasmtime-args "--max-instance-reuse-count 1000" \
        --out "$variant_out" --no-markdown
    compare=(--compare "$variant_out")
fi

say "end-to-end, wasmtime defaults: bench/results.json and BENCHMARKS.md"
args=("${quick[@]}" "${extra[@]}" "${compare[@]}")
MAS_BENCH_COMMAND="$invocation (main run: cargo run --release -p mas-bench -- ${args[*]})" \
    cargo run --release -p mas-bench -- "${args[@]}"
say "done: BENCHMARKS.md, bench/results.json"
