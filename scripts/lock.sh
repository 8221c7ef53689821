#!/usr/bin/env bash
# Write constraints.txt again: the exact versions of everything pip installs for Moorage and
# its [test] extra (and setuptools, which builds it), resolved to the newest that pyproject.toml
# allows in a fresh virtualenv. Run it when a dependency should move (or pyproject.toml's
# dependencies changed), run the tests (`bash scripts/test.sh`), and commit both files together.
set -euo pipefail
cd "$(dirname "$0")/.."

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# A copy of what builds the package, so the build leaves nothing in the checkout.
mkdir "$scratch/src"
cp -r pyproject.toml README.md moorage "$scratch/src/"
echo "Resolving Moorage[test] in a fresh virtualenv"
python3 -m venv "$scratch/venv"
py=$scratch/venv/bin/python3
"$py" -m pip install -q --disable-pip-version-check --upgrade setuptools
"$py" -m pip install -q --disable-pip-version-check --no-build-isolation "$scratch/src[test]"
{
    cat <<'HEADER'
# Exact versions of everything pip installs for Moorage and its [test] extra, and of setuptools,
# which builds it. scripts/install.sh, scripts/install-test-deps.sh, scripts/cluster-demo.sh and
# bench/run.sh install with `-c constraints.txt` (scripts/pip-install.sh), so two installs a
# week apart run the same code. Written by scripts/lock.sh; to move a dependency, run it again
# and then the tests.
HEADER
    "$py" -m pip freeze --all --exclude pip --exclude moorage
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages pinned"
