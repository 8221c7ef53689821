"""§16 cases 1-19 (base, grammar, errors), §3 HTTP rules, path tricks, the `library/` alias."""

from __future__ import annotations

import uuid

import pytest

from tests.api.helpers import (
    ACCEPT_ALL,
    KNOWN_CODES,
    OCI_CONFIG,
    OCI_MANIFEST,
    VERSION,
    VERSION_HEADER,
    Client,
    assert_error,
    assert_raw_error,
    descriptor,
    encode,
    make_config,
    make_oci_manifest,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    raw_request,
    sha256,
    sha512,
    start_upload,
    with_query,
)

# --- 1, 5: the base endpoint ------------------------------------------------------------------


async def test_c1_base_endpoint(client: Client) -> None:
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert resp.headers[VERSION_HEADER] == VERSION
    assert resp.content_type == "application/json"
    assert isinstance(await resp.json(), dict)


async def test_c1_base_endpoint_head(client: Client) -> None:
    resp = await client.head("/v2/")
    assert resp.status == 200
    assert resp.headers[VERSION_HEADER] == VERSION
    assert await resp.read() == b""


async def test_c5_base_without_slash(client: Client) -> None:
    # H-4 Decision: serve /v2 like /v2/.
    resp = await client.get("/v2", allow_redirects=False)
    assert resp.status == 200
    assert resp.headers[VERSION_HEADER] == VERSION


# --- 6, 7: error shape, wrong method ------------------------------------------------------


async def test_c6_every_4xx_has_json_error_body(client: Client) -> None:
    await push_image(client, "shape/repo", "v1")
    requests = [
        ("GET", f"/v2/shape/repo/blobs/{sha256(b'nope')}"),
        ("GET", "/v2/shape/repo/manifests/nosuchtag"),
        ("GET", "/v2/Shape/repo/tags/list"),
        ("GET", "/v2/shape/repo/blobs/sha256:abc"),
        ("GET", f"/v2/shape/repo/blobs/uploads/{uuid.uuid4()}"),
        ("GET", "/v2/shape/nosuch/tags/list"),
        ("POST", "/v2/shape/repo/manifests/v1"),
        ("GET", "/v2/shape/repo/tags/list?n=abc"),
        ("PUT", "/v2/shape/repo/manifests/v2"),
    ]
    for method, path in requests:
        resp = await client.request(method, path)
        assert 400 <= resp.status < 500, (method, path, resp.status)
        assert resp.headers[VERSION_HEADER] == VERSION, (method, path)
        assert resp.content_type == "application/json", (method, path)
        body = await resp.json()
        assert body["errors"], (method, path, body)
        for entry in body["errors"]:
            assert entry["code"] in KNOWN_CODES, (method, path, body)


async def test_c7_wrong_method_on_manifest_is_405(client: Client) -> None:
    resp = await client.post("/v2/repo/manifests/latest")
    await assert_error(resp, 405, "UNSUPPORTED")
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert {"GET", "HEAD", "PUT", "DELETE"} <= allow
    assert "POST" not in allow


async def test_h7_wrong_method_on_other_routes_is_405(client: Client) -> None:
    for method, path in [
        ("DELETE", "/v2/repo/tags/list"),
        ("PUT", "/v2/_catalog"),
        ("PATCH", f"/v2/repo/blobs/{sha256(b'x')}"),
        ("GET", "/v2/repo/blobs/uploads/"),
        ("POST", f"/v2/repo/referrers/{sha256(b'x')}"),
    ]:
        resp = await client.request(method, path)
        await assert_error(resp, 405, "UNSUPPORTED")
        assert "Allow" in resp.headers, (method, path)
        assert method not in resp.headers["Allow"], (method, path)


# --- 8-11: repository names ---------------------------------------------------------------


async def test_c8_upper_case_name_is_invalid(client: Client) -> None:
    resp = await client.get("/v2/Foo/tags/list")
    await assert_error(resp, 400, "NAME_INVALID")


BAD_NAMES = ["a..b", "a/", "-a", "a___b", "a//b", "a-", "/a", "a/.b", "a.", "a_", "A/b", "a/b c"]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_c9_bad_names_in_every_route(client: Client, name: str) -> None:
    digest = sha256(b"x")
    quoted = name.replace(" ", "%20")
    for method, suffix in [
        ("GET", "/tags/list"),
        ("GET", "/manifests/latest"),
        ("HEAD", "/manifests/latest"),
        ("PUT", "/manifests/latest"),
        ("DELETE", "/manifests/latest"),
        ("GET", f"/blobs/{digest}"),
        ("DELETE", f"/blobs/{digest}"),
        ("POST", "/blobs/uploads/"),
        ("GET", f"/blobs/uploads/{uuid.uuid4()}"),
        ("PATCH", f"/blobs/uploads/{uuid.uuid4()}"),
        ("GET", f"/referrers/{digest}"),
    ]:
        resp = await raw_request(client, method, f"/v2/{quoted}{suffix}")
        assert resp is not None
        assert resp.status == 400, (name, method, suffix, resp.status, resp.body[:300])
        assert resp.headers.get(VERSION_HEADER) == VERSION
        if method != "HEAD":
            assert_raw_error(resp, (400,), "NAME_INVALID")


async def test_c10_name_length_limit(client: Client) -> None:
    ok = "ns/" + "a" * 252
    assert len(ok) == 255
    data = random_bytes(20)
    digest = await push_blob(client, ok, data)
    resp = await client.get(f"/v2/{ok}/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data

    too_long = "ns/" + "a" * 253
    assert len(too_long) == 256
    await assert_error(await client.post(f"/v2/{too_long}/blobs/uploads/"), 400, "NAME_INVALID")
    await assert_error(await client.get(f"/v2/{too_long}/tags/list"), 400, "NAME_INVALID")
    await assert_error(await client.get(f"/v2/{too_long}/blobs/{digest}"), 400, "NAME_INVALID")


async def test_c11_five_component_name(client: Client) -> None:
    repo = "a/b/c/d/e"
    image = await push_image(client, repo, "v1")
    resp = await client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert await resp.read() == image.body
    resp = await client.get(f"/v2/{repo}/blobs/{image.layer_digests[0]}")
    assert resp.status == 200
    assert await resp.read() == image.layers[0]
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200
    assert (await resp.json()) == {"name": repo, "tags": ["v1"]}


# --- 12, 13: tags ------------------------------------------------------------------------------


async def _manifest_body(client: Client, repo: str) -> bytes:
    config = make_config()
    await push_blob(client, repo, config)
    return encode(make_oci_manifest(descriptor(config, OCI_CONFIG), []))


async def test_c12_tag_length_limit(client: Client) -> None:
    repo = "tags/length"
    body = await _manifest_body(client, repo)
    tag128 = "t" * 128
    resp = await put_manifest(client, repo, tag128, body)
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/{repo}/manifests/{tag128}", headers={"Accept": ACCEPT_ALL})
    assert resp.status == 200
    assert await resp.read() == body

    resp = await put_manifest(client, repo, "t" * 129, body)
    await assert_error(resp, 400, "TAG_INVALID")
    tags = (await (await client.get(f"/v2/{repo}/tags/list")).json())["tags"]
    assert tags == [tag128]


@pytest.mark.parametrize("tag", [".hidden", "-x"])
async def test_c13_tag_bad_first_character(client: Client, tag: str) -> None:
    repo = "tags/first"
    body = await _manifest_body(client, repo)
    await push_image(client, repo, "ok")
    resp = await put_manifest(client, repo, tag, body)
    await assert_error(resp, 400, "TAG_INVALID")
    resp = await client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_n2_tag_with_bad_characters(client: Client) -> None:
    repo = "tags/chars"
    body = await _manifest_body(client, repo)
    for tag in ["a+b", "a%20b", "a!", "a%40b"]:
        resp = await put_manifest(client, repo, tag, body)
        await assert_error(resp, 400, "TAG_INVALID")


async def test_n2_tags_are_case_sensitive(client: Client) -> None:
    repo = "tags/case"
    one = await push_image(client, repo, "Latest")
    two = await push_image(client, repo, "latest")
    for tag, image in [("Latest", one), ("latest", two)]:
        resp = await client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
        assert resp.status == 200
        assert await resp.read() == image.body
    tags = (await (await client.get(f"/v2/{repo}/tags/list")).json())["tags"]
    assert tags == ["Latest", "latest"]


# --- 14-18: digests -----------------------------------------------------------------------


async def test_c14_manifest_bad_digest_reference(client: Client) -> None:
    await push_image(client, "dig/repo", "v1")
    resp = await client.get("/v2/dig/repo/manifests/sha256:totallywrong")
    await assert_error(resp, 400, "DIGEST_INVALID")
    resp = await client.head("/v2/dig/repo/manifests/sha256:totallywrong")
    assert resp.status == 400


async def test_c15_blob_digest_63_hex(client: Client) -> None:
    resp = await client.get("/v2/repo/blobs/sha256:" + "a" * 63)
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c16_blob_digest_upper_case_hex(client: Client) -> None:
    data = random_bytes(10)
    digest = await push_blob(client, "repo", data)
    resp = await client.get("/v2/repo/blobs/sha256:" + digest.split(":")[1].upper())
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c17_blob_digest_unsupported_algorithm(client: Client) -> None:
    resp = await client.get("/v2/repo/blobs/md5:" + "a" * 32)
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c18_blob_unknown_sha512(client: Client) -> None:
    await push_blob(client, "repo", random_bytes(10))
    resp = await client.get("/v2/repo/blobs/" + sha512(random_bytes(10)))
    await assert_error(resp, 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize(
    "digest",
    [
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "SHA256:" + "a" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "sha256:" + "a" * 65,
    ],
)
async def test_n4_malformed_digests(client: Client, digest: str) -> None:
    for path in [f"/v2/repo/blobs/{digest}", f"/v2/repo/referrers/{digest}"]:
        resp = await client.get(path)
        # "sha256" has no ':' and is not a digest for the blob route either.
        await assert_error(resp, 400, "DIGEST_INVALID")


# --- 19: unknown query parameters ------------------------------------------------------------


async def test_c19_ns_parameter_ignored(client: Client) -> None:
    await push_image(client, "ns/repo", "v1")
    await push_image(client, "ns/repo", "v2")
    plain = await client.get("/v2/ns/repo/tags/list")
    with_ns = await client.get("/v2/ns/repo/tags/list?ns=upstream.example")
    assert plain.status == with_ns.status == 200
    assert await plain.json() == await with_ns.json()
    resp = await client.get(
        "/v2/ns/repo/manifests/v1?ns=upstream.example", headers={"Accept": ACCEPT_ALL}
    )
    assert resp.status == 200


async def test_h6_unknown_query_on_upload_location(client: Client) -> None:
    data = random_bytes(30)
    location = await start_upload(client, "ns/repo")
    resp = await client.put(with_query(location, foo="bar", digest=sha256(data)), data=data)
    assert resp.status == 201, await resp.text()


# --- path tricks and bad bytes --------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v2/../etc/passwd/tags/list",
        "/v2/../../etc/passwd",
        "/v2/repo/../../etc/passwd/tags/list",
        "/v2/%2e%2e/etc/passwd/tags/list",
        "/v2/%2e%2e%2f%2e%2e%2fetc/tags/list",
        "/v2/repo/%2e%2e/tags/list",
        "/v2/a%00b/tags/list",
        "/v2/repo%00/tags/list",
        "/v2/repo/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd",
        "/v2/repo/blobs/..%2f..%2fetc%2fpasswd",
        "/v2/repo/manifests/..%2f..%2fetc%2fpasswd",
        "/v2/repo/manifests/%2e%2e",
        "/v2/repo/manifests/a%00b",
        "/v2/repo/blobs/sha256:" + "a" * 63 + "%00",
        "/v2/repo/blobs/uploads/..%2f..%2f..%2fetc%2fpasswd",
        "/v2/repo/blobs/uploads/%2e%2e",
        "/v2/repo/blobs/uploads/a%00b",
        "/v2/repo/referrers/..%2f..%2fetc%2fpasswd",
    ],
)
async def test_path_tricks_never_escape(client: Client, target: str) -> None:
    await push_image(client, "repo", "v1")
    resp = await raw_request(client, "GET", target)
    assert resp is not None
    assert resp.status in (400, 404), (target, resp.status, resp.body[:300])
    assert b"root:" not in resp.body
    if target.startswith("/v2/") and resp.headers.get(VERSION_HEADER):
        # A /v2/ answer: JSON error body.
        assert_raw_error(resp, (400, 404))


async def test_nul_in_name_is_name_invalid(client: Client) -> None:
    resp = await raw_request(client, "GET", "/v2/a%00b/tags/list")
    assert_raw_error(resp, (400,), "NAME_INVALID")
    resp = await raw_request(client, "POST", "/v2/a%00b/blobs/uploads/")
    assert_raw_error(resp, (400,), "NAME_INVALID")


async def test_dot_segments_in_name_are_invalid(client: Client) -> None:
    resp = await raw_request(client, "POST", "/v2/%2e%2e/blobs/uploads/")
    assert resp is not None
    assert resp.status in (400, 404)
    resp = await raw_request(client, "POST", "/v2/a/%2e%2e/b/blobs/uploads/")
    assert resp is not None
    assert resp.status in (400, 404)
    assert resp.status != 202


async def test_unknown_v2_path_is_404_json(client: Client) -> None:
    resp = await client.get("/v2/repo/nothing/here")
    await assert_error(resp, 404)


# --- the one-component alias: `busybox` == `library/busybox` ------------------------------


async def test_alias_push_short_pull_long(client: Client) -> None:
    image = await push_image(client, "busybox", "v1")
    resp = await client.get("/v2/library/busybox/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert await resp.read() == image.body
    resp = await client.get(f"/v2/library/busybox/manifests/{image.digest}")
    assert resp.status == 200
    resp = await client.get(f"/v2/library/busybox/blobs/{image.layer_digests[0]}")
    assert resp.status == 200
    assert await resp.read() == image.layers[0]
    resp = await client.get("/v2/library/busybox/tags/list")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["v1"]


async def test_alias_push_long_pull_short(client: Client) -> None:
    image = await push_image(client, "library/alpine", "3")
    resp = await client.get("/v2/alpine/manifests/3", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert await resp.read() == image.body
    resp = await client.head(f"/v2/alpine/blobs/{image.layer_digests[0]}")
    assert resp.status == 200
    resp = await client.get("/v2/alpine/tags/list")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["3"]


async def test_alias_catalog_lists_library_name(client: Client) -> None:
    await push_image(client, "busybox", "v1")
    resp = await client.get("/v2/_catalog")
    assert resp.status == 200
    repos = (await resp.json())["repositories"]
    assert "library/busybox" in repos
    assert "busybox" not in repos


async def test_alias_upload_session_shared(client: Client) -> None:
    data = random_bytes(20)
    resp = await client.post("/v2/busybox/blobs/uploads/")
    assert resp.status == 202
    upload_id = resp.headers["Docker-Upload-UUID"]
    resp = await client.put(
        f"/v2/library/busybox/blobs/uploads/{upload_id}?digest={sha256(data)}", data=data
    )
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/busybox/blobs/{sha256(data)}")
    assert resp.status == 200
    assert await resp.read() == data


async def test_alias_delete_via_other_name(client: Client) -> None:
    image = await push_image(client, "busybox", "v1")
    resp = await client.delete("/v2/library/busybox/manifests/v1")
    assert resp.status == 202
    resp = await client.get("/v2/busybox/manifests/v1", headers={"Accept": ACCEPT_ALL})
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")
    resp = await client.get(f"/v2/busybox/manifests/{image.digest}", headers={"Accept": ACCEPT_ALL})
    assert resp.status == 200


async def test_alias_does_not_merge_other_namespaces(client: Client) -> None:
    await push_image(client, "other/busybox", "v1")
    resp = await client.get("/v2/busybox/tags/list")
    await assert_error(resp, 404, "NAME_UNKNOWN")


# --- 154: the version header on every /v2/ response ----------------------------------------


async def test_c154_version_header_on_every_response(client: Client) -> None:
    image = await push_image(client, "hdr/repo", "v1")
    layer = image.layer_digests[0]
    location = await start_upload(client, "hdr/repo")
    unknown = f"/v2/hdr/repo/blobs/uploads/{uuid.uuid4()}"
    cases: list[tuple[str, str, dict[str, str], bytes | None, int]] = [
        ("GET", "/v2/", {}, None, 200),
        ("GET", "/v2", {}, None, 200),
        ("GET", f"/v2/hdr/repo/blobs/{layer}", {}, None, 200),
        ("GET", f"/v2/hdr/repo/blobs/{layer}", {"Range": "bytes=0-1"}, None, 206),
        ("GET", f"/v2/hdr/repo/blobs/{layer}", {"If-None-Match": f'"{layer}"'}, None, 304),
        ("GET", "/v2/hdr/repo/manifests/v1", {"Accept": ACCEPT_ALL}, None, 200),
        ("GET", location, {}, None, 204),
        ("PATCH", location, {"Content-Range": "5-6"}, b"xx", 416),
        ("PATCH", location, {}, b"xx", 202),
        ("GET", f"/v2/hdr/repo/blobs/{sha256(b'none')}", {}, None, 404),
        ("HEAD", f"/v2/hdr/repo/blobs/{sha256(b'none')}", {}, None, 404),
        ("GET", "/v2/hdr/repo/manifests/none", {}, None, 404),
        ("HEAD", "/v2/hdr/repo/manifests/none", {}, None, 404),
        ("GET", "/v2/nosuch/repo/tags/list", {}, None, 404),
        ("GET", unknown, {}, None, 404),
        ("GET", "/v2/hdr/repo/not/a/route", {}, None, 404),
        ("POST", "/v2/hdr/repo/manifests/v1", {}, None, 405),
        ("DELETE", "/v2/_catalog", {}, None, 405),
        ("GET", "/v2/HDR/tags/list", {}, None, 400),
        ("PUT", "/v2/hdr/repo/manifests/v2", {"Content-Type": OCI_MANIFEST}, b"{bad", 400),
        ("DELETE", location, {}, None, 204),
    ]
    for method, path, headers, body, status in cases:
        resp = await client.request(method, path, headers=headers, data=body, allow_redirects=False)
        assert resp.status == status, (method, path, resp.status, await resp.text())
        assert resp.headers.get(VERSION_HEADER) == VERSION, (method, path, dict(resp.headers))


async def test_c154_version_header_on_413(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(manifests={"maxsize": 1024})
    resp = await put_manifest(client, "hdr/repo", "v1", b"{" + b" " * 2000 + b"}")
    assert resp.status == 413
    assert resp.headers[VERSION_HEADER] == VERSION


async def test_c154_version_header_on_raw_bad_paths(client: Client) -> None:
    for target in ["/v2/a%00b/tags/list", "/v2/a//b/tags/list", "/v2/%2e%2e/tags/list"]:
        resp = await raw_request(client, "GET", target)
        assert resp is not None
        assert resp.headers.get(VERSION_HEADER) == VERSION, target
