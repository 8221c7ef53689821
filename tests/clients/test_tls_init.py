"""`moorage tls init`, then the steps it prints, then real clients over HTTPS with verification
on: skopeo copies to and from the registry and podman pushes and pulls, trusting the CA through
`/etc/containers/certs.d/HOST:PORT/ca.crt` exactly where the command said to put it (installed by
the `certs_d` fixture and removed afterwards). A second run keeps the CA, so that trust goes on
verifying the server's new certificate after a SIGHUP; `--force` makes a CA it no longer trusts.

The server is `moorage serve --config FILE` with nothing but what `tls init` wrote into FILE to
make it serve HTTPS. For skopeo and podman clients call it `localhost:PORT` (it listens on
127.0.0.1 only). docker never verifies a registry on 127.0.0.0/8, so its test puts the server
and a private dockerd in a network namespace of their own, the server on 10.77.0.1 (a veth
pair inside it, unreachable from outside), and docker pushes and pulls through
`/etc/docker/certs.d/10.77.0.1:5443/ca.crt` after refusing the certificate without it. A
private containerd pulls and pushes with ctr through the printed hosts.toml and ca.crt in
`/etc/containerd/certs.d/HOST:PORT/`, until `--force` makes a CA it does not trust."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.clients.conftest import (
    CONTAINERS_CERTS_D,
    DOCKER_CERTS_D,
    ContainersRun,
    Registry,
    clean_env,
    private_containerd,
    pushed_digest,
    require_binary,
    run,
    running_dockerd,
    served_serial,
    stop_process,
    tail,
)
from tests.harness import LOOPBACK, REPO_ROOT, MoorageProcess
from tests.images import make_image, sha256_digest, tagged_digest

pytestmark = pytest.mark.clients

CertsD = Callable[[Path, str, Path], Path]
ContainersFor = Callable[[Registry], ContainersRun]
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


@contextlib.contextmanager
def localhost_registry(tmp_path: Path) -> Iterator[tuple[MoorageProcess, Registry, str]]:
    """`tls init --host localhost --ip 127.0.0.1 --data-dir D --config C`, then `moorage
    serve --config C` on 127.0.0.1 (HTTPS by what tls init wrote); yields the server, the
    registry as clients name it (`localhost:PORT`) and the printed steps. Stopped by its PID."""
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
    server.ssl_context = ssl.create_default_context(cafile=str(ca))
    try:
        server.start_sync()
        assert server.proc is not None
        yield (
            server,
            Registry(
                f"https://{name}", name, server.pid, data, server.log_path, ca=ca, proc=server.proc
            ),
            output,
        )
    finally:
        server.cleanup()


def test_tls_init_steps_make_skopeo_and_podman_verify_the_registry(
    tmp_path: Path, certs_d: CertsD, containers_for: ContainersFor
) -> None:
    with localhost_registry(tmp_path) as (server, registry, output):
        name, ca, data = registry.host, registry.ca, registry.data_dir
        tls = data / "tls"
        assert ca is not None
        config = tmp_path / "moorage.yml"
        trusted = printed_ca_path(output, CONTAINERS_CERTS_D, name, ca)
        state = containers_for(registry)
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


# ---------------------------------------------------------------------------------------------
# docker, which verifies only off 127.0.0.0/8: the server and a private dockerd in a network
# namespace of their own, the server at 10.77.0.1 on a veth pair that exists only in there.

NETNS_ADDRESS = "10.77.0.1"
NETNS_PORT = 5443
SERVING_TIMEOUT = 30.0


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    """A new network namespace with loopback up and NETNS_ADDRESS on a veth pair inside it;
    yields its `nsenter` option. Deleted at the end (its interfaces go with it)."""
    ip = require_binary("ip")
    name = f"moorage-tls-{os.getpid()}"
    subprocess.run([ip, "netns", "add", name], check=True, timeout=30)
    try:
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", "mrg0", "type", "veth", "peer", "name", "mrg1"],
            ["addr", "add", f"{NETNS_ADDRESS}/24", "dev", "mrg0"],
            ["link", "set", "mrg0", "up"],
            ["link", "set", "mrg1", "up"],
        ):
            subprocess.run([ip, "-n", name, *args], check=True, timeout=30)
        yield f"--net=/run/netns/{name}"
    finally:
        subprocess.run([ip, "netns", "delete", name], check=False, timeout=30)


@contextlib.contextmanager
def serving_in(namespace: str, base: Path, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`moorage serve --config` in the namespace (nsenter execs it: the PID is the server's),
    up once it logs that it serves; stopped by its PID."""
    log = base / "moorage.log"
    env = clean_env(PYTHONPATH=str(REPO_ROOT), MOORAGE_HTTP_DRAINTIMEOUT="0")
    serve = [sys.executable, "-m", "moorage", "serve", "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [require_binary("nsenter"), namespace, *serve],
            env=env,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVING_TIMEOUT
        while "serving on" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"moorage exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"moorage did not start:\n{tail(log)}"
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)


def test_tls_init_steps_make_docker_verify_the_registry(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, certs_d: CertsD
) -> None:
    data, config = tmp_path / "data", tmp_path / "moorage.yml"
    config.write_text(f"listen: {NETNS_ADDRESS}:{NETNS_PORT}\ndatadir: {data}\n")
    name = f"{NETNS_ADDRESS}:{NETNS_PORT}"
    ca = data / "tls" / "ca.crt"
    output = tls_init("--host", NETNS_ADDRESS, "--config", config)
    trusted = printed_ca_path(output, DOCKER_CERTS_D, name, ca)

    with (
        network_namespace() as namespace,
        serving_in(namespace, tmp_path, config) as server,
    ):
        registry = Registry(
            f"https://{name}", name, server.pid, data, tmp_path / "moorage.log", ca=ca
        )
        base = tmp_path_factory.mktemp("dk")
        nsenter = [require_binary("nsenter"), namespace]
        with running_dockerd(base, registry, prefix=nsenter) as docker:
            state = ContainersRun(tmp_path / "containers", registry)
            try:
                img = make_image(tmp_path / "layout", layers=[65536, 2048], seed=911, tag="v1")
                archive = tmp_path / "image.tar"
                remote = registry.name("tls/docker", "v1")
                state.skopeo()("copy", img.ref, f"docker-archive:{archive}:{remote}")
            finally:
                state.cleanup()
            docker("load", "-i", archive)
            image_id = docker("image", "inspect", "--format", "{{.Id}}", remote).stdout.strip()
            assert image_id == img.config.digest

            # Off 127.0.0.0/8 docker verifies: it refuses the certificate before the step...
            refused = docker("push", remote, check=False)
            assert refused.returncode != 0, refused.stdout
            assert UNTRUSTED in refused.stdout + refused.stderr, refused.stdout + refused.stderr

            # ...and pushes and pulls once the CA is where the printed step puts it.
            assert certs_d(DOCKER_CERTS_D, name, ca) == trusted
            pushed = pushed_digest(docker("push", remote).stdout, "v1")
            docker("rmi", remote)
            pulled = docker("pull", remote).stdout
            assert f"Digest: {pushed}" in pulled, pulled
            again = docker("image", "inspect", "--format", "{{.Id}}", remote).stdout.strip()
            assert again == image_id


# ---------------------------------------------------------------------------------------------
# containerd: a private containerd and ctr, through the printed hosts.toml in
# /etc/containerd/certs.d/HOST:PORT/ (ctr --hosts-dir, as the steps say).

CONTAINERD_CERTS_D = Path("/etc/containerd/certs.d")


def printed_hosts_toml(output: str, directory: Path) -> str:
    """The hosts.toml the printed steps write into `directory` (a shell here-document)."""
    match = re.search(
        rf"cat > {re.escape(str(directory))}/hosts.toml <<'EOF'\n(.*?)\nEOF\n", output, re.S
    )
    assert match, output
    return match.group(1) + "\n"


def test_tls_init_steps_make_containerd_verify_the_registry(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    certs_d: CertsD,
    containers_for: ContainersFor,
) -> None:
    with localhost_registry(tmp_path) as (server, registry, output):
        name, ca, data = registry.host, registry.ca, registry.data_dir
        assert ca is not None
        hosts_dir = CONTAINERD_CERTS_D / name
        assert f"cp {ca} {hosts_dir / 'ca.crt'}\n" in output, output
        hosts_toml = printed_hosts_toml(output, hosts_dir)
        assert f'ca = "{hosts_dir / "ca.crt"}"' in hosts_toml

        # An image in the registry, pushed by skopeo trusting the CA through a --cert-dir.
        img = make_image(tmp_path / "layout", layers=[65536, 2048], seed=913, tag="v1")
        cert_dir = tmp_path / "cert-dir"
        cert_dir.mkdir()
        shutil.copyfile(ca, cert_dir / "ca.crt")
        skopeo = containers_for(registry).skopeo()
        skopeo("copy", "--dest-cert-dir", cert_dir, img.ref, registry.ref("tls/ctr", "v1"))

        ref = registry.name("tls/ctr", "v1")
        with private_containerd(tmp_path_factory.mktemp("ctd")) as ctr:
            pull = [*ctr, "images", "pull", "--hosts-dir", str(CONTAINERD_CERTS_D)]
            pull += ["--snapshotter", "native"]
            # Without hosts.toml containerd speaks plain HTTP to localhost, which fails.
            assert run([*pull, ref], check=False).returncode != 0

            assert certs_d(CONTAINERD_CERTS_D, name, ca) == hosts_dir / "ca.crt"
            (hosts_dir / "hosts.toml").write_text(hosts_toml)
            try:
                run([*pull, ref])
                listed = run([*ctr, "images", "list", "--quiet"]).stdout.split()
                assert ref in listed
                digest = run([*ctr, "images", "list"]).stdout
                assert img.digest in digest, digest
                pushed = registry.name("tls/ctr", "v2")
                run([*ctr, "images", "tag", ref, pushed])
                run([*ctr, "images", "push", "--hosts-dir", str(CONTAINERD_CERTS_D), pushed])
                served = skopeo(
                    "inspect", "--cert-dir", cert_dir, "--raw", registry.ref("tls/ctr", "v2")
                )
                assert sha256_digest(served.stdout.encode()) == img.digest

                # A new CA that containerd has not been given: it refuses the server.
                tls_init(
                    "--host", "localhost", "--ip", LOOPBACK, "--data-dir", data, "--force"
                )  # fmt: skip
                os.kill(server.pid, signal.SIGHUP)
                wait_for_serial(server.port, ca, serial_of(data / "tls" / "server.crt"), server)
                run([*ctr, "images", "rm", ref])
                run([*ctr, "content", "rm", img.digest], check=False)
                refused = run([*pull, ref], check=False)
                assert refused.returncode != 0 and UNTRUSTED in refused.stderr, refused.stderr
            finally:
                (hosts_dir / "hosts.toml").unlink(missing_ok=True)
