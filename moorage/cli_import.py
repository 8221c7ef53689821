"""`moorage import distribution PATH`: bring in what a CNCF Distribution storage root holds
(the work is moorage/content/importer.py; this is the command line around it)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from moorage import config, logs
from moorage.cli_common import data_options, registry_of

if TYPE_CHECKING:  # imported where it runs: it would slow the start of every other command
    from moorage.content.importer import Report


@click.group("import")
def import_group() -> None:
    """Bring in what another registry stored."""


@import_group.command("distribution")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@data_options
def distribution(path: Path, data_dir: Path | None, config_file: Path | None) -> None:
    """Import a CNCF Distribution (docker-registry 2.x) storage root: PATH is its filesystem
    `rootdirectory`. Repositories, blobs (hard-linked where the storage allows, else copied,
    each verified), manifests of every type and tags. Safe while the server runs; run it again
    to resume after an interrupt or to catch up: nothing is imported twice."""
    from moorage.content.importer import Report, SourceError, find_root

    try:
        settings = config.load(config_file, datadir=data_dir)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        root = find_root(path)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from exc
    logs.configure(settings.log.level, settings.log.format)
    report = Report()
    started = time.monotonic()
    try:
        asyncio.run(_run(settings, root, report))
    except KeyboardInterrupt:
        _show(report, root, time.monotonic() - started, "interrupted after")
        click.echo(
            "interrupted: what is imported stays; run the same command again to finish "
            "(nothing is imported twice)",
            err=True,
        )
        sys.exit(130)
    _show(report, root, time.monotonic() - started, "imported")
    if report.problems:
        raise click.ClickException(
            f"could not import {len(report.problems)} (listed above); the rest is imported"
        )


async def _run(settings: config.Settings, root: Path, report: Report) -> None:
    from moorage.content.importer import DistributionImport
    from moorage.progress import Progress

    async with registry_of(settings) as registry:
        with Progress("import") as progress:
            await DistributionImport(root, registry, progress, report).run()


def _show(report: Report, root: Path, seconds: float, verb: str) -> None:
    from moorage.progress import human_bytes

    r = report
    lines = [
        f"{verb} {root} in {seconds:.1f} s",
        f"  repositories  {r.repositories}",
        f"  blobs         {r.blobs_linked + r.blobs_copied} stored ({r.blobs_linked} "
        f"hard-linked, {r.blobs_copied} copied, {human_bytes(r.bytes_stored)}), "
        f"{r.blobs_present} there already",
        f"  blob links    {r.links_made} made, {r.links_present} there already",
        f"  manifests     {r.manifests_stored} stored, {r.manifests_present} there already",
        f"  tags          {r.tags_set} set ({r.tags_moved} moved), {r.tags_present} there already",
        "skipped",
        f"  {r.deleted_manifests} deleted manifests (a revision whose link is gone)",
        f"  {len(r.uploads)} unfinished uploads",
        *(f"    {upload}" for upload in r.uploads),
        f"  {r.unlinked_blobs} blobs that no repository links (Distribution's garbage "
        "collection would delete them)",
    ]
    if r.problems:
        lines.append(f"could not import ({len(r.problems)})")
        lines += [f"  {problem}" for problem in r.problems]
    click.echo("\n".join(lines))
