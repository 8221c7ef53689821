"""Command line: `moorage serve` and friends. No business logic lives here."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from moorage import __version__, config, logs, metricsdir, supervisor
from moorage.cli_common import data_options, metadata_of, registry_of
from moorage.cli_doctor import doctor
from moorage.cli_fsck import fsck
from moorage.cli_import import import_group
from moorage.cli_tls import tls
from moorage.progress import Progress, human_bytes

T = TypeVar("T")


@click.group()
@click.version_option(__version__, prog_name="moorage")
def main() -> None:
    """Moorage: a container image registry."""
    metricsdir.ignore_inherited()


main.add_command(fsck)
main.add_command(doctor)
main.add_command(tls)


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
@click.option(
    "--htpasswd",
    type=click.Path(path_type=Path),
    help="Turn on authentication with the users of this htpasswd file (basic).",
)
@click.option(
    "--auth",
    "auth_mode",
    type=click.Choice(["none", "basic", "token"]),
    help="Authentication mode; with --htpasswd the default is basic.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, exists=True),
    help="Serve HTTPS with this certificate chain (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, exists=True),
    help="The private key of --tls-cert (PEM).",
)
def serve(
    listen: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    workers: int | None,
    htpasswd: Path | None,
    auth_mode: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the registry (embedded defaults: filesystem blobs, SQLite, ./moorage-data)."""
    from moorage import preflight

    auth: dict[str, object] = {}
    if htpasswd is not None:
        auth["htpasswd"] = htpasswd
        auth["mode"] = auth_mode or "basic"
    elif auth_mode is not None:
        auth["mode"] = auth_mode
    tls = {k: v for k, v in (("certificate", tls_cert), ("key", tls_key)) if v is not None}

    def load() -> config.Settings:
        # Also what a SIGHUP runs, to read the file again under the same flags.
        return config.load(
            config_file,
            listen=listen,
            datadir=data_dir,
            workers=workers,
            auth=auth or None,
            tls=tls or None,
        )

    worker = supervisor.respawned()
    if worker is not None:
        # A worker the supervisor started in place of one that exited: it starts as the
        # server did (and was checked then), whatever the file says now; the workers' metrics
        # directory is the supervisor's.
        settings = config.unpack(worker.settings)
    else:
        try:
            settings = load()
        except config.ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            preflight.check(settings)
        except preflight.PreflightError as exc:
            raise click.ClickException(f"cannot start: {exc}") from exc
    logs.configure(settings.log.level, settings.log.format)
    with metricsdir.shared(settings) if worker is None else contextlib.nullcontext():
        # Imported only now: it imports prometheus_client, which must see the directory.
        from moorage.server import run

        status = run(settings, reload=load, worker=worker)
    sys.exit(status)


main.add_command(import_group)


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


@main.group()
def db() -> None:
    """The metadata database's schema (migrations: docs/deploy/upgrades.md)."""


def _metadata_url(config_file: Path | None, data_dir: Path | None) -> str:
    try:
        return config.load(config_file, datadir=data_dir).metadata_url
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _on_database(url: str, work: Callable[[Any], T], lock: bool) -> T:
    from sqlalchemy.exc import SQLAlchemyError

    from moorage.metadata import migrations

    try:
        return migrations.run(url, work, lock)
    except migrations.SchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"metadata database: {first}") from exc


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db.command("current")
@data_options
def db_current(config_file: Path | None, data_dir: Path | None) -> None:
    """Print the schema revision of the metadata database and whether it is at head."""
    from moorage.metadata import migrations

    url = _metadata_url(config_file, data_dir)
    database = migrations.sqlite_path(url)
    if database is not None and not database.exists():
        status = migrations.Status(None)  # not made yet; reading it would create the file
    else:
        status = _on_database(url, migrations.status, lock=False)
    click.echo(f"{_shown(url)}: {status.describe()}")


@db.command("upgrade")
@data_options
def db_upgrade(config_file: Path | None, data_dir: Path | None) -> None:
    """Migrate the metadata database to the head revision (once, however many run it at once)."""
    from moorage.metadata import migrations

    url = _metadata_url(config_file, data_dir)
    before, after = _on_database(url, migrations.upgrade, lock=True)
    if before == after:
        click.echo(f"{_shown(url)}: already at revision {after.revision} (head), nothing to do")
    else:
        click.echo(
            f"{_shown(url)}: upgraded from {before.name()} to revision {after.revision} (head)"
        )


@main.command("gc")
@data_options
@click.option("--dry-run", is_flag=True, help="Report what a cycle would free; change nothing.")
@click.option(
    "--grace",
    help="Override gc.grace for this run (a duration: 2h, 30m, 0).",
)
def gc_command(
    config_file: Path | None, data_dir: Path | None, dry_run: bool, grace: str | None
) -> None:
    """Run one garbage collection cycle now (the server also runs one every gc.interval);
    safe while the server runs (docs/design/gc.md)."""
    import asyncio

    try:
        settings = config.load(config_file, datadir=data_dir)
        grace_seconds = None if grace is None else float(config.parse_duration(grace))
    except (config.ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if grace_seconds is not None and grace_seconds < 0:
        raise click.ClickException("--grace must not be negative")
    logs.configure(settings.log.level, settings.log.format)
    try:
        with Progress("gc") as display:
            cycle = asyncio.run(_gc(settings, grace_seconds, dry_run, display))
    except (_Stopped, KeyboardInterrupt):
        click.echo(
            "interrupted: a dry run changes nothing"
            if dry_run
            else "interrupted: what was deleted is deleted whole (deletions are transactions of "
            "up to 100); the next cycle collects the rest",
            err=True,
        )
        sys.exit(130)
    c = cycle.collected
    verb = "would free" if dry_run else "freed"
    for name in sorted(c.repositories):
        r = c.repositories[name]
        tags = f"{r.tags} tags (retention), " if r.tags else ""
        click.echo(
            f"{name}: {tags}{r.manifests} manifests, {r.links} blob links ({human_bytes(r.bytes)})"
        )
    tags = f"{c.tags} tags (retention), " if c.tags else ""
    click.echo(
        f"{verb}: {tags}{c.manifests} manifests, {c.links} blob links, {c.v1_images} v1 images, "
        f"{c.blobs} blobs, {len(c.keys)} stored objects ({human_bytes(c.bytes)})"
        f" in {cycle.seconds:.1f} s"
    )


class _Stopped(Exception):
    """Ctrl-C: raised by the cycle's progress at its next report, where stopping is safe."""


# What `moorage gc` counts in each stage (moorage/metadata/gc.py), and how the stage is shown.
_GC_UNITS = {"retention": "tags", "objects": "deleted"}
_GC_STAGES = {"v1": "v1 images"}


async def _gc(
    settings: config.Settings, grace: float | None, dry_run: bool, display: Progress
) -> Any:
    where = "the dry run, which changes nothing" if dry_run else "between two deletions"
    stop = display.stop_on_interrupt(f"stopping {where} (Ctrl-C again to abort)")

    def progress(stage: str, done: int) -> None:
        """Called on the thread that runs the dry run's transaction (SQLite): Progress and
        threading.Event are safe to use from there."""
        if stop.is_set():
            raise _Stopped()
        display.count(_GC_STAGES.get(stage, stage), done, _GC_UNITS.get(stage, "candidates"))

    async with registry_of(settings) as registry:
        return await registry.collector.cycle(grace, dry_run, progress=progress)


@main.command("usage")
@data_options
@click.argument("namespace", required=False)
def usage_command(config_file: Path | None, data_dir: Path | None, namespace: str | None) -> None:
    """Print the storage used per namespace (each stored blob counted once per namespace),
    with its quota where one is configured; NAMESPACE: that one only."""
    import asyncio

    try:
        settings = config.load(config_file, datadir=data_dir)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in asyncio.run(_usage(settings, namespace)):
        click.echo(line)


async def _usage(settings: config.Settings, namespace: str | None) -> list[str]:
    quotas = {q.namespace.strip("/"): q.bytes for q in settings.quotas}
    async with metadata_of(settings) as metadata:
        if namespace:
            wanted = [namespace.strip("/")]
        else:
            wanted = sorted(set(await metadata.namespaces()) | set(quotas))
        lines = []
        for ns in wanted:
            used, blobs = await metadata.namespace_usage(ns)
            line = f"{ns}: {human_bytes(used)} in {blobs} blobs"
            if ns in quotas:
                share = used / quotas[ns] * 100 if quotas[ns] else 100.0
                line += f", quota {human_bytes(quotas[ns])} ({share:.0f}% used)"
            lines.append(line)
        return lines


@main.group()
def service() -> None:
    """Run Moorage as a systemd service."""


@service.command("install")
@click.option(
    "--user",
    "user_name",
    default="moorage",
    show_default=True,
    help="The unprivileged user it runs as (created if missing).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/moorage"),
    show_default=True,
    help="Where blobs and metadata live (the only place it writes).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True),
    help="YAML configuration file the service reads.",
)
@click.option("--name", default="moorage", show_default=True, help="The unit's name.")
@click.option(
    "--unit-dir",
    type=click.Path(path_type=Path),
    default=Path("/etc/systemd/system"),
    show_default=True,
    help="Where the unit file goes.",
)
@click.option("--no-reload", is_flag=True, help="Do not run `systemctl daemon-reload`.")
def service_install(
    user_name: str,
    data_dir: Path,
    config_file: Path | None,
    name: str,
    unit_dir: Path,
    no_reload: bool,
) -> None:
    """Write a systemd unit for `moorage serve` (confined, restarted on failure, reloaded by
    SIGHUP); it neither enables nor starts it."""
    import subprocess

    from moorage import service as svc

    data_dir = data_dir.resolve()
    config_path = config_file.resolve() if config_file is not None else None
    try:
        settings = config.load(config_path, datadir=data_dir)  # a file that would not start
        made = svc.ensure_user(user_name, data_dir)
        command = svc.executable()
        group = svc.group_of(user_name)
        drain = settings.http.draintimeout
        unit = svc.Service(name, user_name, group, data_dir, config_path, command, drain)
        path = svc.install(unit, unit_dir, reload=not no_reload)
    except (config.ConfigError, OSError, subprocess.CalledProcessError) as exc:
        raise click.ClickException(str(exc)) from exc
    if made:
        click.echo(f"created system user {user_name}")
    for needed in (command, Path(sys.executable).resolve()):
        closed = svc.unreachable(needed)
        if closed is not None:
            click.echo(
                f"warning: {user_name} cannot enter {closed}, so it cannot run {needed}: "
                "install Moorage (and its Python) where every user may read them, e.g. "
                "/opt/moorage, or open that directory",
                err=True,
            )
    click.echo(f"wrote {path}; data in {data_dir} (owned by {user_name})")
    click.echo(f"start it now and at boot:  systemctl enable --now {name}")
    click.echo(f"its log:                   journalctl -u {name} -f")
    click.echo(f"reload the configuration:  systemctl reload {name}")


@main.group()
def user() -> None:
    """Manage the users of an htpasswd file (bcrypt entries)."""


def _htpasswd_path(path: Path | None, config_file: Path | None) -> Path:
    if path is not None:
        return path
    settings = config.load(config_file)
    if settings.auth.htpasswd is None:
        raise click.ClickException("no htpasswd file: pass --htpasswd or set auth.htpasswd")
    return settings.auth.htpasswd


_file_option = click.option(
    "--htpasswd",
    "path",
    type=click.Path(path_type=Path),
    help="The htpasswd file (default: auth.htpasswd of the config).",
)
_config_option = click.option(
    "--config", "config_file", type=click.Path(path_type=Path, exists=True)
)


@user.command("add")
@click.argument("name")
@_file_option
@_config_option
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def user_add(name: str, path: Path | None, config_file: Path | None, password_stdin: bool) -> None:
    """Add a user, or change the password of an existing one."""
    from moorage.auth import htpasswd

    if not htpasswd.valid_user_name(name):
        raise click.ClickException("a user name cannot be empty or contain ':'")
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password cannot be empty")
    target = _htpasswd_path(path, config_file)
    entries = htpasswd.read(target)
    existed = name in entries
    entries[name] = htpasswd.hash_password(password)
    htpasswd.write(target, entries)
    click.echo(f"{'updated' if existed else 'added'} {name} in {target}")


@user.command("remove")
@click.argument("name")
@_file_option
@_config_option
def user_remove(name: str, path: Path | None, config_file: Path | None) -> None:
    """Remove a user."""
    from moorage.auth import htpasswd

    target = _htpasswd_path(path, config_file)
    entries = htpasswd.read(target)
    if entries.pop(name, None) is None:
        raise click.ClickException(f"no user {name} in {target}")
    htpasswd.write(target, entries)
    click.echo(f"removed {name} from {target}")


@user.command("list")
@_file_option
@_config_option
def user_list(path: Path | None, config_file: Path | None) -> None:
    """List the users."""
    from moorage.auth import htpasswd

    for name in sorted(htpasswd.read(_htpasswd_path(path, config_file))):
        click.echo(name)
