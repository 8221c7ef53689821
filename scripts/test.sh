#!/usr/bin/env bash
# The whole test run on a fresh Debian machine, as root: install the test dependencies (apt and
# pip), then lint, type-check, check the layer contracts and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
ruff check moorage tests
ruff format --check moorage tests
mypy
lint-imports
python -m pytest -q -ra "$@"
