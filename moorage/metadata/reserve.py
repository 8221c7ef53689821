"""A reserve of disk space next to the SQLite database, and what "disk full" looks like there.

SQLite needs free space to delete: a DELETE appends pages to the write-ahead log before it can
free any. So on a full disk nothing could be deleted, and space could not be freed through the
API. The store therefore keeps a small file, `<database>-reserve`, of RESERVE_BYTES. When a
transaction that deletes (a manifest, a tag, a blob link, an upload session) fails because the
disk is full, the reserve is removed and the transaction run once more: it goes through, and
the space stays free for the deletes after it. Other writes never touch the reserve: they get
`StorageFull`. The reserve is made again by a later write once the disk has room for it twice
over.

Must not: raise from `make` (a reserve is best effort; the store works without one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from sqlalchemy.exc import OperationalError

log = logging.getLogger("moorage.metadata")

RESERVE_BYTES = 2 << 20


def is_full(exc: BaseException) -> bool:
    """Did SQLite fail because the disk (or a quota) is full?"""
    orig = exc.orig if isinstance(exc, OperationalError) else exc
    if isinstance(orig, sqlite3.Error):
        return (getattr(orig, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return False


class Reserve:
    def __init__(self, database: Path, size: int = RESERVE_BYTES) -> None:
        self.path = database.with_name(database.name + "-reserve")
        self.size = size

    def make(self) -> None:
        """Make the reserve if it is missing and the disk has room for it twice over."""
        if self.path.exists():  # made here, or by another worker
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            stat = os.statvfs(self.path.parent)
            if stat.f_bavail * stat.f_frsize < 2 * self.size:
                return
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning(
                "disk space reserve not made", extra={"path": str(self.path), "error": str(exc)}
            )

    def release(self) -> bool:
        """Free the reserve; False if there was none to free."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk full: reserve released", extra={"path": str(self.path)})
        return True
