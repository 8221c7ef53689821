"""`moorage tls init`, run as a process: the CA and server files it makes (names, key type,
validity, modes), the configuration it edits, a CA kept across runs and replaced by --force,
and the refusals. Clients using the result over HTTPS: tests/clients/test_tls_init.py."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

INIT = (sys.executable, "-m", "moorage", "tls", "init")


def tls_init(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*INIT, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verifies(ca: Path, cert: Path, name: x509.GeneralName) -> bool:
    """Whether `cert` is valid for `name` under the CA alone, by the rules of the web PKI
    (the checks Go's crypto/x509, which docker, podman and skopeo use, also makes)."""
    verifier = PolicyBuilder().store(Store([load(ca)])).build_server_verifier(name)
    try:
        verifier.verify(load(cert), [])
    except VerificationError:
        return False
    return True


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def days(cert: x509.Certificate) -> float:
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    return span / datetime.timedelta(days=1)


def test_makes_a_ca_and_a_server_certificate_and_points_the_config_at_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "moorage.yml"
    config.write_text("# the registry\nlisten: 127.0.0.1:5443  # HTTPS\nworkers: 2\n")
    done = tls_init(
        "--host", "localhost", "--ip", "127.0.0.1", "--data-dir", data, "--config", config
    )

    tls = data / "tls"
    assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    assert mode(tls / "ca.key") == 0o600 and mode(tls / "server.key") == 0o600
    ca, server = load(tls / "ca.crt"), load(tls / "server.crt")
    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 3649 <= days(ca) <= 3651 and 365 <= days(server) <= 366
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert verifies(tls / "ca.crt", tls / "server.crt", x509.DNSName("localhost"))
    assert verifies(
        tls / "ca.crt", tls / "server.crt", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    )
    assert not verifies(tls / "ca.crt", tls / "server.crt", x509.DNSName("other.example"))

    # The file keeps its settings and comments, and now serves HTTPS with the new pair.
    text = config.read_text()
    assert text.startswith("# the registry\nlisten: 127.0.0.1:5443  # HTTPS\nworkers: 2\n")
    settings = yaml.safe_load(text)
    assert settings["tls"] == {
        "certificate": str(tls / "server.crt"),
        "key": str(tls / "server.key"),
    }
    assert settings["listen"] == "127.0.0.1:5443" and settings["workers"] == 2

    # The steps name the configured port, for every client.
    out = done.stdout
    ca_file = str(tls / "ca.crt")
    assert f"made a new CA: {ca_file}" in out
    assert f"cp {ca_file} /etc/docker/certs.d/localhost:5443/ca.crt" in out
    assert f"cp {ca_file} /etc/containers/certs.d/localhost:5443/ca.crt" in out
    assert 'ca = "/etc/containerd/certs.d/localhost:5443/ca.crt"' in out
    assert "/etc/containerd/certs.d/localhost:5443/hosts.toml" in out
    assert "/usr/local/share/ca-certificates/moorage-localhost_5443.crt" in out
    assert "update-ca-certificates" in out
    assert "SIGHUP" in out


def test_a_second_run_keeps_the_ca_and_force_replaces_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tls = data / "tls"
    tls_init("--host", "localhost", "--data-dir", data)
    ca_bytes = (tls / "ca.crt").read_bytes()
    ca_key = (tls / "ca.key").read_bytes()
    first = load(tls / "server.crt")

    again = tls_init(
        "--host", "localhost", "--host", "reg.example", "--ip", "10.77.0.1", "--data-dir", data
    )
    assert "kept the CA" in again.stdout
    assert (tls / "ca.crt").read_bytes() == ca_bytes and (tls / "ca.key").read_bytes() == ca_key
    second = load(tls / "server.crt")
    assert second.serial_number != first.serial_number
    # The clients' copy of the CA verifies the new certificate, with its new names.
    kept = tmp_path / "client-ca.crt"
    kept.write_bytes(ca_bytes)
    assert verifies(kept, tls / "server.crt", x509.DNSName("reg.example"))
    assert verifies(kept, tls / "server.crt", x509.IPAddress(ipaddress.ip_address("10.77.0.1")))

    forced = tls_init("--host", "localhost", "--data-dir", data, "--force")
    assert "made a new CA" in forced.stdout and "every client must" in forced.stdout
    assert (tls / "ca.crt").read_bytes() != ca_bytes
    assert (tls / "ca.key").read_bytes() != ca_key and mode(tls / "ca.key") == 0o600
    assert verifies(tls / "ca.crt", tls / "server.crt", x509.DNSName("localhost"))
    assert not verifies(kept, tls / "server.crt", x509.DNSName("localhost"))


def test_given_paths_validity_and_the_serve_flags_printed(tmp_path: Path) -> None:
    paths = {name: tmp_path / name / f"{name}.pem" for name in ("ca-cert", "ca-key", "cert", "key")}
    args = [arg for name, path in paths.items() for arg in (f"--{name}", path)]
    done = tls_init(
        "--host", "reg.example", "--port", "443", "--days", "30", "--ca-days", "100", *args
    )
    assert days(load(paths["cert"])) == pytest.approx(30, abs=0.1)
    assert days(load(paths["ca-cert"])) == pytest.approx(100, abs=0.1)
    assert mode(paths["ca-key"]) == 0o600 and mode(paths["key"]) == 0o600
    assert verifies(paths["ca-cert"], paths["cert"], x509.DNSName("reg.example"))
    # No config file: the flags to serve with, and the YAML; port 443 is the bare name.
    out = done.stdout
    assert f"moorage serve --tls-cert {paths['cert']} --tls-key {paths['key']}" in out
    assert f"certificate: {paths['cert']}" in out
    assert "/etc/docker/certs.d/reg.example/ca.crt" in out
    assert not (tmp_path / "moorage-data").exists()


def test_a_config_with_a_tls_section_is_updated(tmp_path: Path) -> None:
    config = tmp_path / "moorage.yml"
    config.write_text(
        yaml.safe_dump({"listen": "127.0.0.1:6000", "tls": {"certificate": "/old.crt"}})
    )
    os.chmod(config, 0o640)
    tls_init("--host", "localhost", "--data-dir", tmp_path / "data", "--config", config)
    settings = yaml.safe_load(config.read_text())
    tls = tmp_path / "data" / "tls"
    assert settings == {
        "listen": "127.0.0.1:6000",
        "tls": {"certificate": str(tls / "server.crt"), "key": str(tls / "server.key")},
    }
    assert mode(config) == 0o640


def test_refuses_half_a_ca_and_bad_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tls_init("--host", "localhost", "--data-dir", data)
    key = (data / "tls" / "ca.key").read_bytes()
    (data / "tls" / "ca.crt").unlink()
    refused = tls_init("--host", "localhost", "--data-dir", data, ok=False)
    assert "ca.crt does not" in refused.stderr and "--force" in refused.stderr
    assert (data / "tls" / "ca.key").read_bytes() == key

    bad_ip = tls_init(
        "--host", "localhost", "--ip", "localhost", "--data-dir", tmp_path / "d2", ok=False
    )
    assert "not an IP address" in bad_ip.stderr
    bad_host = tls_init("--host", "no such host", "--data-dir", tmp_path / "d3", ok=False)
    assert "not a host name" in bad_host.stderr
