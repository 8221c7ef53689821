"""What the offline commands share: the `--config` / `--data-dir` options `serve` takes, and
opening the deployment's metadata and storage the way the server does (so that a command run
beside the server keeps its invariants)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from moorage import config

if TYPE_CHECKING:
    from moorage.content.registry import Registry
    from moorage.metadata import MetadataStore


def data_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--data-dir` and `--config`, as `moorage serve` takes them."""
    command = click.option(
        "--data-dir", type=click.Path(path_type=Path), help="Where blobs and metadata live."
    )(command)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path, exists=True),
        help="YAML configuration file.",
    )(command)


def settings_of(config_file: Path | None, data_dir: Path | None) -> config.Settings:
    try:
        return config.load(config_file, datadir=data_dir)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.asynccontextmanager
async def metadata_of(
    settings: config.Settings, refused: type[Exception] = click.ClickException
) -> AsyncIterator[MetadataStore]:
    """The metadata store, open (a schema not at head: `refused` with the reason)."""
    from moorage.metadata import MetadataStore, migrations

    metadata = MetadataStore(settings.metadata_url)
    try:
        try:
            await metadata.open()
        except migrations.SchemaError as exc:
            raise refused(str(exc)) from exc
        yield metadata
    finally:
        await metadata.close()


@contextlib.asynccontextmanager
async def registry_of(
    settings: config.Settings, refused: type[Exception] = click.ClickException
) -> AsyncIterator[Registry]:
    """The content layer over the deployment's storage and metadata, as the server builds
    it (its storage rules included)."""
    from moorage.app import open_storage
    from moorage.content.registry import Registry

    storage = await open_storage(settings)
    try:
        async with metadata_of(settings, refused) as metadata:
            yield Registry(settings, storage, metadata)
    finally:
        await storage.close()
