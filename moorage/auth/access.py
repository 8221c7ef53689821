"""Access rules: which actions an identity may take on a resource.

Scopes follow Docker's token auth: `repository:<name>:<actions>` and `registry:catalog:*`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from moorage.config import AccessRule, AuthSettings

ACTIONS = ("pull", "push", "delete")
ANONYMOUS = "anonymous"
ANY_USER = "*"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking. `name` None means anonymous."""

    name: str | None
    # Access granted by a bearer token, when the request carried one: (type, name) -> actions.
    token_access: dict[tuple[str, str], frozenset[str]] | None = None

    @property
    def anonymous(self) -> bool:
        return self.name is None


ANONYMOUS_IDENTITY = Identity(None)


@dataclass(frozen=True, slots=True)
class Scope:
    type: str  # "repository" or "registry"
    name: str
    actions: frozenset[str] = field(default_factory=frozenset)

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


_SCOPE = re.compile(r"^([a-z0-9]+)(?:\([a-z0-9]+\))?:(.+):([a-z*,]*)$")


def parse_scopes(value: str) -> list[Scope]:
    """Parse space-separated scope strings; unparsable ones are ignored."""
    scopes = []
    for item in value.split():
        match = _SCOPE.match(item)
        if match:
            kind, name, actions = match.groups()
            scopes.append(Scope(kind, name, frozenset(a for a in actions.split(",") if a)))
    return scopes


def default_rules(settings: AuthSettings) -> list[AccessRule]:
    rules = [AccessRule(repository="*", users=[ANY_USER], actions=["pull", "push", "delete"])]
    if settings.anonymouspull:
        rules.append(AccessRule(repository="*", users=[ANONYMOUS], actions=["pull"]))
    return rules


class Policy:
    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.mode != "none"
        self.rules = list(settings.rules) or default_rules(settings)
        if settings.rules and settings.anonymouspull:
            self.rules.append(AccessRule(repository="*", users=[ANONYMOUS], actions=["pull"]))
        self.groups = settings.groups
        self.admins = set(settings.admins)

    def _applies(self, rule: AccessRule, user: str | None) -> bool:
        if user is None:
            return ANONYMOUS in rule.users
        if ANY_USER in rule.users or user in rule.users:
            return True
        return any(user in self.groups.get(group, ()) for group in rule.groups)

    def allowed(self, user: str | None, scope_type: str, name: str) -> frozenset[str]:
        """Every action `user` may take on the resource (no auth configured: all)."""
        if not self.enabled:
            return frozenset((*ACTIONS, "*"))
        if scope_type == "registry":
            if name == "catalog" and user is not None:
                return frozenset({"*"})
            return frozenset()
        granted: set[str] = set()
        for rule in self.rules:
            if self._applies(rule, user) and fnmatch.fnmatchcase(name, rule.repository):
                granted.update(ACTIONS if "*" in rule.actions else rule.actions)
        if granted >= set(ACTIONS):
            granted.add("*")
        return frozenset(granted)

    def grant(self, user: str | None, wanted: Scope) -> Scope:
        """The part of `wanted` that `user` may have (possibly no actions)."""
        allowed = self.allowed(user, wanted.type, wanted.name)
        if "*" in wanted.actions and "*" in allowed:
            return Scope(wanted.type, wanted.name, wanted.actions)
        return Scope(wanted.type, wanted.name, frozenset(wanted.actions & allowed))

    def pull_globs(self, user: str | None) -> tuple[str, ...]:
        """The repository globs of every rule that lets `user` pull: `allowed` grants pull
        on a repository exactly when its name matches one of them."""
        return tuple(
            rule.repository
            for rule in self.rules
            if self._applies(rule, user) and ("pull" in rule.actions or "*" in rule.actions)
        )

    def sees_everything(self, user: str | None) -> bool:
        return not self.enabled or (user is not None and user in self.admins)
