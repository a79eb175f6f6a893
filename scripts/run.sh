#!/usr/bin/env bash
# `make run`: build the coordinator and serve it with wasmtime on 127.0.0.1:8055.
#
# With neither DIAL_ENDPOINT nor UMS_AGENT_ENDPOINT set, it also starts the
# built-in local DIAL world (a DIAL Core stand-in with an LLM and a GPA on
# 127.0.0.1:8080, a UMS agent stand-in on 127.0.0.1:8042), so it works with no
# accounts. With them set, the same command serves against real DIAL:
#   DIAL_ENDPOINT=https://core.example.com UMS_AGENT_ENDPOINT=http://ums:8042 make run
# Every configuration variable of the README set in the environment is passed on.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --runtime
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PORT="${PORT:-8055}"
WASM=target/wasm32-wasip2/release/mas_coordinator.wasm

echo "==> building the component"
cargo build -p mas-coordinator --release --target wasm32-wasip2

pids=()
cleanup() {
    trap - EXIT INT TERM
    [ "${#pids[@]}" -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
    echo
    echo "==> stopped"
}
trap cleanup EXIT INT TERM

wait_for() { # url what
    for _ in $(seq 1 100); do
        if curl -s -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    echo "error: $2 did not start at $1" >&2
    exit 1
}

if [ -z "${DIAL_ENDPOINT:-}" ] && [ -z "${UMS_AGENT_ENDPOINT:-}" ]; then
    echo "==> building and starting the local DIAL world"
    cargo build -p mas-world --release
    target/release/mas-world --core-addr 127.0.0.1:8080 --ums-addr 127.0.0.1:8042 &
    pids+=("$!")
    export DIAL_ENDPOINT=http://127.0.0.1:8080 UMS_AGENT_ENDPOINT=http://127.0.0.1:8042
    wait_for "$DIAL_ENDPOINT/_world/requests" "the DIAL Core stand-in"
    wait_for "$UMS_AGENT_ENDPOINT/health" "the UMS stand-in"
    world=1
else
    world=0
fi

# State is signed by default: without STATE_SECRET, a secret made once for
# this checkout (target/state-secret) is used, so conversations keep their
# memory across restarts of `make run`.
if [ -z "${STATE_SECRET:-}" ]; then
    if [ ! -s target/state-secret ]; then
        mkdir -p target
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > target/state-secret
    fi
    STATE_SECRET=$(cat target/state-secret)
    export STATE_SECRET
fi

env_args=()
for var in DIAL_ENDPOINT DEPLOYMENT_NAME UMS_AGENT_ENDPOINT GPA_DEPLOYMENT_NAME DIAL_API_VERSION \
    MAX_REQUEST_BYTES MAX_MESSAGES BACKUP_DEPLOYMENT_NAMES GPA_BACKUP_DEPLOYMENTS \
    UMS_AGENT_BACKUP_ENDPOINTS UPSTREAM_FIRST_BYTE_TIMEOUT_MS UPSTREAM_IDLE_TIMEOUT_MS \
    UPSTREAM_TOTAL_TIMEOUT_MS BREAKER_FAILURE_THRESHOLD BREAKER_WINDOW_MS BREAKER_OPEN_MS \
    BREAKER_MIN_CALLERS STATE_SECRET STATE_MAX_AGE_S HEALTH_TOKEN AGENTS \
    COORDINATION_MODE MAX_PLAN_ROUNDS MAX_SUBTASKS MAX_PARALLEL; do
    if [ -n "${!var:-}" ]; then env_args+=(--env "$var=${!var}"); fi
done
# Every agent of the registry: AGENT_<NAME>_<FIELD>.
while IFS='=' read -r var _; do
    env_args+=(--env "$var=${!var}")
done < <(env | grep -E '^AGENT_[A-Z][A-Z0-9_]*=' || true)

echo "==> starting the coordinator in wasmtime serve on 127.0.0.1:$PORT"
# Instances are reused (up to 1000 requests each) so the in-memory circuit
# breakers remember failures across requests; see README "Circuit breaker".
wasmtime serve -Scli --addr "127.0.0.1:$PORT" --max-instance-reuse-count 1000 "${env_args[@]}" "$WASM" &
pids+=("$!")
wait_for "http://127.0.0.1:$PORT/health" "the coordinator"

cat <<MSG

The coordinator is ready on http://127.0.0.1:$PORT (DIAL Core: $DIAL_ENDPOINT, UMS: $UMS_AGENT_ENDPOINT).
Try it:

  curl -N http://127.0.0.1:$PORT/openai/deployments/mas-coordinator/chat/completions \\
    -H 'Api-Key: local-test-key' -H 'Content-Type: application/json' \\
    -d '{"stream": true, "messages": [{"role": "user", "content": "Do we have Andrej Karpathy as a user?"}]}'

MSG
if [ "$world" = 1 ]; then
    cat <<MSG
This is the local DIAL world (deterministic stand-ins, see README "Local DIAL world").
To serve real DIAL instead: DIAL_ENDPOINT=https://your-core UMS_AGENT_ENDPOINT=http://your-ums:8042 make run
and register http://<this host>:$PORT/openai/deployments/mas-coordinator/chat/completions
as an application in DIAL Core's config.json (README "Register in DIAL Core").

MSG
fi
echo "Press Ctrl-C to stop."
wait
