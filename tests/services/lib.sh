# shellcheck shell=bash
# Helpers shared by postgres.sh, swift-s3.sh and haproxy.sh (sourced, not run). The caller sets
# NAME first. Every script follows one contract:
#
#   SCRIPT start RUN_DIR [...]  install what is missing, start on 127.0.0.1, wait until a real
#                               request works, print KEY=VALUE settings (a second start on a
#                               healthy service prints them again and changes nothing)
#   SCRIPT stop RUN_DIR         stop only what RUN_DIR records (data stays); no-op when stopped
#   SCRIPT status RUN_DIR       print the settings and exit 0 if the service answers, else exit 1
#
# Diagnostics go to stderr, settings to stdout.

log() { echo "$NAME: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# set_run_dir ACTION DIR: RUN_DIR, absolute (the servers chdir to /). stop on a missing directory
# is a no-op, status reports it down.
set_run_dir() {
    if [ "$1" = start ]; then mkdir -p "$2"; fi
    if [ ! -d "$2" ]; then
        if [ "$1" = stop ]; then exit 0; fi
        exit 1
    fi
    RUN_DIR=$(cd "$2" && pwd -P)
}

# env_get KEY: a value from the settings of the previous start, if any.
env_get() { if [ -s "$RUN_DIR/env" ]; then sed -n "s/^$1=//p" "$RUN_DIR/env"; fi; }

# Alive = exists and is not a zombie: exited children of init are reaped late on our machines,
# and waiting for their /proc entry to go costs seconds.
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "${st%% *}" != Z ]
}

# pid_from FILE MARK: the pid in FILE if that process is alive and its command line contains
# MARK, so that a recycled pid is never signalled.
pid_from() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -n 1 "$1")
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    echo "$pid"
}

# terminate PID...: SIGTERM, wait up to 10 s, then SIGKILL whatever is left.
terminate() {
    local pid still
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 100); do
        still=()
        for pid in "$@"; do if alive "$pid"; then still+=("$pid"); fi; done
        [ ${#still[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    kill -KILL "${still[@]}" 2>/dev/null || true
}

# pick_ports N [PREVIOUS...]: N free TCP ports on 127.0.0.1. The previous ones when they are all
# free again, so that stop then start keeps the settings.
pick_ports() {
    python3 - "$@" <<'PY'
import socket, sys
n, prev = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s
socks = []
try:
    if len(prev) != n:
        raise OSError
    socks = [bind(p) for p in prev]
except OSError:
    for s in socks:
        s.close()
    socks = [bind(0) for _ in range(n)]
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# apt_install LOGFILE PACKAGE...: as root, without recommends (they triple the package count),
# waiting up to 5 min for the dpkg lock; on failure refresh the package lists and retry once.
# Nothing starts on its own: our machines have a policy-rc.d that forbids it.
apt_install() {
    local logf=$1
    shift
    [ "$(id -u)" = 0 ] || die "missing packages; as root run: apt-get install --no-install-recommends $*"
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    timeout 900 apt-get install "${opts[@]}" "$@" >>"$logf" 2>&1 && return 0
    timeout 300 apt-get update -q -o DPkg::Lock::Timeout=300 >>"$logf" 2>&1 || true
    timeout 900 apt-get install "${opts[@]}" "$@" >>"$logf" 2>&1 || die "apt-get install failed, see $logf"
}
