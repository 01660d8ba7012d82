"""Prometheus metrics of the long-running commands (sync-worker, sync-binlog, sync-relay).

Served with /healthz by sync.health on `--metrics-port` / `--metrics-addr`; every series, its type,
labels and meaning: docs/metrics.md. Names follow the Prometheus conventions: prefix gearsync_,
counters end in _total, units (seconds) in the name, per-table series carry table="<name>".

    sync-worker   gearsync_jobs_total{table}, gearsync_applied_total{table},
                  gearsync_stale_skipped_total{table}, gearsync_dead_total{table},
                  gearsync_last_applied_timestamp_seconds{table}, gearsync_retries_total,
                  gearsync_batch_seconds, gearsync_lag_seconds,
                  polled: gearsync_gearman_queued_jobs{function,table},
                  gearsync_gearman_running_jobs{function,table}, gearsync_dead_letters{table}
    sync-binlog   gearsync_binlog_changes_read_total{table}, gearsync_applied_total{table},
                  gearsync_stale_skipped_total{table}, gearsync_binlog_jobs_submitted_total{table}
                  (--sink gearman), gearsync_last_applied_timestamp_seconds{table},
                  gearsync_retries_total, gearsync_batch_seconds, gearsync_binlog_behind_seconds
    sync-relay    gearsync_relay_rows_total{database,table}, gearsync_relay_errors_total,
                  gearsync_relay_resent_rows_total, polled: gearsync_spool_rows{database}
    all three     gearsync_healthy (1 while /healthz answers 200)

Each command registers its own set (SERIES, `register`) when it serves /metrics: a worker shows no
binlog series. Counting works without a registry (the commands count whether served or not).

Cheap on the hot path: a command counts a batch per table in plain ints, then adds each table's
figures once (`Labelled` keeps each table's child series, so no .labels() lookup per batch, let
alone per job).

Lag (sync-worker): a trigger change carries no commit time (its version is a UUID_SHORT), so the
worker cannot know how old a job is. It knows when it last found the queue drained (a grab returned
fewer jobs than asked for): every job it handles since then was queued after that moment, so
"now − last drained" bounds the age of the jobs it is applying; 0 while it keeps up.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics

from sync.tables import default_function

__all__ = [
    "JOBS", "APPLIED", "STALE", "DEAD", "RETRIES", "BATCH_SECONDS", "LAG", "LAST_APPLIED", "DEAD_LETTERS",
    "GEARMAN_QUEUED", "GEARMAN_RUNNING", "BINLOG_READ", "BINLOG_SUBMITTED", "BINLOG_BEHIND", "RELAY_ROWS",
    "RELAY_ERRORS", "RELAY_RESENT", "SPOOL_ROWS", "HEALTHY", "Labelled", "TableCounts", "record_retry",
    "LagTracker", "table_of_function", "metric_names", "SERIES", "register",
]

TABLE = ("table",)
_FUNCTION_PREFIX = default_function("")   # "gearsync."

# No gearsync_*_created series next to every counter: noise on a dashboard, and per table.
disable_created_metrics()

# -- applying changes (sync-worker; sync-binlog --sink redis for applied/stale) ------------------
JOBS = Counter("gearsync_jobs", "Change jobs taken by sync-worker (applied + stale skipped + dead)", TABLE,
               registry=None)
APPLIED = Counter("gearsync_applied", "Changes written to Redis", TABLE, registry=None)
STALE = Counter("gearsync_stale_skipped", "Changes skipped because Redis already held a newer or equal version",
                TABLE, registry=None)
DEAD = Counter("gearsync_dead", "Jobs that could not be applied and went to the table's dead-letter list", TABLE,
               registry=None)
RETRIES = Counter("gearsync_retries", "Deliveries to Redis (or gearmand) that failed and were retried",
                  registry=None)
BATCH_SECONDS = Histogram(
    "gearsync_batch_seconds", "Time to apply one batch: decode and Redis round trip (before the acknowledgements)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=None,
)
LAG = Gauge("gearsync_lag_seconds", "sync-worker: upper bound of the age of the changes being applied (0 when "
            "caught up)", registry=None)
LAST_APPLIED = Gauge("gearsync_last_applied_timestamp_seconds",
                     "Unix time of the last batch that wrote a change of the table to Redis", TABLE, registry=None)
DEAD_LETTERS = Gauge("gearsync_dead_letters", "Dead letters stored for the table now (LLEN, polled)", TABLE,
                     registry=None)
GEARMAN_QUEUED = Gauge("gearsync_gearman_queued_jobs",
                       "Jobs gearmand holds for the function, running ones included (admin status, polled)",
                       ("function", "table"), registry=None)
GEARMAN_RUNNING = Gauge("gearsync_gearman_running_jobs", "Jobs of the function a worker is running now (admin "
                        "status, polled)", ("function", "table"), registry=None)

# -- sync-binlog -----------------------------------------------------------------------------
BINLOG_READ = Counter("gearsync_binlog_changes_read", "Row changes read from the binlog and handed to the sink",
                      TABLE, registry=None)
BINLOG_SUBMITTED = Counter("gearsync_binlog_jobs_submitted", "--sink gearman: change jobs submitted to gearmand",
                           TABLE, registry=None)
BINLOG_BEHIND = Gauge("gearsync_binlog_behind_seconds", "Now minus the commit time of the last transaction read "
                      "(0 when caught up with the server)", registry=None)

# -- sync-relay ------------------------------------------------------------------------------
RELAY_ROWS = Counter("gearsync_relay_rows", "Spool rows relayed to gearmand", ("database", "table"), registry=None)
RELAY_ERRORS = Counter("gearsync_relay_errors", "Relay rounds that failed (MySQL or gearmand) and were retried",
                       registry=None)
RELAY_RESENT = Counter("gearsync_relay_resent_rows", "Spool rows sent whose DELETE failed: they are sent again",
                       registry=None)
SPOOL_ROWS = Gauge("gearsync_spool_rows", "Rows waiting in the database's gearsync_spool (polled)", ("database",),
                   registry=None)

HEALTHY = Gauge("gearsync_healthy", "1 while /healthz answers 200, 0 while it answers 503", registry=None)

# What each command serves: the series are defined here unregistered (registry=None) and a command
# registers its own set when it serves /metrics, so a worker shows no binlog or relay series.
SERIES: dict[str, tuple[Any, ...]] = {
    "sync-worker": (JOBS, APPLIED, STALE, DEAD, RETRIES, BATCH_SECONDS, LAG, LAST_APPLIED, DEAD_LETTERS,
                    GEARMAN_QUEUED, GEARMAN_RUNNING, HEALTHY),
    "sync-binlog": (BINLOG_READ, APPLIED, STALE, BINLOG_SUBMITTED, RETRIES, BATCH_SECONDS, LAST_APPLIED,
                    BINLOG_BEHIND, HEALTHY),
    "sync-relay": (RELAY_ROWS, RELAY_ERRORS, RELAY_RESENT, SPOOL_ROWS, HEALTHY),
}
_registered: set[int] = set()


def register(command: str) -> None:
    """Put `command`'s series (SERIES) in prometheus_client's default registry, which /metrics
    serves; idempotent."""
    for metric in SERIES[command]:
        if id(metric) not in _registered:
            REGISTRY.register(metric)
            _registered.add(id(metric))


M = TypeVar("M", Counter, Gauge)


class Labelled(Generic[M]):
    """A metric's child series, made once per label value (`.labels()` locks and validates; this is a
    dict lookup)."""

    __slots__ = ("metric", "children")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self.children: dict[Any, M] = {}

    def __getitem__(self, value: str | tuple[str, ...]) -> M:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = self.metric.labels(*(value if isinstance(value, tuple) else (value,)))
        return child


jobs_by = Labelled(JOBS)
applied_by = Labelled(APPLIED)
stale_by = Labelled(STALE)
dead_by = Labelled(DEAD)
last_applied_by = Labelled(LAST_APPLIED)
dead_letters_by = Labelled(DEAD_LETTERS)
queued_by = Labelled(GEARMAN_QUEUED)
running_by = Labelled(GEARMAN_RUNNING)
read_by = Labelled(BINLOG_READ)
submitted_by = Labelled(BINLOG_SUBMITTED)
relayed_by = Labelled(RELAY_ROWS)
spool_by = Labelled(SPOOL_ROWS)


class TableCounts:
    """One batch's figures per table, in plain ints, then added to the series once per table."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}   # table -> [changes, applied, dead]

    def _row(self, table: str) -> list[int]:
        row = self.counts.get(table)
        if row is None:
            row = self.counts[table] = [0, 0, 0]
        return row

    def outcomes(self, tables: Iterable[str], applied: Iterable[bool]) -> TableCounts:
        """Count parallel sequences: the table of each change and whether it was applied."""
        counts = self.counts
        for table, ok in zip(tables, applied):
            row = counts.get(table)
            if row is None:
                row = counts[table] = [0, 0, 0]
            row[0] += 1
            row[1] += ok
        return self

    def add(self, table: str, changes: int, applied: int = 0, dead: int = 0) -> TableCounts:
        row = self._row(table)
        row[0] += changes
        row[1] += applied
        row[2] += dead
        return self

    def items(self) -> Iterator[tuple[str, int, int, int]]:
        for table, (n, applied, dead) in self.counts.items():
            yield table, n, applied, dead

    def record_applied(self, *, jobs: bool = False, read: bool = False, submitted: bool = False) -> None:
        """Applied / stale skipped / dead (and last-applied time) per table; also the jobs taken
        (sync-worker), the changes read (sync-binlog) or the jobs submitted (--sink gearman)."""
        now = time.time()
        for table, n, applied, dead in self.items():
            if applied:
                applied_by[table].inc(applied)
                last_applied_by[table].set(now)
            if n - applied and not submitted:
                stale_by[table].inc(n - applied)
            if dead:
                dead_by[table].inc(dead)
            if jobs:
                jobs_by[table].inc(n + dead)
            if read:
                read_by[table].inc(n)
            if submitted:
                submitted_by[table].inc(n)


def init_tables(tables: Iterable[str], *families: Labelled[Any]) -> None:
    """Make the series of known tables exist from the start (0, not absent: rate() and absent alerts
    work before the first change)."""
    for table in tables:
        for family in families:
            family[table]   # noqa: B018 - creating the child is the point


def record_batch(seconds: float) -> None:
    BATCH_SECONDS.observe(seconds)


def record_retry() -> None:
    RETRIES.inc()


def table_of_function(function: str) -> str:
    """The table label of a gearman function: gearsync.<table> → <table>; any other name as is."""
    prefix = _FUNCTION_PREFIX
    return function[len(prefix):] if function.startswith(prefix) and len(function) > len(prefix) else function


def set_queue_depth(rows: Sequence[Any], functions: Mapping[str, str]) -> None:
    """gearmand admin status rows (summed over servers by the caller or not: each call sets) →
    the queue gauges of the functions served (`functions`: function → table label)."""
    totals: dict[str, list[int]] = {fn: [0, 0] for fn in functions}
    for row in rows:
        t = totals.get(row.name)
        if t is not None:
            t[0] += row.queued
            t[1] += row.running
    for fn, (queued, running) in totals.items():
        queued_by[(fn, functions[fn])].set(queued)
        running_by[(fn, functions[fn])].set(running)


class LagTracker:
    """Feeds LAG from the grab sizes (see the module docstring); `drained_at` is also the worker's
    progress mark for /healthz."""

    def __init__(self) -> None:
        self.drained_at = time.monotonic()

    def note_grab(self, got: int, asked: int) -> None:
        now = time.monotonic()
        if got < asked:
            self.drained_at = now
            LAG.set(0)
        else:
            LAG.set(now - self.drained_at)


def metric_names(registry: Any = REGISTRY) -> set[str]:
    """Every gearsync_* sample name in `registry` (as a scrape shows them: counters with _total,
    histograms with _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in registry.collect():
        if family.name.startswith("gearsync_"):
            names.add(family.name + "_total" if family.type == "counter" else family.name)
            if family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names
