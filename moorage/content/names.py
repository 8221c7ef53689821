"""Repository names and tags: the grammar, and the `library/` alias.

A one-component name is the same repository as `library/<name>`: the v1 protocol folds
one-part names into `library/`, and both protocols must name the same thing.
"""

from __future__ import annotations

import re

from moorage.errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255


def canonical_repository(name: str) -> str:
    """Validate a repository name and return its canonical form (`busybox` -> `library/busybox`)."""
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise NameInvalid(detail={"name": name})
    return name if "/" in name else f"library/{name}"


def is_tag(value: str) -> bool:
    return bool(_TAG.match(value))


def check_tag(value: str) -> str:
    if not _TAG.match(value):
        raise TagInvalid("invalid tag", {"tag": value})
    return value
