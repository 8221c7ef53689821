#!/usr/bin/env bash
# The whole test run on a fresh Debian machine, as root: install the test dependencies (apt
# packages and the clients; pip packages into ./.venv), then lint, type-check, check the layer
# contracts and run every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
bash scripts/install-test-deps.sh
ruff check moorage tests
ruff format --check moorage tests
mypy
lint-imports
python -m pytest -q -ra "$@"
