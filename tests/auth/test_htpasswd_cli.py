"""The htpasswd file (bcrypt only; same work for unknown users) and `moorage user`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import bcrypt
import click
import pytest
from click.testing import CliRunner

from moorage.auth import htpasswd
from moorage.cli import main, user_add
from tests.auth.helpers import PASSWORDS


@pytest.fixture
def users(users_file: Path) -> htpasswd.Htpasswd:
    return htpasswd.Htpasswd(users_file)


def test_check_right_wrong_and_unknown(users: htpasswd.Htpasswd) -> None:
    assert users.check("alice", PASSWORDS["alice"]) is True
    assert users.check("alice", PASSWORDS["alice"]) is True  # cached path
    assert users.check("alice", "wrong") is False
    assert users.check("alice", PASSWORDS["bob"]) is False
    assert users.check("alice", "") is False
    assert users.check("nosuchuser", PASSWORDS["alice"]) is False
    assert users.check("", "") is False
    assert users.users() == sorted(PASSWORDS)


def test_unknown_user_still_costs_a_bcrypt_check(
    users: htpasswd.Htpasswd, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    assert users.check("nosuchuser", "whatever") is False
    assert len(calls) == 1
    # Against a hash of the same cost as real entries, so the time is the same.
    assert calls[0].split(b"$")[2] == b"%02d" % htpasswd.COST
    # Even a dummy-hash password match would not log an unknown user in.
    assert users.check("nosuchuser", "not a password") is False
    assert users.check("alice", "wrong") is False
    assert len(calls) == 3


def test_2y_and_2a_entries_are_accepted(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw-2y", bcrypt.gensalt(4)).decode()
    path = tmp_path / "htpasswd"
    # What Apache's `htpasswd -B` writes: $2y$.
    path.write_text(f"apache:$2y${hashed[4:]}\nold:$2a${hashed[4:]}\n# comment\n\n")
    users = htpasswd.Htpasswd(path)
    assert users.users() == ["apache", "old"]
    assert users.check("apache", "pw-2y") is True
    assert users.check("old", "pw-2y") is True
    assert users.check("apache", "pw-2x") is False


@pytest.mark.parametrize(
    "line",
    [
        "md5:$apr1$salt$hash",
        "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
        "plain:password",
        "nocolon",
        ":$2y$04$abcdefghijklmnopqrstuu",
    ],
)
def test_non_bcrypt_entries_are_refused(tmp_path: Path, line: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(line + "\n")
    with pytest.raises(htpasswd.HtpasswdError):
        htpasswd.read(path)


def test_file_changes_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.write(path, {"zoe": bcrypt.hashpw(b"one", bcrypt.gensalt(4)).decode()})
    users = htpasswd.Htpasswd(path)
    assert users.check("zoe", "one") is True
    htpasswd.write(path, {"zoe": bcrypt.hashpw(b"two", bcrypt.gensalt(4)).decode()})
    future = path.stat().st_mtime + 5
    os.utime(path, (future, future))
    # The remembered good password is forgotten with the old file.
    assert users.check("zoe", "one") is False
    assert users.check("zoe", "two") is True
    htpasswd.write(path, {})
    os.utime(path, (future + 5, future + 5))
    assert users.check("zoe", "two") is False
    assert users.users() == []


def test_write_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "htpasswd"
    htpasswd.write(path, {"a": "$2y$04$x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- moorage user --------------------------------------------------------------------------


def _run(args: list[str], stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, input=stdin)
    return result.exit_code, result.output


def test_user_add_list_remove(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    code, out = _run(["user", "add", "zoe", "--htpasswd", str(path), "--password-stdin"], "pw1\n")
    assert code == 0, out
    assert "added zoe" in out
    assert "pw1" not in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = htpasswd.read(path)
    assert bcrypt.checkpw(b"pw1", entries["zoe"].encode())
    assert entries["zoe"].split("$")[2] == f"{htpasswd.COST:02d}"
    assert "pw1" not in path.read_text()

    # stdin that is not a terminal is read even without the flag.
    code, out = _run(["user", "add", "yann", "--htpasswd", str(path)], "pw2\r\n")
    assert code == 0, out
    assert htpasswd.Htpasswd(path).check("yann", "pw2")

    code, out = _run(["user", "add", "zoe", "--htpasswd", str(path), "--password-stdin"], "pw3\n")
    assert code == 0 and "updated zoe" in out
    users = htpasswd.Htpasswd(path)
    assert users.check("zoe", "pw3") and not users.check("zoe", "pw1")

    code, out = _run(["user", "list", "--htpasswd", str(path)])
    assert code == 0
    assert out.split() == ["yann", "zoe"]

    code, out = _run(["user", "remove", "zoe", "--htpasswd", str(path)])
    assert code == 0 and "removed zoe" in out
    assert list(htpasswd.read(path)) == ["yann"]
    code, out = _run(["user", "remove", "zoe", "--htpasswd", str(path)])
    assert code != 0
    assert "no user zoe" in out


def test_user_add_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    code, out = _run(["user", "add", "zoe", "--htpasswd", str(path), "--password-stdin"], "\n")
    assert code != 0 and "empty" in out
    code, out = _run(["user", "add", "a:b", "--htpasswd", str(path), "--password-stdin"], "pw\n")
    assert code != 0
    assert not path.exists()


def test_user_add_uses_config_htpasswd(tmp_path: Path) -> None:
    path = tmp_path / "users"
    config = tmp_path / "moorage.yaml"
    config.write_text(f"auth:\n  htpasswd: {path}\n")
    code, out = _run(["user", "add", "zoe", "--config", str(config), "--password-stdin"], "pw\n")
    assert code == 0, out
    assert list(htpasswd.read(path)) == ["zoe"]


def test_password_cannot_be_given_on_the_command_line(tmp_path: Path) -> None:
    options = [p for p in user_add.params if isinstance(p, click.Option)]
    password_options = [name for p in options for name in p.opts if "password" in name.lower()]
    assert password_options == ["--password-stdin"]
    # The only options taking a value are the file locations.
    valued = sorted(name for p in options if not p.is_flag for name in p.opts)
    assert valued == ["--config", "--htpasswd"]
    flag = next(p for p in options if "--password-stdin" in p.opts)
    assert flag.is_flag
    arguments = [p.name for p in user_add.params if isinstance(p, click.Argument)]
    assert arguments == ["name"]
    # A password placed on argv is refused, and nothing is written.
    path = tmp_path / "htpasswd"
    for args in (["zoe", "s3cret"], ["zoe", "--password", "s3cret"], ["zoe", "-p", "s3cret"]):
        code, _ = _run(["user", "add", *args, "--htpasswd", str(path)], "")
        assert code == 2
    assert not path.exists()
