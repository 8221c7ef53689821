#!/usr/bin/env bash
# Install Moorage into ./.venv and start it with the embedded defaults
# (127.0.0.1:5000, filesystem blobs and SQLite under ./moorage-data).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q .
exec .venv/bin/moorage serve "$@"
