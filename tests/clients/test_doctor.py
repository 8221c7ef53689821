"""`moorage doctor URL` against real servers on 127.0.0.1: Moorage in each auth mode, over
plain HTTP and over HTTPS with a throw-away CA (trusted, untrusted, expired, for another name),
a port where nothing listens, and CNCF Distribution 2.8 (`docker-registry`). The command runs as
a user runs it, in its own process; the password comes from MOORAGE_DOCTOR_PASSWORD."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.servers import Distribution
from tests.clients.conftest import (
    PASSWORD,
    USER,
    WRONG_PASSWORD,
    CertAuthority,
    Registry,
    ServerFactory,
    clean_env,
    require_binary,
)
from tests.harness import LOOPBACK, REPO_ROOT, MoorageProcess, free_port

pytestmark = [pytest.mark.clients, pytest.mark.timeout(300)]


def doctor(
    *args: str | os.PathLike[str], password: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m moorage doctor ARGS` with no proxy and no CA from the environment unless
    given; stdin closed, so a missing password would fail rather than wait at a prompt."""
    base = clean_env(**env)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "MOORAGE_DOCTOR_PASSWORD"):
        if name not in env:
            base.pop(name, None)
    if password is not None:
        base["MOORAGE_DOCTOR_PASSWORD"] = password
    pythonpath = [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p]
    base["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *pythonpath])
    return subprocess.run(
        [sys.executable, "-m", "moorage", "doctor", *map(os.fspath, args)],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def works(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "a client would work" in result.stdout
    assert "FAIL" not in result.stdout, result.stdout
    return result.stdout


def fails(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "a client would NOT work" in result.stdout, result.stdout
    return result.stdout


def test_plain_http_without_auth(moorage_server: ServerFactory) -> None:
    server = moorage_server(tls=False)
    out = works(doctor(server.url))
    assert "/v2/ answers 200: no login needed" in out
    assert "/v1/_ping answers: the legacy v1 protocol is served" in out
    assert "clocks agree" in out
    assert "plain HTTP on a loopback address" in out


def test_basic_auth_right_and_wrong_password(moorage_server: ServerFactory) -> None:
    server = moorage_server("basic", tls=False)
    out = works(doctor(server.url, "--user", USER, password=PASSWORD))
    assert "/v2/ asks for Basic credentials" in out
    assert f"the registry accepts the credentials of {USER}" in out

    out = fails(doctor(server.url, "--user", USER, password=WRONG_PASSWORD))
    assert f"FAIL  auth   the registry refused the credentials of {USER} (401)" in out
    assert "check the user name and password" in out

    # Without --user: a client can work once logged in; said, not a failure.
    out = works(doctor(server.url))
    assert "clients must log in" in out


def test_token_auth_over_https(moorage_server: ServerFactory) -> None:
    server = moorage_server("token")
    assert server.ca is not None
    out = works(doctor(server.url, "--user", USER, "--ca-file", server.ca, password=PASSWORD))
    assert f"/v2/ asks for a token: realm '{server.url}/auth/token'" in out
    assert (
        f"the realm {server.url}/auth/token issues a token (user {USER}) for "
        "repository:library/alpine:pull"
    ) in out
    assert "the registry accepts the realm's token" in out

    out = fails(doctor(server.url, "--user", USER, "--ca-file", server.ca, password=WRONG_PASSWORD))
    assert f"FAIL  token  the token realm refused the credentials of {USER} (401)" in out


def test_token_realm_out_of_reach(moorage_server: ServerFactory) -> None:
    """A registry that advertises a realm its clients cannot reach (the external URL set wrong
    behind a proxy): /v2/ itself answers, the login cannot."""
    elsewhere = f"http://{LOOPBACK}:{free_port()}"
    server = moorage_server("token", tls=False, config={"http": {"host": elsewhere}})
    out = fails(doctor(server.url, "--user", USER, password=PASSWORD))
    assert f"/v2/ asks for a token: realm '{elsewhere}/auth/token'" in out
    assert f"FAIL  token  the token realm {elsewhere}/auth/token cannot be reached from here" in out
    assert "http.host (the external URL) behind a proxy" in out


def test_https_trust(moorage_server: ServerFactory) -> None:
    server = moorage_server()
    assert server.ca is not None
    out = fails(doctor(server.url))
    assert "issued by 'Moorage Test CA', which this machine does not trust" in out
    assert "x509: certificate signed by unknown authority" in out
    assert f"/etc/docker/certs.d/{server.host}/ca.crt" in out
    assert f"/etc/containers/certs.d/{server.host}/ca.crt" in out
    # What failed is only the trust: names and dates are fine.
    assert "the certificate's names cover 127.0.0.1" in out

    out = works(doctor(server.url, "--ca-file", server.ca))
    assert f"trusted through {server.ca}, not through the system trust store" in out
    assert "/v2/ answers 200" in out

    out = works(doctor(server.url, SSL_CERT_FILE=str(server.ca)))
    assert "the system trust store trusts the certificate" in out


def _expired(ca: CertAuthority, directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from the test CA that expired ten days ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=40))
        .not_valid_after(now - datetime.timedelta(days=10))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "expired.crt", directory / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def tls_moorage(tmp_path: Path) -> Iterator[list[MoorageProcess]]:
    """Moorage servers with a certificate of the test's choosing (the harness's readiness
    probe does not verify it: these certificates are meant to be wrong)."""
    servers: list[MoorageProcess] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.cleanup()


def _start_tls(servers: list[MoorageProcess], base: Path, cert: Path, key: Path) -> MoorageProcess:
    server = MoorageProcess(
        base / "data",
        base,
        args=["--tls-cert", cert, "--tls-key", key],
        ssl_context=_unverified(),
        base_env=clean_env(),
    )
    servers.append(server)
    server.start_sync(30)
    return server


def test_expired_certificate(
    tmp_path: Path, tls_ca: CertAuthority, tls_moorage: list[MoorageProcess]
) -> None:
    cert, key = _expired(tls_ca, tmp_path / "tls")
    server = _start_tls(tls_moorage, tmp_path / "server", cert, key)
    out = fails(doctor(server.url, "--ca-file", tls_ca.ca_file))
    assert "FAIL  tls    the certificate expired on" in out
    assert "x509: certificate has expired or is not yet valid" in out
    assert "renew the certificate" in out
    # The chain itself is trusted: only the date is wrong.
    assert "does not trust" not in out


def test_certificate_for_another_name(
    tmp_path: Path, tls_ca: CertAuthority, tls_moorage: list[MoorageProcess]
) -> None:
    issued = tls_ca.issue(
        tmp_path / "tls" / "other.crt", tmp_path / "tls" / "other.key", ["10.9.8.7"]
    )
    server = _start_tls(tls_moorage, tmp_path / "server", issued.cert, issued.key)
    out = fails(doctor(server.url, "--ca-file", tls_ca.ca_file))
    assert "FAIL  tls    the certificate is for 10.9.8.7, not for 127.0.0.1" in out
    assert "x509: certificate is valid for ..., not 127.0.0.1" in out


def test_nothing_listening() -> None:
    port = free_port()
    out = fails(doctor(f"https://{LOOPBACK}:{port}"))
    assert f"FAIL  tcp    cannot connect to {LOOPBACK}:{port}: nothing listens there" in out
    assert "start the registry" in out


def test_http_and_https_mixed_up(moorage_server: ServerFactory) -> None:
    plain = moorage_server(tls=False)
    out = fails(doctor(f"https://{plain.host}"))
    assert f"{plain.host} speaks plain HTTP, not HTTPS" in out
    assert "server gave HTTP response to HTTPS client" in out
    assert "insecure-registries" in out

    secure = moorage_server()
    out = fails(doctor(f"http://{secure.host}"))
    assert f"{secure.host} speaks HTTPS, not plain HTTP" in out
    assert f"use https://{secure.host}" in out


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[Registry]:
    require_binary("docker-registry")
    server = Distribution(tmp_path / "distribution")
    try:
        server.start_sync(60)
        yield Registry(server.url, server.host, server.pid, server.root / "data", server.log_path)
    finally:
        server.cleanup()


def test_distribution(distribution: Registry) -> None:
    out = works(doctor(distribution.url))
    assert "/v2/ answers 200: no login needed" in out
    assert "info  v1     /v1/_ping answers 404: no legacy v1 protocol here" in out
