#!/usr/bin/env bash
# `pip install` for Moorage's scripts, at the versions of constraints.txt, into the `python3`
# first on PATH (the callers put ./.venv there first). Arguments: what to install, as for pip
# (`.`, `-e '.[test]'`, `psutil`).
#
#   bash scripts/pip-install.sh -e '.[test]'
#
# Moorage's own package is built in this environment (--no-build-isolation) with the pinned
# setuptools, rather than in an isolated one pip would fill with the newest setuptools: the
# build is pinned too. Quiet; pip's output is shown when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

output=$(mktemp)
trap 'rm -f "$output"' EXIT
run() {
    if ! "$@" >"$output" 2>&1; then
        echo "pip-install.sh: '$*' failed:" >&2
        cat "$output" >&2
        exit 1
    fi
}
pip=(python3 -m pip install --disable-pip-version-check -c constraints.txt)
run "${pip[@]}" setuptools
run "${pip[@]}" --no-build-isolation "$@"
