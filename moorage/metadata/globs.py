"""Repository-name globs (fnmatch syntax, as access rules write them) as SQL conditions.

A condition selects a superset of the names its glob matches, never fewer: `LIKE` ignores case
on some databases (SQLite) and a bracket set becomes "any one character". Callers recheck
each name with the exact matcher; the SQL only keeps them from reading names that cannot
match. A glob with literal text before its first wildcard also becomes a range on the name
(`team/*` -> `'team/' <= name < 'team0'`), which the name index can seek to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_

ESCAPE = "\\"


@dataclass(frozen=True, slots=True)
class NameGlob:
    prefix: str  # the literal text before the first wildcard
    like: str  # a LIKE pattern (escape character `ESCAPE`)
    exact: bool  # no wildcard at all: the glob is a name

    def span(self, column: Any) -> ColumnElement[bool] | None:
        """The range of names that start with `prefix`; None without a prefix."""
        if not self.prefix:
            return None
        if self.exact:
            return column == self.prefix  # type: ignore[no-any-return]
        upper = successor(self.prefix)
        if upper is None:
            return column >= self.prefix  # type: ignore[no-any-return]
        return and_(column >= self.prefix, column < upper)

    def condition(self, column: Any) -> ColumnElement[bool]:
        span = self.span(column)
        if self.exact and span is not None:
            return span
        like = column.like(self.like, escape=ESCAPE)
        return like if span is None else and_(span, like)


def parse(glob: str) -> NameGlob:
    """Translate like `fnmatch.translate`: `*`, `?`, and `[...]` when it is closed (an
    unclosed `[` is a literal)."""
    like: list[str] = []
    prefix: list[str] = []
    wild = False
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            like.append("%")
            wild = True
        elif c == "?":
            like.append("_")
            wild = True
        elif c == "[" and _set_end(glob, i) < n:
            like.append("_")
            wild = True
            i = _set_end(glob, i) + 1
        else:
            like.append(ESCAPE + c if c in "%_" + ESCAPE else c)
            if not wild:
                prefix.append(c)
    return NameGlob("".join(prefix), "".join(like), not wild)


def _set_end(glob: str, start: int) -> int:
    """Index of the `]` closing a set opened just before `start` (len(glob) if none)."""
    j = start
    if j < len(glob) and glob[j] == "!":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    while j < len(glob) and glob[j] != "]":
        j += 1
    return j


def successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix` (None: none)."""
    while prefix and ord(prefix[-1]) == 0x10FFFF:
        prefix = prefix[:-1]
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def condition(column: Any, globs: Iterable[NameGlob]) -> ColumnElement[bool]:
    """Names that may match any of `globs` (no globs: none)."""
    clauses = [glob.condition(column) for glob in globs]
    return or_(*clauses) if clauses else false()


def containing(column: Any, text: str) -> ColumnElement[bool]:
    """Names that contain `text`, ignoring case."""
    escaped = "".join(ESCAPE + c if c in "%_" + ESCAPE else c for c in text)
    return column.ilike(f"%{escaped}%", escape=ESCAPE)  # type: ignore[no-any-return]
