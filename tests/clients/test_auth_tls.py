"""Real clients against Moorage with authentication, over HTTPS that the clients verify.

Every server here is HTTPS with a certificate of the session's test CA, and each client trusts
that CA the way users set it up (skopeo `--cert-dir`, podman `/etc/containers/certs.d`, docker
`/etc/docker/certs.d`); no test turns verification off, and the skopeo and podman login tests
first show that the client refuses the server before the CA is installed. Both auth modes run:
`basic` (htpasswd on every request) and `token` (the built-in token server at /auth/token).

Every server listens on 127.0.0.1, docker's too. dockerd treats 127.0.0.0/8 as an insecure
registry (moby always appends it to the insecure CIDRs; it cannot be switched off), and then
does not verify the certificate: the proof that clients verify the server against the CA is
carried by the skopeo and podman tests. The docker test proves login, push, pull, cross-repo
mount and logout over HTTPS (the server speaks nothing but TLS).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509

from tests.clients.conftest import (
    CONTAINERS_CERTS_D,
    DOCKER_CERTS_D,
    PASSWORD,
    USER,
    WRONG_PASSWORD,
    AuthMode,
    CertAuthority,
    ContainersRun,
    Docker,
    Registry,
    ServerFactory,
    basic_auth,
    layer_statuses,
    pushed_digest,
    served_serial,
    tail,
)
from tests.images import blob_bytes, make_image, make_index, sha256_digest, tagged_digest

pytestmark = pytest.mark.clients

MODES = ("basic", "token")
UNTRUSTED = "x509: certificate signed by unknown authority"
BAD_LOGIN = "invalid username/password"
RELOAD_TIMEOUT = 15.0

CertsD = Callable[[Path, str, Path], Path]
ContainersFor = Callable[[Registry], ContainersRun]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> AuthMode:
    assert request.param in MODES
    return cast(AuthMode, request.param)


def stored_login(authfile: Path, host: str) -> dict[str, str] | None:
    """The auth file's entry for `host` (containers auth.json and docker config.json share the
    format), with `auth` decoded to user and password."""
    if not authfile.exists():
        return None
    entry = json.loads(authfile.read_text()).get("auths", {}).get(host)
    if entry is None:
        return None
    user, _, password = base64.b64decode(entry.get("auth", "")).decode().partition(":")
    return {**entry, "user": user, "password": password}


def login(
    tool: Callable[..., subprocess.CompletedProcess[str]],
    host: str,
    password: str,
    *extra: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`TOOL login [EXTRA] -u USER --password-stdin HOST` (skopeo, podman and docker alike)."""
    return tool(
        "login",
        *extra,
        "-u",
        USER,
        "--password-stdin",
        host,
        input=f"{password}\n".encode(),
        check=check,
    )


def check_challenge(server: Registry, mode: AuthMode) -> None:
    """Anonymous /v2/ is refused with the challenge of the mode."""
    resp = server.request("GET", "/v2/")
    assert resp.status == 401, resp
    challenge = resp.headers.get("WWW-Authenticate", "")
    if mode == "basic":
        assert challenge.startswith("Basic realm="), challenge
    else:
        assert challenge.startswith("Bearer "), challenge
        assert f'realm="https://{server.host}/auth/token"' in challenge, challenge
        assert 'service="moorage"' in challenge, challenge


def _host_port(server: Registry) -> tuple[str, int]:
    host, _, port = server.host.rpartition(":")
    return host, int(port)


def assert_tls_only(server: Registry) -> None:
    """The server answers HTTPS, and a plain-HTTP request to the same port gets no HTTP
    response: a client that worked with it spoke TLS."""
    assert server.url.startswith("https://"), server.url
    assert server.request("GET", "/v2/").status in (200, 401)
    host, port = _host_port(server)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        body = resp.read()
    except (http.client.HTTPException, OSError):
        return  # refused, reset, or answered with something that is not HTTP
    finally:
        conn.close()
    raise AssertionError(
        f"plain HTTP to the TLS port got an HTTP answer: {resp.status} {body[:200]!r}\n"
        f"{server.log_tail()}"
    )


def assert_failed(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """The client exited non-zero and said each of `needles` (case-insensitive)."""
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode != 0, f"expected a failure, got success:\n{output}"
    for needle in needles:
        assert needle.lower() in output.lower(), f"{needle!r} not in:\n{output}"


# ---------------------------------------------------------------------------------------------
# skopeo: login with --cert-dir, copy --all of a multi-arch index, cross-repo mount, logout


def test_skopeo_login_copy_all_mount_and_logout(
    mode: AuthMode,
    moorage_server: ServerFactory,
    containers_for: ContainersFor,
    tls_ca: CertAuthority,
    tmp_path: Path,
) -> None:
    server = moorage_server(mode)
    state = containers_for(server)
    skopeo = state.skopeo()
    certs = ("--cert-dir", str(tls_ca.cert_dir))
    check_challenge(server, mode)

    # Verification is on: without the CA the client refuses the server's certificate.
    untrusted = login(skopeo, server.host, PASSWORD, check=False)
    assert_failed(untrusted, UNTRUSTED)

    wrong = login(skopeo, server.host, WRONG_PASSWORD, *certs, check=False)
    assert_failed(wrong, BAD_LOGIN)
    assert stored_login(state.authfile, server.host) is None

    ok = login(skopeo, server.host, PASSWORD, *certs)
    assert "Login Succeeded" in ok.stdout, ok.stdout + ok.stderr
    entry = stored_login(state.authfile, server.host)
    assert entry is not None and (entry["user"], entry["password"]) == (USER, PASSWORD)

    # Push a two-platform index with every child, using the stored credentials.
    index = make_index(tmp_path / "src", tag="multi", seed=811, layers=[65536, 2048])
    dest = server.ref("auth/multi", "v1")
    skopeo(
        "copy", "--all", "--preserve-digests", "--dest-cert-dir", tls_ca.cert_dir, index.ref, dest
    )
    served = skopeo("inspect", *certs, "--raw", dest).stdout.encode()
    assert sha256_digest(served) == index.digest

    out = tmp_path / "pulled"
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--src-cert-dir",
        tls_ca.cert_dir,
        dest,
        f"oci:{out}:v1",
    )
    assert tagged_digest(out, "v1") == index.digest
    for blob in index.blobs:
        assert blob_bytes(out, blob.digest) == blob.read(), f"pulled {blob.digest} differs"

    # Registry to registry: every layer is mounted from auth/multi, not uploaded (in token mode
    # the token must cover pull on the source repository as well).
    copied = skopeo(
        "--debug",
        "copy",
        "--all",
        "--preserve-digests",
        "--src-cert-dir",
        tls_ca.cert_dir,
        "--dest-cert-dir",
        tls_ca.cert_dir,
        dest,
        server.ref("auth/multi-copy", "v1"),
    )
    layers = {d for img in index.images for d in img.layer_digests}
    mounted = {d for d in layers if f"Skipping blob {d} (already present)" in copied.stderr}
    assert mounted == layers, copied.stderr[-5000:]
    assert copied.stderr.count("mount OK") >= len(layers), copied.stderr[-5000:]
    copy_raw = skopeo("inspect", *certs, "--raw", server.ref("auth/multi-copy", "v1"))
    assert sha256_digest(copy_raw.stdout.encode()) == index.digest

    skopeo("logout", server.host)
    assert stored_login(state.authfile, server.host) is None
    anonymous = skopeo("inspect", *certs, "--raw", dest, check=False)
    assert_failed(anonymous, "unauthorized")


# ---------------------------------------------------------------------------------------------
# podman: login with /etc/containers/certs.d, push, pull back, logout


def test_podman_login_push_pull_and_logout(
    mode: AuthMode,
    moorage_server: ServerFactory,
    containers_for: ContainersFor,
    certs_d: CertsD,
    tls_ca: CertAuthority,
    tmp_path: Path,
) -> None:
    server = moorage_server(mode)
    state = containers_for(server)
    skopeo, podman = state.skopeo(), state.podman()

    untrusted = login(podman, server.host, PASSWORD, check=False)
    assert_failed(untrusted, UNTRUSTED)

    certs_d(CONTAINERS_CERTS_D, server.host, tls_ca.ca_file)
    wrong = login(podman, server.host, WRONG_PASSWORD, check=False)
    assert_failed(wrong, BAD_LOGIN)
    assert stored_login(state.authfile, server.host) is None

    ok = login(podman, server.host, PASSWORD)
    assert "Login Succeeded" in ok.stdout, ok.stdout + ok.stderr
    entry = stored_login(state.authfile, server.host)
    assert entry is not None and (entry["user"], entry["password"]) == (USER, PASSWORD)

    img = make_image(tmp_path / "layout", layers=[262144, 4096], seed=821, tag="v1")
    archive = tmp_path / "image.tar"
    local = f"localhost/moorage-test/auth-{mode}:v1"
    skopeo("copy", img.ref, f"docker-archive:{archive}:{local}")
    podman("load", "-i", archive)
    image_id = podman("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
    assert "sha256:" + image_id == img.config.digest

    remote = server.name("auth/podman", "v1")
    digestfile = tmp_path / "pushed.digest"
    podman("tag", local, remote)
    podman("push", "--digestfile", digestfile, remote)
    pushed = digestfile.read_text().strip()
    served = skopeo(
        "inspect", "--cert-dir", tls_ca.cert_dir, "--raw", server.ref("auth/podman", "v1")
    )
    assert sha256_digest(served.stdout.encode()) == pushed

    podman("rmi", "--force", local, remote)
    podman("pull", remote)
    info = json.loads(podman("image", "inspect", remote).stdout)[0]
    assert info["Id"] == image_id
    assert info["Digest"] == pushed
    assert info["RootFS"]["Layers"] == list(img.diff_ids)

    podman("logout", server.host)
    assert stored_login(state.authfile, server.host) is None
    podman("rmi", "--force", remote)
    anonymous = podman("pull", remote, check=False)
    assert_failed(anonymous, "unauthorized")


# ---------------------------------------------------------------------------------------------
# docker: login with /etc/docker/certs.d, push, pull back, a second push that mounts, logout


def test_docker_login_push_pull_mount_and_logout(
    mode: AuthMode,
    moorage_server: ServerFactory,
    dockerd: Docker,
    containers_for: ContainersFor,
    certs_d: CertsD,
    tls_ca: CertAuthority,
    tmp_path: Path,
) -> None:
    """docker login (basic, and token with the `identitytoken` stored), push, pull, a second
    push that mounts every layer, and logout, over HTTPS on 127.0.0.1.

    The server listens only with TLS (a plain-HTTP request to its port fails), so docker's
    successful push and pull went over HTTPS. Certificate verification is not proven here:
    dockerd always treats 127.0.0.0/8 as an insecure registry and does not verify the
    certificate there (moby appends 127.0.0.0/8 to the insecure CIDRs unconditionally; it
    cannot be switched off). The skopeo and podman tests carry the CA-verification proof.
    """
    server = moorage_server(mode)
    assert_tls_only(server)
    # This test's own DOCKER_CONFIG: logins land in tmp_path/docker-config/config.json.
    docker = dataclasses.replace(dockerd, config_dir=tmp_path / "docker-config", registry=server)
    docker.config_dir.mkdir()
    config_json = docker.config_dir / "config.json"

    # The CA goes where users put it. dockerd reads /etc/docker/certs.d only for registries it
    # verifies, and 127.0.0.0/8 is always insecure to it: it talks TLS here without verifying
    # (and would fall back to plain HTTP, which this server does not speak).
    certs_d(DOCKER_CERTS_D, server.host, tls_ca.ca_file)
    wrong = login(docker, server.host, WRONG_PASSWORD, check=False)
    assert_failed(wrong, "unauthorized")
    assert stored_login(config_json, server.host) is None

    ok = login(docker, server.host, PASSWORD)
    assert "Login Succeeded" in ok.stdout, ok.stdout + ok.stderr
    entry = stored_login(config_json, server.host)
    assert entry is not None and entry["user"] == USER
    if mode == "token":
        # docker asked for an offline token: it keeps the refresh token, not the password,
        # and every later push/pull trades it for access tokens (grant_type=refresh_token).
        assert entry.get("identitytoken"), entry
        assert entry["password"] == ""
    else:
        assert entry["password"] == PASSWORD

    seed = {"basic": 831, "token": 832}[mode]
    img = make_image(tmp_path / "layout", layers=[262144, 65536, 4096], seed=seed)
    archive = tmp_path / "image.tar"
    local = f"moorage-test/auth-{mode}:v1"
    remote = server.name("auth/docker", "v1")
    copy = server.name("auth/docker-copy", "v1")
    containers_for(server).skopeo()("copy", img.ref, f"docker-archive:{archive}:{local}")
    try:
        docker("load", "-i", archive)
        image_id = docker("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
        assert image_id == img.config.digest
        docker("tag", local, remote)
        pushed_out = docker("push", remote).stdout
        digest = pushed_digest(pushed_out, "v1")
        statuses = layer_statuses(pushed_out)
        assert len(statuses) == len(img.layers), pushed_out
        assert set(statuses.values()) == {"Pushed"}, pushed_out

        docker("rmi", local, remote)
        pulled_out = docker("pull", remote).stdout
        assert f"Digest: {digest}" in pulled_out, pulled_out
        info = json.loads(docker("image", "inspect", remote).stdout)[0]
        assert info["Id"] == image_id
        assert f"{server.host}/auth/docker@{digest}" in info["RepoDigests"]

        # Same image to another repository: no layer data moves, each layer is mounted.
        docker("tag", remote, copy)
        second_out = docker("push", copy).stdout
        assert pushed_digest(second_out, "v1") == digest
        statuses = layer_statuses(second_out)
        assert len(statuses) == len(img.layers), second_out
        assert set(statuses.values()) == {"Mounted from auth/docker"}, second_out

        docker("logout", server.host)
        assert stored_login(config_json, server.host) is None
        docker("rmi", copy)
        denied = docker("pull", copy, check=False)
        if mode == "basic":
            # docker has nothing to answer the challenge with. dockerd takes that as a reason
            # to try the next endpoint, which for an insecure registry is plain HTTP; that
            # fails (TLS only), and its error is the one the CLI reports. The HTTPS refusal is
            # in dockerd's log.
            assert_failed(denied, f"http://{server.host}/v2/")
            refusal = f"https://{server.host}/v2/auth/docker-copy/manifests/v1"
            assert any(
                refusal in line and "no basic auth credentials" in line
                for line in docker.log.read_text(errors="replace").splitlines()
            ), f"no 'no basic auth credentials' for {refusal} in:\n{tail(docker.log, 20)}"
        else:
            # The anonymous token grants nothing, which docker reports as its usual "pull
            # access denied" (not a reason to try plain HTTP).
            assert_failed(denied, "pull access denied")
    finally:
        docker("rmi", "--force", local, remote, copy, check=False)


# ---------------------------------------------------------------------------------------------
# Anonymous pull on, push still refused


def test_anonymous_pull_allowed_push_refused(
    mode: AuthMode,
    moorage_server: ServerFactory,
    containers_for: ContainersFor,
    tls_ca: CertAuthority,
    tmp_path: Path,
) -> None:
    # Turned on the two ways an operator can: the environment (basic) or a config file (token).
    if mode == "basic":
        server = moorage_server(mode, env={"MOORAGE_AUTH_ANONYMOUSPULL": "true"})
    else:
        server = moorage_server(mode, config={"auth": {"anonymouspull": True}})
    state = containers_for(server)
    skopeo = state.skopeo()
    certs = ("--cert-dir", str(tls_ca.cert_dir))
    img = make_image(tmp_path / "src", layers=[65536, 1024], seed=841, tag="v1")
    ref = server.ref("anon/img", "v1")
    skopeo(
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        tls_ca.cert_dir,
        "--dest-creds",
        f"{USER}:{PASSWORD}",
        img.ref,
        ref,
    )

    # No credentials anywhere (the auth file is empty): pulling works.
    assert stored_login(state.authfile, server.host) is None
    info = json.loads(skopeo("inspect", *certs, ref).stdout)
    assert info["Digest"] == img.digest
    out = tmp_path / "pulled"
    skopeo("copy", "--preserve-digests", "--src-cert-dir", tls_ca.cert_dir, ref, f"oci:{out}:v1")
    assert tagged_digest(out, "v1") == img.digest
    for blob in img.blobs:
        assert blob_bytes(out, blob.digest) == blob.read()

    # Pushing does not: not to the same repository, not to a new one.
    other = make_image(tmp_path / "other", layers=[2048], seed=842, tag="v2")
    for target in (server.ref("anon/img", "v2"), server.ref("anon/new", "v1")):
        refused = skopeo("copy", "--dest-cert-dir", tls_ca.cert_dir, other.ref, target, check=False)
        assert_failed(refused, "unauthorized")
    for repo, tag in (("anon/img", "v2"), ("anon/new", "v1")):
        missing = skopeo(
            "inspect",
            *certs,
            "--creds",
            f"{USER}:{PASSWORD}",
            "--raw",
            server.ref(repo, tag),
            check=False,
        )
        assert_failed(missing, "manifest unknown")

    if mode == "token":
        # The token server grants an anonymous caller pull only, whatever it asks for.
        query = urllib.parse.urlencode(
            {"service": "moorage", "scope": "repository:anon/img:pull,push"}
        )
        resp = server.request("GET", f"/auth/token?{query}")
        assert resp.status == 200, resp
        body = resp.json()
        assert isinstance(body, dict)
        assert body["scope"] == "repository:anon/img:pull", body


# ---------------------------------------------------------------------------------------------
# SIGHUP: a new certificate without a restart


def _wait_for(what: str, predicate: Callable[[], bool], log: Callable[[], str]) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {RELOAD_TIMEOUT}s\n{log()}")
        time.sleep(0.1)


def _serials(server: Registry, count: int) -> list[int]:
    assert server.ca is not None
    host, port = _host_port(server)
    return [served_serial(host, port, server.ca) for _ in range(count)]


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_certificate(
    workers: int, moorage_server: ServerFactory, tls_ca: CertAuthority
) -> None:
    server = moorage_server("basic", args=["--workers", str(workers)])
    assert server.tls is not None and server.proc is not None and server.ca is not None
    host, port = _host_port(server)
    # The port answers as soon as one worker serves: wait for every worker before the reload
    # (a worker still starting reads the new files itself and logs no reload).
    deadline = time.monotonic() + 30
    while server.log.read_text().count("serving on") < workers:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    old = server.tls.serial
    assert _serials(server, 4) == [old] * 4

    # A keep-alive connection opened before the reload.
    conn = http.client.HTTPSConnection(host, port, timeout=10, context=server.ssl_context())
    conn.request("GET", "/v2/")
    first = conn.getresponse()
    first.read()
    assert first.status == 401
    sock = conn.sock

    new = tls_ca.issue(server.tls.cert, server.tls.key, [host], serial=old + 1)
    assert new.serial != old
    os.kill(server.pid, signal.SIGHUP)
    _wait_for(
        "new certificate served",
        lambda: _serials(server, 2 * workers) == [new.serial] * (2 * workers),
        server.log_tail,
    )
    # Every new handshake (whichever worker takes it) gets the new certificate...
    assert _serials(server, 10) == [new.serial] * 10
    assert server.proc.poll() is None, server.log_tail()
    assert server.request("GET", "/v2/", auth=(USER, PASSWORD)).status == 200
    assert server.log.read_text().count("reloaded TLS certificate") == workers

    # ...while the connection from before goes on, on its old session.
    conn.request("GET", "/v2/", headers={"Authorization": basic_auth(USER, PASSWORD)})
    again = conn.getresponse()
    again.read()
    assert again.status == 200
    assert conn.sock is sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None and x509.load_der_x509_certificate(der).serial_number == old
    conn.close()


def test_sighup_with_a_mismatched_key_keeps_the_old_certificate(
    moorage_server: ServerFactory, tls_ca: CertAuthority
) -> None:
    """A renewal caught half-way (the new certificate is in place, its key not yet): the
    reload fails, and the server must go on serving the old pair rather than nothing."""
    server = moorage_server("none")
    assert server.tls is not None and server.proc is not None
    host, _ = _host_port(server)
    old = server.tls.serial
    next_key = server.tls.key.with_name("next.key")
    new = tls_ca.issue(server.tls.cert, next_key, [host], serial=old + 1)

    os.kill(server.pid, signal.SIGHUP)
    _wait_for(
        "reload failure logged",
        lambda: "TLS reload failed" in server.log.read_text(),
        server.log_tail,
    )
    assert server.proc.poll() is None, server.log_tail()
    try:
        serials = _serials(server, 3)
    except (ssl.SSLError, OSError) as exc:
        raise AssertionError(
            "after a failed reload (mismatched key) the server no longer completes a TLS "
            f"handshake: {exc!r}\n{server.log_tail()}"
        ) from exc
    assert serials == [old] * 3

    # Finish the renewal: the next SIGHUP picks up the matching pair.
    next_key.replace(server.tls.key)
    os.kill(server.pid, signal.SIGHUP)
    _wait_for(
        "new certificate served", lambda: _serials(server, 1) == [new.serial], server.log_tail
    )
    assert server.request("GET", "/v2/").status == 200
