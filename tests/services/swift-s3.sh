#!/usr/bin/env bash
# swift-s3.sh - a throwaway all-in-one OpenStack Swift (Debian 12 packages) serving the S3 API
# (s3api + tempauth), for tests: one proxy, account, container and object server, the
# object-updater and a private memcached, on 127.0.0.1, with a one-replica ring over a plain
# directory in RUN_DIR.
#
#   swift-s3.sh start|stop|status RUN_DIR      (the contract is in lib.sh)
#
# Prints S3_ENDPOINT S3_REGION S3_ACCESS_KEY S3_SECRET_KEY (and S3_*_2 for a second, separate
# account), the same as AWS_* variables, AWS_{REQUEST,RESPONSE}_CHECKSUM_* = when_required,
# SWIFT_AUTH_URL SWIFT_USER SWIFT_KEY and the ports. Logs: RUN_DIR/log/*.log.
#
# Environment (optional): SWIFT_S3_PORT (the proxy's; default the previous ports when free, else
# free ones), SWIFT_S3_REGION (us-east-1), SWIFT_S3_START_TIMEOUT (60 s), SWIFT_S3_NO_INSTALL=1.
#
# Clients: path-style addressing, checksums "when_required" (Swift refuses aws-chunked bodies),
# and Content-MD5 on DeleteObjects (tests/services/fixtures.py has an example).
set -euo pipefail
NAME=swift-s3.sh
# shellcheck source=tests/services/lib.sh
. "$(dirname "$0")/lib.sh"
PKGS=(swift swift-proxy swift-account swift-container swift-object python3-swift memcached curl)
SYSPY=/usr/bin/python3 # Debian's python: the one with the swift modules
SERVERS="memcached account-server container-server object-server object-updater proxy-server"

[ $# -eq 2 ] || { echo "usage: $0 start|stop|status RUN_DIR" >&2; exit 2; }
ACTION=$1
case "$ACTION" in start | stop | status) ;; *) echo "usage: $0 start|stop|status RUN_DIR" >&2; exit 2 ;; esac
set_run_dir "$ACTION" "$2"
ETC=$RUN_DIR/etc LOGS=$RUN_DIR/log PIDS=$RUN_DIR/pid DATA=$RUN_DIR/data
START_TIMEOUT=${SWIFT_S3_START_TIMEOUT:-60}

pid_of() { pid_from "$PIDS/$1.pid" "$RUN_DIR/"; }

stop_all() {
    local s pid pids=()
    for s in $SERVERS; do if pid=$(pid_of "$s"); then pids+=("$pid"); fi; done
    terminate "${pids[@]}"
    rm -f "$PIDS"/*.pid
}

# launch NAME COMMAND...: in its own session, output to LOGS/NAME.log, pid to PIDS/NAME.pid.
launch() {
    local name=$1
    shift
    (exec setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1) &
    echo $! >"$PIDS/$name.pid"
}

# Up = every process runs, /healthcheck answers on the four Swift ports, and a signed S3
# ListBuckets works: proxy, s3api, tempauth, memcached and the account server together.
# (curl --aws-sigv4 can't: it splits --user at the first colon, and the access key has one.)
healthy() {
    local s p
    [ -s "$RUN_DIR/env" ] || return 1
    for s in $SERVERS; do pid_of "$s" >/dev/null || return 1; done
    for p in PROXY ACCOUNT CONTAINER OBJECT; do
        [ "$(curl -s --max-time 3 "http://127.0.0.1:$(env_get "SWIFT_${p}_PORT")/healthcheck")" = OK ] || return 1
    done
    "$SYSPY" - "$(env_get S3_ENDPOINT)" "$(env_get S3_ACCESS_KEY)" "$(env_get S3_SECRET_KEY)" \
        "$(env_get S3_REGION)" >/dev/null 2>&1 <<'PY'
import datetime, hashlib, hmac, sys, urllib.request
endpoint, ak, sk, region = sys.argv[1:5]
host = endpoint.split("://", 1)[1].rstrip("/")
now = datetime.datetime.now(datetime.timezone.utc)
amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
payload = hashlib.sha256(b"").hexdigest()
signed = "host;x-amz-content-sha256;x-amz-date"
creq = "\n".join(["GET", "/", "", f"host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amzdate}\n", signed, payload])
scope = f"{day}/{region}/s3/aws4_request"
sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
key = ("AWS4" + sk).encode()
for part in (day, region, "s3", "aws4_request"):
    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
auth = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={sig}"
req = urllib.request.Request(endpoint + "/", headers={"x-amz-date": amzdate, "x-amz-content-sha256": payload, "Authorization": auth})
with urllib.request.urlopen(req, timeout=5) as r:
    assert r.status == 200 and b"ListAllMyBucketsResult" in r.read()
PY
}

ensure_installed() {
    local c
    for c in swift-proxy-server swift-account-server swift-container-server swift-object-server \
        swift-object-updater memcached curl; do
        command -v "$c" >/dev/null && continue
        [ "${SWIFT_S3_NO_INSTALL:-0}" = 1 ] && die "$c missing (apt-get install --no-install-recommends ${PKGS[*]})"
        apt_install "$LOGS/apt.log" "${PKGS[@]}"
        return
    done
}

# Writes ETC (configs and rings) and RUN_DIR/env. Every server gets swift_dir = ETC: Swift only
# glances at the packaged /etc/swift/swift.conf while importing; nothing there is written.
write_config() {
    local user region proxy acc con obj mc
    user=$(id -un)
    region=${SWIFT_S3_REGION:-us-east-1}
    # shellcheck disable=SC2046
    read -r proxy acc con obj mc <<<"$(pick_ports 5 $(env_get SWIFT_PROXY_PORT) $(env_get SWIFT_ACCOUNT_PORT) \
        $(env_get SWIFT_CONTAINER_PORT) $(env_get SWIFT_OBJECT_PORT) $(env_get SWIFT_MEMCACHED_PORT))"
    proxy=${SWIFT_S3_PORT:-$proxy}

    # Swift keeps object metadata in user xattrs: refuse a filesystem without them (tmpfs on
    # older kernels) rather than fail on the first PUT.
    "$SYSPY" -c 'import os, sys; p = sys.argv[1] + "/.xattr-probe"; open(p, "w").close(); os.setxattr(p, "user.swift.probe", b"1"); os.remove(p)' "$DATA" \
        || die "$DATA does not support user xattrs; put RUN_DIR on ext4, xfs or btrfs"

    cat >"$ETC/swift.conf" <<CONF
[swift-hash]
# never change once data exists: object paths are hashed with these
swift_hash_path_suffix = moorage-test-suffix
swift_hash_path_prefix = moorage-test-prefix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
# the same single-request limit as AWS S3 (5 GiB)
max_file_size = 5368709122
CONF

    # bind_timeout: fail after 10 s on a taken port (default 30). workers = 0: one process each,
    # one pid to stop. mount_check = false: the device is a plain directory.
    local common="bind_ip = 127.0.0.1
bind_timeout = 10
user = $user
swift_dir = $ETC
devices = $DATA
mount_check = false
disable_fallocate = true
recon_cache_path = $RUN_DIR/cache
workers = 0
log_level = INFO"
    # Raised timeouts: one node on a loaded 2-core machine can stall for seconds, and a 503 from
    # an impatient server would be a false test failure.
    local -A extra=(
        [account]=""
        [container]="node_timeout = 30
conn_timeout = 5"
        [object]="# a PUT updates the container listing synchronously (default 1 s)
container_update_timeout = 30
node_timeout = 30
conn_timeout = 5
network_chunk_size = 1048576
disk_chunk_size = 1048576"
    )
    local kind port
    for kind in account container object; do
        case $kind in account) port=$acc ;; container) port=$con ;; object) port=$obj ;; esac
        cat >"$ETC/$kind-server.conf" <<CONF
[DEFAULT]
bind_port = $port
log_name = $kind-server
$common
${extra[$kind]}

[pipeline:main]
pipeline = healthcheck $kind-server

[app:$kind-server]
use = egg:swift#$kind

[filter:healthcheck]
use = egg:swift#healthcheck
CONF
    done
    cat >>"$ETC/object-server.conf" <<CONF

[object-updater]
# replays listing updates that timed out ("async pendings"; none unless a container server
# stalled for container_update_timeout). Each sweep forks and walks the devices: at Swift's
# 5 s its sweeps took 0.27 of a core per Swift through a test run (a session has one per
# test process).
interval = 120
CONF

    # s3api must come before tempauth; the S3 access key is account:user, the secret the key.
    {
        cat <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $proxy
bind_timeout = 10
user = $user
swift_dir = $ETC
workers = 0
log_name = proxy-server
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
conn_timeout = 5
node_timeout = 120
recoverable_node_timeout = 120
client_timeout = 300
# 1 MiB chunks instead of 64 KiB: about 1.8x faster GETs through the proxy
object_chunk_size = 1048576
client_chunk_size = 1048576

[filter:s3api]
use = egg:swift#s3api
location = $region
# AWS's limits, not Swift's 1000
max_upload_part_num = 10000

[filter:slo]
use = egg:swift#slo
max_manifest_segments = 10000

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin

# tempauth needs a cache; a private memcached keeps two runs from sharing cached facts
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$mc

[filter:proxy-logging]
use = egg:swift#proxy_logging
CONF
        for kind in dlo copy versioned_writes bulk listing_formats healthcheck gatekeeper catch_errors; do
            printf '\n[filter:%s]\nuse = egg:swift#%s\n' "$kind" "$kind"
        done
    } >"$ETC/proxy-server.conf"

    # Rings: one replica over one device (d1), built in one process (0.7 s instead of 6 s for
    # nine swift-ring-builder calls).
    "$SYSPY" - "$ETC" "$acc" "$con" "$obj" <<'PY'
import sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], dict(zip(("account", "container", "object"), map(int, sys.argv[2:5])))
for kind, port in ports.items():
    b = RingBuilder(8, 1, 1)  # part power 8, 1 replica, min_part_hours 1
    b.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port, "device": "d1", "weight": 1})
    b.rebalance()
    b.save(f"{etc}/{kind}.builder")
    b.get_ring().save(f"{etc}/{kind}.ring.gz")
PY

    cat >"$RUN_DIR/env.new" <<ENV
S3_ENDPOINT=http://127.0.0.1:$proxy
S3_REGION=$region
S3_ACCESS_KEY=test:tester
S3_SECRET_KEY=testing
S3_ACCESS_KEY_2=test2:tester2
S3_SECRET_KEY_2=testing2
AWS_ACCESS_KEY_ID=test:tester
AWS_SECRET_ACCESS_KEY=testing
AWS_DEFAULT_REGION=$region
AWS_ENDPOINT_URL_S3=http://127.0.0.1:$proxy
AWS_REQUEST_CHECKSUM_CALCULATION=when_required
AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
SWIFT_AUTH_URL=http://127.0.0.1:$proxy/auth/v1.0
SWIFT_USER=test:tester
SWIFT_KEY=testing
SWIFT_PROXY_PORT=$proxy
SWIFT_ACCOUNT_PORT=$acc
SWIFT_CONTAINER_PORT=$con
SWIFT_OBJECT_PORT=$obj
SWIFT_MEMCACHED_PORT=$mc
SWIFT_RUN_DIR=$RUN_DIR
ENV
    mv "$RUN_DIR/env.new" "$RUN_DIR/env"
}

do_start() {
    mkdir -p "$ETC" "$LOGS" "$PIDS" "$DATA/d1" "$RUN_DIR/cache"
    if healthy; then cat "$RUN_DIR/env"; return 0; fi
    stop_all # whatever is left of an earlier, broken start
    ensure_installed
    write_config
    # -P only puts RUN_DIR in memcached's command line, so that pid_of can recognise it
    launch memcached memcached -l 127.0.0.1 -p "$(env_get SWIFT_MEMCACHED_PORT)" -U 0 -m 64 -t 1 \
        -u "$(id -un)" -P "$PIDS/memcached.own-pid"
    # -v: log to the console (our log file) as well as syslog
    launch account-server swift-account-server "$ETC/account-server.conf" -v
    launch container-server swift-container-server "$ETC/container-server.conf" -v
    launch object-server swift-object-server "$ETC/object-server.conf" -v
    launch object-updater swift-object-updater "$ETC/object-server.conf" -v
    launch proxy-server swift-proxy-server "$ETC/proxy-server.conf" -v
    local deadline=$((SECONDS + START_TIMEOUT)) s
    until healthy; do
        for s in $SERVERS; do
            pid_of "$s" >/dev/null && continue
            stop_all
            tail -n 20 "$LOGS/$s.log" >&2 || true
            die "$s exited; see $LOGS/$s.log"
        done
        [ $SECONDS -lt $deadline ] || { stop_all; die "not ready after ${START_TIMEOUT}s; logs in $LOGS"; }
        sleep 0.2
    done
    cat "$RUN_DIR/env"
}

case "$ACTION" in
    start) do_start ;;
    stop) stop_all ;;
    status) healthy && cat "$RUN_DIR/env" || exit 1 ;;
esac
