"""`moorage serve` from a state that cannot work: one clear line, a non-zero exit, no traceback.

Each case starts a real `python -m moorage serve` process (bounded: a server that starts
instead of refusing is killed with its process group and fails the test).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import free_port

TIMEOUT = 30.0


def serve(*args: str, cwd: Path) -> tuple[int, str]:
    """Run `moorage serve` until it exits; (exit code, stdout and stderr)."""
    argv = [sys.executable, "-m", "moorage", "serve", "--workers", "1"]
    argv += ["--listen", f"127.0.0.1:{free_port()}", *args]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"server did not refuse to start:\n{out.decode()}") from None
    return proc.returncode, out.decode(errors="replace")


def assert_refused(code: int, output: str, expected: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: cannot start: "), output
    assert expected in lines[0], output


def not_sqlite(data: Path) -> None:
    data.mkdir()
    (data / "metadata.db").write_text("this is not a database\n" * 100)


def corrupt_sqlite(data: Path) -> None:
    data.mkdir()
    db = sqlite3.connect(data / "metadata.db")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with open(data / "metadata.db", "r+b") as f:
        f.seek(16)  # past the magic string: the page size and the rest of the header
        f.write(b"\xff" * 84)


def legacy_without_tables(data: Path) -> None:
    """Moorage 0.1.0's mark (a schema_info row) on a database without its tables: preflight
    takes it for a database to upgrade; the upgrade (in a child process, before any worker)
    refuses it."""
    data.mkdir()
    db = sqlite3.connect(data / "metadata.db")
    db.execute("CREATE TABLE schema_info (version INTEGER)")
    db.execute("INSERT INTO schema_info VALUES (1)")
    db.commit()
    db.close()


def database_is_directory(data: Path) -> None:
    (data / "metadata.db").mkdir(parents=True)


def data_dir_is_file(data: Path) -> None:
    data.write_text("a file\n")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "not-sqlite": (not_sqlite, "is not a SQLite database"),
    "corrupt-sqlite": (corrupt_sqlite, "is damaged"),
    "database-is-directory": (database_is_directory, "metadata.db is not a file"),
    "legacy-without-tables": (legacy_without_tables, "made by Moorage 0.1.0 lacks table"),
    "data-dir-is-file": (data_dir_is_file, "is not a directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_dir_is_refused_with_one_line(tmp_path: Path, case: str) -> None:
    make, expected = CASES[case]
    data = tmp_path / "data"
    make(data)
    code, output = serve("--data-dir", str(data), cwd=tmp_path)
    assert_refused(code, output, expected)


def test_read_only_data_dir_is_refused_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data)], check=True)
    try:
        code, output = serve("--data-dir", str(data), cwd=tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
    assert_refused(code, output, "is not writable: Read-only file system")


def test_missing_htpasswd_file_is_refused_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "users.htpasswd"
    args = ["--data-dir", str(tmp_path / "data"), "--htpasswd", str(missing)]
    code, output = serve(*args, cwd=tmp_path)
    assert_refused(code, output, f"htpasswd file {missing} does not exist")
