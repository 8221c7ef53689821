"""Start-up checks: refuse to serve, with one clear line, from a state that cannot work.

Run once by `moorage serve` before it binds a port or forks a worker: a data directory that is
a file or read-only, a metadata database that is a directory or not a SQLite database, a
schema this Moorage cannot use (on PostgreSQL: any schema not at head, empty included, since
only `moorage db upgrade` migrates it), an htpasswd file that is missing. Each is a
`PreflightError` whose message is the line to print; nothing here prints or exits (the command
line does). When binding the port then fails because it is taken, `taken_port` says by whom.

Must not: change anything it checks (a probe file aside), or write to the database.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from moorage.config import Settings
from moorage.metadata import migrations

SQLITE_HEADER = b"SQLite format 3\x00"


class PreflightError(Exception):
    """The server cannot start; the message says why, in one line."""


def check(settings: Settings) -> None:
    """Raise PreflightError for the first problem found."""
    _writable_directory(settings.datadir, "data directory")
    _writable_directory(settings.blob_root, "blob storage directory")
    database = _sqlite_file(settings.metadata_url)
    if database is not None:
        _writable_directory(database.parent, "metadata database directory")
        _sqlite_database(database)
    _schema(settings.metadata_url, database)
    if settings.auth.htpasswd is not None:
        _readable_file(settings.auth.htpasswd, "htpasswd file")


def _writable_directory(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{what} {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError(f"{what} {path} cannot be created: {exc.strerror}") from exc
    probe = path / f".moorage-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"{what} {path} is not writable: {exc.strerror}") from exc


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _sqlite_database(path: Path) -> None:
    if not path.exists():
        return  # made on first start
    if not path.is_file():
        raise PreflightError(f"metadata database {path} is not a file")
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise PreflightError(f"metadata database {path} cannot be read: {exc.strerror}") from exc
    if not header:
        return  # an empty file is a new database to SQLite
    if header != SQLITE_HEADER:
        raise PreflightError(f"metadata database {path} is not a SQLite database")
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise PreflightError(f"metadata database {path} is damaged: {exc}") from exc


def _schema(url: str, database: Path | None) -> None:
    """SQLite upgrades itself when the store opens, unless a newer Moorage made its schema; any
    other database must be at head already."""
    if database is not None and (not database.exists() or database.stat().st_size == 0):
        return
    try:
        status = migrations.run(url, migrations.status, lock=False)
    except migrations.SchemaError as exc:
        raise PreflightError(str(exc)) from exc
    except (OSError, SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"metadata database cannot be read: {first}") from exc
    if database is None and not status.at_head:
        raise PreflightError(status.refusal())


def _readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise PreflightError(f"{what} {path} does not exist")
    if not path.is_file():
        raise PreflightError(f"{what} {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise PreflightError(f"{what} {path} cannot be read: {exc.strerror}") from exc


# /proc/net/tcp{,6}: the state column's value for a listening socket (include/net/tcp_states.h).
TCP_LISTEN = "0A"
PROC = Path("/proc")


@dataclass(frozen=True)
class _Listener:
    address: str
    port: int
    uid: int
    inode: int


def taken_port(host: str, port: int) -> str:
    """The line to print when `host:port` cannot be bound because it is in use: which listener
    holds it and, where this user may see it, which process. A second `moorage serve` started
    by mistake (install.sh run twice) or a packaged service on the same port (Debian's
    docker-registry defaults to 5000 too) is then named, not left for the user to find. Reads
    /proc only; on a system without it, or when no listener conflicts, says what the kernel
    said."""
    on_port = _listeners(port)
    listeners = [found for found in on_port if _conflicts(host, found.address)] or on_port
    if not listeners:
        return f"cannot listen on {_joined(host, port)}: Address already in use"
    holders = _holders({found.inode for found in listeners})
    if not holders:
        owner = listeners[0].uid
        try:
            user = pwd.getpwuid(owner).pw_name
        except KeyError:
            user = f"uid {owner}"
        return (
            f"cannot listen on {_joined(host, port)}: port {port} is taken by a process of "
            f"user {user}"
        )
    pid, inode = holders[0]
    # The one whose parent does not hold the socket too: the supervisor, not one of its workers.
    pids = {held for held, _ in holders}
    for held, held_inode in holders:
        if _parent(held) not in pids:
            pid, inode = held, held_inode
            break
    where = next(f for f in listeners if f.inode == inode)
    if _is_moorage_server(pid):
        return f"a Moorage is already serving on {_joined(where.address, port)} (pid {pid})"
    taken = f"port {port} is taken by {_name(pid)} (pid {pid})"
    return f"cannot listen on {_joined(host, port)}: {taken}"


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listeners(port: int) -> list[_Listener]:
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(
                _Listener(socket.inet_ntop(family, raw), port, int(fields[7]), int(fields[9]))
            )
    return found


def _conflicts(ours: str, theirs: str) -> bool:
    """Whether a listener on `theirs` keeps a bind to `ours` (same port) from succeeding."""
    try:
        mine, other = ipaddress.ip_address(ours), ipaddress.ip_address(theirs)
    except ValueError:
        return True  # a name: whatever it resolves to may be the one taken
    if isinstance(other, ipaddress.IPv6Address) and other.ipv4_mapped is not None:
        other = other.ipv4_mapped
    return mine == other or mine.is_unspecified or other.is_unspecified


def _holders(inodes: set[int]) -> list[tuple[int, int]]:
    """(pid, inode) of each process with one of these sockets open, lowest pid first; only
    processes this user may look into."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    holders = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                inode = wanted.get(os.readlink(fd))
                if inode is not None:
                    holders.append((int(entry.name), inode))
                    break
        except OSError:
            continue  # another user's, or gone
    return sorted(holders)


def _parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may contain spaces and parentheses.
    return int(stat.rpartition(")")[2].split()[1])


def _name(pid: int) -> str:
    try:
        name = (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        name = ""
    return name or "another program"


def _is_moorage_server(pid: int) -> bool:
    """`moorage serve` however started: the console script, `python -m moorage`, a unit."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(
        Path(arg).name == "moorage" and "serve" in argv[i + 1 :] for i, arg in enumerate(argv)
    )
