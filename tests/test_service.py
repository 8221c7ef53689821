"""`moorage service install` writes a systemd unit that systemd accepts, for an existing user,
without creating users or touching anything outside the test's directory (`--unit-dir`,
`--no-reload`)."""

from __future__ import annotations

import grp
import pwd
import shlex
import subprocess
import sys
from pathlib import Path

INSTALL = (sys.executable, "-m", "moorage", "service", "install", "--user", "nobody")


def test_the_unit_runs_serve_confined_as_the_user(tmp_path: Path) -> None:
    config = tmp_path / "moorage.yml"
    config.write_text("listen: 127.0.0.1:5999\n")
    data, units = tmp_path / "data", tmp_path / "units"
    (data / "tls").mkdir(parents=True)  # made before as root, e.g. by `moorage tls init`
    (data / "tls" / "server.key").write_text("key")
    done = subprocess.run(
        [
            *INSTALL,
            *("--data-dir", str(data), "--config", str(config)),
            *("--unit-dir", str(units), "--no-reload", "--name", "moorage-test"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "systemctl enable --now moorage-test" in done.stdout
    unit = (units / "moorage-test.service").read_text()
    entries = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    nobody = pwd.getpwnam("nobody")
    assert entries["User"] == "nobody"
    assert entries["Group"] == grp.getgrgid(nobody.pw_gid).gr_name
    command = shlex.split(entries["ExecStart"])
    assert Path(command[0]).name == "moorage" and Path(command[0]).exists()
    assert command[1:] == ["serve", "--data-dir", str(data), "--config", str(config)]
    assert entries["ReadWritePaths"] == str(data)
    assert entries["ProtectSystem"] == "strict" and entries["NoNewPrivileges"] == "yes"
    assert entries["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert entries["Restart"] == "on-failure"
    assert data.stat().st_uid == nobody.pw_uid
    assert (data / "tls" / "server.key").stat().st_uid == nobody.pw_uid
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(units / "moorage-test.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr


def test_a_config_that_would_not_start_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("listen: nowhere\n")
    done = subprocess.run(
        [
            *INSTALL,
            *("--config", str(bad), "--data-dir", str(tmp_path / "d")),
            *("--unit-dir", str(tmp_path / "units"), "--no-reload"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "listen" in done.stderr
    assert not (tmp_path / "units").exists()
