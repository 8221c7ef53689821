"""The operator's storage rules from the configuration: immutable tags, retention, quotas.

Globs are fnmatch's, as access rules write them (`*` crosses `/`), matched case-sensitively.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from moorage.config import ImmutableRule, Quota, RetentionRule, Settings
from moorage.errors import Denied


class TagImmutable(Denied):
    default_message = "tag is immutable"


class QuotaExceeded(Denied):
    default_message = "storage quota exceeded"


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.immutable: Sequence[ImmutableRule] = settings.immutable
        self.retention: Sequence[RetentionRule] = settings.retention
        self.quotas: Sequence[Quota] = settings.quotas

    def frozen_tags(self, repository: str) -> list[str]:
        """The tag globs that are immutable in `repository`."""
        return [
            glob
            for rule in self.immutable
            if fnmatch.fnmatchcase(repository, rule.repository)
            for glob in rule.tags
        ]

    def is_immutable(self, repository: str, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, glob) for glob in self.frozen_tags(repository))

    def refuse_tag(self, repository: str, tag: str, doing: str) -> TagImmutable:
        return TagImmutable(
            f"tag {tag} of {repository} is immutable (configured in `immutable`): "
            f"it cannot be {doing}",
            {"repository": repository, "tag": tag},
        )

    def retention_rule(self, repository: str) -> RetentionRule | None:
        """The first retention rule whose glob matches `repository`."""
        for rule in self.retention:
            if fnmatch.fnmatchcase(repository, rule.repository):
                return rule
        return None

    def quota(self, repository: str) -> Quota | None:
        """The quota of the longest namespace that contains `repository` (`team` contains
        `team` and `team/...`)."""
        found: Quota | None = None
        for quota in self.quotas:
            ns = quota.namespace.strip("/")
            if (repository == ns or repository.startswith(ns + "/")) and (
                found is None or len(ns) > len(found.namespace.strip("/"))
            ):
                found = quota
        return found


def frozen(tag: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(tag, glob) for glob in globs)
