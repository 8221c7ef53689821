#!/usr/bin/env bash
# Install Moorage into ./.venv and start it with the embedded defaults
# (127.0.0.1:5000, filesystem blobs and SQLite under ./moorage-data). Extra arguments go to
# `moorage serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
pip install -q --upgrade pip
pip install -q .
exec moorage serve "$@"
