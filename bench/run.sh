#!/usr/bin/env bash
# Moorage vs CNCF Distribution benchmark, in one command on a fresh Debian 12 machine (as root).
#
#   bash bench/run.sh            # full run (about a dozen minutes on 2 cores)
#   bash bench/run.sh --quick    # small sizes, one round: proves the benchmark works (CI)
#   bash bench/run.sh --cluster  # cluster mode (bench/cluster.py): PostgreSQL + S3, 1 and 3 nodes
#
# Installs what it needs, then runs bench/bench.py with the arguments given (see
# `bash bench/run.sh --help` and docs/performance.md):
#   apt: docker-registry (CNCF Distribution 2.8, run by hand, not as the system service),
#        wrk, hey, skopeo, curl; in cluster mode the scripts of tests/services install
#        PostgreSQL 15, OpenStack Swift and HAProxy themselves when they are missing
#   pip: Moorage itself (editable) plus psutil and aiohttp, into the active virtualenv, else
#        into ./.venv when it exists or the system Python is externally managed (scripts/venv.sh
#        creates it), else into the python3 on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry wrk hey skopeo curl ca-certificates)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

in_venv() {
  python3 -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' 2>/dev/null
}
externally_managed() {
  python3 - <<'EOF' 2>/dev/null
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)
EOF
}
if ! in_venv && { [ -x .venv/bin/python ] || externally_managed; }; then
  # shellcheck source=scripts/venv.sh
  source scripts/venv.sh
fi
python3 -m pip install -q --disable-pip-version-check -e . psutil aiohttp

# The packaged service may have been started by the install: it is not the one we measure,
# and bench.py picks free ports, so it is left alone.
exec python3 bench/bench.py "$@"
