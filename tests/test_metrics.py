"""The in-memory recording of `moorage.metrics` against prometheus_client itself: observations
added in bulk at a flush come out exactly as the library's own `observe` would have put them
(buckets, count, sum), and the storage driver wrapper counts failures, not answers.
(The multiprocess side, with real workers: tests/process/test_metrics.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from moorage import metrics
from moorage.api import metrics as exported
from moorage.storage.base import PathNotFound
from moorage.storage.fsobjects import FilesystemObjects
from moorage.storage.timed import TimedObjects

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: bytes) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def series(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """The samples of one histogram's label set, keyed by sample name (and `le`)."""
    found = {}
    for (sample, sample_labels), value in samples.items():
        rest = dict(sample_labels)
        le = rest.pop("le", None)
        if sample.startswith(name) and rest == labels:
            found[sample[len(name) :] + (f"{{{le}}}" if le else "")] = value
    return found


def test_bulk_observations_match_the_librarys_own() -> None:
    # On a bound (le is inclusive), between bounds, past the last bound, zero.
    values = [0.0, 0.0005, 0.0006, 0.001, 0.7, 1.0, 299.0, 1000.0, 0.02]
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "moorage_storage_operation_duration_seconds",
        "",
        ("operation",),
        buckets=metrics.LATENCY_BUCKETS,
        registry=reference_registry,
    )
    for v in values:
        reference.labels("bulk-test").observe(v)
        metrics.STORAGE_SECONDS.observe(("bulk-test",), v)
    exported.flush()

    ours = series(
        parse(exported.exposition()),
        "moorage_storage_operation_duration_seconds",
        operation="bulk-test",
    )
    theirs = series(
        parse(generate_latest(reference_registry)),
        "moorage_storage_operation_duration_seconds",
        operation="bulk-test",
    )
    assert ours["_count"] == len(values)
    assert ours["_bucket{+Inf}"] == len(values)
    assert ours["_bucket{0.0005}"] == 2
    assert ours["_sum"] == pytest.approx(sum(values))
    assert ours == pytest.approx(theirs)


async def test_the_storage_wrapper_counts_failures_not_answers(tmp_path: Path) -> None:
    storage = TimedObjects(FilesystemObjects(tmp_path / "blobs"))
    await storage.put("a/b", b"data")
    assert await storage.get("a/b") == b"data"
    with pytest.raises(PathNotFound):
        await storage.get("a/missing")
    (tmp_path / "blobs" / "c").write_bytes(b"a file where a directory must be")
    with pytest.raises(OSError):
        await storage.put("c/d", b"data")
    errors = metrics.STORAGE_ERRORS.drain()
    assert errors.get(("get",), 0) == 0
    assert errors[("put",)] == 1
    timings = metrics.STORAGE_SECONDS.drain()
    assert sum(timings[("get",)][1:]) == 2
    assert sum(timings[("put",)][1:]) == 2


async def test_writes_from_a_worker_thread_are_timed_at_the_writers_next_call(
    tmp_path: Path,
) -> None:
    """`blocking_write` (a large body hashed and written on one thread, moorage/api/direct.py)
    keeps its timings until the writer is next called on the loop, then records them as
    writes; the bytes are the writer's as with `write`."""
    storage = TimedObjects(FilesystemObjects(tmp_path / "blobs"))
    metrics.STORAGE_SECONDS.drain()
    writer = await storage.writer("uploads/threaded")
    write = writer.blocking_write()
    assert write is not None
    await asyncio.to_thread(write, memoryview(b"abc"))
    await asyncio.to_thread(write, memoryview(bytearray(b"def")))
    assert ("write",) not in metrics.STORAGE_SECONDS.drain()  # not from the thread
    assert writer.size == 6
    assert await writer.commit() == "uploads/threaded"
    assert sum(metrics.STORAGE_SECONDS.drain()[("write",)][1:]) == 2
    assert await storage.get("uploads/threaded") == b"abcdef"
