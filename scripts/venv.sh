#!/usr/bin/env bash
# Create ./.venv (installing Debian's python3-venv first when it is missing) and put it first on
# PATH. Sourced by install.sh and test.sh.
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
  fi
  python3 -m venv .venv
fi
export PATH="$PWD/.venv/bin:$PATH"
