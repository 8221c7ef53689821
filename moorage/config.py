"""One typed settings object, loaded once.

Sources, lowest precedence first: built-in defaults (enough to run with no file), a YAML file,
`MOORAGE_*` environment variables, then command-line flags. Environment keys map onto the
nesting with `_` (`MOORAGE_STORAGE_ROOTDIRECTORY` -> `storage.rootdirectory`); that is why no
key contains an underscore inside its level.

Nothing else in Moorage reads configuration: the rest of the code receives a `Settings`.
"""

from __future__ import annotations

import base64
import ipaddress
import pickle
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("listen must be HOST:PORT")
    return value


def split_listen(value: str) -> tuple[str, int]:
    """Host (without IPv6 brackets) and port of a checked HOST:PORT."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a duration such as `2h`, `90m`, `1h30m`, `45s`, `0`."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {value!r} (examples: 2h, 90m, 45s, 0)")
    return sum(float(n) * _UNIT[u] for n, u in parts)


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class S3Settings(_Section):
    # Unset: AWS itself. Set (an S3-compatible server): path-style addressing.
    endpoint: str | None = None
    # Unset: AWS_DEFAULT_REGION or the AWS config; us-east-1 with an endpoint and neither.
    region: str | None = None
    bucket: str | None = None
    # Every key is stored under this prefix in the bucket.
    prefix: str = ""
    # Both or neither; neither: the AWS environment and credential chain.
    accesskey: str | None = None
    secretkey: SecretStr | None = None


class StorageSettings(_Section):
    driver: Literal["filesystem", "s3"] = "filesystem"
    # Defaults to <datadir>/storage when unset (filesystem driver).
    rootdirectory: Path | None = None
    s3: S3Settings = S3Settings()
    # Answer blob GETs with a redirect to a presigned URL where the driver has one (S3)
    # instead of streaming the bytes through the node.
    redirect: bool = False
    # Filesystem: an upload's bytes past this many are written around the page cache
    # (O_DIRECT, where the filesystem has it and is not in memory); `off`: never.
    directio: Annotated[Size | None, BeforeValidator(_off_is_none)] = 128 << 20
    # Not validated here (a section's validator would run on the environment alone, before
    # the file is merged): the driver refuses s3 without a bucket when it is built.


class MetadataSettings(_Section):
    # SQLAlchemy URL; defaults to SQLite at <datadir>/metadata.db when unset.
    url: str | None = None


class UploadSettings(_Section):
    # Idle sessions older than this are gone (404 BLOB_UPLOAD_UNKNOWN) and their data freed.
    ttl: int = Field(default=24 * 3600, ge=60)
    # A write (PATCH, PUT) holds the session's lease this long, renewed as data arrives; a
    # writer that stalls past it loses the session to the next one.
    lease: int = Field(default=90, ge=1)


class GCSettings(_Section):
    """Online garbage collection (docs/design/gc.md)."""

    # Something unreferenced is kept this long after it became so (a push in flight that is
    # about to reference it again is inside this window). 0 is for tests.
    grace: Duration = 2 * 3600.0
    # How often one worker of the deployment runs a collection cycle. 0: never on its own
    # (`moorage gc` still runs one).
    interval: Duration = 600.0
    # Manifests that no tag, index or subject keeps: kept (the default), or collected too.
    untagged: Literal["keep", "collect"] = "keep"


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)")
_SIZE_UNIT = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def parse_size(value: Any) -> Any:
    """Bytes from a number or a size such as `10GiB`, `500MB`, `2T` (KiB/MiB/GiB are powers
    of 1024; kB/MB/GB and bare K/M/G of 1000)."""
    if not isinstance(value, str):
        return value
    m = _SIZE.fullmatch(value.strip().lower())
    if not m:
        raise ValueError(f"not a size: {value!r} (examples: 10GiB, 500MB, 1000000)")
    number, unit = m.groups()
    base = _SIZE_UNIT[unit[:1]]
    if unit[1:2] == "i":
        base = 1024 ** "bkmgtp".index(unit[:1])
    return int(float(number) * base)


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


def _on_off(value: Any) -> Any:
    """YAML reads a bare `on`/`off` as a boolean: back to the word."""
    return ("on" if value else "off") if isinstance(value, bool) else value


def _off_is_none(value: Any) -> Any:
    # YAML reads a bare `off` as False.
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    return value


class RetentionRule(_Section):
    """Which tags of the repositories matching `repository` (a glob, `*` crosses `/`) the
    collector deletes: those beyond the newest `keep_last` (by push time) and, if also set,
    pushed more than `older_than` ago. Tags matching a `protect` glob, and immutable tags,
    are never deleted. The first rule whose glob matches a repository applies to it."""

    repository: str
    keep_last: int | None = Field(default=None, ge=0)
    older_than: Duration | None = None
    protect: list[str] = []

    @model_validator(mode="after")
    def _deletes_something(self) -> RetentionRule:
        if self.keep_last is None and self.older_than is None:
            raise ValueError("a retention rule needs keep_last, older_than or both")
        return self


class ImmutableRule(_Section):
    """Tags matching `tags` (globs) in repositories matching `repository` never move and are
    never deleted once pushed."""

    repository: str
    tags: list[str]


class Quota(_Section):
    """At most `bytes` of blobs in the repositories of `namespace` (its first path component,
    or a longer prefix such as `team/sub`): each blob counted once however many of them
    link it."""

    namespace: str
    bytes: Size


EventAction = Literal["push", "pull", "delete", "mount"]


class EventIgnore(_Section):
    mediatypes: list[str] = []
    actions: list[EventAction] = []


class EventEndpoint(_Section):
    """A receiver of events in CNCF Distribution's notification format (docs/operations.md):
    POSTs of `application/vnd.docker.distribution.events.v1+json` envelopes, in order, at
    least once, retried with a doubling pause from `backoff` up to `maxbackoff`."""

    name: str = Field(min_length=1, max_length=64)
    url: str
    headers: dict[str, str | list[str]] = {}
    timeout: Duration = 5.0
    # Failures in a row retried at once before pausing `backoff` (doubling up to `maxbackoff`).
    threshold: int = Field(default=3, ge=0)
    backoff: Duration = 1.0
    maxbackoff: Duration = 60.0
    # Filters; empty: everything. Globs for repositories; media types of the target.
    repositories: list[str] = []
    actions: list[EventAction] = []
    mediatypes: list[str] = []
    ignoredmediatypes: list[str] = []
    ignore: EventIgnore = EventIgnore()  # as Distribution writes it
    disabled: bool = False


class NotificationSettings(_Section):
    endpoints: list[EventEndpoint] = []


class ManifestSettings(_Section):
    maxsize: int = Field(default=4 * 1024 * 1024, ge=1024)
    schema1: bool = True


class DeleteSettings(_Section):
    enabled: bool = True


class MountSettings(_Section):
    # Mount without `from=`: look for the blob in any repository the caller can pull.
    automatic: bool = False


class PaginationSettings(_Section):
    tagsmax: int = Field(default=1000, ge=1)
    catalogdefault: int = Field(default=100, ge=1)
    catalogmax: int = Field(default=1000, ge=1)
    # Seconds a filtered catalog page may spend looking; past it the page ends early, with a
    # Link to continue from where it stopped.
    catalogtime: float = Field(default=1.0, gt=0)
    referrersmax: int = Field(default=1000, ge=1)


Action = Literal["pull", "push", "delete", "*"]


class AccessRule(_Section):
    """Who may do what on which repositories. A request is allowed the union of the actions
    of every rule that matches it. `repository` is a glob (`*` crosses `/`); in `users`,
    `"*"` is any authenticated user and `"anonymous"` is a caller with no credentials."""

    repository: str = "*"
    users: list[str] = []
    groups: list[str] = []
    actions: list[Action] = ["pull"]


class TokenSettings(_Section):
    # Issuer and service (audience) of the tokens; must match an external token server's.
    issuer: str = "moorage"
    service: str = "moorage"
    # The token endpoint announced in challenges. Unset: the built-in one at /auth/token.
    realm: str | None = None
    # Signing key of the built-in token server; created on first start when unset.
    key: Path | None = None
    # Trust for an external token server: PEM public keys and/or a certificate bundle.
    publickeys: list[Path] = []
    rootcertbundle: Path | None = None
    expiration: int = Field(default=300, ge=60, le=86400)


class AuthSettings(_Section):
    mode: Literal["none", "basic", "token"] = "none"
    htpasswd: Path | None = None
    realm: str = "Moorage"
    groups: dict[str, list[str]] = {}
    # Users who see every repository in the catalog.
    admins: list[str] = []
    # Let callers without credentials pull everything (added to the default rules).
    anonymouspull: bool = False
    # Empty: authenticated users may pull, push and delete everywhere.
    rules: list[AccessRule] = []
    token: TokenSettings = TokenSettings()
    # Failed logins allowed within `window` seconds per user from one client address, and
    # for any users from one client address (never per user alone: see auth/ratelimit.py).
    maxfailures: int = Field(default=10, ge=1)
    maxaddressfailures: int = Field(default=100, ge=1)
    window: int = Field(default=60, ge=1)


class TLSSettings(_Section):
    certificate: Path | None = None
    key: Path | None = None


class HTTPSettings(_Section):
    """Connection limits per worker (see moorage/connections.py). Timeouts are in seconds."""

    # A new connection's first request head, and any head once begun, must be complete within.
    headertimeout: float = Field(default=30, gt=0)
    # After a response, the next request on a keep-alive connection must begin within.
    idletimeout: float = Field(default=60, gt=0)
    # A request body must make some progress within this (a slow transfer is fine; a stall
    # is not). Time the server spends not reading (back-pressure) is not counted.
    bodytimeout: float = Field(default=60, gt=0)
    # What the server sends must be acknowledged, and a client's receive window may stay shut
    # (it stopped reading a response), for at most this long.
    sendtimeout: float = Field(default=60, gt=0)
    # Connections open at once; lowered to fit the open-file limit.
    maxconnections: int = Field(default=4096, ge=1)
    # How a large blob goes out (on a thread of its own, moorage/api/sending.py): `on`,
    # sendfile (zero-copy); `off`, copied; `auto`, sendfile to other machines, and to a client
    # on this one (a reverse proxy in front) copied for the first few at a time per worker,
    # where a copy of a few is faster and sendfile of many is cheaper.
    sendfile: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    # After SIGTERM the node drains for this long before it stops accepting: /readyz answers
    # 503 while requests are still served, so a balancer's health check takes the node out
    # first. At least the balancer's check interval times the failed checks it waits for.
    draintimeout: float = Field(default=5, ge=0)
    # The one secret every node of a deployment shares (as Distribution's http.secret): the
    # v1 token secret, the built-in token server's signing key (unless auth.token.key names a
    # file) and the schema 1 signing key are derived from it, so that every node issues and
    # accepts the same tokens. Unset: each is created once in the data directory (one node).
    secret: SecretStr | None = Field(default=None, min_length=16)
    # The registry's external URL (scheme://host[:port]) when clients reach it through a
    # proxy or under another name: used for the token realm, the v1 endpoints header and the
    # URLs in events (Location headers are relative). Unset: from the request (and from the
    # X-Forwarded-* headers of a trusted proxy).
    host: str | None = None
    # Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For, -Proto and -Host
    # are believed; anyone else's are ignored.
    trustedproxies: list[str] = []

    @field_validator("trustedproxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value


class ReadOnlySettings(_Section):
    enabled: bool = False


class MaintenanceSettings(_Section):
    """`readonly.enabled`, as Distribution's `storage.maintenance.readonly.enabled`: every write
    is refused (405 UNSUPPORTED), reads go on. Switched by SIGHUP without a restart."""

    readonly: ReadOnlySettings = ReadOnlySettings()

    @field_validator("readonly", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `readonly: true` (or MOORAGE_MAINTENANCE_READONLY=true) for `readonly: {enabled: true}`
        return {"enabled": value} if isinstance(value, bool | int | str) else value


class MetricsSettings(_Section):
    """Prometheus metrics on `/metrics` (docs/operations.md lists them). No credentials are
    asked: an operator whose port is public turns them off or moves them to `listen`."""

    enabled: bool = True
    # HOST:PORT of a separate address that serves `/metrics` (as Distribution's debug
    # server); the main port then does not. Unset: the main port serves it.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        return None if value is None else _host_port(value)


# Paths the registry's own endpoints answer under: the web interface never takes them.
_API_PATHS = ("/v1", "/v2", "/_ping", "/auth", "/metrics", "/healthz", "/readyz")


class UISettings(_Section):
    """The web interface (moorage/ui, docs/ui/README.md), served on the registry's own port."""

    enabled: bool = True
    # Where its pages live ("/" or a prefix such as "/ui"); never under the API's paths.
    path: str = "/"

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        path = "/" + value.strip("/")
        if path != "/" and (
            not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path)
            or any(path == p or path.startswith(p + "/") for p in _API_PATHS)
        ):
            raise ValueError(f"ui.path {value!r}: a plain path outside {', '.join(_API_PATHS)}")
        return path


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # One line per request (moorage/api/accesslog.py); at level info.
    accesslog: bool = True
    # `text` (fields as key=value after the message) or `json` (one object per line).
    format: Literal["text", "json"] = "text"


# A repository name's grammar (moorage/content/names.py), which a mirror's prefix must follow.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PREFIX = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


class Upstream(_Section):
    """A registry mirrored under `prefix` (docs/mirror.md): `<prefix>/<name>` here is `<name>`
    there; the upstream with prefix `""` is the default, for names under no other prefix (what
    a docker daemon's `registry-mirrors` asks for). Pulls of what is not cached locally are
    fetched from `url` and cached; pushes into a mirrored name are refused."""

    prefix: str = ""
    # scheme://host[:port] of the upstream registry (its /v2/ is below it).
    url: str
    # Both or neither: Basic credentials, or for the upstream's token service. Neither:
    # anonymous (Docker Hub's anonymous token flow included).
    username: str | None = None
    password: SecretStr | None = None
    # A cached tag is served without asking the upstream for this long, then revalidated
    # with a HEAD (Docker Hub does not count it as a pull). Digests never expire.
    ttl: Duration = 300.0
    # Globs (`*` crosses `/`) of the upstream names that may be pulled; empty: all. Names
    # under the default upstream that no glob allows are local repositories.
    repositories: list[str] = []

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value and not _PREFIX.fullmatch(value):
            raise ValueError(
                f"prefix {value!r} is not a repository path (lowercase components separated "
                "by /, no leading or trailing /)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {value!r} must be http(s)://host[:port]")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"url {value!r} must be http(s)://host[:port], without a path")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> Upstream:
        if (self.username is None) != (self.password is None):
            raise ValueError(f"upstream {self.url}: username and password go together")
        return self


class ProxySettings(_Section):
    """The pull-through cache: the upstreams mirrored (docs/mirror.md)."""

    upstreams: list[Upstream] = []

    @field_validator("upstreams")
    @classmethod
    def _distinct(cls, value: list[Upstream]) -> list[Upstream]:
        seen: set[str] = set()
        for upstream in value:
            if upstream.prefix in seen:
                which = "the default upstream" if not upstream.prefix else upstream.prefix
                raise ValueError(f"two upstreams with prefix {upstream.prefix!r} ({which})")
            seen.add(upstream.prefix)
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOORAGE_",
        env_nested_delimiter="_",
        extra="forbid",
    )

    listen: str = "127.0.0.1:5000"
    datadir: Path = Path("moorage-data")
    workers: int = Field(default=1, ge=1, le=256)
    # The older name of `http.host` (read when that is unset).
    baseurl: str | None = None
    storage: StorageSettings = StorageSettings()
    metadata: MetadataSettings = MetadataSettings()
    uploads: UploadSettings = UploadSettings()
    gc: GCSettings = GCSettings()
    retention: list[RetentionRule] = []
    immutable: list[ImmutableRule] = []
    quotas: list[Quota] = []
    notifications: NotificationSettings = NotificationSettings()
    manifests: ManifestSettings = ManifestSettings()
    deletes: DeleteSettings = DeleteSettings()
    mount: MountSettings = MountSettings()
    pagination: PaginationSettings = PaginationSettings()
    ui: UISettings = UISettings()
    http: HTTPSettings = HTTPSettings()
    log: LogSettings = LogSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    metrics: MetricsSettings = MetricsSettings()
    auth: AuthSettings = AuthSettings()
    tls: TLSSettings = TLSSettings()
    proxy: ProxySettings = ProxySettings()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def blob_root(self) -> Path:
        return self.storage.rootdirectory or self.datadir / "storage"

    @property
    def metadata_url(self) -> str:
        return self.metadata.url or f"sqlite:///{(self.datadir / 'metadata.db')}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command-line flags (init) beat the environment, which beats the file (passed in as
        # defaults through `load`), which beats the built-in defaults.
        return (init_settings, env_settings)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ConfigError(Exception):
    """The configuration file or environment is not valid."""


def read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < YAML file < MOORAGE_* environment < overrides."""
    file_values = read_file(config_file) if config_file else {}
    env_values = Settings().model_dump(exclude_unset=True)
    flag_values = {k: v for k, v in overrides.items() if v is not None}
    merged = _deep_merge(_deep_merge(file_values, env_values), flag_values)
    try:
        return Settings(**merged)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def pack(settings: Settings) -> str:
    """The settings as text, for a process this one starts (`moorage.supervisor` hands the
    settings a server started with to a replacement worker): `unpack` gives them back whole,
    secrets included, however the file and environment have changed since. Pickled: the text
    comes from the server's own supervisor through the environment, and whoever can set a
    process's environment can make it run anything already (`PYTHONPATH`)."""
    return base64.b64encode(pickle.dumps(settings)).decode("ascii")


def unpack(text: str) -> Settings:
    settings = pickle.loads(base64.b64decode(text))
    if not isinstance(settings, Settings):
        raise ConfigError("not packed settings")
    return settings
