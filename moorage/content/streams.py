"""Moving request bodies through hashing and storage without stalls or extra copies.

A body arrives in network-sized pieces. They are grouped into blocks of about a megabyte (one
join, no repeated copying) and each block is handed to a processing step (hash + write, on
threads) while the next block is being read: the network, the hashers and the disk work side
by side, and memory stays at about two blocks whatever the body's size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

BLOCK_SIZE = 1 << 20


@runtime_checkable
class Drainable(Protocol):
    """A body that can also be taken whole on one worker thread, `consume` called there with
    each block (valid until the next call returns; the last one is not touched again) and
    no event loop in between: for work that is
    all blocking calls (hash, write to a local file), where handing every block from the loop
    to threads and back costs a third of the CPU (docs/performance.md, issue 14)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def drain(self, consume: Callable[[memoryview], None], keep: bool = True) -> int:
        """The body's size once `consume` has had all of it; `consume`'s error stops it. With
        `keep` False, `consume` keeps no block past its own call (the body can then reuse one
        block instead of two)."""
        ...


async def blocks(body: AsyncIterator[bytes], size: int = BLOCK_SIZE) -> AsyncGenerator[bytes, None]:
    """`body`'s pieces joined into blocks of at least `size` bytes (the last may be short).
    While a block is out, the generator holds nothing else: the pieces it was joined from are
    dropped before it is handed on, and the block itself once the next is asked for."""
    parts: list[bytes] = []
    held = 0
    async for chunk in body:
        parts.append(chunk)
        held += len(chunk)
        del chunk  # in `parts`: not held again after they are handed on
        if held >= size:
            block = parts[0] if len(parts) == 1 else b"".join(parts)
            parts, held = [], 0
            yield block
            del block
    if parts:
        block = b"".join(parts)
        del parts
        yield block


def block_size(body: object) -> int:
    """The block size `body` asks its consumer for (a body read under the worker's memory
    budget asks for smaller ones: moorage.api.http.Arriving), else BLOCK_SIZE."""
    size = getattr(body, "block_size", BLOCK_SIZE)
    return size if isinstance(size, int) and size > 0 else BLOCK_SIZE


@runtime_checkable
class Paced(Protocol):
    """Pieces of a body taken within its worker's budget of pieces in hand: each holds a share
    of it until the next is asked for, or until `let_go`."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    def let_go(self) -> None:
        """Give back the share held, if any (no await: the caller may go on without one)."""

    async def aclose(self) -> None: ...


def paced(body: object) -> Paced | None:
    """The pieces of a body read within its worker's budget of pieces in hand (a small or
    medium body through aiohttp's parser: moorage.api.http.Arriving.paced), for `each`; None
    for other bodies, which go through `pipelined`."""
    pieces = getattr(body, "paced", None)
    made = pieces() if callable(pieces) else None
    return made if isinstance(made, Paced) else None


async def each(pieces: AsyncIterator[bytes], process: Callable[[bytes], Awaitable[None]]) -> int:
    """Run `process` on each piece in turn, asking for the next only when it is done (what a
    paced body's budget counts is then what its consumer holds), and close `pieces` at the
    end, whatever ended it. Returns the number of bytes processed."""
    total = 0
    try:
        async for piece in pieces:
            await process(piece)
            total += len(piece)
            del piece  # not held while the next one is waited for
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
    return total


def declared_length(body: object) -> int | None:
    """The length `body` declared before it arrived (a large body of known length taken from
    the socket: moorage.api.direct.DirectBody), else None. Only a hint: a body may be cut."""
    length = getattr(body, "length", None)
    return length if isinstance(length, int) and length >= 0 else None


async def pipelined(
    body: AsyncIterator[bytes],
    process: Callable[[bytes], Awaitable[None]],
    size: int | None = None,
) -> int:
    """Run `process` on each block of `body` (of about `size` bytes, by default the body's
    own `block_size`), one block in flight while the next is read. Returns the number of bytes
    processed; an error in `process` or in the body stops it."""
    if size is None:
        size = block_size(body)
    pending: asyncio.Future[None] | None = None
    total = 0
    try:
        async for block in blocks(body, size):
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(process(block))
            total += len(block)
            del block  # `process` holds it while it needs it, not this loop while it reads
        if pending is not None:
            finished, pending = pending, None
            await finished
    finally:
        if pending is not None:
            # Let the step in flight finish (its threads cannot be interrupted) before the
            # caller closes what it writes to.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await pending
    return total
