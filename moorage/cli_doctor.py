"""`moorage doctor URL`: the command line around moorage/doctor.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

PASSWORD_VARIABLE = "MOORAGE_DOCTOR_PASSWORD"

_LABELS = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}


@click.command("doctor")
@click.argument("url")
@click.option(
    "--user", help=f"Check these credentials (password: ${PASSWORD_VARIABLE} or a prompt)."
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Trust this CA besides the system trust store (what a certs.d ca.crt does).",
)
@click.option(
    "--repository",
    default="library/alpine",
    show_default=True,
    help="The repository of the pull scope asked of a token realm.",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per step.")
def doctor(
    url: str, user: str | None, ca_file: Path | None, repository: str, timeout: float
) -> None:
    """Check, from this machine, what a client meets on its way to the registry at URL (any
    registry; https:// unless the URL says http://): name resolution, TCP, TLS, /v2/ and its
    challenge, the token realm, /v1/_ping, the clock. Each problem comes with what docker shows
    for it and the fix. Exit status 0 when a client would work."""
    from moorage.doctor import Finding, Target, diagnose

    password = None
    if user is not None:
        password = os.environ.get(PASSWORD_VARIABLE)
        if password is None:
            # Never on the command line: it would be in the shell history and in ps.
            password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    try:
        target = Target(
            url,
            user=user,
            password=password,
            ca_file=None if ca_file is None else str(ca_file),
            repository=repository,
            timeout=timeout,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    def show(finding: Finding) -> None:
        click.echo(f"{_LABELS[finding.level]}  {finding.check:<5}  {finding.message}")
        if finding.fix:
            click.echo(f"{'':13}fix: {finding.fix}")

    click.echo(f"checking {target.base}/ as a client would")
    findings = asyncio.run(diagnose(target, show))
    failures = [f for f in findings if f.level == "fail"]
    if failures:
        click.echo(
            f"a client would NOT work: {len(failures)} problem(s); the first is the cause to fix "
            "first"
        )
        sys.exit(1)
    click.echo("a client would work")
