"""A worker's shares for reading bodies (`moorage.api.http.SHARES`) that keep count, for the
tests that check a body is read within them (tests/api/test_body_budget.py, tests/v1)."""

from __future__ import annotations

from moorage.api import http


class CountedShares(http.Shares):
    """Shares that remember the most held at once and how often a body waited for one."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.most = 0
        self.waited = 0

    async def take(self) -> None:
        if self.held >= self.count or self.wanted():
            self.waited += 1
        await super().take()
        self.most = max(self.most, self.held)
