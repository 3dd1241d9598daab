#!/usr/bin/env bash
# The two-friend lab on one machine.
#
#   deploy/lab.sh demo    build, start two agents, pair them, show both status
#                         tables, restart one, show they reconnect, stop
#   deploy/lab.sh up      build and start the two agents (paired), leave them running
#   deploy/lab.sh down    stop them and remove the lab directory
#
# The agents listen on 127.77.0.1 and 127.77.0.2 (all of 127/8 is loopback on
# Linux) with their state in $MXFED_LAB (default /tmp/mxfed-lab). Later stages
# of the lab add Postfix and dnsmasq; this one needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

LAB=${MXFED_LAB:-/tmp/mxfed-lab}
MXFED="$PWD/target/debug/mxfed"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as() { local who=$1; shift; "$MXFED" --config "$LAB/$who/mxfed.toml" "$@"; }

build() {
    step "building mxfed"
    cargo build --locked -q -p mxfed
}

start_agent() {
    local who=$1
    as "$who" agent >>"$LAB/$who/agent.log" 2>&1 &
    echo $! >"$LAB/$who/agent.pid"
    for _ in $(seq 100); do
        as "$who" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "agent $who did not start; see $LAB/$who/agent.log" >&2
    exit 1
}

stop_agent() {
    local who=$1 pidfile="$LAB/$1/agent.pid"
    [ -f "$pidfile" ] || return 0
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$pidfile"
}

wait_connected() {
    for _ in $(seq 300); do
        if as me status --json | grep -q '"connected": true' &&
            as friend status --json | grep -q '"connected": true'; then
            return 0
        fi
        sleep 0.1
    done
    echo "the agents did not connect; logs are in $LAB/*/agent.log" >&2
    exit 1
}

up() {
    down quiet
    build
    mkdir -p "$LAB"
    step "mxfed init for two friends: me (127.77.0.1) and friend (127.77.0.2)"
    local n=1
    for who in me friend; do
        mkdir -p "$LAB/$who"
        as "$who" init --name "$who" --mail-host "mail.$who.test" \
            --listen "127.77.0.$n:7787" --data-dir "$LAB/$who/data" \
            --postfix-config-dir "$LAB/$who/postfix" --control-socket "$LAB/$who/control.sock"
        n=$((n + 1))
    done
    step "starting both agents (logs in $LAB/*/agent.log)"
    start_agent me
    start_agent friend
    step "me: mxfed invite"
    token=$(as me invite --ttl 10m)
    echo "$token"
    step "friend: mxfed join TOKEN"
    as friend join "$token"
    wait_connected
}

demo() {
    up
    step "me: mxfed status"
    as me status
    step "friend: mxfed status"
    as friend status
    step "restarting both agents: they reconnect with no new token"
    stop_agent me
    stop_agent friend
    start_agent friend
    start_agent me
    wait_connected
    as me status
    step "friend: mxfed status --json"
    as friend status --json
    down
    step "demo finished"
}

down() {
    [ -d "$LAB" ] || return 0
    stop_agent me
    stop_agent friend
    rm -rf "$LAB"
    [ "${1:-}" = quiet ] || echo "lab removed"
}

case "${1:-}" in
    demo) demo ;;
    up) up; echo; echo "running; try: $MXFED --config $LAB/me/mxfed.toml status" ;;
    down) down ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
esac
