#!/usr/bin/env bash
# haproxy.sh - a throwaway HAProxy (Debian 12 package) on 127.0.0.1 balancing round-robin over
# HTTP backends. Bodies stream both ways: HAProxy never spools to disk and, without
# "option http-buffer-request", forwards a request body as it arrives; no body size limit.
#
#   haproxy.sh start RUN_DIR BACKEND...   BACKEND = 127.0.0.1:PORT. Started again with other
#                                         backends, it restarts on the same port.
#   haproxy.sh stop|status RUN_DIR        (the contract is in lib.sh)
#
# Prints LB_URL LB_HOST LB_PORT LB_BACKENDS HAPROXY_SOCKET (admin socket: "disable server
# be/node1", "enable server be/node1", "show stat"). Log: RUN_DIR/haproxy.log.
#
# Environment (optional): HAPROXY_PORT (default: the previous port when free, else a free one),
# HAPROXY_HEALTH_PATH (e.g. /readyz: HTTP checks, any status below 500 is up; default TCP checks),
# HAPROXY_TIMEOUT (inactivity, 1h), HAPROXY_START_TIMEOUT (20 s), HAPROXY_NO_INSTALL=1.
set -euo pipefail
NAME=haproxy.sh
# shellcheck source=tests/services/lib.sh
. "$(dirname "$0")/lib.sh"
usage() { echo "usage: $0 start RUN_DIR BACKEND... | stop RUN_DIR | status RUN_DIR" >&2; exit 2; }

[ $# -ge 2 ] || usage
ACTION=$1
case "$ACTION" in start) [ $# -ge 3 ] || usage ;; stop | status) [ $# -eq 2 ] || usage ;; *) usage ;; esac
set_run_dir "$ACTION" "$2"
shift 2
BACKENDS=("$@")
START_TIMEOUT=${HAPROXY_START_TIMEOUT:-20}
CFG=$RUN_DIR/haproxy.cfg PIDFILE=$RUN_DIR/haproxy.pid SOCK=$RUN_DIR/haproxy.sock

pid_of() { pid_from "$PIDFILE" "$CFG"; }

do_stop() {
    local pid
    if pid=$(pid_of); then terminate "$pid"; fi
    rm -f "$PIDFILE"
}

# Up = our process runs and answers its own monitor URI.
healthy() {
    pid_of >/dev/null && [ -s "$RUN_DIR/env" ] || return 1
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$(env_get LB_URL)/__lb_health")" = 200 ]
}

ensure_installed() {
    command -v haproxy >/dev/null && command -v curl >/dev/null && return 0
    [ "${HAPROXY_NO_INSTALL:-0}" = 1 ] && die "haproxy missing (apt-get install --no-install-recommends haproxy curl)"
    apt_install "$RUN_DIR/apt.log" haproxy curl
}

write_config() {
    local port=$1 timeout=${HAPROXY_TIMEOUT:-1h} check="" i=0 b
    if [ -n "${HAPROXY_HEALTH_PATH:-}" ]; then
        check="    option httpchk GET $HAPROXY_HEALTH_PATH
    http-check expect status 100-499"
    fi
    {
        cat <<CFG
# written by haproxy.sh
global
    maxconn 4096
    stats socket $SOCK mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 5s
    # inactivity limits, not total time: fine for multi-GiB bodies
    timeout client $timeout
    timeout server $timeout
    # headers only (the body is not buffered)
    timeout http-request 60s
    timeout http-keep-alive 60s
    timeout queue 60s
    timeout tunnel $timeout
    retries 2
    # a refused connection is retried on another node
    option redispatch
    option forwardfor

frontend lb
    bind 127.0.0.1:$port
    # answered by HAProxy itself: readiness of the balancer, not of a backend
    monitor-uri /__lb_health
    default_backend be

backend be
    balance roundrobin
$check
CFG
        for b in "${BACKENDS[@]}"; do
            i=$((i + 1))
            echo "    server node$i $b check inter 1s fall 2 rise 1"
        done
    } >"$CFG.new"
    haproxy -c -q -f "$CFG.new" >"$RUN_DIR/haproxy-check.log" 2>&1 \
        || { cat "$RUN_DIR/haproxy-check.log" >&2; die "invalid configuration"; }
    mv "$CFG.new" "$CFG"
}

do_start() {
    local b want
    for b in "${BACKENDS[@]}"; do
        [[ "$b" =~ ^[A-Za-z0-9.:_-]+:[0-9]+$ ]] || die "backend '$b' is not host:port"
    done
    want=$(IFS=,; echo "${BACKENDS[*]}")
    if [ "$want" = "$(env_get LB_BACKENDS)" ] && healthy; then cat "$RUN_DIR/env"; return 0; fi
    do_stop
    ensure_installed
    local port=${HAPROXY_PORT:-}
    # shellcheck disable=SC2046
    [ -n "$port" ] || port=$(pick_ports 1 $(env_get LB_PORT))
    write_config "$port"
    cat >"$RUN_DIR/env.new" <<ENV
LB_URL=http://127.0.0.1:$port
LB_HOST=127.0.0.1
LB_PORT=$port
LB_BACKENDS=$want
HAPROXY_SOCKET=$SOCK
ENV
    mv "$RUN_DIR/env.new" "$RUN_DIR/env"
    # -db: foreground, one process, log lines on stdout
    (exec setsid haproxy -f "$CFG" -db </dev/null >>"$RUN_DIR/haproxy.log" 2>&1) &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    until healthy; do
        pid_of >/dev/null || { tail -n 20 "$RUN_DIR/haproxy.log" >&2; die "haproxy exited"; }
        [ $SECONDS -lt $deadline ] || { do_stop; die "not ready after ${START_TIMEOUT}s"; }
        sleep 0.1
    done
    cat "$RUN_DIR/env"
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status) healthy && cat "$RUN_DIR/env" || exit 1 ;;
esac
