"""`moorage fsck`: the command around `moorage.content.fsck` (options, progress, the summary and
the exit status). Its own module so that `cli.py` registers it in one line.

Exit status: 0 everything is consistent, 1 problems were found (so cron or CI can alert), 2
the check could not run (configuration, metadata or storage unreachable), 130 interrupted
(Ctrl-C) before it found any problem.

A check that stops unfinished (Ctrl-C, a failure, or killed: a checkpoint is also written every
few seconds) leaves `fsck.state` in the data directory: how far it got, with its options and
counts. `moorage fsck --resume` goes on from there; a check that finishes removes the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moorage import config, logs
from moorage.cli_common import data_options, registry_of
from moorage.progress import Progress, human_bytes

if TYPE_CHECKING:
    from moorage.content.fsck import Checkpoint, Finding, Report

FAILED = 2
INTERRUPTED = 130
STATE = "fsck.state"


class CannotRun(click.ClickException):
    exit_code = FAILED


def _line(finding: Finding) -> str:
    blob = f" {finding.digest}" if finding.digest else ""
    return f"{finding.kind}:{blob} {finding.key}: {finding.detail}"


class Display(Progress):
    """The progress (moorage/progress.py), and each finding on standard output as it comes."""

    def found(self, finding: Finding) -> None:
        self.echo(_line(finding))


def summary(report: Report, verify: bool, delete: bool) -> list[str]:
    r = report
    checked = f"{r.objects} objects of {r.blobs} blobs ({human_bytes(r.bytes)})"
    how = "contents hashed" if verify else "sizes only (--verify-digests hashes the contents)"
    found = (
        f"missing {r.missing}, wrong size {r.wrong_size}, "
        f"wrong digest {r.wrong_digest if verify else 'not checked'}, "
        f"orphans {r.orphans} ({human_bytes(r.orphan_bytes)})"
    )
    if delete:
        found += f", deleted {r.deleted} ({human_bytes(r.deleted_bytes)})"
    lines = [
        f"checked: {checked}, {how}",
        f"listed: {r.listed} objects in storage; left alone: {r.recent} newer than gc.grace, "
        f"{r.uploads} of live uploads, {r.pending} being deleted by garbage collection",
        f"found: {found}",
    ]
    if r.interrupted:
        lines.append(
            "interrupted: the check did not finish; the same command with --resume goes on "
            "from where it stopped"
        )
    lines.append(f"{r.problems} problems found" if r.problems else "no problems found")
    return lines


class State:
    """The checkpoint file of an unfinished check, and the options it ran with."""

    def __init__(self, path: Path, verify: bool, delete: bool) -> None:
        self.path = path
        self.options = {"verify_digests": verify, "delete": delete}

    def load(self) -> Checkpoint:
        """The checkpoint to resume, if it was taken with the same options."""
        from moorage.content.fsck import Checkpoint

        try:
            saved: dict[str, Any] = json.loads(self.path.read_text())
            checkpoint = Checkpoint(saved["phase"], saved["after"], dict(saved["counts"]))
            options = {name: bool(saved["options"][name]) for name in self.options}
        except FileNotFoundError:
            raise CannotRun(f"nothing to resume: no unfinished check ({self.path})") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CannotRun(f"cannot resume: {self.path} is unreadable ({exc})") from exc
        if options != self.options:
            flags = [
                f"{'with' if on else 'without'} --{name.replace('_', '-')}"
                for name, on in options.items()
            ]
            raise CannotRun(
                f"the unfinished check ran {' and '.join(flags)}: resume it with the same "
                "options, or run without --resume to start over"
            )
        return checkpoint

    def save(self, checkpoint: Checkpoint) -> None:
        saved = {
            "options": self.options,
            "phase": checkpoint.phase,
            "after": checkpoint.after,
            "counts": checkpoint.counts,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.tmp")
        partial.write_text(json.dumps(saved))
        os.replace(partial, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


async def _run(settings: config.Settings, state: State, resume: bool, display: Display) -> Report:
    from moorage.content.fsck import Fsck

    checkpoint = state.load() if resume else None
    if checkpoint is not None:
        where = f"after {checkpoint.after}" if checkpoint.after else "at its start"
        display.echo(f"resuming: the {checkpoint.phase} pass {where}")
    stop = display.stop_on_interrupt("stopping after the objects in hand (Ctrl-C again to abort)")
    async with registry_of(settings, refused=CannotRun) as registry:
        fsck = Fsck(
            registry.metadata,
            registry.blobs.storage,
            settings.gc.grace,
            verify=state.options["verify_digests"],
            delete=state.options["delete"],
            progress=display,
            stop=stop,
            resume=checkpoint,
            save=state.save,
        )
        report = await fsck.run()
    if not report.interrupted:
        state.remove()
    return report


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@click.command("fsck")
@data_options
@click.option("--verify-digests", is_flag=True, help="Also hash every blob (reads everything).")
@click.option(
    "--delete", is_flag=True, help="Remove the orphans found (objects no metadata names)."
)
@click.option(
    "--resume", is_flag=True, help="Go on from where an unfinished check (same options) stopped."
)
def fsck(
    config_file: Path | None,
    data_dir: Path | None,
    verify_digests: bool,
    delete: bool,
    resume: bool,
) -> None:
    """Check that every blob in the metadata is stored whole, and find stored objects that
    nothing names (orphans, older than gc.grace). Safe while the server runs. Exit status:
    0 consistent, 1 problems found, 2 could not run, 130 interrupted."""
    try:
        settings = config.load(config_file, datadir=data_dir)
    except config.ConfigError as exc:
        raise CannotRun(str(exc)) from exc
    logs.configure(settings.log.level, settings.log.format)
    state = State(settings.datadir / STATE, verify_digests, delete)
    try:
        with Display("fsck", unit="objects") as display:
            report = asyncio.run(_run(settings, state, resume, display))
    except KeyboardInterrupt:
        click.echo("aborted", err=True)
        sys.exit(INTERRUPTED)
    except click.ClickException:
        raise
    except Exception as exc:  # whatever stopped it, said in one line
        first = _first_error(exc)
        text = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
        raise CannotRun(f"fsck could not finish: {text}") from exc
    for line in summary(report, verify_digests, delete):
        click.echo(line)
    sys.exit(1 if report.problems else INTERRUPTED if report.interrupted else 0)
