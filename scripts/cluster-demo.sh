#!/usr/bin/env bash
# A whole Moorage cluster on this one machine, for trying it (as root, Debian 12): PostgreSQL,
# an S3 server (OpenStack Swift with its S3 API), three stateless Moorage nodes sharing them,
# and HAProxy balancing round-robin in front. Everything listens on 127.0.0.1 and lives in
# RUN_DIR (default ./moorage-cluster).
#
#   bash scripts/cluster-demo.sh start [RUN_DIR]    # prints the balancer's URL
#   bash scripts/cluster-demo.sh stop [RUN_DIR]     # stops what start started; data stays
#
# Then, for example:
#   skopeo copy --dest-tls-verify=false oci:./image:latest docker://127.0.0.1:PORT/team/app:1
#
# The layout is the one docs/deploy/cluster.md describes: every node gets the same config
# file (database URL, bucket, http.secret); `moorage db upgrade` runs once before the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ACTION=${1:-}
RUN_DIR=$(realpath -m "${2:-moorage-cluster}")
SERVICES=$REPO/tests/services
NODES=3

stop_nodes() {
    local pidfile pid
    for pidfile in "$RUN_DIR"/node*/pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only our own node: its command line names its data directory in RUN_DIR. SIGINT:
        # the balancer goes too, so no drain (SIGTERM would keep each node http.draintimeout).
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$RUN_DIR"; then
            kill -INT "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

case "$ACTION" in
stop)
    stop_nodes
    bash "$SERVICES/haproxy.sh" stop "$RUN_DIR/lb"
    bash "$SERVICES/swift-s3.sh" stop "$RUN_DIR/s3"
    bash "$SERVICES/postgres.sh" stop "$RUN_DIR/pg"
    echo "stopped (data kept in $RUN_DIR)"
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop [RUN_DIR]" >&2; exit 2 ;;
esac

mkdir -p "$RUN_DIR"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
bash scripts/pip-install.sh .

# Assign, then eval: `eval "$(cmd)"` alone would hide a failed start.
pg=$(bash "$SERVICES/postgres.sh" start "$RUN_DIR/pg")
s3=$(bash "$SERVICES/swift-s3.sh" start "$RUN_DIR/s3")
eval "$pg"
eval "$s3"

secret_file=$RUN_DIR/http-secret
[ -s "$secret_file" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$secret_file"
config=$RUN_DIR/moorage.yml
cat >"$config" <<EOF
metadata:
  url: $PG_SQLALCHEMY_URL
storage:
  driver: s3
  s3:
    endpoint: $S3_ENDPOINT
    region: $S3_REGION
    bucket: moorage
    accesskey: "$S3_ACCESS_KEY"
    secretkey: "$S3_SECRET_KEY"
http:
  secret: "$(cat "$secret_file")"
EOF

# The bucket, once (an existing one of ours is fine).
S3_ENDPOINT=$S3_ENDPOINT S3_REGION=$S3_REGION S3_ACCESS_KEY=$S3_ACCESS_KEY \
S3_SECRET_KEY=$S3_SECRET_KEY python3 - <<'EOF'
import asyncio, os
from moorage.storage.s3 import S3Driver

async def main() -> None:
    driver = await S3Driver.open(
        "moorage", endpoint=os.environ["S3_ENDPOINT"], region=os.environ["S3_REGION"],
        accesskey=os.environ["S3_ACCESS_KEY"], secretkey=os.environ["S3_SECRET_KEY"],
    )
    try:
        await driver.create_bucket()
    finally:
        await driver.close()

asyncio.run(main())
EOF

moorage db upgrade --config "$config" --data-dir "$RUN_DIR/node0"

stop_nodes
backends=()
for i in $(seq 1 "$NODES"); do
    node=$RUN_DIR/node$i
    mkdir -p "$node"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    setsid moorage serve --config "$config" --data-dir "$node/data" --listen "127.0.0.1:$port" \
        </dev/null >"$node/server.log" 2>&1 &
    echo $! >"$node/pid"
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" && break
        sleep 0.1
    done
    curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" || {
        echo "node $i did not start:" >&2; tail -20 "$node/server.log" >&2; exit 1
    }
    backends+=("127.0.0.1:$port")
done

lb=$(HAPROXY_HEALTH_PATH=/readyz bash "$SERVICES/haproxy.sh" start "$RUN_DIR/lb" "${backends[@]}")
eval "$lb"
echo "Moorage cluster: $NODES nodes (${backends[*]}) on PostgreSQL and S3"
echo "balancer: $LB_URL    logs: $RUN_DIR/node*/server.log    stop: bash $0 stop $RUN_DIR"
