#!/usr/bin/env bash
# `make run`: build the coordinator and serve it with wasmtime on 127.0.0.1:8055.
#
# With neither DIAL_ENDPOINT nor UMS_AGENT_ENDPOINT set, it also starts the
# built-in local DIAL world (a DIAL Core stand-in with an LLM and a GPA on
# 127.0.0.1:8080, a UMS agent stand-in on 127.0.0.1:8042 and a backup UMS on
# 127.0.0.1:8043), so it works with no accounts. The world's Core also runs two
# application instances of this coordinator, hr-assistant and travel-assistant,
# each with its own properties (agents, modes), forwarded to the one running
# component as DIAL Core forwards an application type's instances. With them
# set, the same command serves against real DIAL:
#   DIAL_ENDPOINT=https://core.example.com UMS_AGENT_ENDPOINT=http://ums:8042 make run
# Every configuration variable of the README set in the environment is passed on.
#
# Options (environment variables):
#   HOST=127.0.0.1   IP address the coordinator listens on; HOST=0.0.0.0 lets a
#                    DIAL Core in Docker or on another host reach it (the world
#                    always listens on 127.0.0.1 only)
#   PORT=8055        the coordinator's port
#   WORLD_CORE_PORT=8080, WORLD_UMS_PORT=8042, WORLD_UMS_BACKUP_PORT=8043
#                    the local world's ports (only when it is started)
#   LOG_DIR=target/run  where coordinator.log and world.log go (`make logs`)
#   WASMTIME=...     the wasmtime binary (default: wasmtime from ~/.cargo/bin or PATH)
#
# Every port is checked before anything is built or started. "ready" is printed
# once our own wasmtime answers GET /health with the coordinator's body. If the
# world or wasmtime exits, the script says which and exits 1. Ctrl-C stops
# everything and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8055}"
WORLD_CORE_PORT="${WORLD_CORE_PORT:-8080}"
WORLD_UMS_PORT="${WORLD_UMS_PORT:-8042}"
WORLD_UMS_BACKUP_PORT="${WORLD_UMS_BACKUP_PORT:-8043}"
LOG_DIR="${LOG_DIR:-target/run}"
WASMTIME="${WASMTIME:-wasmtime}"
WASM=target/wasm32-wasip2/release/mas_coordinator.wasm
WORLD_BIN=target/release/mas-world
# Safety nets only: the world starts in well under a second, wasmtime compiles
# the component in about one (longer on a busy machine).
STARTUP_TIMEOUT_S=60

say() { printf '==> %s\n' "$*"; }
error() { printf 'error: %s\n' "$*" >&2; }

# wasmtime serve --addr takes an address, not a host name.
if ! [[ "$HOST" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$HOST" == *:* ]]; then
    error "HOST=$HOST is not an IP address: use e.g. HOST=127.0.0.1 (the default) or HOST=0.0.0.0 (every interface)"
    exit 2
fi

if [ -z "${DIAL_ENDPOINT:-}" ] && [ -z "${UMS_AGENT_ENDPOINT:-}" ]; then
    world=1
else
    world=0
fi

# `host:port` as wasmtime's --addr and URLs want it (IPv6 in brackets).
hostport() { case "$1" in *:*) printf '[%s]:%s' "$1" "$2" ;; *) printf '%s:%s' "$1" "$2" ;; esac; }

# Whether ports can be listened on. Checked by binding each one exactly as the
# servers will (same address, SO_REUSEADDR, listen): a bind also sees a
# listener on another address of this host that would clash with HOST=0.0.0.0,
# and a port left in TIME_WAIT by the previous run counts as free, as it is for
# the servers. Each socket is closed at once, so the check holds nothing; a
# program that takes a port between this check and the server's own bind makes
# that server exit, which is reported like any other exit. One python3 for all
# ports (its start-up is the cost). Without python3, a connect through bash's
# /dev/tcp is the fallback: it sees any listener that accepts on the probed
# address, though not one on another address of this host.
# Arguments: host port host port ...; prints one line per port: `0` (free),
# `1 REASON` (in use) or `2 REASON` (cannot be listened on for another reason).
probe_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$@" <<'PY'
import errno, socket, sys
args = sys.argv[1:]
for host, port in zip(args[::2], args[1::2]):
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, int(port), 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(1)
        print(0)
    except OSError as e:
        print(1 if e.errno == errno.EADDRINUSE else 2, e.strerror or e)
PY
    else
        local probe
        while [ $# -ge 2 ]; do
            probe="$1"
            case "$probe" in 0.0.0.0) probe=127.0.0.1 ;; ::) probe=::1 ;; esac
            if (exec 3<>"/dev/tcp/$probe/$2") 2>/dev/null; then
                echo "1 something accepts connections on it"
            else
                echo 0
            fi
            shift 2
        done
    fi
}

# Every port this run listens on, as "NAME VARIABLE HOST".
ports_needed() {
    echo "coordinator PORT $HOST"
    if [ "$world" = 1 ]; then
        echo "world-core WORLD_CORE_PORT 127.0.0.1"
        echo "world-ums WORLD_UMS_PORT 127.0.0.1"
        echo "world-ums-backup WORLD_UMS_BACKUP_PORT 127.0.0.1"
    fi
}

describe() { # name: what listens on that port, for messages
    case "$1" in
        coordinator) echo "the coordinator" ;;
        world-core) echo "the local world's DIAL Core stand-in" ;;
        world-ums) echo "the local world's UMS stand-in" ;;
        world-ums-backup) echo "the local world's backup UMS stand-in" ;;
    esac
}

# A free port to suggest instead of $2 on host $1: the next one up that this
# run does not need itself and that passes the same check.
suggest_port() { # host port
    local candidates=() p results i
    for p in $(seq $(($2 + 1)) $(($2 + 20))); do
        [ "$p" -le 65535 ] || break
        case " ${needed_ports[*]} " in *" $p "*) continue ;; esac
        candidates+=("$1" "$p")
    done
    [ "${#candidates[@]}" -gt 0 ] || return 0
    mapfile -t results < <(probe_ports "${candidates[@]}")
    for i in "${!results[@]}"; do
        if [ "${results[$i]}" = 0 ]; then
            echo "${candidates[$((2 * i + 1))]}"
            return 0
        fi
    done
}

# Exits 1 (2 for a malformed port) naming the first port that cannot be used,
# with how to pick another.
check_ports() {
    local port_names=() vars=() hosts=() probe_args=() results=()
    local name var host port i status reason free
    needed_ports=()
    while read -r name var host; do
        port="${!var}"
        if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
            error "$var=$port is not a port number (1-65535)"
            exit 2
        fi
        port_names+=("$name")
        vars+=("$var")
        hosts+=("$host")
        probe_args+=("$host" "$port")
        needed_ports+=("$port")
    done < <(ports_needed)
    # Read whole before any message, so python3 never writes into a closed pipe.
    mapfile -t results < <(probe_ports "${probe_args[@]}")
    if [ "${#results[@]}" != "${#port_names[@]}" ]; then
        error "the port check failed"
        exit 1
    fi
    for i in "${!results[@]}"; do
        read -r status reason <<<"${results[$i]}"
        [ "$status" = 0 ] && continue
        name="${port_names[$i]}" var="${vars[$i]}" host="${hosts[$i]}" port="${needed_ports[$i]}"
        if [ "$status" = 1 ]; then
            error "port $port ($var, for $(describe "$name")) is already in use on $host: $reason."
        else
            error "cannot listen on $(hostport "$host" "$port") ($var, for $(describe "$name")): $reason."
            if [ "$name" = coordinator ]; then
                echo "Check HOST=$HOST (an address of this machine, or 0.0.0.0) and PORT=$PORT." >&2
                exit 1
            fi
        fi
        free=$(suggest_port "$host" "$port")
        if [ -n "$free" ]; then
            echo "Stop what listens there, or pick another port, e.g.: $var=$free make run" >&2
        else
            echo "Stop what listens there, or pick another port with $var=<port>." >&2
        fi
        exit 1
    done
}

check_ports

scripts/setup.sh --runtime

if [ -e "$WASM" ]; then
    say "building the component"
else
    say "building the component (the first build takes about a minute)"
fi
cargo build -p mas-coordinator --release --target wasm32-wasip2
if [ "$world" = 1 ]; then
    if [ -e "$WORLD_BIN" ]; then
        say "building the local DIAL world"
    else
        say "building the local DIAL world (the first build takes about half a minute)"
    fi
    cargo build -p mas-world --release
fi

# State is signed by default: without STATE_SECRET, a secret made once for
# this checkout (target/state-secret) is used, so conversations keep their
# memory across restarts of `make run`. Written to a temporary file first, so
# two runs starting at once never read half a secret.
if [ -z "${STATE_SECRET:-}" ]; then
    if [ ! -s target/state-secret ]; then
        mkdir -p target
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "target/state-secret.$$"
        mv "target/state-secret.$$" target/state-secret
    fi
    STATE_SECRET=$(cat target/state-secret)
    export STATE_SECRET
fi

# The builds took a while: check again that nothing took a port meanwhile.
check_ports

mkdir -p "$LOG_DIR"
coordinator_log="$LOG_DIR/coordinator.log"
world_log="$LOG_DIR/world.log"

# The children, by name; their pids in the same order.
names=()
pids=()
logs=()

stop_children() {
    local pid i alive
    # (A child that already exited, e.g. on the terminal's SIGINT, is skipped.)
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    # Both stop at once on SIGTERM; SIGKILL is the safety net.
    for i in $(seq 1 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}

# While stopping, further signals are ignored (a second Ctrl-C must not cut
# the clean-up short; it takes at most 5 s).
on_signal() { # Ctrl-C (or SIGTERM, SIGHUP): a requested stop is a success
    trap '' INT TERM HUP
    trap - EXIT
    stop_children
    echo
    say "stopped"
    exit 0
}
on_exit() { # any other way out (a failed build, a child that exited, an error)
    local status=$?
    trap '' INT TERM HUP
    trap - EXIT
    if [ "${#pids[@]}" -gt 0 ]; then
        stop_children
        say "stopped"
    fi
    exit "$status"
}
trap on_signal INT TERM HUP
trap on_exit EXIT

start() { # name program log command...: starts a child with its output in log
    local name="$1" program="$2" log="$3"
    shift 3
    "$@" >"$log" 2>&1 &
    names+=("$name ($program, pid $!)")
    pids+=("$!")
    logs+=("$log")
}

# When a child is killed by a signal, bash itself reports it on stderr at its
# next chance ("line N: PID Killed ..."), which check_children says better;
# the polling loops' sleeps are where that report lands, so it is dropped there.
quiet_sleep() { { sleep "$1"; } 2>/dev/null; }

# Exits 1 naming the first child that is no longer running, with its status
# and the end of its log.
check_children() {
    local i status how
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            status=0
            wait "${pids[$i]}" || status=$?
            if [ "$status" -gt 128 ]; then
                how="was killed by SIG$(kill -l $((status - 128)))"
            else
                how="exited with status $status"
            fi
            error "${names[$i]} $how. The end of ${logs[$i]}:"
            tail -n 20 "${logs[$i]}" | sed 's/^/    /' >&2
            # That child is gone; stop the others.
            unset "pids[$i]"
            exit 1
        fi
    done
}

# Polls until `ready` succeeds, a child exits (exit 1) or the timeout (exit 1).
wait_ready() { # what log ready-command...
    local what="$1" log="$2"
    shift 2
    local deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    while :; do
        check_children
        if "$@"; then
            # The answer may have come from a server that was there before
            # ours; ours is still running, so it holds the port itself.
            check_children
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            error "$what did not become ready within ${STARTUP_TIMEOUT_S} s. The end of $log:"
            tail -n 20 "$log" | sed 's/^/    /' >&2
            exit 1
        fi
        quiet_sleep 0.1
    done
}

# The world prints where it listens once it has bound every port, and answers
# UMS's own health body.
world_ready() {
    grep -qF "DIAL Core stand-in on $DIAL_ENDPOINT" "$world_log" || return 1
    grep -qF "UMS stand-in on $UMS_AGENT_ENDPOINT" "$world_log" || return 1
    local ums core
    ums=$(curl -s --max-time 2 "$UMS_AGENT_ENDPOINT/health") || return 1
    core=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$DIAL_ENDPOINT/_world/faults") || return 1
    [[ "$ums" == *'"conversation_manager_initialized"'* && "$core" == 200 ]]
}

# wasmtime prints "Serving HTTP on ..." once it has bound the port (and so owns
# it); then /health must be the coordinator's own report. A misconfigured
# coordinator answers 500 with the error, which is reported at once.
coordinator_ready() {
    grep -q '^Serving HTTP on ' "$coordinator_log" || return 1
    local body
    body=$(curl -s --max-time 2 "$probe_url/health") || return 1
    case "$body" in
        *'"breaker_store"'*) return 0 ;;
        *'"status":"misconfigured"'*)
            error "the coordinator is misconfigured: $body"
            exit 1
            ;;
    esac
    return 1
}

# The address to probe and to show: a wildcard HOST is reached on loopback.
case "$HOST" in
    0.0.0.0) local_host=127.0.0.1 ;;
    ::) local_host=::1 ;;
    *) local_host="$HOST" ;;
esac
probe_url="http://$(hostport "$local_host" "$PORT")"

# The application instances the world's Core forwards to our own coordinator
# (mas-world --apps; only configuration: the coordinator starts after the world).
write_world_apps() { # file
    local c="$probe_url/openai/deployments" gpa='{"name":"GPA","kind":"dial","deployment":"general-purpose-agent"}'
    cat >"$1" <<JSON
[
  {"name": "hr-assistant",
   "completion_endpoint": "$c/hr-assistant/chat/completions",
   "configuration_endpoint": "$c/hr-assistant/configuration",
   "properties": {"agents": [$gpa, {"name": "UMS", "kind": "ums", "endpoint": "http://127.0.0.1:$WORLD_UMS_PORT"}],
                  "plan_approval": "never"}},
  {"name": "travel-assistant",
   "completion_endpoint": "$c/travel-assistant/chat/completions",
   "configuration_endpoint": "$c/travel-assistant/configuration",
   "properties": {"agents": [$gpa, {"name": "RAG", "kind": "dial", "deployment": "rag-agent", "description": "Answers questions from the travel policy documents."}],
                  "coordination_mode": "route"}}
]
JSON
}

if [ "$world" = 1 ]; then
    world_apps="$LOG_DIR/world-apps.json"
    write_world_apps "$world_apps"
    say "starting the local DIAL world on 127.0.0.1:$WORLD_CORE_PORT (DIAL Core), 127.0.0.1:$WORLD_UMS_PORT (UMS) and 127.0.0.1:$WORLD_UMS_BACKUP_PORT (backup UMS)"
    export DIAL_ENDPOINT="http://127.0.0.1:$WORLD_CORE_PORT" UMS_AGENT_ENDPOINT="http://127.0.0.1:$WORLD_UMS_PORT"
    # The world's A2A weather agent joins GPA and UMS, unless AGENTS says otherwise.
    if [ -z "${AGENTS:-}" ]; then
        export AGENTS=GPA,UMS,WEATHER AGENT_WEATHER_KIND=a2a \
            AGENT_WEATHER_ENDPOINT="http://127.0.0.1:$WORLD_CORE_PORT/a2a/weather"
    fi
    start "the local DIAL world" mas-world "$world_log" "$WORLD_BIN" \
        --core-addr "127.0.0.1:$WORLD_CORE_PORT" --ums-addr "127.0.0.1:$WORLD_UMS_PORT" \
        --ums-backup-addr "127.0.0.1:$WORLD_UMS_BACKUP_PORT" --apps "$world_apps"
    wait_ready "the local DIAL world" "$world_log" world_ready
fi

env_args=()
for var in DIAL_ENDPOINT DEPLOYMENT_NAME UMS_AGENT_ENDPOINT GPA_DEPLOYMENT_NAME DIAL_API_VERSION \
    MAX_REQUEST_BYTES MAX_MESSAGES BACKUP_DEPLOYMENT_NAMES GPA_BACKUP_DEPLOYMENTS \
    UMS_AGENT_BACKUP_ENDPOINTS UPSTREAM_FIRST_BYTE_TIMEOUT_MS UPSTREAM_IDLE_TIMEOUT_MS \
    UPSTREAM_TOTAL_TIMEOUT_MS REQUEST_DEADLINE_MS HEARTBEAT_INTERVAL_MS BREAKER_FAILURE_THRESHOLD BREAKER_WINDOW_MS BREAKER_OPEN_MS \
    BREAKER_MIN_CALLERS STATE_SECRET STATE_SECRET_PREVIOUS ALLOW_UNSIGNED_STATE STATE_MAX_AGE_S HEALTH_TOKEN AGENTS \
    COORDINATION_MODE PLAN_APPROVAL MAX_PLAN_ROUNDS MAX_SUBTASKS MAX_PARALLEL CARD_TTL_S \
    COORDINATION_PROMPT SYNTHESIS_PROMPT ALLOWED_AGENT_HOSTS PUBLIC_URL LOG_LEVEL; do
    [ -n "${!var:-}" ] || continue
    case "$var" in
        # Secrets are inherited from this script's environment (`--env NAME`),
        # never written on wasmtime's command line, where `ps` shows them to
        # every local user.
        STATE_SECRET | STATE_SECRET_PREVIOUS | HEALTH_TOKEN) export "${var?}"; env_args+=(--env "$var") ;;
        *) env_args+=(--env "$var=${!var}") ;;
    esac
done
# Every agent of the registry: AGENT_<NAME>_<FIELD>.
while IFS='=' read -r var _; do
    env_args+=(--env "$var=${!var}")
done < <(env | grep -E '^AGENT_[A-Z][A-Z0-9_]*=' || true)

say "starting the coordinator in wasmtime serve on $(hostport "$HOST" "$PORT")"
# Instances are reused (up to 1000 requests each) so the in-memory circuit
# breakers remember failures across requests; see docs/deploying.md, "wasmtime serve".
start "the coordinator" "wasmtime serve" "$coordinator_log" "$WASMTIME" serve -Scli \
    --addr "$(hostport "$HOST" "$PORT")" --max-instance-reuse-count 1000 "${env_args[@]}" "$WASM"
wait_ready "the coordinator" "$coordinator_log" coordinator_ready

cat <<MSG

The coordinator is ready on $probe_url (DIAL Core: $DIAL_ENDPOINT, UMS: $UMS_AGENT_ENDPOINT).
MSG
if [ "$local_host" != "$HOST" ]; then
    echo "It listens on $(hostport "$HOST" "$PORT"): from DIAL Core in Docker or on another host, use http://<this host's address>:$PORT."
fi
cat <<MSG
Try it:

  curl -N $probe_url/openai/deployments/mas-coordinator/chat/completions \\
    -H 'Api-Key: local-test-key' -H 'Content-Type: application/json' \\
    -d '{"stream": true, "messages": [{"role": "user", "content": "Do we have Andrej Karpathy as a user?"}]}'

MSG
# `make logs` finds the logs under LOG_DIR too, when it is given the same one.
logs_command="make logs"
if [ "$LOG_DIR" != target/run ]; then logs_command="LOG_DIR=$LOG_DIR make logs"; fi
if [ "$world" = 1 ]; then
    cat <<MSG
This is the local DIAL world (deterministic stand-ins, see docs/testing.md, "Local DIAL world").
Two instances of this coordinator with their own agents and modes ($world_apps) are reachable through the world's DIAL Core: $DIAL_ENDPOINT/openai/deployments/hr-assistant/chat/completions and $DIAL_ENDPOINT/openai/deployments/travel-assistant/chat/completions
To serve real DIAL instead: DIAL_ENDPOINT=https://your-core UMS_AGENT_ENDPOINT=http://your-ums:8042 make run
and register http://<this host>:$PORT/openai/deployments/mas-coordinator/chat/completions
as an application in DIAL Core's config.json (docs/dial-core.md, "Register in DIAL Core").

MSG
    echo "Logs: $coordinator_log (the coordinator), $world_log (the world); follow the coordinator's with: $logs_command"
else
    echo "Logs: $coordinator_log; follow them with: $logs_command"
fi
echo "Press Ctrl-C to stop."

# Until Ctrl-C (the trap) or a child's exit. Polled: `wait -n` misses a child
# that exited while the message above was printed (bash files it away between
# commands, and `wait -n` then waits for the next one). On Ctrl-C the sleep
# ends and the trap runs before the next check.
while :; do
    check_children
    quiet_sleep 0.5
done
