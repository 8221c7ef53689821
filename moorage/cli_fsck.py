"""`moorage fsck`: the command around `moorage.content.fsck` (options, progress, the summary and
the exit status). Its own module so that `cli.py` registers it in one line.

Exit status: 0 everything is consistent, 1 problems were found (so cron or CI can alert), 2
the check could not run (configuration, metadata or storage unreachable), 130 interrupted
(Ctrl-C) before it found any problem.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from moorage import config, logs

if TYPE_CHECKING:
    from moorage.content.fsck import Finding, Report

PERIOD = 10.0  # seconds between progress lines when not on a terminal
FAILED = 2
INTERRUPTED = 130


class CannotRun(click.ClickException):
    exit_code = FAILED


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _line(finding: Finding) -> str:
    blob = f" {finding.digest}" if finding.digest else ""
    return f"{finding.kind}:{blob} {finding.key}: {finding.detail}"


class _Counts:
    """What a pass has done so far, and a remaining-time estimate from its rate."""

    def __init__(self) -> None:
        _Counts.stage(self, "", None, None)

    def stage(self, name: str, total: int | None, total_bytes: int | None) -> None:
        self.name, self.total, self.total_bytes = name, total, total_bytes
        self.objects = self.nbytes = 0
        self.started = time.monotonic()

    def advance(self, objects: int, nbytes: int) -> None:
        self.objects += objects
        self.nbytes += nbytes

    def fraction(self) -> float | None:
        if self.total_bytes:
            return min(1.0, self.nbytes / self.total_bytes)
        if self.total:
            return min(1.0, self.objects / self.total)
        return None

    def remaining(self) -> float | None:
        done = self.fraction()
        if not done:
            return None
        return (time.monotonic() - self.started) * (1 - done) / done


class Lines(_Counts):
    """Not a terminal: a plain line every PERIOD seconds, on stderr; findings on stdout."""

    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self.out = out
        self.last = time.monotonic()

    def stage(self, name: str, total: int | None, total_bytes: int | None) -> None:
        super().stage(name, total, total_bytes)
        what = "objects that blob rows name" if name == "blobs" else "objects in storage"
        expected = f"{total} " if total is not None and name == "blobs" else ""
        click.echo(f"fsck: checking {expected}{what}", file=self.out)

    def advance(self, objects: int, nbytes: int) -> None:
        super().advance(objects, nbytes)
        if time.monotonic() - self.last >= PERIOD:
            self.last = time.monotonic()
            click.echo(self.describe(), file=self.out)

    def describe(self) -> str:
        count = f"{self.objects}/{self.total}" if self.total else str(self.objects)
        size = _bytes(self.nbytes)
        if self.total_bytes:
            size += f"/{_bytes(self.total_bytes)}"
        left = self.remaining()
        eta = "" if left is None else f", about {int(left // 60)}m{int(left % 60):02d}s left"
        return f"fsck {self.name}: {count} objects, {size}{eta}"

    def found(self, finding: Finding) -> None:
        click.echo(_line(finding))

    def close(self) -> None:
        pass


class Bar:
    """On a terminal: a rich progress bar on stderr with counts, bytes and an estimate."""

    def __init__(self, findings_here: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[size]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.findings_here = findings_here  # stdout is this terminal too: print above the bar
        self.counts = _Counts()
        self.task: Any = None
        self.progress.start()

    def stage(self, name: str, total: int | None, total_bytes: int | None) -> None:
        self.counts.stage(name, total, total_bytes)
        description = "blobs" if name == "blobs" else "orphans"
        self.task = self.progress.add_task(
            description, total=total_bytes or total, count="", size=""
        )
        self._show()

    def advance(self, objects: int, nbytes: int) -> None:
        self.counts.advance(objects, nbytes)
        self._show()

    def _show(self) -> None:
        c = self.counts
        count = f"{c.objects}/{c.total} objects" if c.total else f"{c.objects} objects"
        size = _bytes(c.nbytes) + (f"/{_bytes(c.total_bytes)}" if c.total_bytes else "")
        done = c.nbytes if c.total_bytes else c.objects
        self.progress.update(self.task, completed=done, count=count, size=size)

    def found(self, finding: Finding) -> None:
        if self.findings_here:
            self.progress.console.print(_line(finding), markup=False, highlight=False)
        else:
            click.echo(_line(finding))

    def close(self) -> None:
        self.progress.stop()


def summary(report: Report, verify: bool, delete: bool) -> list[str]:
    r = report
    checked = f"{r.objects} objects of {r.blobs} blobs ({_bytes(r.bytes)})"
    how = "contents hashed" if verify else "sizes only (--verify-digests hashes the contents)"
    found = (
        f"missing {r.missing}, wrong size {r.wrong_size}, "
        f"wrong digest {r.wrong_digest if verify else 'not checked'}, "
        f"orphans {r.orphans} ({_bytes(r.orphan_bytes)})"
    )
    if delete:
        found += f", deleted {r.deleted} ({_bytes(r.deleted_bytes)})"
    lines = [
        f"checked: {checked}, {how}",
        f"listed: {r.listed} objects in storage; left alone: {r.recent} newer than gc.grace, "
        f"{r.uploads} of live uploads, {r.pending} being deleted by garbage collection",
        f"found: {found}",
    ]
    if r.interrupted:
        lines.append("interrupted: the check did not finish")
    lines.append(f"{r.problems} problems found" if r.problems else "no problems found")
    return lines


async def _run(settings: config.Settings, verify: bool, delete: bool, display: Any) -> Report:
    from moorage.app import open_storage
    from moorage.content.fsck import Fsck
    from moorage.metadata import MetadataStore, migrations

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C aborts at once
        click.echo("stopping after the objects in hand (Ctrl-C again to abort)", err=True)

    loop.add_signal_handler(signal.SIGINT, interrupt)
    storage = await open_storage(settings)
    metadata = MetadataStore(settings.metadata_url)
    try:
        try:
            await metadata.open()
        except migrations.SchemaError as exc:
            raise CannotRun(str(exc)) from exc
        fsck = Fsck(
            metadata,
            storage,
            settings.gc.grace,
            verify=verify,
            delete=delete,
            progress=display,
            stop=stop,
        )
        return await fsck.run()
    finally:
        await metadata.close()
        await storage.close()


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@click.command("fsck")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where blobs and metadata live.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True),
    help="YAML configuration file.",
)
@click.option("--verify-digests", is_flag=True, help="Also hash every blob (reads everything).")
@click.option(
    "--delete", is_flag=True, help="Remove the orphans found (objects no metadata names)."
)
def fsck(
    config_file: Path | None, data_dir: Path | None, verify_digests: bool, delete: bool
) -> None:
    """Check that every blob in the metadata is stored whole, and find stored objects that
    nothing names (orphans, older than gc.grace). Safe while the server runs. Exit status:
    0 consistent, 1 problems found, 2 could not run, 130 interrupted."""
    try:
        settings = config.load(config_file, datadir=data_dir)
    except config.ConfigError as exc:
        raise CannotRun(str(exc)) from exc
    logs.configure(settings.log.level, settings.log.format)
    display: Lines | Bar = Bar(sys.stdout.isatty()) if sys.stderr.isatty() else Lines(sys.stderr)
    try:
        report = asyncio.run(_run(settings, verify_digests, delete, display))
    except KeyboardInterrupt:
        display.close()
        click.echo("aborted", err=True)
        sys.exit(INTERRUPTED)
    except click.ClickException:
        display.close()
        raise
    except Exception as exc:  # whatever stopped it, said in one line
        display.close()
        first = _first_error(exc)
        text = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
        raise CannotRun(f"fsck could not finish: {text}") from exc
    display.close()
    for line in summary(report, verify_digests, delete):
        click.echo(line)
    sys.exit(1 if report.problems else INTERRUPTED if report.interrupted else 0)
