"""Real clients against a real `moorage serve` process.

One server and (when a docker test runs) one private dockerd per session; every other client
gets its own storage, temp dir, auth file and config under the test's tmp_path. Nothing is
written outside temp dirs except the blob-info cache containers/image keeps as root in
/var/lib/containers/cache (that cache is what makes skopeo/podman try cross-repo mounts), and
/run/docker/plugins, which dockerd always creates (removed again if we created it and it is
empty).

A missing client binary fails the test: these tests are the proof that clients work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
class Registry:
    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT
    pid: int
    data_dir: Path
    log: Path

    def ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """docker:// reference for skopeo and friends."""
        return "docker://" + self.name(repo, tag, digest)

    def name(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """host:port/repo[:tag|@digest], as docker/podman/buildah want it."""
        base = f"{self.host}/{repo}"
        if digest:
            return f"{base}@{digest}"
        return f"{base}:{tag}" if tag else base

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> HTTPResponse:
        """A raw HTTP request (no proxy), for checking what clients left behind."""
        req = urllib.request.Request(
            self.url + path, data=body or None, method=method, headers=headers or {}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as resp:
                return HTTPResponse(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as e:
            return HTTPResponse(e.code, dict(e.headers.items()), e.read())

    def log_tail(self, lines: int = 40) -> str:
        return f"--- moorage log ({self.log}) ---\n{tail(self.log, lines)}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"moorage serve exited with {proc.returncode} before answering /v2/\n{tail(log)}"
            )
        try:
            with opener.open(url + "/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except urllib.error.HTTPError as e:
            last = e.code
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(
        f"moorage serve did not answer 200 on /v2/ within {SERVER_START_TIMEOUT}s "
        f"(last: {last})\n{tail(log)}"
    )


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """`python -m moorage serve` on a free loopback port with a fresh data dir."""
    base = tmp_path_factory.mktemp("moorage-server")
    data_dir = base / "data"
    log = base / "server.log"
    port = free_port()
    listen = f"127.0.0.1:{port}"
    # The repo root goes last on PYTHONPATH: the server runs from its temp dir, and works
    # whether or not the package is pip-installed.
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = clean_env(PYTHONPATH=os.pathsep.join([*pythonpath, str(REPO_ROOT)]))
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "moorage",
                "serve",
                "--listen",
                listen,
                "--data-dir",
                str(data_dir),
            ],
            cwd=base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(proc, f"http://{listen}", log)
        yield Registry(f"http://{listen}", listen, proc.pid, data_dir, log)
    finally:
        stop_process(proc)


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
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.binary, *self.global_args, *args],
            env=self.env,
            check=check,
            timeout=timeout,
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
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.binary, *args],
            env=self.env,
            check=check,
            timeout=timeout,
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
    """dockerd with vfs and no networking, all state in a temp dir; stopped by its PID."""
    dockerd_bin = require_binary("dockerd")
    docker_bin = _docker_cli(dockerd_bin)
    base = tmp_path_factory.mktemp("dockerd")
    # A unix socket path must stay under 108 bytes; pytest's temp paths can be long.
    sock = base / "docker.sock"
    assert len(str(sock)) < 100, f"socket path too long: {sock}"
    config_dir = base / "cli"
    config_dir.mkdir()
    daemon_json = base / "daemon.json"
    # The trust key would otherwise go to /etc/docker/key.json.
    daemon_json.write_text(json.dumps({"deprecated-key-path": str(base / "key.json")}))
    log = base / "dockerd.log"
    plugins_dir = Path("/run/docker/plugins")
    created_run_docker = not Path("/run/docker").exists()
    created_plugins = not plugins_dir.exists()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
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
                "moorage-test",
                "--containerd-plugins-namespace",
                "moorage-test-plugins",
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
