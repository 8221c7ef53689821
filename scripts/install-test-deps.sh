#!/usr/bin/env bash
# Install what the tests need on a fresh Debian 12 machine, as root. Safe to run again.
#
#   apt: the real clients tests/clients drives (skopeo, podman, buildah, umoci, docker.io with
#        its dockerd), Debian's docker-registry (CNCF Distribution 2.8, whose storage root
#        `moorage import distribution` is tested on; run by hand, never as the system
#        service), busybox-static (the binary in the runnable test image), jq, curl, openssl,
#        and the real services tests/services starts (PostgreSQL 15, Swift with its S3 API,
#        memcached, HAProxy; the scripts there would install them too, but slower and mid-test),
#        and Debian's chromium with chromium-driver (tests/ui drives the web interface in it).
#   pip: Moorage itself, editable, with its [test] extras (pytest, python-dxf, ruff, mypy, ...),
#        at the versions of constraints.txt.
#
# The apt packages are installed by scripts/apt-install.sh: none of their services is started
# or left enabled at boot (docker-registry's would take port 5000, Moorage's default); the
# tests start their own instances. Services of packages that were installed before are left
# alone.
#
# Python packages go into the active virtualenv when there is one (scripts/test.sh puts ./.venv
# first on PATH); otherwise into ./.venv when the interpreter is Debian's externally managed
# one; otherwise into the `python3` found on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps.sh: run as root" >&2
  exit 1
fi

APT_PACKAGES=(
  # containers/image clients; podman and buildah need a CNI plugin set and uidmap, and we run
  # them with the vfs driver, so no fuse-overlayfs.
  skopeo podman buildah umoci containernetworking-plugins uidmap
  # Docker Engine 20.10 (dockerd + CLI, pulls containerd, runc, iptables, tini).
  docker.io
  # CNCF Distribution 2.8: tests/clients/test_import_distribution.py writes a root with it
  docker-registry
  busybox-static
  jq curl openssl ca-certificates
  # small ext4 disks made and loop-mounted by the storage tests (mkfs.ext4), and fincore to
  # see which of a file's pages are in the page cache
  e2fsprogs util-linux-extra
  # tests/services: PostgreSQL 15, OpenStack Swift (S3 API) with memcached, HAProxy
  postgresql-15 postgresql-client-15
  swift swift-proxy swift-account swift-container swift-object python3-swift memcached
  haproxy
  # the client tests run once more through a real nginx in front (docs/deploy/nginx-site.conf)
  nginx-light
  # tests/ui drives the web interface in a real browser (selenium, headless)
  chromium chromium-driver
  # ./.venv, when the system Python is the one we install into (see below)
  python3 python3-venv
)

# tests/services runs its own PostgreSQL clusters: skip the default one the package would create.
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
fi

echo "Installing the test dependencies (apt)"
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

if ! in_venv && externally_managed; then
  # shellcheck source=scripts/venv.sh
  source scripts/venv.sh
fi

echo "Installing Moorage (editable) and its test dependencies (pip, constraints.txt)"
bash scripts/pip-install.sh -e '.[test]'

# Report what was installed, so a failed run shows what is missing.
for bin in skopeo podman buildah umoci dockerd docker docker-registry busybox jq curl openssl \
  /usr/lib/postgresql/15/bin/pg_ctl psql swift-proxy-server swift-object-server memcached haproxy \
  chromium chromedriver; do
  command -v "$bin" >/dev/null || { echo "install-test-deps.sh: $bin missing" >&2; exit 1; }
done
PYTHON="$(command -v python3)"
(cd / && "$PYTHON" -c 'import dxf, pytest, moorage, asyncpg, aiobotocore, alembic, jinja2, selenium') || {
  echo "install-test-deps.sh: python packages missing" >&2
  exit 1
}
echo "test dependencies installed ($(python3 -c 'import sys; print(sys.prefix)'))"
