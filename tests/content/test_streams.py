"""moorage.content.streams: blocks joined from a body's pieces, and what is held meanwhile.

What a worker holds per body is what bounds its memory under hundreds of uploads at once
(docs/performance.md, issue 14, item 4): a piece or block kept by a suspended generator or a
loop variable while the next piece is awaited is a megabyte per body for nothing. The counts
below are CPython reference counts: the test's own list of what it sent, and the argument of
`sys.getrefcount`, are the only two references a dropped piece may have.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from moorage.content import streams

DROPPED = 2  # the test's list `sent`, and getrefcount's own argument


async def _pieces(
    sent: list[bytes], count: int, size: int, seen: list[int]
) -> AsyncIterator[bytes]:
    """`count` pieces of `size` bytes; before making each one after the first, records the
    reference count of the one before it (after letting the consumer's tasks run)."""
    for i in range(count):
        if sent:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(sys.getrefcount(sent[-1]))
        sent.append(bytes([i]) * size)
        yield sent[-1]  # not held by this frame while suspended


def test_blocks_join_pieces_in_order() -> None:
    async def run() -> list[bytes]:
        sent: list[bytes] = []
        return [b async for b in streams.blocks(_pieces(sent, 7, 3, []), 8)]

    got = asyncio.run(run())
    assert got == [b"\0" * 3 + b"\1" * 3 + b"\2" * 3, b"\3" * 3 + b"\4" * 3 + b"\5" * 3, b"\6" * 3]


def test_blocks_hold_no_pieces_while_a_block_is_out() -> None:
    """While the consumer has a block, the pieces it was joined from are not held."""

    async def run() -> list[int]:
        sent: list[bytes] = []
        counts: list[int] = []
        gen = streams.blocks(_pieces(sent, 4, 4, []), 8)
        async for block in gen:
            assert len(block) == 8
            counts.append(sys.getrefcount(sent[-2]))
            counts.append(sys.getrefcount(sent[-1]))
            del block
        return counts

    counts = asyncio.run(run())
    assert counts == [DROPPED] * 4


def test_pipelined_holds_no_processed_block_while_reading() -> None:
    """Once `process` is done with a block, nothing holds it while the next is read."""

    async def run() -> tuple[list[int], list[int]]:
        sent: list[bytes] = []
        seen: list[int] = []
        processed: list[int] = []

        async def process(block: bytes) -> None:
            processed.append(block[0])

        total = await streams.pipelined(_pieces(sent, 4, 16, seen), process, 16)
        assert total == 64
        return seen, processed

    seen, processed = asyncio.run(run())
    assert processed == [0, 1, 2, 3]
    assert seen == [DROPPED] * 3
