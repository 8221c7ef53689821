"""`moorage tls init`: a private CA and a server certificate, and what each client must do to
trust them.

Most "cannot log in" and "falls back to v1" reports come from a certificate the client does not
trust. A private CA (rather than a self-signed server certificate) lets every client trust the
registry once: the server certificate can be issued again, with more names or after it expires,
and the clients' copies of ca.crt keep verifying it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 365
# Issued a little in the past, so a client whose clock is behind still accepts a fresh pair.
BACKDATE = datetime.timedelta(hours=1)


class TLSInitError(Exception):
    """The CA or the configuration cannot be used as they are; the message says what to do."""


@dataclass(frozen=True)
class Paths:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @classmethod
    def under(cls, directory: Path) -> Paths:
        return cls(
            directory / "ca.crt",
            directory / "ca.key",
            directory / "server.crt",
            directory / "server.key",
        )


@dataclass(frozen=True)
class Result:
    paths: Paths
    ca_created: bool
    ca_not_after: datetime.datetime
    not_after: datetime.datetime
    names: list[str]


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write by a rename, so a server reloading on SIGHUP never reads half a file; keys are
    0600 from the start (the temporary file is made that way), whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600 if private else 0o644)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_ca(host: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # The date in the name tells two CAs apart in a trust store after `--force`.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Moorage"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Moorage CA {host} {now:%Y-%m-%d %H:%M:%S}"[:64]
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_ca(paths: Paths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TLSInitError(
            f"cannot use the CA in {paths.ca_cert} and {paths.ca_key}: {exc} "
            "(--force makes a new CA, which every client must then trust again)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise TLSInitError(
            f"{paths.ca_key} is not the key of {paths.ca_cert} "
            "(--force makes a new CA, which every client must then trust again)"
        )
    return cert, key


def _alt_names(hosts: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for value in [*hosts, *ips]:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            if value in ips:
                raise TLSInitError(f"--ip {value}: not an IP address") from None
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
                raise TLSInitError(f"--host {value}: not a host name") from None
            entry = x509.DNSName(value.lower())
        if entry not in names:
            names.append(entry)
    return names


def _server_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca.not_valid_after_utc)
    first = names[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first)[:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def init(
    paths: Paths,
    hosts: Sequence[str],
    ips: Sequence[str],
    *,
    force: bool = False,
    ca_days: int = CA_DAYS,
    days: int = SERVER_DAYS,
) -> Result:
    """Make the CA unless there is one (or `force`), then a new server certificate for `hosts`
    and `ips`. An existing CA is kept so that the clients that trust it go on working."""
    if not hosts:
        raise TLSInitError("at least one --host is needed")
    names = _alt_names(hosts, ips)
    have_key, have_cert = paths.ca_key.exists(), paths.ca_cert.exists()
    if force or not (have_key or have_cert):
        ca, ca_key = _new_ca(hosts[0], ca_days)
        _write(paths.ca_key, _key_pem(ca_key), private=True)
        _write(paths.ca_cert, ca.public_bytes(serialization.Encoding.PEM), private=False)
        created = True
    elif have_key and have_cert:
        ca, ca_key = _load_ca(paths)
        created = False
    else:
        there, missing = (
            (paths.ca_key, paths.ca_cert) if have_key else (paths.ca_cert, paths.ca_key)
        )
        raise TLSInitError(
            f"{there} exists but {missing} does not: put it back, or --force to make a new CA "
            "(which every client must then trust again)"
        )
    if ca.not_valid_after_utc <= _now():
        raise TLSInitError(
            f"the CA {paths.ca_cert} expired on {ca.not_valid_after_utc:%Y-%m-%d}: "
            "--force makes a new one (which every client must then trust)"
        )
    cert, key = _server_cert(ca, ca_key, names, days)
    # The key first: a SIGHUP between the two renames finds a mismatched pair and keeps the
    # old one (moorage/server.py tries a pair before using it); the next SIGHUP takes both.
    _write(paths.key, _key_pem(key), private=True)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return Result(
        paths,
        created,
        ca.not_valid_after_utc,
        cert.not_valid_after_utc,
        [str(n.value) for n in names],
    )


def point_config(config_file: Path, cert: Path, key: Path) -> None:
    """Set `tls.certificate` and `tls.key` in the YAML file, keeping its other settings. A file
    without a `tls` section gets one appended, so its comments and layout stay as they are;
    otherwise the file is written again from its parsed content (comments are lost)."""
    text = config_file.read_text() if config_file.exists() else ""
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TLSInitError(f"cannot read {config_file}: {exc}") from exc
    if not isinstance(data, dict):
        raise TLSInitError(f"{config_file} must be a mapping at the top level")
    section = {"certificate": str(cert), "key": str(key)}
    if "tls" not in data:
        block = yaml.safe_dump({"tls": section}, default_flow_style=False, sort_keys=False)
        if text and not text.endswith("\n"):
            text += "\n"
        new = text + block
    else:
        tls = data["tls"] if isinstance(data["tls"], dict) else {}
        data["tls"] = {**tls, **section}
        new = yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
    mode = config_file.stat().st_mode & 0o777 if config_file.exists() else 0o644
    _write(config_file, new.encode(), private=False)
    os.chmod(config_file, mode)


def registry_name(host: str, port: int) -> str:
    """The registry's name as clients type it, and as their certs.d directories are named:
    no port for 443, brackets around an IPv6 address."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == 443 else f"{shown}:{port}"


def client_steps(ca_cert: Path, host: str, port: int) -> str:
    """The commands that make each client trust the CA for this registry, as root on each
    client machine (with ca.crt copied there from `ca_cert`)."""
    name = registry_name(host, port)
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", name)
    ca = str(ca_cert)
    return f"""\
On each client machine, as root, with {ca} copied there (the commands name it by that path):

docker (no restart needed; docker never verifies registries on 127.0.0.0/8 nor ones listed in
"insecure-registries", so leave it out of that list):
  mkdir -p /etc/docker/certs.d/{name}
  cp {ca} /etc/docker/certs.d/{name}/ca.crt

podman, skopeo, buildah (and CRI-O):
  mkdir -p /etc/containers/certs.d/{name}
  cp {ca} /etc/containers/certs.d/{name}/ca.crt
  (rootless, per user instead: ~/.config/containers/certs.d/{name}/ca.crt)

containerd (nerdctl, ctr --hosts-dir /etc/containerd/certs.d, and the CRI plugin once its
registry config_path is /etc/containerd/certs.d):
  mkdir -p /etc/containerd/certs.d/{name}
  cp {ca} /etc/containerd/certs.d/{name}/ca.crt
  cat > /etc/containerd/certs.d/{name}/hosts.toml <<'EOF'
server = "https://{name}"

[host."https://{name}"]
  capabilities = ["pull", "resolve", "push"]
  ca = "/etc/containerd/certs.d/{name}/ca.crt"
EOF

the system trust store (curl, moorage doctor, and any other program; restart dockerd and
containerd afterwards for them to see it):
  Debian, Ubuntu:  cp {ca} /usr/local/share/ca-certificates/moorage-{safe}.crt
                   update-ca-certificates
  Fedora, RHEL:    cp {ca} /etc/pki/ca-trust/source/anchors/moorage-{safe}.crt
                   update-ca-trust

Check from a client: moorage doctor https://{name} --ca-file {ca}
"""
