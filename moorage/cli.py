"""Command line: `moorage serve` and friends. No business logic lives here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from moorage import __version__, config


@click.group()
@click.version_option(__version__, prog_name="moorage")
def main() -> None:
    """Moorage: a container image registry."""


@main.command()
@click.option("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where blobs and metadata live.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True),
    help="YAML configuration file.",
)
@click.option("--workers", type=int, help="Worker processes serving the one port.")
def serve(
    listen: str | None, data_dir: Path | None, config_file: Path | None, workers: int | None
) -> None:
    """Run the registry (embedded defaults: filesystem blobs, SQLite, ./moorage-data)."""
    from moorage.server import run

    try:
        settings = config.load(config_file, listen=listen, datadir=data_dir, workers=workers)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(
        level=settings.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    sys.exit(run(settings))


@main.group("config")
def config_group() -> None:
    """Configuration helpers."""


@config_group.command("check")
@click.argument("config_file", type=click.Path(path_type=Path, exists=True))
def config_check(config_file: Path) -> None:
    """Validate a configuration file (with MOORAGE_* overrides applied) and print it."""
    try:
        settings = config.load(config_file)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(settings.model_dump_json(indent=2))
