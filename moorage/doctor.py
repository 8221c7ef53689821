"""`moorage doctor URL`: what a client meets on its way to a registry, any registry, step by step.

Docker shows only the last error of a failed push or login, which is usually the v1 fallback's or
a generic "unauthorized", not the cause. Each check here is a small function that looks at one
step (name resolution, TCP, TLS, `/v2/` and its challenge, the token realm, `/v1/_ping`, the
clock) and returns findings in plain words, with the fix where something fails. A later step
that cannot be reached is not tried, so the first failure is the cause.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import ipaddress
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
from cryptography import x509
from cryptography.x509.oid import NameOID

Level = Literal["ok", "info", "warn", "fail"]

#: Days before expiry from which a certificate is reported as about to expire.
EXPIRY_WARNING_DAYS = 14
#: Clock differences (seconds) worth a warning, and that break token auth (tokens are
#: checked against the registry's clock; Distribution allows a minute of leeway at most).
SKEW_WARNING = 30.0
SKEW_FAILURE = 300.0


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str  # which step: dns, tcp, tls, v2, auth, token, v1, clock
    message: str
    fix: str = ""


@dataclass
class Target:
    """What to check and with what: the registry URL as the user gave it, credentials, a CA
    file trusted besides the system store (like a certs.d ca.crt), the repository of the pull
    scope asked of a token realm."""

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    repository: str = "library/alpine"
    timeout: float = 10.0
    scheme: str = field(init=False)
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        url = self.url if "://" in self.url else "https://" + self.url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a registry URL: {self.url!r} (want https://HOST[:PORT])")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a registry URL: {self.url!r} ({exc})") from exc
        self.port = port or (443 if self.scheme == "https" else 80)

    @property
    def hostport(self) -> str:
        """HOST:PORT as clients name the registry (and the certs.d directory)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.hostport}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _insecure_fix(target: Target) -> str:
    return (
        f'docker: add "{target.hostport}" to "insecure-registries" in /etc/docker/daemon.json '
        f"and restart dockerd; podman, skopeo and buildah: a [[registry]] entry with "
        f'location = "{target.hostport}" and insecure = true in '
        "/etc/containers/registries.conf (or --tls-verify=false)"
    )


def _ca_fix(target: Target, ca: str, check_again: bool = True) -> str:
    """Where clients look for the CA `ca` (a description of the file to put there)."""
    fix = (
        f"put {ca} at /etc/docker/certs.d/{target.hostport}/ca.crt for docker (no restart "
        f"needed), /etc/containers/certs.d/{target.hostport}/ca.crt for podman, skopeo and "
        "buildah, or in the system trust store (Debian: copy it to "
        "/usr/local/share/ca-certificates/NAME.crt, run update-ca-certificates, restart dockerd)"
    )
    if check_again:
        fix += f"; check again with `moorage doctor {target.url} --ca-file ca.crt`"
    return fix


# --- name resolution and TCP ------------------------------------------------------------------


async def resolve(target: Target) -> tuple[list[Finding], list[str]]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM), target.timeout
        )
    except (OSError, TimeoutError) as exc:
        return [
            Finding(
                "fail",
                "dns",
                f"{target.host} does not resolve ({exc or 'timed out'}); docker reports "
                f"'dial tcp: lookup {target.host}: no such host'",
                "check the spelling of the name, this machine's DNS and /etc/hosts (and those "
                "of the machine dockerd runs on)",
            )
        ], []
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return [Finding("ok", "dns", f"{target.host} resolves to {', '.join(addresses)}")], addresses


async def connect(target: Target, addresses: list[str]) -> tuple[list[Finding], str | None]:
    """TCP to each address until one answers, as clients do; the address that answered."""
    errors = []
    refused = True
    for address in addresses:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address, target.port), target.timeout
            )
        except TimeoutError:
            refused = False
            errors.append(f"{address}: no answer within {target.timeout:g} s")
            continue
        except ConnectionRefusedError:
            errors.append(f"{address}: connection refused")
            continue
        except OSError as exc:
            refused = False
            errors.append(f"{address}: {exc.strerror or exc}")
            continue
        writer.close()
        return [Finding("ok", "tcp", f"{address} port {target.port} accepts connections")], address
    if refused:
        why = "nothing listens there (connection refused)"
        fix = (
            "start the registry, or check the port; a registry that listens on 127.0.0.1 "
            "(moorage's default --listen) cannot be reached from other machines"
        )
    else:
        why = "; ".join(errors)
        fix = "a firewall drops the connection, or the address is wrong"
    return [
        Finding(
            "fail",
            "tcp",
            f"cannot connect to {target.hostport}: {why}; docker reports "
            f"'dial tcp ...:{target.port}: connect: ...' (or a v1 fallback error)",
            fix,
        )
    ], None


# --- TLS --------------------------------------------------------------------------------------


async def _handshake(target: Target, address: str, context: ssl.SSLContext) -> ssl.SSLObject | None:
    """A TLS handshake with `context`; the SSL object of the connection (closed again)."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            address,
            target.port,
            ssl=context,
            server_hostname=target.host,
            ssl_handshake_timeout=target.timeout,
        ),
        target.timeout,
    )
    ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
    writer.close()
    return ssl_object


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def speaks_http(target: Target, address: str) -> bool:
    """Whether the port answers a plain HTTP request with HTTP."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, target.port), target.timeout
        )
        try:
            writer.write(f"GET /v2/ HTTP/1.0\r\nHost: {target.hostport}\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.read(5), target.timeout)
        finally:
            writer.close()
    except (OSError, TimeoutError):
        return False
    return head == b"HTTP/"


def _names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses of a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _covers(host: str, dns_names: list[str], ips: list[str]) -> bool:
    """RFC 6125 matching as Go's crypto/x509 does it: IPs only against IP SANs, one wildcard
    label at the left."""
    try:
        return str(ipaddress.ip_address(host)) in ips
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    for name in dns_names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _duration(span: datetime.timedelta) -> str:
    if span.days >= 1:
        return f"{span.days} days"
    return f"{span.seconds // 3600} hours"


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def check_certificate(
    target: Target, cert: x509.Certificate, now: datetime.datetime
) -> list[Finding]:
    """Names and dates of the server's certificate, as any client checks them."""
    findings = []
    subject = _common_name(cert.subject)
    issuer = _common_name(cert.issuer)
    until = cert.not_valid_after_utc
    findings.append(
        Finding(
            "info",
            "tls",
            f"certificate for {subject!r} issued by {issuer!r}, valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {until:%Y-%m-%d %H:%M} UTC",
        )
    )
    if now > until:
        findings.append(
            Finding(
                "fail",
                "tls",
                f"the certificate expired on {until:%Y-%m-%d %H:%M} UTC "
                f"({(now - until).days} days ago); docker reports 'x509: certificate has "
                "expired or is not yet valid'",
                "renew the certificate on the server and reload it (moorage: SIGHUP); if it "
                "was renewed, the server still serves the old one",
            )
        )
    elif now < cert.not_valid_before_utc:
        findings.append(
            Finding(
                "fail",
                "tls",
                f"the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
                " UTC on; docker reports 'x509: certificate has expired or is not yet valid'",
                "check this machine's clock (and the server's: see the clock check below)",
            )
        )
    elif until - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        findings.append(
            Finding(
                "warn",
                "tls",
                f"the certificate expires in {_duration(until - now)}",
                "renew it before then",
            )
        )
    dns_names, ips = _names(cert)
    if not dns_names and not ips:
        findings.append(
            Finding(
                "fail",
                "tls",
                f"the certificate has no subjectAltName, only the common name {subject!r}, "
                "which Go clients (docker, podman, skopeo) ignore: 'x509: certificate relies "
                "on legacy Common Name field'",
                f"issue a certificate with {target.host} in its subjectAltName "
                "(moorage tls init --host NAME --ip ADDRESS makes one)",
            )
        )
    elif not _covers(target.host, dns_names, ips):
        findings.append(
            Finding(
                "fail",
                "tls",
                f"the certificate is for {', '.join(dns_names + ips)}, not for {target.host}; "
                f"docker reports 'x509: certificate is valid for ..., not {target.host}'",
                "use a name the certificate has in the URL (and in image names), or issue a "
                f"certificate with {target.host} in its subjectAltName (moorage tls init "
                "--host NAME --ip ADDRESS)",
            )
        )
    else:
        findings.append(Finding("ok", "tls", f"the certificate's names cover {target.host}"))
    return findings


async def _trusted(target: Target, address: str, cafile: str | None) -> str | None:
    """None when the chain verifies against the system trust store (or only `cafile`), else
    why not. Names and dates are checked on their own."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False
    try:
        await _handshake(target, address, context)
    except ssl.SSLCertVerificationError as exc:
        # OpenSSL builds the chain to a trusted root before it checks dates: a date error
        # means the chain itself is trusted.
        if exc.verify_code in (9, 10):  # X509_V_ERR_CERT_NOT_YET_VALID, _HAS_EXPIRED
            return None
        return str(exc.verify_message)
    return None


async def check_tls(target: Target, address: str) -> tuple[list[Finding], bool | None]:
    """The TLS step; also whether HTTP requests can go on verifying certificates (None: no
    TLS to speak of, nothing further to check)."""
    try:
        ssl_object = await _handshake(target, address, _unverified())
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        if await speaks_http(target, address):
            return [
                Finding(
                    "fail",
                    "tls",
                    f"{target.hostport} speaks plain HTTP, not HTTPS; docker reports this as "
                    "'http: server gave HTTP response to HTTPS client' (older versions as a "
                    "v1 fallback error); the real cause is that the registry serves no TLS",
                    "serve TLS (moorage serve --tls-cert/--tls-key, or moorage tls init), or "
                    f"use http://{target.hostport} and tell the clients it is plain HTTP: "
                    + _insecure_fix(target),
                )
            ], None
        return [
            Finding(
                "fail",
                "tls",
                f"the TLS handshake with {target.hostport} failed: {exc or type(exc).__name__}",
                "check that this port serves TLS and what the server logs",
            )
        ], None
    assert ssl_object is not None
    der = ssl_object.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    findings = [Finding("ok", "tls", f"TLS handshake: {ssl_object.version()}")]
    findings += check_certificate(target, cert, datetime.datetime.now(datetime.UTC))
    issuer = _common_name(cert.issuer)
    self_signed = cert.issuer == cert.subject
    system = await _trusted(target, address, None)
    if system is None:
        findings.append(Finding("ok", "tls", "the system trust store trusts the certificate"))
    elif target.ca_file is not None and await _trusted(target, address, target.ca_file) is None:
        findings.append(
            Finding(
                "info",
                "tls",
                f"trusted through {target.ca_file}, not through the system trust store: "
                "clients need that CA too",
                _ca_fix(target, f"a copy of {target.ca_file}", check_again=False),
            )
        )
    else:
        what = "is self-signed" if self_signed else f"is issued by {issuer!r}"
        extra = " (the certificate is its own CA: the same file serves as ca.crt)"
        findings.append(
            Finding(
                "fail",
                "tls",
                f"the certificate {what}, which this machine does not trust ({system}); docker "
                "reports 'x509: certificate signed by unknown authority' (and may show it as "
                "a v1 fallback error)" + (extra if self_signed else ""),
                _ca_fix(target, f"the certificate (PEM) of the CA that issued it, {issuer!r},"),
            )
        )
        if target.loopback:
            findings.append(
                Finding(
                    "info",
                    "tls",
                    "docker itself does not verify registries on 127.0.0.0/8, but podman, "
                    "skopeo and buildah do",
                )
            )
    return findings, not any(f.level == "fail" for f in findings)


async def check_plain(target: Target, address: str) -> list[Finding]:
    """An http:// URL: is it really plain HTTP, and will clients talk to it?"""
    try:
        await _handshake(target, address, _unverified())
    except (ssl.SSLError, OSError, TimeoutError):
        pass
    else:
        return [
            Finding(
                "fail",
                "tls",
                f"{target.hostport} speaks HTTPS, not plain HTTP",
                f"use https://{target.hostport}: clients try HTTPS first and use it",
            )
        ]
    if target.loopback:
        return [
            Finding(
                "info",
                "tls",
                "plain HTTP on a loopback address: docker allows it (127.0.0.0/8 is an insecure "
                "registry by default); podman, skopeo and buildah need --tls-verify=false",
            )
        ]
    return [
        Finding(
            "warn",
            "tls",
            f"plain HTTP: clients refuse it unless told {target.hostport} is insecure (docker "
            "reports 'http: server gave HTTP response to HTTPS client'); anyone on the path "
            "sees the passwords",
            _insecure_fix(target) + "; better, serve TLS (moorage tls init)",
        )
    ]


# --- HTTP: /v2/, its challenge, the token realm, /v1/_ping, the clock -------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            value = []
            i += 1
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < len(rest):
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    context: ssl.SSLContext | bool,
    authorization: str | None = None,
) -> Answer:
    headers = {"Authorization": authorization} if authorization else {}
    async with session.get(url, headers=headers, ssl=context, allow_redirects=True) as resp:
        body = await resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)


def check_clock(answer: Answer, bearer: bool) -> list[Finding]:
    date = answer.headers.get("date")
    if not date:
        return [Finding("info", "clock", "the server sends no Date header: skew not checked")]
    try:
        server = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return [Finding("info", "clock", f"unreadable Date header {date!r}")]
    skew = (server - datetime.datetime.now(datetime.UTC)).total_seconds()
    said = f"the server's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} ours"
    fix = "run NTP (systemd-timesyncd, chrony) on both machines"
    if abs(skew) > SKEW_FAILURE and bearer:
        return [
            Finding(
                "fail",
                "clock",
                said + ": tokens will look expired or not yet valid ('unauthorized: "
                "authentication required' right after a successful login)",
                fix,
            )
        ]
    if abs(skew) > SKEW_WARNING:
        return [Finding("warn", "clock", said, fix)]
    return [Finding("ok", "clock", f"clocks agree (within {max(abs(skew), 1):.0f} s)")]


async def check_v1(
    session: aiohttp.ClientSession, target: Target, context: ssl.SSLContext | bool
) -> Finding:
    """`/v1/_ping`: information only; no current client needs v1."""
    try:
        answer = await _get(session, target.base + "/v1/_ping", context)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Finding("info", "v1", f"/v1/_ping did not answer ({exc or type(exc).__name__})")
    if answer.status == 200:
        version = answer.headers.get("x-docker-registry-version")
        return Finding(
            "info",
            "v1",
            "/v1/_ping answers: the legacy v1 protocol is served"
            + (f" (X-Docker-Registry-Version {version})" if version else ""),
        )
    return Finding(
        "info",
        "v1",
        f"/v1/_ping answers {answer.status}: no legacy v1 protocol here (normal for CNCF "
        "Distribution and Docker Hub; only docker clients before 1.6 need it)",
    )


async def check_token(
    session: aiohttp.ClientSession,
    target: Target,
    context: ssl.SSLContext | bool,
    params: dict[str, str],
) -> list[Finding]:
    """The token realm: reachable, and does it issue a token for a pull scope that /v2/ then
    accepts?"""
    realm = params.get("realm", "")
    if not urlsplit(realm).scheme or not urlsplit(realm).hostname:
        return [
            Finding(
                "fail",
                "token",
                f"the Bearer challenge names no usable realm ({realm!r}): clients cannot log in",
                "set the token realm to an absolute URL the clients reach (moorage: "
                "auth.token.realm, or http.host, the external URL, behind a proxy)",
            )
        ]
    findings = []
    realm_host = urlsplit(realm).hostname or ""
    if urlsplit(realm).scheme == "http" and target.scheme == "https":
        findings.append(
            Finding(
                "warn",
                "token",
                f"the token realm {realm} is plain HTTP: passwords go unencrypted",
                "serve the realm over HTTPS",
            )
        )
    if not target.loopback and Target(realm).loopback:
        findings.append(
            Finding(
                "warn",
                "token",
                f"the token realm {realm} is a loopback address: clients on other machines "
                "send their passwords to themselves",
                "behind a reverse proxy, set the external URL (moorage: http.host) or "
                "auth.token.realm",
            )
        )
    service = params.get("service")
    query = {"scope": f"repository:{target.repository}:pull"}
    if service:
        query["service"] = service
    if target.user:
        query["account"] = target.user
    authorization = _basic(target.user, target.password or "") if target.user else None
    realm_context: ssl.SSLContext | bool = context
    if urlsplit(realm).hostname != target.host:
        # Another host: verified on its own, whatever the registry's certificate was like.
        realm_context = _verifying(target)
    url = realm + ("&" if "?" in realm else "?") + urlencode(query)
    try:
        answer = await _get(session, url, realm_context, authorization)
    except aiohttp.ClientSSLError as exc:
        return [
            *findings,
            Finding(
                "fail",
                "token",
                f"the token realm {realm} fails TLS verification ({exc}); docker reports "
                "'x509: ...' at login although the registry itself is fine",
                f"make {realm_host} trusted (its CA in the system trust store) or fix its "
                "certificate; run moorage doctor on the realm's URL for details",
            ),
        ]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [
            *findings,
            Finding(
                "fail",
                "token",
                f"the token realm {realm} cannot be reached from here ({exc or 'timed out'}); "
                "docker reports a login or pull failure (or a v1 fallback error), while the "
                "real cause is this unreachable realm",
                "the registry must advertise a realm URL its clients reach: moorage derives "
                "it from the request, or from http.host (the external URL) behind a proxy; "
                "an external token server: auth.token.realm",
            ),
        ]
    who = f"user {target.user}" if target.user else "anonymous"
    if answer.status == 401 and target.user:
        return [
            *findings,
            Finding(
                "fail",
                "token",
                f"the token realm refused the credentials of {target.user} (401); docker "
                "login reports 'unauthorized: ...'",
                "check the user name and password (moorage: `moorage user add USER "
                "--htpasswd FILE` sets a new one)",
            ),
        ]
    if answer.status in (401, 403) and not target.user:
        return [
            *findings,
            Finding(
                "info",
                "token",
                f"the realm gives no anonymous token ({answer.status}): clients must log in; "
                "pass --user to check credentials",
            ),
        ]
    if answer.status == 429:
        return [
            *findings,
            Finding(
                "fail",
                "token",
                "the token realm answers 429: too many failed logins from here lately",
                f"wait {answer.headers.get('retry-after', 'a while')} s and try again with "
                "the right password",
            ),
        ]
    token = None
    if answer.status == 200:
        try:
            document = json.loads(answer.body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError):
            token = None
    if not isinstance(token, str) or not token:
        return [
            *findings,
            Finding(
                "fail",
                "token",
                f"the token realm answered {answer.status} without a token ({answer.body[:120]!r})",
                "the realm URL does not point to a token server (behind a proxy: is the "
                "realm's path forwarded?)",
            ),
        ]
    findings.append(
        Finding("ok", "token", f"the realm {realm} issues a token ({who}) for {query['scope']}")
    )
    try:
        check = await _get(session, target.base + "/v2/", context, f"Bearer {token}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [*findings, Finding("fail", "token", f"/v2/ with the token failed: {exc}")]
    if check.status == 200:
        findings.append(Finding("ok", "token", "the registry accepts the realm's token"))
    elif target.user:
        findings.append(
            Finding(
                "fail",
                "token",
                f"the registry refuses the realm's token ({check.status}); docker reports "
                "'unauthorized: authentication required' right after a successful login",
                "the registry and the token server disagree on issuer, service or signing "
                "key (moorage: auth.token.issuer, service, publickeys), or the clocks differ",
            )
        )
    else:
        findings.append(
            Finding("info", "token", f"/v2/ with an anonymous token answers {check.status}")
        )
    return findings


def _verifying(target: Target) -> ssl.SSLContext:
    """What a client trusts: the system store, and the CA of --ca-file (a certs.d ca.crt)."""
    context = ssl.create_default_context()
    if target.ca_file:
        context.load_verify_locations(cafile=target.ca_file)
    return context


async def check_http(target: Target, verify: bool) -> list[Finding]:
    findings: list[Finding] = []
    context: ssl.SSLContext | bool = False
    if target.scheme == "https" and verify:
        context = _verifying(target)
    elif target.scheme == "https":
        findings.append(
            Finding("info", "v2", "the checks below ran without certificate verification")
        )
    timeout = aiohttp.ClientTimeout(total=target.timeout)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
        try:
            answer = await _get(session, target.base + "/v2/", context)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [
                *findings,
                Finding(
                    "fail",
                    "v2",
                    f"GET {target.base}/v2/ failed: {exc or type(exc).__name__}",
                    "check what the server (or a proxy in front of it) logs",
                ),
            ]
        version = answer.headers.get("docker-distribution-api-version")
        bearer = False
        if answer.status == 404:
            findings.append(
                Finding(
                    "fail",
                    "v2",
                    f"{target.base}/v2/ answers 404: no registry v2 API there. docker then "
                    "falls back to v1 and reports that error; the real cause is /v2/ not "
                    "answering",
                    "point the URL at the registry, or make the reverse proxy forward /v2/ "
                    "(and /v1/) to it unchanged",
                )
            )
        elif answer.status == 200:
            findings.append(Finding("ok", "v2", "/v2/ answers 200: no login needed"))
            if target.user:
                findings.append(
                    Finding("info", "auth", "the registry asks for no credentials: not checked")
                )
        elif answer.status == 401:
            challenge = answer.headers.get("www-authenticate", "")
            scheme, params = parse_challenge(challenge) if challenge else ("", {})
            if scheme == "basic":
                findings += await _check_basic(session, target, context, params)
            elif scheme == "bearer":
                bearer = True
                findings.append(
                    Finding(
                        "ok",
                        "auth",
                        f"/v2/ asks for a token: realm {params.get('realm')!r}, "
                        f"service {params.get('service')!r}",
                    )
                )
                findings += await check_token(session, target, context, params)
            else:
                findings.append(
                    Finding(
                        "fail",
                        "auth",
                        f"/v2/ answers 401 with {'no' if not challenge else 'an unknown'} "
                        f"challenge ({challenge!r}): clients cannot tell how to log in",
                        "a proxy in front drops or rewrites the WWW-Authenticate header: "
                        "pass it through unchanged",
                    )
                )
        else:
            findings.append(
                Finding(
                    "fail",
                    "v2",
                    f"/v2/ answers {answer.status}",
                    "see what the server (or the proxy in front) logs",
                )
            )
        if answer.status in (200, 401) and version is None:
            findings.append(
                Finding(
                    "warn",
                    "v2",
                    "no Docker-Distribution-API-Version header on /v2/: a proxy drops it, or "
                    "this is not a registry; some clients use it to recognise a v2 registry",
                    "let the proxy pass response headers through",
                )
            )
        findings += check_clock(answer, bearer)
        findings.append(await check_v1(session, target, context))
    return findings


async def _check_basic(
    session: aiohttp.ClientSession,
    target: Target,
    context: ssl.SSLContext | bool,
    params: dict[str, str],
) -> list[Finding]:
    findings = [
        Finding("ok", "auth", f"/v2/ asks for Basic credentials (realm {params.get('realm')!r})")
    ]
    if not target.user:
        findings.append(
            Finding("info", "auth", "clients must log in; pass --user to check credentials")
        )
        return findings
    try:
        answer = await _get(
            session, target.base + "/v2/", context, _basic(target.user, target.password or "")
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [*findings, Finding("fail", "auth", f"/v2/ with credentials failed: {exc}")]
    if answer.status == 200:
        findings.append(
            Finding("ok", "auth", f"the registry accepts the credentials of {target.user}")
        )
    elif answer.status == 429:
        findings.append(
            Finding(
                "fail",
                "auth",
                "the registry answers 429: too many failed logins from here lately",
                f"wait {answer.headers.get('retry-after', 'a while')} s and try again",
            )
        )
    else:
        findings.append(
            Finding(
                "fail",
                "auth",
                f"the registry refused the credentials of {target.user} ({answer.status}); "
                "docker login reports 'unauthorized: ...'",
                "check the user name and password (moorage: `moorage user add USER "
                "--htpasswd FILE` sets a new one)",
            )
        )
    return findings


async def diagnose(target: Target, report: Callable[[Finding], None]) -> list[Finding]:
    """Every step in a client's order; each finding goes to `report` as it is made."""
    findings: list[Finding] = []

    def add(new: list[Finding]) -> bool:
        for finding in new:
            findings.append(finding)
            report(finding)
        return not any(f.level == "fail" for f in new)

    resolved, addresses = await resolve(target)
    if not add(resolved):
        return findings
    connected, address = await connect(target, addresses)
    if not add(connected) or address is None:
        return findings
    verify = True
    if target.scheme == "https":
        tls, verified = await check_tls(target, address)
        add(tls)
        if verified is None:
            return findings
        verify = verified
    elif not add(await check_plain(target, address)):
        return findings
    add(await check_http(target, verify))
    return findings
