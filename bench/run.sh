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
#        wrk, hey, skopeo, curl; through scripts/apt-install.sh, which starts no service and
#        leaves none enabled at boot (the package's would take port 5000); in cluster mode
#        the scripts of tests/services install PostgreSQL 15, OpenStack Swift and HAProxy
#        themselves when they are missing
#   pip: Moorage itself (editable) plus psutil and aiohttp, at the versions of constraints.txt,
#        into the active virtualenv, else into ./.venv when it exists or the system Python is
#        externally managed (scripts/venv.sh creates it), else into the python3 on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry wrk hey skopeo curl ca-certificates)
bash scripts/apt-install.sh "${APT_PACKAGES[@]}"

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
bash scripts/pip-install.sh -e . psutil aiohttp

# bench.py picks free ports; a docker-registry service installed before (and so left alone by
# apt-install.sh) is not the one measured.
exec python3 bench/bench.py "$@"
