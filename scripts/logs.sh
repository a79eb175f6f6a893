#!/usr/bin/env bash
# `make logs`: the coordinator's JSON log lines, out of wasmtime serve's output.
#
#   scripts/logs.sh [-f|--follow] [FILE|-] [KEY=VALUE...]
#
# Reads FILE (default: target/run/coordinator.log, written by `make run`; under
# $LOG_DIR when that is set), or standard input with `-`, e.g.
#   wasmtime serve ... 2>&1 | scripts/logs.sh - level=error
# wasmtime prefixes every line the component writes with `stderr [N] :: `
# (N: the instance); the prefix is stripped and the JSON lines are printed to
# standard output, one per line (pipe them into jq if you like). Every
# KEY=VALUE keeps only the lines whose field KEY has exactly that value (a
# string or a number): event=request, level=error, trace_id=4bf92f35...,
# status=502, agent=UMS. Other lines (wasmtime's own messages, a component
# panic) go to standard error unchanged, so they are seen but never break a jq
# pipe. With --follow it keeps reading as lines are added, from the start of
# the file, until Ctrl-C.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
log_dir="${LOG_DIR:-target/run}"
case "$log_dir" in /*) ;; *) log_dir="$root/$log_dir" ;; esac

usage() { sed -n '4p' "$0" | sed 's/^# *//'; }

follow=0
file="$log_dir/coordinator.log"
filters=()
while [ $# -gt 0 ]; do
    case "$1" in
        -f | --follow) follow=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        -) file=- ;;
        *=*) filters+=("$1") ;;
        -*)
            echo "unknown option $1; usage:" >&2
            usage >&2
            exit 2
            ;;
        *) file="$1" ;;
    esac
    shift
done

# Whether the JSON line has every KEY=VALUE. The coordinator writes compact
# JSON (no spaces), so a field is `"KEY":"VALUE"` or `"KEY":VALUE` followed by
# `,` or `}`. Everything is matched literally (quoted in the patterns).
matches() {
    local filter key value
    for filter in "${filters[@]}"; do
        key="${filter%%=*}"
        value="${filter#*=}"
        case "$1" in
            *"\"$key\":\"$value\""* | *"\"$key\":$value,"* | *"\"$key\":$value}"*) ;;
            *) return 1 ;;
        esac
    done
}

prefix='^std(out|err) \[[0-9]+\] :: (.*)$'
filter_lines() {
    local line json
    while IFS= read -r line || [ -n "$line" ]; do
        json="$line"
        if [[ "$line" =~ $prefix ]]; then
            json="${BASH_REMATCH[2]}"
        fi
        if [[ "$json" == "{"* ]]; then
            if matches "$json"; then printf '%s\n' "$json"; fi
        else
            printf '%s\n' "$line" >&2
        fi
    done
}

if [ "$file" = - ]; then
    filter_lines
    exit 0
fi
if [ "$follow" = 0 ]; then
    if [ ! -e "$file" ]; then
        echo "no log at $file: start the coordinator with \`make run\` (or name a file)" >&2
        exit 1
    fi
    filter_lines < "$file"
    exit 0
fi

if [ ! -e "$file" ]; then
    echo "waiting for $file (start the coordinator with \`make run\`)" >&2
fi
# tail runs beside this shell; Ctrl-C stops it and ends with status 0 (following
# has no other end), so `make logs` prints no error.
exec 3< <(tail -n +1 -F "$file" 2>/dev/null)
tail_pid=$!
trap 'kill "$tail_pid" 2>/dev/null; exit 0' INT TERM HUP
filter_lines <&3
