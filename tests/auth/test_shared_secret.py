"""`http.secret`: every node of a deployment issues and accepts the same tokens.

Two registries on separate data directories stand for two nodes. With the same secret, a
Bearer token from one node's token server works on the other, and so does a v1 token; the
schema 1 signing key is the same. Without it each node keeps its own keys and refuses the
other's tokens (the one-node default).
"""

from __future__ import annotations

from typing import Any

import pytest

from moorage import keys
from moorage.api.context import V1TOKENS
from moorage.auth.v1tokens import BadToken
from tests.auth.conftest import MakeRegistry
from tests.auth.helpers import bearer, token

SECRET = "a shared secret of enough length"


async def test_a_token_from_one_node_is_accepted_by_another(make_registry: MakeRegistry) -> None:
    shared: dict[str, Any] = {"http": {"secret": SECRET}}
    one = await make_registry("token", settings=shared)
    two = await make_registry("token", settings=shared)
    issued = await token(one.client, "alice", "repository:alice/app:pull,push")
    resp = await two.client.get("/v2/alice/app/tags/list", headers=bearer(issued))
    assert resp.status == 404, await resp.text()  # authorised; the repository is empty
    assert not (two.datadir / "auth" / "token-key.pem").exists()

    v1_one, v1_two = one.client.app[V1TOKENS], two.client.app[V1TOKENS]
    grant = v1_one.issue("alice/app", "write", "alice")
    assert v1_two.verify(grant).repository == "alice/app"


async def test_without_a_shared_secret_nodes_refuse_each_others_tokens(
    make_registry: MakeRegistry,
) -> None:
    one = await make_registry("token")
    two = await make_registry("token")
    issued = await token(one.client, "alice", "repository:alice/app:pull")
    resp = await two.client.get("/v2/alice/app/tags/list", headers=bearer(issued))
    assert resp.status == 401
    grant = one.client.app[V1TOKENS].issue("alice/app", "write", "alice")
    with pytest.raises(BadToken):
        two.client.app[V1TOKENS].verify(grant)


def test_derived_keys_are_stable_and_separate() -> None:
    a = keys.derive_ec_key(SECRET, keys.TOKEN_SIGNING).private_numbers().private_value
    b = keys.derive_ec_key(SECRET, keys.TOKEN_SIGNING).private_numbers().private_value
    c = keys.derive_ec_key(SECRET, keys.SCHEMA1_SIGNING).private_numbers().private_value
    d = keys.derive_ec_key(SECRET + "x", keys.TOKEN_SIGNING).private_numbers().private_value
    assert a == b and len({a, c, d}) == 3
    assert keys.derive_secret(SECRET, keys.V1_TOKENS) != keys.derive_secret(SECRET, "other")
