#!/usr/bin/env bash
# The whole test run on a fresh Debian machine, as root: install the test dependencies
# (scripts/install-test-deps.sh: apt packages, the clients and services, none of them started
# or enabled; pip packages into ./.venv at the versions of constraints.txt), then lint,
# type-check, check the layer contracts and run every test, then the benchmark's quick mode.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
bash scripts/install-test-deps.sh
ruff check moorage tests
ruff format --check moorage tests
mypy
lint-imports
# Two test processes (pytest-xdist), each taking whole modules (a module's fixtures and order
# stay together; session fixtures such as the docker tests' dockerd start once per process
# that needs them), in collection order: the longest modules first (tests/conftest.py,
# LONGEST_FIRST). MOORAGE_TEST_PROCESSES changes the count; 1 runs in this process. Tests
# that measure the server's memory (marker serial) run alone afterwards. Exit status 5 is
# pytest's "no tests selected": arguments that name only tests of the other kind.
processes=${MOORAGE_TEST_PROCESSES:-2}
parallel=(-n "$processes" --dist loadfile --no-loadscope-reorder)
[ "$processes" = 1 ] && parallel=(-p no:xdist)
python -m pytest -q -ra "${parallel[@]}" -m "not serial" "$@" || [ $? = 5 ]
python -m pytest -q -ra -m serial "$@" || [ $? = 5 ]
# The v2 and v1 API suites and the web interface's pages again on PostgreSQL + S3 (the real
# services of tests/services, which the fixtures start): tests that look inside SQLite or the
# data directory are deselected by name (marker embedded_only), nothing is skipped.
MOORAGE_TEST_BACKEND=scaleout python -m pytest -q -ra "${parallel[@]}" -m "not embedded_only" \
  tests/api tests/v1 tests/ui/test_pages.py
# The real clients once more through a real nginx in front, configured as
# docs/deploy/nginx-site.conf tells operators (the session's registry is reached through it).
MOORAGE_TEST_PROXY=nginx python -m pytest -q -ra tests/clients/test_skopeo.py \
  tests/clients/test_podman.py tests/clients/test_buildah.py tests/clients/test_docker.py \
  tests/clients/test_dxf.py tests/clients/test_v1_translation.py
# The benchmark's quick mode: proves bench/ still works (no assertions on timings).
bench_out=$(mktemp -d)
trap 'rm -rf "$bench_out"' EXIT
bash bench/run.sh --quick --out "$bench_out/results.json"
# Its cluster mode, quick (~2 minutes): Moorage on PostgreSQL + S3, one node and three behind
# HAProxy, against Distribution on the same S3 (the services of tests/services).
bash bench/run.sh --cluster --quick --out "$bench_out/cluster.json"
