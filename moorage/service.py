"""`moorage service install`: run Moorage as a systemd service.

Writes a unit that starts `moorage serve` with the given configuration and data directory as
an unprivileged user, restarts it when it fails, reloads it with SIGHUP (read-only mode,
certificates, htpasswd: see docs/operations.md) and stops it with SIGTERM (it drains first),
and confines it: it may write only to its data directory, sees no home directories, gets a
private /tmp, no new privileges, no device access. The user is created (a system user, no
login) when missing."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True)
class Service:
    name: str
    user: str
    group: str
    data_dir: Path
    config: Path | None
    executable: Path
    drain_seconds: float = 5.0

    def unit(self) -> str:
        command = [str(self.executable), "serve", "--data-dir", str(self.data_dir)]
        if self.config is not None:
            command += ["--config", str(self.config)]
        paths = [str(self.data_dir)]
        read_only = [str(self.config)] if self.config is not None else []
        lines = [
            "[Unit]",
            "Description=Moorage container image registry",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"User={self.user}",
            f"Group={self.group}",
            f"ExecStart={shlex.join(command)}",
            "ExecReload=/bin/kill -HUP $MAINPID",
            # SIGTERM drains (/readyz fails first) before connections close.
            "KillSignal=SIGTERM",
            f"TimeoutStopSec={int(self.drain_seconds) + 60}",
            "Restart=on-failure",
            "RestartSec=2",
            "LimitNOFILE=65536",
            # Confinement: writes only to the data directory.
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            f"ReadWritePaths={' '.join(paths)}",
            *([f"ReadOnlyPaths={' '.join(read_only)}"] if read_only else []),
            f"ProtectHome={self._protect_home()}",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        return "\n".join(lines)

    def _protect_home(self) -> str:
        """Hide home directories, unless Moorage itself lives in one (then read-only)."""
        used = [self.executable, *([self.config] if self.config else []), self.data_dir]
        homes = ("/root", "/home")
        return "read-only" if any(str(p).startswith(homes) for p in used) else "yes"


def unreachable(path: Path) -> Path | None:
    """The first directory above `path` that other users cannot enter, if any (the service's
    user then cannot run what is below it)."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def executable() -> Path:
    """The `moorage` command next to this Python (a virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "moorage"
    if beside.exists():
        return beside
    found = shutil.which("moorage")
    if found is None:
        raise FileNotFoundError("no moorage command found next to Python or on PATH")
    return Path(found)


def ensure_user(user: str, home: Path) -> bool:
    """Create `user` as a system user without login if it does not exist; True if made."""
    try:
        pwd.getpwnam(user)
        return False
    except KeyError:
        pass
    command = ["useradd", "--system", "--home-dir", str(home), "--no-create-home"]
    subprocess.run([*command, "--shell", "/usr/sbin/nologin", user], check=True)
    return True


def install(service: Service, unit_dir: Path, reload: bool) -> Path:
    """Write the unit (and the data directory, owned by the service's user); with `reload`,
    tell systemd (`daemon-reload`) without enabling or starting anything."""
    service.data_dir.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(service.user)
    # All of it: files made before as root (`moorage tls init`'s keys, a store run by hand)
    # must be the service's, or it cannot read them.
    shutil.chown(service.data_dir, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(service.data_dir):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / f"{service.name}.service"
    path.write_text(service.unit())
    if reload:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    return path
