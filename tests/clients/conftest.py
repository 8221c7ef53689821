"""Real clients against a real `moorage serve` process.

One server and (when a docker test runs) one private dockerd per session; every other client
gets its own storage, temp dir, auth file and config under the test's tmp_path. Nothing is
written outside temp dirs except the blob-info cache containers/image keeps as root in
/var/lib/containers/cache (that cache is what makes skopeo/podman try cross-repo mounts), and
/run/docker/plugins, which dockerd always creates (removed again if we created it and it is
empty).

Auth and TLS: `tls_ca` is a throw-away CA, `htpasswd` a users file made with `moorage user
add`, and `moorage_server(...)` starts further servers (basic or token auth, HTTPS with a
certificate of that CA) for one test. Clients trust the CA the way users do: `--cert-dir` for
skopeo, `/etc/containers/certs.d/HOST:PORT/ca.crt` for podman and
`/etc/docker/certs.d/HOST:PORT/ca.crt` for docker (`certs_d`, removed again after the test).

A missing client binary fails the test: these tests are the proof that clients work.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness import LOOPBACK, REPO_ROOT, MoorageProcess, free_port

SERVER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 300.0
DOCKERD_START_TIMEOUT = 60.0

_NO_PROXY = "127.0.0.1,localhost"
_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/install-test-deps.sh"
    return path


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = _NO_PROXY
    env.update(extra)
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    input: bytes | None = None,
    context: str | Callable[[], str] = "",
) -> subprocess.CompletedProcess[str]:
    """Run a client; on failure (check=True) the assertion shows the command and its output."""
    args = [os.fspath(c) for c in cmd]
    proc = subprocess.run(
        args,
        env=env if env is not None else clean_env(),
        capture_output=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        if callable(context):
            context = context()
        raise AssertionError(
            f"command failed (exit {proc.returncode}): {' '.join(args)}\n"
            f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-6000:]}\n{context}"
        )
    return result


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The registry under test


@dataclass
class HTTPResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class ServerCert:
    """A server certificate and its key, as PEM files the server reads."""

    cert: Path
    key: Path
    serial: int


@dataclass
class Registry:
    url: str  # http(s)://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT
    pid: int
    data_dir: Path
    log: Path
    # HTTPS only: the CA certificate that verifies the server, and the server's own pair.
    ca: Path | None = None
    tls: ServerCert | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """docker:// reference for skopeo and friends."""
        return "docker://" + self.name(repo, tag, digest)

    def name(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """host:port/repo[:tag|@digest], as docker/podman/buildah want it."""
        base = f"{self.host}/{repo}"
        if digest:
            return f"{base}@{digest}"
        return f"{base}:{tag}" if tag else base

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client context that trusts only the test CA (None over plain HTTP)."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else None

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        auth: tuple[str, str] | None = None,
    ) -> HTTPResponse:
        """A raw HTTP(S) request (no proxy, certificate verified), for checking what clients
        left behind. `auth` sends Basic credentials."""
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = basic_auth(*auth)
        req = urllib.request.Request(
            self.url + path, data=body or None, method=method, headers=headers
        )
        opener = _opener(self.ssl_context())
        try:
            with opener.open(req, timeout=30) as resp:
                return HTTPResponse(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as e:
            return HTTPResponse(e.code, dict(e.headers.items()), e.read())

    def log_tail(self, lines: int = 40) -> str:
        return f"--- moorage log ({self.log}) ---\n{tail(self.log, lines)}"


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


@contextlib.contextmanager
def serve(
    base: Path,
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    ca: Path | None = None,
    tls: ServerCert | None = None,
    ready: Sequence[int] = (200,),
) -> Iterator[Registry]:
    """`python -m moorage serve --listen 127.0.0.1:FREE_PORT --data-dir base/data ARGS...`, run
    in `base` with its log there (tests/harness.py); stopped by its PID on exit. Test servers
    listen on loopback only."""
    tls_args: list[str | os.PathLike[str]] = []
    if tls:
        tls_args = ["--tls-cert", tls.cert, "--tls-key", tls.key]
    server = MoorageProcess(
        base / "data",
        base,
        args=[*tls_args, *args],
        env=env,
        ready=ready,
        ssl_context=ssl.create_default_context(cafile=str(ca)) if ca else None,
        base_env=clean_env(),
    )
    try:
        server.start_sync(SERVER_START_TIMEOUT)
        assert server.proc is not None
        yield Registry(
            server.url,
            server.host,
            server.pid,
            server.data_dir,
            server.log_path,
            ca=ca,
            tls=tls,
            proc=server.proc,
        )
    finally:
        server.cleanup()


#: `MOORAGE_TEST_PROXY=nginx`: the session's registry is reached through a real nginx in front
#: (CI runs this suite once that way), configured as docs/operations.md tells operators.
PROXY = os.environ.get("MOORAGE_TEST_PROXY", "")
assert PROXY in ("", "nginx"), f"MOORAGE_TEST_PROXY={PROXY!r}"

NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
{site}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front(base: Path, upstream: str) -> Iterator[str]:
    """A private nginx on a free loopback port proxying to `upstream` (host:port) with the
    site settings of docs/operations.md; yields its host:port; stopped by its PID."""
    binary = require_binary("nginx")
    site = (REPO_ROOT / "docs" / "deploy" / "nginx-site.conf").read_text()
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(dir=base, port=port, site=site.replace("127.0.0.1:5000", upstream))
    )
    log = base / "nginx.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(base), "-e", str(base / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited: {tail(log)}\n{tail(base / 'error.log')}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1):
                break
            assert time.monotonic() < deadline, tail(base / "error.log")
            time.sleep(0.05)
        yield f"{LOOPBACK}:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """`python -m moorage serve` on a free loopback port with a fresh data dir (with
    `MOORAGE_TEST_PROXY=nginx`, behind nginx: the registry's URL is then nginx's)."""
    base = tmp_path_factory.mktemp("moorage-server")
    if not PROXY:
        with serve(base) as server:
            yield server
        return
    trusted = {"MOORAGE_HTTP_TRUSTEDPROXIES": '["127.0.0.1"]'}
    with serve(base, env=trusted) as server, nginx_in_front(base / "nginx", server.host) as front:
        yield dataclasses.replace(server, url=f"http://{front}", host=front)


# ---------------------------------------------------------------------------------------------
# TLS: a throw-away CA, and server certificates it signs


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file (mode 0600) by renaming a temp file over it: a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class CertAuthority:
    """A self-signed EC P-256 CA. `cert_dir` holds only `ca.crt`, so it is a `--cert-dir` for
    containers/image tools as it is."""

    def __init__(self, directory: Path) -> None:
        self.cert_dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Moorage Test CA")])
        now = _utcnow()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.crt"
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        cert_path: Path,
        key_path: Path,
        ips: Sequence[str] = ("127.0.0.1",),
        serial: int | None = None,
    ) -> ServerCert:
        """A server certificate for `ips` (IP SANs) with a fresh key, each written over
        cert_path/key_path by a rename."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = serial if serial is not None else x509.random_serial_number()
        now = _utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ips[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return ServerCert(cert_path, key_path, serial)


def served_serial(host: str, port: int, ca_file: Path, timeout: float = 5.0) -> int:
    """Serial number of the certificate a fresh TLS handshake gets (verified against the CA)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("test-ca"))


DOCKER_CERTS_D = Path("/etc/docker/certs.d")
CONTAINERS_CERTS_D = Path("/etc/containers/certs.d")


@pytest.fixture
def certs_d() -> Iterator[Callable[[Path, str, Path], Path]]:
    """`install(CERTS_D, "HOST:PORT", ca_file)` puts the CA at CERTS_D/HOST:PORT/ca.crt, the way
    users make docker and containers/image trust a registry; removed (with every directory it
    created) when the test ends."""
    files: list[Path] = []
    dirs: list[Path] = []

    def install(root: Path, host: str, ca_file: Path) -> Path:
        target = root / host
        missing = [d for d in (*reversed(target.parents), target) if not d.exists()]
        target.mkdir(parents=True, exist_ok=True)
        dirs.extend(missing)
        dest = target / "ca.crt"
        assert not dest.exists(), f"{dest} already exists"
        shutil.copyfile(ca_file, dest)
        files.append(dest)
        return dest

    try:
        yield install
    finally:
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        for d in reversed(dirs):
            with contextlib.suppress(OSError):
                d.rmdir()


# ---------------------------------------------------------------------------------------------
# Servers with authentication and/or TLS

#: Users in the `htpasswd` fixture's file.
USERS = {"alice": "wonderland-7 tea", "bob": "builder:42"}
USER, PASSWORD = "alice", USERS["alice"]
WRONG_PASSWORD = "not-her-password"


@pytest.fixture(scope="session")
def htpasswd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An htpasswd file with USERS, made the way an operator does: `moorage user add`."""
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = clean_env(PYTHONPATH=os.pathsep.join([*pythonpath, str(REPO_ROOT)]))
    for user, password in USERS.items():
        run(
            [sys.executable, "-m", "moorage", "user", "add", user, "--htpasswd", path],
            input=f"{password}\n".encode(),
            env=env,
            timeout=60,
        )
    return path


AuthMode = Literal["none", "basic", "token"]


class ServerFactory:
    """Starts `moorage serve` processes for one test; all stopped (by PID) at its end."""

    def __init__(self, base: Path, htpasswd: Path, ca: CertAuthority) -> None:
        self.base = base
        self.htpasswd = htpasswd
        self.ca = ca
        self.stack = contextlib.ExitStack()
        self.count = 0

    def __call__(
        self,
        auth: AuthMode = "none",
        *,
        tls: bool = True,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        args: Sequence[str] = (),
    ) -> Registry:
        """A new server: `auth` basic or token uses the `htpasswd` users; `tls` serves HTTPS
        with a certificate for 127.0.0.1 signed by `tls_ca`; `config` goes to a YAML --config."""
        self.count += 1
        base = self.base / f"server{self.count}"
        base.mkdir(parents=True)
        cmd: list[str | os.PathLike[str]] = []
        if auth != "none":
            cmd += ["--htpasswd", self.htpasswd, "--auth", auth]
        if config is not None:
            config_file = base / "config.yml"
            config_file.write_text(yaml.safe_dump(config))
            cmd += ["--config", config_file]
        cmd += list(args)
        cert = None
        if tls:
            cert = self.ca.issue(
                base / "tls" / "server.crt", base / "tls" / "server.key", [LOOPBACK]
            )
        return self.stack.enter_context(
            serve(
                base,
                *cmd,
                env=env,
                ca=self.ca.ca_file if tls else None,
                tls=cert,
                ready=(200,) if auth == "none" else (401,),
            )
        )

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def moorage_server(
    tmp_path: Path, htpasswd: Path, tls_ca: CertAuthority
) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path / "servers", htpasswd, tls_ca)
    try:
        yield factory
    finally:
        factory.close()


# ---------------------------------------------------------------------------------------------
# containers/image tools: skopeo, podman, buildah


@dataclass
class ContainersTool:
    """One client binary with private storage, temp dir, auth file and configs."""

    binary: str
    global_args: list[str]
    env: dict[str, str]
    context: Callable[[], str]

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.binary, *self.global_args, *args],
            env=self.env,
            check=check,
            timeout=timeout,
            input=input,
            context=self.context,
        )


@dataclass
class ContainersRun:
    """Per-test state for skopeo/podman/buildah under one directory."""

    root: Path
    registry: Registry
    env: dict[str, str] = field(init=False)
    authfile: Path = field(init=False)
    policy: Path = field(init=False)
    short: Path = field(init=False)

    def __post_init__(self) -> None:
        # podman refuses a runroot longer than 50 characters: keep run dirs in a short temp dir.
        self.short = Path(tempfile.mkdtemp(prefix="mrg-"))
        for sub in ("tmp", "net", "libpod", "volumes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.authfile = self.root / "auth.json"
        self.authfile.write_text('{"auths": {}}')
        self.policy = self.root / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        conf = self.root / "containers.conf"
        conf.write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{self.root / "net"}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.root / "events.log"}"\n'
            f'tmp_dir = "{self.root / "libpod"}"\n'
            f'volume_path = "{self.root / "volumes"}"\n'
            f'image_copy_tmp_dir = "{self.root / "tmp"}"\n'
        )
        storage_conf = self.root / "storage.conf"
        storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.root / "storage"}"\n'
            f'runroot = "{self.short / "run"}"\n'
        )
        self.env = clean_env(
            TMPDIR=str(self.root / "tmp"),
            CONTAINERS_CONF=str(conf),
            CONTAINERS_STORAGE_CONF=str(storage_conf),
            REGISTRY_AUTH_FILE=str(self.authfile),
            XDG_RUNTIME_DIR=str(self.root / "xdg"),
            HOME=str(self.root / "home"),
        )
        (self.root / "xdg").mkdir(exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)

    def storage_args(self, name: str) -> list[str]:
        return [
            "--root",
            str(self.root / name / "storage"),
            "--runroot",
            str(self.short / name),
            "--storage-driver",
            "vfs",
        ]

    def skopeo(self) -> ContainersTool:
        return ContainersTool(
            require_binary("skopeo"),
            ["--policy", str(self.policy)],
            self.env,
            self.registry.log_tail,
        )

    def podman(self) -> ContainersTool:
        return ContainersTool(
            require_binary("podman"),
            [
                *self.storage_args("podman"),
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--tmpdir",
                str(self.root / "libpod"),
                "--network-config-dir",
                str(self.root / "net"),
            ],
            self.env,
            self.registry.log_tail,
        )

    def buildah(self) -> ContainersTool:
        return ContainersTool(
            require_binary("buildah"),
            self.storage_args("buildah"),
            self.env,
            self.registry.log_tail,
        )

    def cleanup(self) -> None:
        for name in ("podman", "buildah", "storage", "tmp", "libpod"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        shutil.rmtree(self.short, ignore_errors=True)


@pytest.fixture
def containers_run(tmp_path: Path, registry: Registry) -> Iterator[ContainersRun]:
    state = ContainersRun(tmp_path / "containers", registry)
    try:
        yield state
    finally:
        state.cleanup()


@pytest.fixture
def containers_for(tmp_path: Path) -> Iterator[Callable[[Registry], ContainersRun]]:
    """`containers_for(server)`: skopeo/podman/buildah state for a server of this test
    (`containers_run` is bound to the session's plain-HTTP server)."""
    runs: list[ContainersRun] = []

    def make(server: Registry) -> ContainersRun:
        state = ContainersRun(tmp_path / f"containers-{len(runs)}", server)
        runs.append(state)
        return state

    try:
        yield make
    finally:
        for state in runs:
            state.cleanup()


@pytest.fixture
def skopeo(containers_run: ContainersRun) -> ContainersTool:
    return containers_run.skopeo()


@pytest.fixture
def podman(containers_run: ContainersRun) -> ContainersTool:
    return containers_run.podman()


@pytest.fixture
def buildah(containers_run: ContainersRun) -> ContainersTool:
    return containers_run.buildah()


# ---------------------------------------------------------------------------------------------
# A private dockerd


def pushed_digest(output: str, tag: str) -> str:
    """The manifest digest in `docker push` output's `<tag>: digest: ... size: ...` line."""
    m = re.search(rf"^{re.escape(tag)}: digest: (sha256:[0-9a-f]{{64}}) size: (\d+)$", output, re.M)
    assert m, f"no digest line for {tag} in:\n{output}"
    return m.group(1)


def layer_statuses(output: str) -> dict[str, str]:
    """`<short id>: <status>` lines of `docker push` progress output."""
    statuses: dict[str, str] = {}
    for line in output.splitlines():
        m = re.match(r"^([0-9a-f]{12}): (.+)$", line.strip())
        if m:
            statuses[m.group(1)] = m.group(2)
    return statuses


@dataclass
class Docker:
    binary: str
    sock: Path
    config_dir: Path
    log: Path
    pid: int
    registry: Registry

    @property
    def env(self) -> dict[str, str]:
        return clean_env(
            DOCKER_HOST=f"unix://{self.sock}",
            DOCKER_CONFIG=str(self.config_dir),
            HOME=str(self.config_dir),
        )

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.binary, *args],
            env=self.env,
            check=check,
            timeout=timeout,
            input=input,
            context=lambda: (
                f"--- dockerd log ---\n{tail(self.log, 20)}\n{self.registry.log_tail()}"
            ),
        )


def _docker_cli(dockerd: str) -> str:
    """The docker CLI shipped next to dockerd (docker.io), else the first one on PATH."""
    sibling = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return require_binary("docker")


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Docker]:
    """One private dockerd for the session's docker tests."""
    with running_dockerd(tmp_path_factory.mktemp("dockerd"), registry) as docker:
        yield docker


@contextlib.contextmanager
def running_dockerd(
    base: Path,
    registry: Registry,
    prefix: Sequence[str] = (),
    daemon: dict[str, Any] | None = None,
) -> Iterator[Docker]:
    """dockerd with vfs and no networking, all state under `base` (keep it short: the socket
    path must fit in 108 bytes), its own containerd namespaces (named after `base`, so two
    daemons never share one); stopped by its PID. `registry` only names the log shown when a
    command fails. `prefix` runs it through a command that execs it (so the PID stays its
    own), such as `nsenter --net=...` into a network namespace. `daemon`: more settings for
    its daemon.json (`registry-mirrors`, say)."""
    dockerd_bin = require_binary("dockerd")
    docker_bin = _docker_cli(dockerd_bin)
    # A unix socket path must stay under 108 bytes; pytest's temp paths can be long.
    sock = base / "docker.sock"
    assert len(str(sock)) < 100, f"socket path too long: {sock}"
    config_dir = base / "cli"
    # containerd takes a namespace of letters and digits with single ".", "_" or "-" between
    # them: a temp name's own "_" may end it or follow a "-" ("mrg-mirror-2egokxq_").
    namespace = re.sub(r"[^A-Za-z0-9]+", "", base.name)
    config_dir.mkdir()
    daemon_json = base / "daemon.json"
    # The trust key would otherwise go to /etc/docker/key.json.
    daemon_json.write_text(
        json.dumps({"deprecated-key-path": str(base / "key.json"), **(daemon or {})})
    )
    log = base / "dockerd.log"
    plugins_dir = Path("/run/docker/plugins")
    created_run_docker = not Path("/run/docker").exists()
    created_plugins = not plugins_dir.exists()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                *prefix,
                dockerd_bin,
                "--config-file",
                str(daemon_json),
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--data-root",
                str(base / "docker-root"),
                "--exec-root",
                str(base / "docker-exec"),
                "--pidfile",
                str(base / "docker.pid"),
                "--host",
                f"unix://{sock}",
                "--containerd-namespace",
                f"moorage-test-{namespace}",
                "--containerd-plugins-namespace",
                f"moorage-test-{namespace}-plugins",
            ],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=base,
        )
    docker = Docker(docker_bin, sock, config_dir, log, proc.pid, registry)
    try:
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"dockerd exited with {proc.returncode}\n{tail(log)}")
            probe = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"dockerd did not answer within {DOCKERD_START_TIMEOUT}s\n"
                    f"{probe.stderr}\n{tail(log)}"
                )
            time.sleep(0.25)
        yield docker
    finally:
        stop_process(proc, timeout=30)
        shutil.rmtree(base / "docker-root", ignore_errors=True)
        shutil.rmtree(base / "docker-exec", ignore_errors=True)
        if created_plugins:
            with contextlib.suppress(OSError):
                plugins_dir.rmdir()
        if created_run_docker:
            with contextlib.suppress(OSError):
                Path("/run/docker").rmdir()


CONTAINERD_START_TIMEOUT = 30.0


@contextlib.contextmanager
def private_containerd(base: Path) -> Iterator[list[str]]:
    """containerd with all its state under `base` (the CRI plugin and /opt/containerd off);
    yields the ctr command that talks to it; stopped by its PID."""
    config = base / "containerd.toml"
    off = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]
    config.write_text(f"version = 2\ndisabled_plugins = {json.dumps(off)}\n")
    sock = base / "c.sock"
    log = base / "containerd.log"
    dirs = ["--root", str(base / "root"), "--state", str(base / "state")]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [require_binary("containerd"), "--config", str(config), "--address", str(sock), *dirs],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctr = [require_binary("ctr"), "--address", str(sock), "--namespace", "moorage-test"]
    try:
        deadline = time.monotonic() + CONTAINERD_START_TIMEOUT
        while run([*ctr, "version"], check=False, timeout=10).returncode != 0:
            assert proc.poll() is None, f"containerd exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"containerd did not start:\n{tail(log)}"
            time.sleep(0.2)
        yield ctr
    finally:
        stop_process(proc)
        shutil.rmtree(base / "root", ignore_errors=True)
        shutil.rmtree(base / "state", ignore_errors=True)
