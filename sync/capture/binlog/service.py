"""The sync-binlog loop: binlog reader thread → batches → Redis (or gearmand) → saved position.

Both sinks decode and write in ONE thread, the write pipelined behind the next decode
(sync.capture.binlog.writer: RedisWriter, GearmanWriter):

    reader thread   BinlogSource.run(): blocking mysql-replication reads, rows → ChangeEvents; at a
                    batch boundary the batch goes out WITHOUT waiting for the reply (--sink redis:
                    one EVALSHA, the position in the same call; --sink gearman: pipelined
                    SUBMIT_JOB_BG packets on a blocking socket), and decoding goes on while the
                    server works on the other core. The reply (every JOB_CREATED, then the
                    position's SET, for gearman) is read before the next batch is sent: at most one
                    batch in flight, batches land in order.
    event loop      start-up, the stats line, /healthz polling and waiting for the thread to end;
                    nothing per batch, so the loop never takes the GIL from the reader under load

When a batch is sent, what happens while the sink is down, TRUNCATE/DROP barriers and FK cascades:
sync.capture.binlog.writer.

Exactly once in effect, --sink redis. The position is written by the SAME Lua script call as the
batch it covers: it rides as the batch's last item, a `ClassicSet` (an unversioned SET) that the
applier already supports (sync.apply.applier: the batch is one EVALSHA on a standalone Redis, atomic;
the SET is last, so a script failing halfway never stores a position ahead of its rows). After a
crash the reader resumes from the stored position, i.e. right after the last batch that fully
landed. Events of a transaction that was still open at that position are read again and applied
again with the same versions: the version fence makes those STALE, no effect. A batch sent again
after a lost reply is the same: STALE where it had landed. On a Redis Cluster the batch is split
by slot, so there the position is a separate SET after the batch succeeded: at least once, and
the replay is harmless for the same reason.

--sink gearman: the position is SET in Redis once gearmand answered JOB_CREATED for every job of
the batch. A crash in between resubmits those jobs; their unique ids are derived from (stream,
version, op), so gearmand merges a resubmission into a still-queued copy, and one that already ran
is applied again as STALE.

Stop (SIGTERM/SIGINT → request_stop()): the reader stops within a heartbeat, what is held is
delivered within shutdown_timeout_s (a batch that cannot land by then is dropped, its position not
saved) and the final position saved, exit 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
import structlog

from sync import metrics
from sync.apply.applier import Outcome, RedisApplier
from sync.apply.truncate import TableWipe
from sync.capture.binlog.preflight import (
    ServerInfo,
    check_position_available,
    check_replication,
    check_server,
    resolve_start,
)
from sync.capture.binlog.reader import BinlogSource
from sync.capture.binlog.writer import make_writer
from sync.errors import ApplyError, ConfigError, SourceError, SyncError, short_error
from sync.events import ChangeEvent, Op
from sync.mysql import MySQLSettings
from sync.position import Position, PositionStore
from sync.redis_client import RedisSettings, connect_redis
from sync.retry import Backoff, DeadlinePassed, retry_until
from sync.rows.fkgraph import EMPTY_GRAPH, load_foreign_keys
from sync.rows.schema import TableSchema, load_table
from sync.settings import JOB_CHANGES, SINKS
from sync.shape import Shape
from sync.stats import Counters, report_loop
from sync.tables import TableSpec, default_function

log = structlog.get_logger(__name__)

__all__ = ["BinlogSettings", "BinlogService", "stream_name", "default_server_id"]

@dataclass(frozen=True)
class BinlogSettings:
    mysql: MySQLSettings
    database: str
    tables: tuple[str, ...]
    redis: RedisSettings
    sink: str = "redis"
    columns: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    servers: tuple[tuple[str, int], ...] = (("127.0.0.1", 4730),)
    functions: dict[str, str] = field(default_factory=dict)   # table → gearman function
    key_template: str = "{table}:{pk}"
    format: str = "json"
    ttl_s: int | None = None
    shapes: dict[str, Shape | None] = field(default_factory=dict)  # table → its shaping (sync.shape)
    start: str | None = None          # None: the saved position, else "current"
    server_id: int | None = None
    name: str | None = None           # position key name; default from server + tables
    batch: int = 2000
    chunk_rows: int = 512
    flush_ms: float = 20.0            # longest a decoded change waits to join a batch (under load)
    job_changes: int = JOB_CHANGES    # --sink gearman: most changes per job (sync.events batch payload)
    heartbeat_s: float = 1.0
    stats_interval_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    tombstone_ttl_s: int = 86400

    def __post_init__(self) -> None:
        if self.sink not in SINKS:
            raise ConfigError(f"--sink: {self.sink!r}; expected redis or gearman")
        if not self.tables:
            raise ConfigError("--table: none given; expected --table NAME[,NAME…]")


@dataclass
class BinlogStats(Counters):
    """Counters since start; the stats line reports deltas."""

    rows: int = 0       # binlog row changes read for the chosen tables
    events: int = 0     # ChangeEvents delivered
    applied: int = 0
    stale: int = 0
    batches: int = 0
    retries: int = 0    # failed deliveries (each one retried or, at shutdown, given up)
    jobs: int = 0       # --sink gearman: jobs submitted


def tune_gc() -> None:
    """Fewer garbage-collector passes for a process that decodes rows all day.

    Decoding allocates several short-lived containers per row (the library's row dicts, our
    ChangeEvents); CPython's default gen-0 threshold (700 allocations) then runs a collection
    every few rows, each walking young objects that are already dead or about to be. Objects that
    exist after start-up are frozen out of the collector, and gen-0 runs every 50,000
    allocations: reference cycles are still collected, just in bigger, rarer passes (a few ms).
    Process-wide, so the sync-binlog command calls it, not BinlogService (a library user or a
    test process keeps its own settings); the bench applies it to its raw-decode baseline too.
    Measured (bench binlog, quiet): --sink redis 0.79x -> 0.82-0.90x of raw decode."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def stream_name(mysql: MySQLSettings, database: str, tables: Sequence[str]) -> str:
    """The default name of a binlog stream: one saved position per (server, database, tables)."""
    where = mysql.unix_socket or f"{mysql.host}:{mysql.port}"
    return f"{where}/{database}/{','.join(sorted(tables))}"


def default_server_id(name: str) -> int:
    """A replica server_id stable per stream (two copies of one stream displace each other, which
    is what we want), away from the small ids servers usually have."""
    return 0x47530000 + (zlib.crc32(name.encode()) & 0xFFFF)


class BinlogService:
    """One sync-binlog process; see the module docstring."""

    def __init__(self, settings: BinlogSettings, *, redis: Any | None = None) -> None:
        self.settings = settings
        self.redis = redis if redis is not None else connect_redis(settings.redis)
        s = settings
        self.name = s.name or stream_name(s.mysql, s.database, s.tables)
        self.positions = PositionStore(self.redis, self.name)
        self.applier: RedisApplier | None = None
        self.wipe: TableWipe | None = None
        self._cluster = bool(s.redis.cluster)
        if s.sink == "redis":
            specs = {t: TableSpec(t, s.key_template, s.format, s.ttl_s, shape=s.shapes.get(t)) for t in s.tables}
            self.applier = RedisApplier(self.redis, specs, tombstone_ttl_s=s.tombstone_ttl_s)
            self.wipe = TableWipe(specs, tombstone_ttl_s=s.tombstone_ttl_s, cluster=self._cluster)
        self.signer: Any = None                         # --sink gearman: sync.signing.Signer, or None
        self.tag = hashlib.blake2b(self.name.encode(), digest_size=4).hexdigest()
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        self.source: BinlogSource | None = None
        self.position: Position | None = None          # the last saved position
        self.stats = BinlogStats()
        self.graph = EMPTY_GRAPH                        # the database's FKs (prepare)
        # /healthz: when the position last advanced, the last delivery and poll failures (None: the
        # last one worked), the reader thread.
        self.position_at = time.monotonic()
        self.sink_error: str | None = None
        self.poll_error: str | None = None
        self._thread: threading.Thread | None = None
        self._monitor_on = False
        metrics.init_tables(s.tables, metrics.read_by, *((metrics.submitted_by,) if s.sink == "gearman" else
                                                         (metrics.applied_by, metrics.stale_by)))

    # -- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop reading, deliver what is held, save the final position. Callable from any thread."""
        if not self._stop.is_set():
            log.info("binlog_stopping", shutdown_timeout_s=self.settings.shutdown_timeout_s)
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
            self._stop.set()  # thread-safe: the reader thread polls it between events

    def shutdown_deadline(self) -> float | None:
        """Once a stop is requested, the time.monotonic() past which a failed delivery is given up."""
        return self._stop_deadline if self._stop.is_set() else None

    def sink_retry(self, what: str, backoff: Backoff, **info: Any) -> Callable[[BaseException, float], None]:
        """on_retry of a delivery: count the failure, log sink_unavailable (the episode's first failure)."""
        def on_retry(exc: BaseException, delay: float) -> None:
            self.stats.retries += 1
            self.sink_error = f"{what}: {short_error(exc)}"
            metrics.record_retry()
            # one line per episode (its first failure; sink_recovered ends it), not one per attempt
            (log.warning if backoff.attempts == 1 else log.debug)(
                "sink_unavailable", what=what, error=short_error(exc), retry_in_s=round(delay, 3),
                attempt=backoff.attempts, **info)
        return on_retry

    def sink_given_up(self, what: str, gave_up: DeadlinePassed, **info: Any) -> None:
        """A delivery failed once more and the shutdown deadline allows no further wait: count it, log it."""
        self.stats.retries += 1
        metrics.record_retry()
        log.warning("sink_given_up_at_shutdown", what=what, error=short_error(gave_up.__cause__ or gave_up), **info)

    # -- start-up ------------------------------------------------------------------------------
    def prepare(self) -> tuple[ServerInfo, Any, dict[str, TableSchema]]:
        """Server checks and table schemas (and the FK graph, in self.graph); returns the open
        control connection too (the caller closes it). Blocking (pymysql); SourceError/ConfigError."""
        s = self.settings
        # No default database: a user without rights on it gets the SELECT message below, not 1044.
        conn = s.mysql.connect(database="")
        try:
            server = check_server(conn, s.mysql, s.database, s.tables)
            schemas: dict[str, TableSchema] = {}
            for t in s.tables:
                schema = load_table(conn, s.database, t)
                cols = s.columns.get(t)
                if cols:
                    schema.select(cols)  # ConfigError naming an unknown column
                schemas[t] = schema
            self.graph = load_foreign_keys(conn, s.database)
            return server, conn, schemas
        except BaseException:
            conn.close()
            raise

    async def _start_position(self, conn: Any, server: ServerInfo) -> Position:
        s = self.settings
        saved = await self.positions.load()
        if saved is not None and saved.flavor != server.flavor:
            raise SourceError(f"the saved position {saved.describe()} is from a {saved.flavor} server, this is "
                              f"{server.flavor}; use another --name or start with --start current")
        if s.start is not None:
            start = resolve_start(conn, server, s.start, s.tables)
            if saved is not None:
                log.info("binlog_position_overridden", saved=saved.describe(), start=start.describe())
            return start
        if saved is not None:
            check_position_available(conn, server, saved, s.tables)
            log.info("binlog_position_loaded", key=self.positions.key, position=saved.describe())
            return saved
        start = resolve_start(conn, server, "current", s.tables)
        log.info("binlog_position_new", position=start.describe(),
                 note="no saved position: streaming from the current end of the binlog")
        return start

    def sink_recovered(self, what: str, attempts: int) -> None:
        """A delivery that had failed landed."""
        self.sink_error = None
        log.info("sink_recovered", what=what, attempts=attempts)

    def advanced(self, position: Position) -> None:
        """The saved position moved to `position`."""
        self.position = position
        self.position_at = time.monotonic()

    # -- gauges and /healthz -------------------------------------------------------------------
    def enable_monitor(self) -> None:
        """Poll the gauges and register the /healthz check while running (with --metrics-port)."""
        from sync.health import set_check

        self._monitor_on = True
        metrics.register("sync-binlog")
        set_check(self.health)

    async def _monitor(self) -> None:
        """Every POLL_S: the behind gauge, and a Redis PING bounded by POLL_TIMEOUT_S (so /healthz
        sees a Redis that went away while there is nothing to deliver)."""
        from sync.health import POLL_S, POLL_TIMEOUT_S

        while True:
            if self.source is not None:
                metrics.BINLOG_BEHIND.set(self.source.behind_s())
            try:
                async with asyncio.timeout(POLL_TIMEOUT_S):
                    await self.redis.ping()
                self.poll_error = None
            except TimeoutError:
                self.poll_error = f"no reply within {POLL_TIMEOUT_S:g} s"
            except (redis.exceptions.RedisError, OSError) as exc:
                self.poll_error = short_error(exc)
            await asyncio.sleep(POLL_S)

    def health(self) -> tuple[str | None, dict[str, Any]]:
        """/healthz: the reader connected to the server's binlog stream, Redis (and gearmand) taking
        the deliveries, and the position advanced or the reader caught up within PROGRESS_S."""
        from sync.health import PROGRESS_S

        now = time.monotonic()
        src = self.source
        caught_up = src.quiet_at if src is not None else 0.0
        idle_s = now - max(self.position_at, caught_up)
        details: dict[str, Any] = {"command": "sync-binlog", "stream": self.name,
                                   "position": self.position.describe() if self.position else None,
                                   "behind_seconds": round(src.behind_s(), 1) if src is not None else None,
                                   "seconds_since_progress": round(idle_s, 1)}
        if src is None or self._thread is None:
            return "starting", details
        if not self._thread.is_alive():
            return "the binlog reader stopped", details
        if src.stream_error is not None:
            return f"binlog stream disconnected: {src.stream_error}", details
        if self.sink_error:
            return f"{self.settings.sink} sink failing: {self.sink_error}", details
        if self.poll_error:
            return f"redis: {self.poll_error}", details
        if idle_s > PROGRESS_S:
            return (f"no progress: the position has not advanced and the reader not caught up for {idle_s:.0f} s "
                    f"(limit {PROGRESS_S:.0f} s)"), details
        return None, details

    # -- run -----------------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        server, conn, schemas = await loop.run_in_executor(None, self.prepare)
        try:
            start = await self._start_position(conn, server)
        finally:
            conn.close()
        server_id = s.server_id if s.server_id is not None else default_server_id(self.name)
        if server_id == server.server_id:
            raise ConfigError(f"--server-id: {server_id} is the server's own server_id; expected another number")
        self.source = BinlogSource(
            s.mysql, s.database, schemas, s.columns, server=server, start=start, server_id=server_id,
            chunk_rows=s.chunk_rows, heartbeat_s=s.heartbeat_s, graph=self.graph,
        )
        await loop.run_in_executor(None, check_replication, self.source)
        self.position = start
        if s.sink == "gearman":
            from sync.signing import load_keys

            keys = load_keys()
            keys.warn_if_off("sync-binlog")
            self.signer = keys.signer
        elif self.applier is not None:
            await self._retry(self.applier.load_script, "load_script")
        log.info("binlog_started", server=s.mysql.display, flavor=server.flavor, version=server.version,
                 tables=list(s.tables), sink=s.sink, position=start.describe(), key=self.positions.key,
                 server_id=server_id)
        return await self._run_in_reader()

    async def _with_reader_thread(self, reader: Callable[[], None], wait: Awaitable[None],
                                  on_exit: Callable[[], None]) -> None:
        """Run `reader` in the binlog-reader thread and the stats reporter while awaiting `wait`;
        on the way out (also when cancelled) call `on_exit`, end the reporter and join the
        thread (30 s at most)."""
        thread = self._thread = threading.Thread(target=reader, name="binlog-reader", daemon=True)
        thread.start()
        tasks = [asyncio.ensure_future(self._report())]
        if self._monitor_on:
            tasks.append(asyncio.ensure_future(self._monitor()))
        try:
            await wait
        finally:
            on_exit()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)

    async def _run_in_reader(self) -> int:
        """Decode and write in the reader thread (sync.capture.binlog.writer); the event loop
        only reports stats and waits for the thread to end."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        failure: list[BaseException] = []
        writer = make_writer(self)

        def end() -> None:
            if not ended.done():
                ended.set_result(None)

        def reader() -> None:
            try:
                assert self.source is not None
                try:
                    self.source.run(writer.add, self._stop, idle=writer.idle)
                except BaseException:
                    self.request_stop()  # deliver what is held within the shutdown timeout, then fail
                    raise
                finally:
                    writer.close()
            except BaseException as exc:  # handed to the loop, which reports it
                failure.append(exc)
            finally:
                try:
                    loop.call_soon_threadsafe(end)
                except RuntimeError:  # the loop is gone (it stopped waiting after 30 s)
                    log.debug("binlog_reader_outlived_loop")

        try:
            # request_stop on the way out is a no-op unless cancelled: then the held batch gets
            # the shutdown timeout.
            await self._with_reader_thread(reader, asyncio.shield(ended), self.request_stop)
        finally:
            await self._close_redis()
        return self._finished(failure)

    def _finished(self, failure: list[BaseException]) -> int:
        if failure:
            exc = failure[0]
            if isinstance(exc, SyncError):
                raise exc
            raise SourceError(f"binlog reader failed: {type(exc).__name__}: {exc}") from exc
        log.info("binlog_stopped", position=self.position.describe() if self.position else None,
                 **self.stats.totals())
        return 0

    def function(self, table: str) -> str:
        """The gearman function of a table's jobs (--sink gearman)."""
        return self.settings.functions.get(table) or default_function(table)

    async def _retry(self, fn: Any, what: str, **info: Any) -> bool:
        """Await fn() until it succeeds (True) or, once a stop is requested, the shutdown deadline
        passes while the sink is down (False)."""
        backoff = Backoff(initial_s=0.05, max_s=5.0, jitter=0.5)
        from sync.gearman import GearmanError

        try:
            await retry_until(fn, retry_on=(ApplyError, redis.exceptions.RedisError, OSError, GearmanError),
                              backoff=backoff, deadline=self.shutdown_deadline,
                              on_retry=self.sink_retry(what, backoff, **info))
        except DeadlinePassed as gave_up:
            self.sink_given_up(what, gave_up, **info)
            return False
        if backoff.attempts:
            self.sink_recovered(what, backoff.attempts)
        return True

    def count_outcomes(self, events: Sequence[ChangeEvent], outcomes: Sequence[Outcome]) -> None:
        """Add one applied batch to the stats and the per-table metrics (the outcomes of a batch
        carrying the position have one more, the position's own)."""
        n_events = len(events)
        flags = [o is Outcome.APPLIED for o in outcomes[:n_events]]
        applied = sum(flags)
        st = self.stats
        st.events += n_events
        st.applied += applied
        st.stale += n_events - applied
        st.batches += 1
        metrics.TableCounts().outcomes([ev.table for ev in events], flags).record_applied(read=True)

    def unique(self, ev: ChangeEvent) -> str:
        """The gearman unique id of an event: the same for a re-read of the same change."""
        u = f"bl:{self.tag}:{ev.version:x}:{'d' if ev.op is Op.DELETE else 'u'}"
        if ev.version & 0xFFF == 0xFFF:
            # Possibly an overflow-collapsed version shared by many rows: tell them apart.
            u += ":" + hashlib.blake2b(repr(ev.pk).encode(), digest_size=10).hexdigest()
        return u

    def event_function(self, ev: ChangeEvent) -> str:
        """The gearman function of an event's job: its table's, and for op cascade of a parent that
        is not synced, that of a child it cascades into."""
        table = ev.cascade.fks[0].table if ev.op is Op.CASCADE and ev.cascade is not None else ev.table
        return self.function(table)

    def cascade_functions(self, events: Sequence[ChangeEvent]) -> set[str]:
        """The functions of the tables a run of cascading events touches (itself and its children)."""
        tables = {ev.table for ev in events if ev.op is not Op.CASCADE}
        todo = [rule for ev in events if ev.cascade is not None for rule in ev.cascade.fks]
        while todo:
            rule = todo.pop()
            tables.add(rule.table)
            todo.extend(rule.children)
        return {self.function(t) for t in tables}

    # -- reporting / closing ------------------------------------------------------------------------
    async def _report(self) -> None:
        def report(d: dict[str, float], total: dict[str, float], secs: float) -> None:
            log.info("binlog_stats", rows_per_s=round(d["rows"] / secs, 1), events=d["events"],
                     applied=d["applied"], stale=d["stale"], batches=d["batches"], retries=d["retries"],
                     position=self.position.describe() if self.position else None)

        await report_loop(self.stats, self.settings.stats_interval_s, report)

    async def _close_redis(self) -> None:
        try:
            await self.redis.aclose()
        except Exception as exc:  # closing a broken connection must not mask the exit
            log.debug("redis_close_failed", error=str(exc))
