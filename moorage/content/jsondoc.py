"""Parsing JSON that a client sent, with a bound on nesting.

Python's `json` recurses once per nesting level: a document of 100,000 `[` raises
RecursionError (a 500 and a traceback) instead of a clean "invalid". Every JSON document that
comes from outside (manifests, image configs, v1 image JSON and lists, user records) is parsed
here, and one nested deeper than MAX_DEPTH is refused as invalid before `json` sees it. No
format Moorage reads needs more than a handful of levels; 64 leaves room for annotations.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64

# A JSON string (skipped whole, so brackets inside it do not count) or one bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENERS = frozenset(b"[{")


class JSONInvalid(ValueError):
    """Not a JSON document we accept (malformed, or nested too deep)."""


def depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in `data` (0 for a scalar)."""
    deepest = level = 0
    for match in _TOKEN.finditer(data):
        first = match.group()[0]
        if first in _OPENERS:
            level += 1
            deepest = max(deepest, level)
        elif first != 0x22:  # a closing bracket
            level -= 1
    return deepest


def loads(data: bytes | str, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """`json.loads`, refusing documents nested deeper than `max_depth`. Raises JSONInvalid
    (a ValueError, like json.JSONDecodeError) for anything it will not return."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if depth(raw) > max_depth:
        raise JSONInvalid(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(data, **kwargs)
    except RecursionError as exc:  # a backstop: depth() bounds what json.loads sees
        raise JSONInvalid("JSON nested too deep") from exc
    except UnicodeDecodeError as exc:
        raise JSONInvalid(f"JSON is not UTF-8: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise JSONInvalid(str(exc)) from exc
