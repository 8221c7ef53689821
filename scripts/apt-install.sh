#!/usr/bin/env bash
# Install Debian packages for Moorage's scripts without starting or enabling any service, as
# root:
#
#   bash scripts/apt-install.sh PACKAGE...
#
# Used by scripts/venv.sh, scripts/install-test-deps.sh and bench/run.sh. Packages such as
# docker-registry (port 5000, Moorage's default), docker.io, postgresql-15, haproxy or memcached
# start a service when installed and enable it at boot; the tests and the benchmark run their
# own instances by hand, so on the user's machine nothing may be left running or enabled:
#
# - Packages already installed are skipped, and their services are never touched.
# - `apt-get update` runs first (a fresh machine has no package lists), then `apt-get install`
#   under a policy-rc.d that refuses every start (exit 101) for the duration of the install.
#   A policy-rc.d already in place (containers ship one) is left as it is.
# - The systemd units (and SysV init scripts) of the packages this run newly installed, their
#   dependencies included, are then disabled at boot, and stopped if systemd runs and one
#   started anyway; the line printed names them.
#
# One line per step; apt's output is shown only when a step fails.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi

installed_packages() {
    dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package}\n' 2>/dev/null \
        | awk '$1 == "ii" { sub(/:.*/, "", $2); print $2 }' | sort -u
}

missing=()
have=$(installed_packages)
for pkg in "$@"; do
    grep -qxF -- "$pkg" <<<"$have" || missing+=("$pkg")
done
[ "${#missing[@]}" -gt 0 ] || exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "apt-install.sh: ${missing[*]} must be installed first; run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
output=$(mktemp)
policy=/usr/sbin/policy-rc.d
own_policy=
cleanup() {
    [ -z "$own_policy" ] || rm -f "$policy"
    rm -f "$output"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a step with its output kept aside; on failure show it and stop.
step() {
    if ! "$@" >"$output" 2>&1; then
        echo "apt-install.sh: '$*' failed:" >&2
        cat "$output" >&2
        exit 1
    fi
}

echo "  apt-get update"
step apt-get update
if [ ! -e "$policy" ]; then
    own_policy=1
    printf '#!/bin/sh\n# %s\nexit 101\n' \
        "scripts/apt-install.sh (Moorage), for the duration of its install: start nothing" \
        >"$policy"
    chmod 755 "$policy"
fi
echo "  apt-get install ${missing[*]}"
step apt-get install -y -q --no-install-recommends "${missing[@]}"
if [ -n "$own_policy" ]; then
    rm -f "$policy"
    own_policy=
fi

# What this run brought in, dependencies included: only their services are ours to turn off.
mapfile -t new < <(comm -13 <(echo "$have") <(installed_packages))
[ "${#new[@]}" -gt 0 ] || exit 0
units=()
scripts=()
while read -r path; do
    case "$path" in
    /lib/systemd/system/*@.* | /usr/lib/systemd/system/*@.*) ;; # templates: enabled per instance
    /lib/systemd/system/*.service | /lib/systemd/system/*.socket | /lib/systemd/system/*.timer | \
        /lib/systemd/system/*.path | /usr/lib/systemd/system/*.service | \
        /usr/lib/systemd/system/*.socket | /usr/lib/systemd/system/*.timer | \
        /usr/lib/systemd/system/*.path)
        units+=("${path##*/}")
        ;;
    /etc/init.d/*) scripts+=("${path##*/}") ;;
    esac
done < <(dpkg -L "${new[@]}" 2>/dev/null | sort -u)

turned_off=()
if command -v systemctl >/dev/null; then
    # A SysV script without a unit of its own is a unit to systemd too (systemd-sysv-generator).
    for name in "${scripts[@]}"; do
        printf '%s\n' "${units[@]}" | grep -qxF "$name.service" || units+=("$name.service")
    done
    running=
    [ -d /run/systemd/system ] && running=1
    for unit in "${units[@]}"; do
        enabled=$(systemctl is-enabled "$unit" 2>/dev/null || true)
        active=
        [ -n "$running" ] && systemctl is-active --quiet "$unit" && active=1
        if [ "$enabled" = enabled ] || [ -n "$active" ]; then
            if [ -n "$active" ]; then
                step systemctl disable --now "$unit"
            else
                step systemctl disable "$unit"
            fi
            turned_off+=("$unit")
        fi
    done
else
    for name in "${scripts[@]}"; do
        if compgen -G "/etc/rc[2345].d/S??$name" >/dev/null; then
            step update-rc.d "$name" disable
            turned_off+=("$name")
        fi
    done
fi
if [ "${#turned_off[@]}" -gt 0 ]; then
    echo "  not started, and disabled at boot: ${turned_off[*]}"
fi
