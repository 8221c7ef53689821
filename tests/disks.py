"""Small real filesystems for tests that need a disk of their own (a full disk, a filesystem
that takes direct writes), mounted below the test's temp dir and unmounted at the end."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def mounted(kind: str, where: Path, size_mib: int) -> Iterator[Path]:
    """A fresh `kind` filesystem ("tmpfs" or "ext4") of `size_mib` MiB mounted at `where`
    (made here); unmounted lazily at the end, should a file still be open. The ext4 lives in an
    image file beside `where`, loop-mounted, with no blocks reserved for root."""
    where.mkdir()
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)]
    elif kind == "ext4":
        image = where.with_name(where.name + ".img")
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        command = ["mount", "-o", "loop", str(image), str(where)]
    else:
        raise ValueError(kind)
    subprocess.run(command, check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def resident_pages(path: Path) -> int:
    """How many of `path`'s pages are in the page cache (util-linux `fincore`)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip())
