"""`moorage tls init`, then the steps it prints, then real clients over HTTPS with verification
on: skopeo copies to and from the registry and podman pushes and pulls, trusting the CA through
`/etc/containers/certs.d/HOST:PORT/ca.crt` exactly where the command said to put it (installed by
the `certs_d` fixture and removed afterwards). A second run keeps the CA, so that trust goes on
verifying the server's new certificate after a SIGHUP; `--force` makes a CA it no longer trusts.

The server is `moorage serve --config FILE` with nothing but what `tls init` wrote into FILE to
make it serve HTTPS; clients call it `localhost:PORT` (it listens on 127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.clients.conftest import (
    CONTAINERS_CERTS_D,
    ContainersRun,
    Registry,
    clean_env,
    served_serial,
)
from tests.harness import LOOPBACK, MoorageProcess
from tests.images import make_image, tagged_digest

pytestmark = pytest.mark.clients

CertsD = Callable[[Path, str, Path], Path]
UNTRUSTED = "x509: certificate signed by unknown authority"
RELOAD_TIMEOUT = 15.0


def tls_init(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "moorage", "tls", "init", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def printed_ca_path(output: str, certs_d: Path, name: str, ca: Path) -> Path:
    """The certs.d file the printed steps copy the CA to (asserting they say so)."""
    target = certs_d / name / "ca.crt"
    assert f"mkdir -p {certs_d / name}\n" in output, output
    assert f"cp {ca} {target}\n" in output, output
    return target


def wait_for_serial(port: int, ca: Path, serial: int, server: MoorageProcess) -> None:
    """Until the server hands out the certificate `serial` (verified by `ca`): the one it
    served before the SIGHUP may be of another CA, which `ca` refuses."""
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        try:
            if served_serial(LOOPBACK, port, ca) == serial:
                return
        except ssl.SSLCertVerificationError:
            pass
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_tls_init_steps_make_skopeo_and_podman_verify_the_registry(
    tmp_path: Path, certs_d: CertsD
) -> None:
    base, data = tmp_path / "server", tmp_path / "server" / "data"
    config = tmp_path / "moorage.yml"
    server = MoorageProcess(data, base, args=["--config", config], base_env=clean_env())
    config.write_text(f"# written by the test\nlisten: {LOOPBACK}:{server.port}\n")
    name = f"localhost:{server.port}"
    tls = data / "tls"
    ca = tls / "ca.crt"

    output = tls_init(
        "--host", "localhost", "--ip", LOOPBACK, "--data-dir", data, "--config", config
    )
    assert yaml.safe_load(config.read_text())["tls"] == {
        "certificate": str(tls / "server.crt"),
        "key": str(tls / "server.key"),
    }
    trusted = printed_ca_path(output, CONTAINERS_CERTS_D, name, ca)

    server.ssl_context = ssl.create_default_context(cafile=str(ca))
    state: ContainersRun | None = None
    try:
        server.start_sync()
        assert server.proc is not None
        registry = Registry(
            f"https://{name}", name, server.pid, data, server.log_path, ca=ca, proc=server.proc
        )
        state = ContainersRun(tmp_path / "containers", registry)
        skopeo, podman = state.skopeo(), state.podman()

        img = make_image(tmp_path / "layout", layers=[131072, 4096], seed=907, tag="v1")
        dest = registry.ref("tls/app", "v1")
        archive = tmp_path / "image.tar"
        local = "localhost/moorage-test/tls:v1"
        skopeo("copy", img.ref, f"docker-archive:{archive}:{local}")
        podman("load", "-i", archive)
        image_id = podman("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
        remote = registry.name("tls/podman", "v1")
        digestfile = tmp_path / "pushed.digest"
        podman("tag", local, remote)

        # Verification is on: before the steps, both refuse the registry's certificate.
        refused = skopeo("copy", "--dest-tls-verify=true", img.ref, dest, check=False)
        assert refused.returncode != 0 and UNTRUSTED in refused.stderr, refused.stderr
        refused = podman("push", "--tls-verify=true", remote, check=False)
        assert refused.returncode != 0 and UNTRUSTED in refused.stderr, refused.stderr

        assert certs_d(CONTAINERS_CERTS_D, name, ca) == trusted

        skopeo("copy", "--preserve-digests", "--dest-tls-verify=true", img.ref, dest)
        out = tmp_path / "pulled"
        skopeo("copy", "--preserve-digests", "--src-tls-verify=true", dest, f"oci:{out}:v1")
        assert tagged_digest(out, "v1") == img.digest

        podman("push", "--tls-verify=true", "--digestfile", digestfile, remote)
        podman("rmi", "--force", local, remote)
        podman("pull", "--tls-verify=true", remote)
        info = json.loads(podman("image", "inspect", remote).stdout)[0]
        assert info["Id"] == image_id
        assert info["Digest"] == digestfile.read_text().strip()

        # Again with one more name: the same CA, a new server certificate that the server takes
        # on SIGHUP, and the trust installed above verifies it.
        ca_bytes = ca.read_bytes()
        old_serial = serial_of(tls / "server.crt")
        again = tls_init(
            "--host", "localhost", "--host", "registry.test", "--ip", LOOPBACK,
            "--data-dir", data, "--config", config,
        )  # fmt: skip
        assert "kept the CA" in again
        assert ca.read_bytes() == ca_bytes
        new_serial = serial_of(tls / "server.crt")
        assert new_serial != old_serial
        os.kill(server.pid, signal.SIGHUP)
        wait_for_serial(server.port, ca, new_serial, server)
        podman("rmi", "--force", remote)
        podman("pull", "--tls-verify=true", remote)
        inspected = skopeo("inspect", "--tls-verify=true", "--raw", dest)
        assert json.loads(inspected.stdout)["config"]["digest"] == img.config.digest

        # --force: a new CA, and the clients that trusted the old one refuse the server.
        forced = tls_init(
            "--host", "localhost", "--ip", LOOPBACK, "--data-dir", data, "--config", config,
            "--force",
        )  # fmt: skip
        assert "made a new CA" in forced and ca.read_bytes() != ca_bytes
        os.kill(server.pid, signal.SIGHUP)
        wait_for_serial(server.port, ca, serial_of(tls / "server.crt"), server)
        stale = skopeo("inspect", "--tls-verify=true", "--raw", dest, check=False)
        assert stale.returncode != 0 and UNTRUSTED in stale.stderr, stale.stderr
        assert re.search(r"reloaded TLS certificate", server.log_path.read_text())
    finally:
        if state is not None:
            state.cleanup()
        server.cleanup()
