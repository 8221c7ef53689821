#!/usr/bin/env bash
# Create ./.venv (installing Debian's python3-venv first when it is missing, through
# scripts/apt-install.sh: package lists updated, errors shown) and put it first on PATH.
# Sourced by install.sh, test.sh, install-test-deps.sh, cluster-demo.sh and bench/run.sh; says
# what it does in one line per step, and nothing when there is nothing to do.
if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        echo "Installing Debian's python3-venv (apt)"
        bash scripts/apt-install.sh python3-venv || return 1
    fi
    echo "Creating the Python environment ./.venv"
    venv_made=
    [ -e .venv ] || venv_made=1
    if ! venv_output=$(python3 -m venv .venv 2>&1); then
        echo "venv.sh: 'python3 -m venv .venv' failed:" >&2
        echo "$venv_output" >&2
        # Half made (no pip, say) it would pass for a whole one next time.
        [ -z "$venv_made" ] || rm -rf .venv
        return 1
    fi
    unset venv_made venv_output
fi
export PATH="$PWD/.venv/bin:$PATH"
