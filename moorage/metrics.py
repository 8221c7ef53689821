"""What Moorage counts, recorded in the worker's memory; `moorage.api.metrics` hands it to
prometheus_client and serves it on `/metrics` (docs/operations.md lists every metric).

Why in memory first: with several workers prometheus_client keeps each value in a
memory-mapped file per process (its multiprocess mode), and every change writes that file
under a lock. For one request's counter, latency histogram and byte counters that measured
~7 microseconds, about 4% of what a worker spends on a manifest GET at the benchmark's rate.
Adding to a dict here costs ~0.3 microseconds; `moorage.api.metrics` moves what was added into
the library's families once a second, before each scrape the worker answers, and when the
worker stops. A worker that is killed loses at most its last second of counts; the totals of
the others are untouched.

This module imports nothing but the standard library, so the content, storage, metadata and
auth layers can count without knowing of HTTP or of prometheus_client (which must not be
imported before `moorage serve` has chosen its multiprocess directory: see
`moorage.metricsdir`).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Literal

Labels = tuple[str, ...]

# Seconds. Registry requests run from under a millisecond (a manifest from the database) to
# minutes (a layer of gigabytes), so the buckets span both.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


@dataclass
class Family:
    """One metric family: its name, help text and label names; what was recorded since the
    last `drain`."""

    name: str
    help: str
    labels: Labels = ()


@dataclass
class Counter(Family):
    pending: dict[Labels, float] = field(default_factory=dict)

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        self.pending[labels] = self.pending.get(labels, 0) + amount

    def drain(self) -> dict[Labels, float]:
        pending, self.pending = self.pending, {}
        return pending


@dataclass
class Histogram(Family):
    """Observations per label set: their sum, then how many fell in each bucket (the bucket
    of the first bound not below the value; the last one is +Inf). Not cumulative."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    pending: dict[Labels, list[float]] = field(default_factory=dict)

    def observe(self, labels: Labels, value: float) -> None:
        row = self.pending.get(labels)
        if row is None:
            row = self.pending[labels] = [0.0] * (len(self.buckets) + 2)
        row[0] += value
        row[1 + bisect_left(self.buckets, value)] += 1

    def drain(self) -> dict[Labels, list[float]]:
        pending, self.pending = self.pending, {}
        return pending


# How prometheus_client sums a gauge over the workers: livesum adds the live workers' values,
# livemostrecent takes the value set last by a live worker.
GaugeMode = Literal["livesum", "livemostrecent"]


@dataclass
class Gauge(Family):
    """A value per label set; each value set since the last flush is exported then (set
    again, so that `livemostrecent` sees when it was last found, changed or not)."""

    mode: GaugeMode = "livesum"
    values: dict[Labels, float] = field(default_factory=dict)
    changed: set[Labels] = field(default_factory=set)

    def set(self, value: float, labels: Labels = ()) -> None:
        self.values[labels] = value
        self.changed.add(labels)

    def inc(self, amount: float = 1, labels: Labels = ()) -> None:
        self.set(self.values.get(labels, 0) + amount, labels)

    def drain(self) -> dict[Labels, float]:
        changed, self.changed = self.changed, set()
        return {labels: self.values[labels] for labels in changed}


class Requests:
    """HTTP requests: one row per (route, method, status) holding the count, bytes received
    and sent, and the latency sum and buckets (as `Histogram`'s), so that a request costs one
    dict look-up. `moorage.api.metrics` exports them as four families."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, int], list[float]] = {}

    def record(
        self, route: str, method: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        key = (route, method, status)
        row = self.pending.get(key)
        if row is None:
            row = self.pending[key] = [0.0] * (len(LATENCY_BUCKETS) + 5)
        row[0] += 1
        row[1] += received
        row[2] += sent
        row[3] += seconds
        row[4 + bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def drain(self) -> dict[tuple[str, str, int], list[float]]:
        pending, self.pending = self.pending, {}
        return pending


REQUESTS = Requests()
UPLOADS_IN_FLIGHT = Gauge(
    "moorage_http_uploads_in_flight",
    "Requests sending blob data to the registry right now (v2 upload POST, PATCH and PUT; "
    "v1 layer PUT).",
)
STORAGE_SECONDS = Histogram(
    "moorage_storage_operation_duration_seconds",
    "Time each call to the blob storage driver took, by operation.",
    ("operation",),
)
STORAGE_ERRORS = Counter(
    "moorage_storage_errors_total",
    "Calls to the blob storage driver that failed (an absent object and a writer that lost its "
    "upload are not failures), by operation.",
    ("operation",),
)
METADATA_SECONDS = Histogram(
    "moorage_metadata_operation_duration_seconds",
    "Time each read or write transaction on the metadata database took.",
    ("operation",),
)
METADATA_ERRORS = Counter(
    "moorage_metadata_errors_total",
    "Read or write transactions on the metadata database that failed with a database error.",
    ("operation",),
)
LOGIN_FAILURES = Counter(
    "moorage_login_failures_total",
    "Credentials refused: a wrong user name or password, a login refused while the client is "
    "rate-limited, an invalid bearer token.",
    ("reason",),
)
GC_CYCLES = Counter(
    "moorage_gc_cycles_total", "Garbage collection cycles run by the server (not dry runs)."
)
GC_FAILURES = Counter(
    "moorage_gc_failures_total", "Garbage collection cycles that failed with an error."
)
GC_TAGS = Counter(
    "moorage_gc_tags_deleted_total", "Tags deleted by retention rules in collection cycles."
)
GC_MANIFESTS = Counter(
    "moorage_gc_manifests_deleted_total", "Manifests deleted by garbage collection."
)
GC_BLOBS = Counter("moorage_gc_blobs_deleted_total", "Blobs deleted by garbage collection.")
GC_BYTES = Counter("moorage_gc_freed_bytes_total", "Bytes of blobs deleted by garbage collection.")
MIRROR_REQUESTS = Counter(
    "moorage_mirror_upstream_requests_total",
    "Requests the pull-through cache sent to an upstream registry (docs/mirror.md), by "
    "upstream URL, method and object (manifest, blob).",
    ("upstream", "method", "object"),
)
MIRROR_STALE = Counter(
    "moorage_mirror_stale_served_total",
    "Cached tags served without revalidation because their upstream was down or answered "
    "5xx or 429, by upstream URL.",
    ("upstream",),
)
GC_LAST = Gauge(
    "moorage_gc_last_cycle_timestamp_seconds",
    "When the last garbage collection cycle of any worker ended (Unix time).",
    mode="livemostrecent",
)
READY = Gauge(
    "moorage_ready",
    "1 when the node's last readiness check passed (as /readyz), 0 when it failed or the node "
    "is draining.",
    mode="livemostrecent",
)

COUNTERS = (
    STORAGE_ERRORS,
    METADATA_ERRORS,
    LOGIN_FAILURES,
    GC_CYCLES,
    GC_FAILURES,
    GC_TAGS,
    GC_MANIFESTS,
    GC_BLOBS,
    GC_BYTES,
    MIRROR_REQUESTS,
    MIRROR_STALE,
)
HISTOGRAMS = (STORAGE_SECONDS, METADATA_SECONDS)
GAUGES = (UPLOADS_IN_FLIGHT, GC_LAST, READY)
