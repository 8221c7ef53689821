#!/usr/bin/env bash
# Install Moorage into ./.venv and start it in the foreground with the embedded defaults
# (127.0.0.1:5000, filesystem blobs and SQLite under ./moorage-data). Extra arguments go to
# `moorage serve`.
#
# One line per step (Debian's python3-venv when missing, the virtualenv, pip with the versions
# of constraints.txt); apt's and pip's output only when a step fails. Run as root, it puts the
# command on the PATH: /usr/local/bin/moorage, a link to ./.venv/bin/moorage, unless something
# else is there already. A second run while the first one serves says so in one line
# (`moorage serve` checks who holds the port) and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
echo "Installing Moorage and its dependencies into ./.venv (pip, versions from constraints.txt)"
bash scripts/pip-install.sh .

moorage=$PWD/.venv/bin/moorage
link=/usr/local/bin/moorage
command=$moorage
if [ "$(id -u)" -ne 0 ]; then
    echo "The command is $moorage (run this as root to put it on the PATH as $link)"
elif [ -L "$link" ] && [ "$(readlink "$link")" = "$moorage" ]; then
    command=moorage
elif [ -e "$link" ] || [ -L "$link" ]; then
    echo "Not linking $link: something else is there ($(readlink -f "$link")); the command" \
        "is $moorage"
else
    mkdir -p "${link%/*}"
    ln -s "$moorage" "$link"
    echo "Linked $link -> $moorage: \`moorage\` works from any directory"
    command=moorage
fi

if [ "$#" -eq 0 ] && ! env | grep -q '^MOORAGE_'; then
    # The defaults: when something answers there already, `moorage serve` says what in one line.
    if (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null; then
        exec "$moorage" serve
    fi
    where="It listens on http://127.0.0.1:5000 and keeps its data in $PWD/moorage-data."
else
    where="Its first log line says where it listens and where it keeps its data."
fi
cat <<EOF

Starting Moorage in the foreground (\`$command serve${*:+ $*}\`).
$where
Stop it with Ctrl-C.
To run it as a service instead (in the background, started at boot, data in /var/lib/moorage):
stop this one, then \`$command service install\` and \`systemctl enable --now moorage\`.

EOF
exec "$moorage" serve "$@"
