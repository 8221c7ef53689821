"""Link-header parsing shared by the tags, catalog and referrers tests."""

from __future__ import annotations

import re

from aiohttp import ClientResponse
from yarl import URL

from tests.api.helpers import local

LINK_RE = re.compile(r'^<([^>]+)>;\s*rel="?next"?$')


def next_link(resp: ClientResponse) -> str | None:
    """The `rel="next"` URL of a response (as a path+query for the test client), or None."""
    value = resp.headers.get("Link")
    if value is None:
        return None
    found = LINK_RE.match(value.strip())
    assert found, f"bad Link header: {value!r}"
    return local(found.group(1))


def link_query(resp: ClientResponse) -> dict[str, str]:
    link = next_link(resp)
    assert link is not None, "no Link header"
    return dict(URL(link).query)
