"""`moorage tls init`: the command line around moorage/tls_init.py."""

from __future__ import annotations

from pathlib import Path

import click

from moorage import config


@click.group("tls")
def tls() -> None:
    """Certificates for serving HTTPS."""


@tls.command("init")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="The name clients use for the registry (repeat for more; the first is the one shown).",
)
@click.option("--ip", "ips", multiple=True, help="An IP address clients may use (repeatable).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="The port clients use (default: the configured listen port).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Set tls.certificate and tls.key in this YAML file (created if missing).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The files go to DATA_DIR/tls (default: the configured data directory).",
)
@click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False), help="CA certificate.")
@click.option("--ca-key", type=click.Path(path_type=Path, dir_okay=False), help="CA key.")
@click.option("--cert", type=click.Path(path_type=Path, dir_okay=False), help="Server cert.")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), help="Server key.")
@click.option(
    "--days",
    type=click.IntRange(1, 825),
    default=365,
    show_default=True,
    help="Validity of the server certificate.",
)
@click.option(
    "--ca-days",
    type=click.IntRange(1, 36500),
    default=3650,
    show_default=True,
    help="Validity of a new CA.",
)
@click.option(
    "--force", is_flag=True, help="Make a new CA even if there is one (clients must trust it anew)."
)
def tls_init(
    hosts: tuple[str, ...],
    ips: tuple[str, ...],
    port: int | None,
    config_file: Path | None,
    data_dir: Path | None,
    ca_cert: Path | None,
    ca_key: Path | None,
    cert: Path | None,
    key: Path | None,
    days: int,
    ca_days: int,
    force: bool,
) -> None:
    """Make a private CA (kept on later runs) and a new server certificate for the --host names
    and --ip addresses, point the configuration at them, and print what each client must do to
    trust the registry."""
    from moorage import tls_init as impl

    try:
        settings = config.load(
            config_file if config_file is not None and config_file.exists() else None,
            datadir=data_dir,
        )
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    default = impl.Paths.under(settings.datadir.absolute() / "tls")
    paths = impl.Paths(
        *(
            (given or fallback).absolute()
            for given, fallback in (
                (ca_cert, default.ca_cert),
                (ca_key, default.ca_key),
                (cert, default.cert),
                (key, default.key),
            )
        )
    )
    try:
        result = impl.init(paths, hosts, ips, force=force, ca_days=ca_days, days=days)
        if config_file is not None:
            impl.point_config(config_file, paths.cert, paths.key)
    except (impl.TLSInitError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc

    verb = "made a new CA" if result.ca_created else "kept the CA"
    click.echo(
        f"{verb}: {paths.ca_cert} (key {paths.ca_key}, 0600), valid until "
        f"{result.ca_not_after:%Y-%m-%d}"
    )
    click.echo(
        f"server certificate: {paths.cert} (key {paths.key}, 0600) for "
        f"{', '.join(result.names)}, valid until {result.not_after:%Y-%m-%d}"
    )
    if result.ca_created:
        click.echo("Keep ca.key safe: whoever has it can impersonate any registry to your clients.")
    if result.ca_created and force:
        click.echo("The CA is new: every client must be given the new ca.crt (steps below).")
    click.echo()
    if config_file is not None:
        click.echo(f"{config_file}: tls.certificate and tls.key now point at them.")
        click.echo(f"Start:  moorage serve --config {config_file}")
    else:
        click.echo("Serve HTTPS with them:")
        click.echo(f"  moorage serve --tls-cert {paths.cert} --tls-key {paths.key}")
        click.echo("or put this in the configuration file:")
        click.echo(f"  tls:\n    certificate: {paths.cert}\n    key: {paths.key}")
    click.echo(
        "A running HTTPS server takes the new certificate on SIGHUP (systemctl reload moorage, "
        "or kill -HUP PID) without dropping connections; one serving plain HTTP needs a restart."
    )
    click.echo()
    click.echo(impl.client_steps(paths.ca_cert, hosts[0], port or settings.port), nl=False)
