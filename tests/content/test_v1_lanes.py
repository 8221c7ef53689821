"""The lanes of a v1 layer's analysis (moorage/content/v1.py, `_Lane` and `_Analysis`): each
half takes the blocks in their order, one at a time, at most `most` behind; an error stops it
and reaches the draining thread."""

from __future__ import annotations

import threading
import time

import pytest

from moorage.content import v1
from moorage.content.v1 import _Analysis, _Lane


def test_a_lane_takes_every_block_in_order_one_at_a_time() -> None:
    seen: list[bytes] = []
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def work(block: memoryview) -> None:
        nonlocal inside, most_inside
        with guard:
            inside += 1
            most_inside = max(most_inside, inside)
        time.sleep(0.001 if block[0] % 3 == 0 else 0)  # uneven work: order must not depend on it
        seen.append(bytes(block))
        with guard:
            inside -= 1

    lane = _Lane(work)
    blocks = [bytes([i]) * 16 for i in range(200)]
    for block in blocks:
        lane.put(memoryview(block))
        lane.wait(3)
        assert lane.outstanding <= 3
    lane.wait()
    assert seen == blocks
    assert most_inside == 1


def test_a_lane_holds_the_caller_while_it_is_too_far_behind() -> None:
    release = threading.Event()
    started = threading.Event()

    def work(block: memoryview) -> None:
        started.set()
        release.wait(10)

    lane = _Lane(work)
    for _ in range(3):
        lane.put(memoryview(b"x"))
    started.wait(10)
    waited = threading.Event()

    def waiter() -> None:
        lane.wait(1)
        waited.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not waited.wait(0.2)  # three blocks in the lane: more than one behind
    release.set()
    thread.join(10)
    assert waited.is_set()
    lane.wait()
    assert lane.outstanding == 0


def test_an_error_in_a_lane_stops_it_and_is_raised_to_the_caller() -> None:
    seen: list[int] = []

    def work(block: memoryview) -> None:
        if block[0] == 5:
            raise ValueError("refused")
        seen.append(block[0])

    lane = _Lane(work)
    with pytest.raises(ValueError, match="refused"):
        for i in range(100):
            lane.put(memoryview(bytes([i])))
            lane.wait(2)
    assert seen == [0, 1, 2, 3, 4]  # nothing after the refused block
    with pytest.raises(ValueError):
        lane.put(memoryview(b"\x06"))
    with pytest.raises(ValueError):
        lane.wait()


def test_a_lane_that_cannot_get_a_thread_fails_instead_of_waiting_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At interpreter shutdown the helper threads take no new work: the block is refused,
    and the lane's waiter gets the error instead of hanging on a block nobody runs."""

    class Closed:
        def submit(self, fn: object) -> None:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(v1, "_pool", Closed)
    lane = _Lane(lambda block: None)
    with pytest.raises(RuntimeError, match="shutdown"):
        lane.put(memoryview(b"x"))
    assert lane.outstanding == 0 and not lane.running
    with pytest.raises(RuntimeError, match="shutdown"):
        lane.wait()  # raises at once: nothing is left in the lane to wait for


class _Halves:
    """Stands in for a LayerAnalyzer: records what each half saw, one half slow."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.hashed: list[bytes] = []
        self.read: list[bytes] = []
        self.fail_at = fail_at

    def hash_body(self, block: memoryview) -> None:
        self.hashed.append(bytes(block))

    def read_content(self, block: memoryview) -> None:
        time.sleep(0.002)
        if block[0] == self.fail_at:
            raise ValueError("not a tar")
        self.read.append(bytes(block))


def test_the_analysis_waits_for_both_halves_even_after_an_error() -> None:
    halves = _Halves(fail_at=7)
    written: list[bytes] = []
    analysis = _Analysis(halves, lambda block: written.append(bytes(block)))  # type: ignore[arg-type]
    blocks = [bytes([i]) * 8 for i in range(40)]
    calls = 0
    with pytest.raises(ValueError, match="not a tar"):
        for block in blocks:
            calls += 1
            analysis(memoryview(block))
        analysis.wait()
    # Refused by the call after the refused block's own, as the drained path needs: a client
    # that waits for the answer after sending a little more still gets it.
    assert calls <= 7 + 1 + _Analysis.HOLDS
    with pytest.raises(ValueError, match="not a tar"):
        analysis.wait()
    # Once wait has returned (here: raised), neither half is still at work on a block.
    hashed = len(halves.hashed)
    time.sleep(0.05)
    assert len(halves.hashed) == hashed
    assert halves.read == blocks[:7]
    assert halves.hashed == blocks[:hashed]


def test_the_analysis_hands_every_block_to_both_halves_and_the_write() -> None:
    halves = _Halves()
    written: list[bytes] = []
    analysis = _Analysis(halves, lambda block: written.append(bytes(block)))  # type: ignore[arg-type]
    blocks = [bytes([i]) * 8 for i in range(60)]
    for block in blocks:
        analysis(memoryview(block))
        assert all(lane.outstanding <= _Analysis.HOLDS for lane in analysis.lanes)
    analysis.wait()
    assert halves.hashed == halves.read == written == blocks
