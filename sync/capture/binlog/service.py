"""The sync-binlog loop: binlog reader thread → batches → Redis (or gearmand) → saved position.

--sink redis on a standalone Redis: decode and write in ONE thread, the write pipelined behind
the next decode (RedisWriter).

    reader thread   BinlogSource.run(): blocking mysql-replication reads, rows → ChangeEvents; at a
                    batch boundary the batch (+ position) goes out as one EVALSHA on a synchronous
                    redis-py connection WITHOUT waiting for the reply, and decoding goes on while
                    Redis executes it on the other core. The reply is read before the next batch
                    is sent: at most one batch in flight, batches land in order.
    event loop      start-up, the stats line, and waiting for the thread to end; nothing per batch

When a batch is sent, and what happens while Redis is down: sync.capture.binlog.writer.

--sink gearman, and --sink redis on a Redis Cluster, keep the two-thread design (simpler there):

    reader thread   BinlogSource.run(), chunks handed to the event loop (bounded: the reader waits
                    when the sink lags)
    event loop      drain the chunks into one batch (up to --batch events), deliver it, save the
                    position of the last commit the batch covers; retry with back-off while the
                    sink is down (the reader then stops at the bound)

There the reader hands over a chunk at every commit and every 512 rows (a deque append; the loop
looks every 5 ms). The loop takes up to --batch events as one batch as soon as the reader has gone
quiet for 5 ms, or the oldest change has waited --flush-ms, or 256 chunks are there.

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

--sink gearman: each batch is submitted with submit_background_many (pipelined; returns when
gearmand sent JOB_CREATED for every job), then the position is SET in Redis. A crash in between
resubmits those jobs; their unique ids are derived from (stream, version, op), so gearmand merges
a resubmission into a still-queued copy, and one that already ran is applied again as STALE.

TRUNCATE / DROP TABLE of a synced table (the reader's Chunk.statements, a TableTruncate per table)
is a barrier on every sink: the changes before it are delivered first, then the statement, then its
position is saved. --sink redis: the table's keys older than the statement are removed
(sync.apply.truncate). --sink gearman: the loop waits until gearmand holds no job of the table's
function (queued or running: every earlier change of the table is in Redis or dead-lettered), then
submits the statement as a "truncate" job (sync.events), which sync-worker applies the same way;
later changes of the table are newer than the statement and survive it in any order.

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
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
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
from sync.capture.binlog.reader import BinlogSource, Chunk
from sync.capture.binlog.writer import RedisWriter
from sync.errors import ApplyError, ConfigError, SourceError, SyncError, short_error
from sync.events import ChangeEvent, Op, TableTruncate, encode_change, encode_truncate
from sync.mysql import MySQLSettings
from sync.position import Position, PositionStore
from sync.redis_client import RedisSettings, connect_redis
from sync.retry import Backoff, DeadlinePassed, retry_until
from sync.rows.fkgraph import EMPTY_GRAPH, load_foreign_keys
from sync.rows.schema import TableSchema, load_table
from sync.settings import SINKS
from sync.shape import Shape
from sync.stats import Counters, report_loop
from sync.tables import TableSpec, default_function

log = structlog.get_logger(__name__)

__all__ = ["BinlogSettings", "BinlogService", "stream_name", "default_server_id"]

QUIET_S = 0.005   # the reader handed nothing over for this long: take what is there
POLL_S = 0.005    # how often the loop looks at the reader's hand-over


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
    heartbeat_s: float = 1.0
    stats_interval_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    tombstone_ttl_s: int = 86400
    max_chunks: int = 256

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
        self.gearman: Any = None
        self._tag = hashlib.blake2b(self.name.encode(), digest_size=4).hexdigest()
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
            from sync.gearman import GearmanClient
            from sync.signing import load_keys

            keys = load_keys()
            keys.warn_if_off("sync-binlog")
            # One write (and one wait for the JOB_CREATEDs) per batch, not per 256 jobs: fewer
            # socket operations, each of which can make the loop wait for the GIL.
            self.gearman = GearmanClient(list(s.servers), chunk_size=max(256, s.batch), signer=keys.signer)
        elif self.applier is not None:
            await self._retry(self.applier.load_script, "load_script")
        log.info("binlog_started", server=s.mysql.display, flavor=server.flavor, version=server.version,
                 tables=list(s.tables), sink=s.sink, position=start.describe(), key=self.positions.key,
                 server_id=server_id)
        if s.sink == "redis" and not self._cluster:
            return await self._run_in_reader()

        # Hand-over between the threads: a deque, polled by the loop. No per-chunk wake-up of the
        # loop (call_soon_threadsafe writes a pipe each time, and every such write made the
        # reader wait for the GIL: 3x slower than this at 10k rows/s).
        chunks: deque[Chunk | None] = deque()
        failure: list[BaseException] = []
        max_chunks = s.max_chunks
        stop = self._stop

        def emit(chunk: Chunk) -> None:
            while len(chunks) >= max_chunks:  # the sink lags: wait (bounded memory)
                if stop.is_set() and self._stop_deadline and time.monotonic() > self._stop_deadline:
                    return
                time.sleep(0.002)
            chunks.append(chunk)

        def reader() -> None:
            try:
                assert self.source is not None
                self.source.run(emit, stop)
            except BaseException as exc:  # handed to the loop, which stops and reports it
                failure.append(exc)
            finally:
                chunks.append(None)

        try:
            await self._with_reader_thread(reader, self._sink_loop(chunks), self._stop.set)
        finally:
            if self.gearman is not None:
                await self.gearman.close()
            await self._close_redis()
        return self._finished(failure)

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
        """--sink redis, standalone: decode and write in the reader thread (RedisWriter); the
        event loop only reports stats and waits for the thread to end."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        failure: list[BaseException] = []
        writer = RedisWriter(self)

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

    async def _sink_loop(self, chunks: deque[Chunk | None]) -> None:
        limit = self.settings.batch
        wait_s = self.settings.flush_ms / 1000.0
        quiet_s = min(QUIET_S, wait_s)
        poll_s = max(min(POLL_S, wait_s), 0.0005)
        done = False
        while not done:
            # Take a batch when the reader has gone quiet (nothing new for quiet_s: it waits for
            # the server, so batching longer only adds latency), when the oldest change has waited
            # --flush-ms, or when 256 chunks are there. Under load that makes few, big batches:
            # each Redis/gearman round trip and each wake-up of this loop takes the GIL from the
            # reader thread, which is what bounds the rate.
            if not chunks:
                await asyncio.sleep(poll_s)
                continue
            first, last = chunks[0], chunks[-1]
            if first is not None and last is not None and len(chunks) < 256:
                now = time.monotonic()
                if now - first.t < wait_s and now - last.t < quiet_s:
                    await asyncio.sleep(poll_s)
                    continue
            taken: list[Chunk] = []
            n = 0
            while chunks and n < limit:
                c = chunks[0]
                if c is not None and c.statements and taken:
                    break   # a barrier: what came before it goes first
                chunks.popleft()
                if c is None:
                    done = True
                    break
                taken.append(c)
                n += len(c.events)
                if c.statements:
                    break
            if not taken:
                continue
            if taken[0].statements:
                self.stats.rows += taken[0].rows
                if not await self._statements(taken[0]):
                    break
                continue
            events = [e for c in taken for e in c.events] if len(taken) > 1 else taken[0].events
            position = None
            for c in taken:
                if c.position is not None:
                    position = c.position
            self.stats.rows += sum(c.rows for c in taken)
            if not await self._deliver(events, position):
                break  # shutdown deadline passed while the sink was down

    async def _deliver(self, events: list[ChangeEvent], position: Position | None) -> bool:
        if not events and position is None:
            return True
        what = self._apply if self.settings.sink == "redis" else self._submit
        t0 = time.perf_counter()
        ok = await self._retry(lambda: what(events, position), "deliver", events=len(events))
        if ok:
            metrics.record_batch(time.perf_counter() - t0)
        if ok and position is not None:
            self.advanced(position)
        return ok

    async def _statements(self, chunk: Chunk) -> bool:
        """A chunk with TRUNCATE/DROP statements: its changes, then the statements, then its position
        (False: the shutdown deadline passed while the sink was down)."""
        if chunk.events and not await self._deliver(chunk.events, None):
            return False
        for st in chunk.statements:
            if not await self._retry(lambda st=st: self._statement(st), "truncate", table=st.table):
                return False
        return await self._deliver([], chunk.position)

    async def _statement(self, st: TableTruncate) -> None:
        """--sink redis: remove the table's older rows. --sink gearman: once gearmand holds no job of
        the table's function, submit the statement."""
        if self.wipe is not None:
            await self.wipe.apply(self.redis, st)
            return
        fn = self.function(st.table)
        await self._drained({fn}, f"the truncate of {st.table}")
        await self.gearman.submit_background_many(fn, [encode_truncate(st)],
                                                  uniques=[f"bl:{self._tag}:{st.version:x}:t:{st.table}"])
        self.stats.jobs += 1
        log.info("binlog_truncate_submitted", table=st.table, function=fn, version=st.version)

    async def _drained(self, functions: set[str], before: str) -> None:
        """Wait until gearmand holds no job (queued or running) of `functions`: every earlier job of
        theirs is in Redis or dead-lettered. ApplyError when the shutdown deadline passes first."""
        from sync.gearman import admin

        waited = False
        while True:
            busy = 0
            for host, port in self.settings.servers:
                busy += sum(f.queued for f in await admin.status(host, port) if f.name in functions)
            if not busy:
                return
            if not waited:
                log.info("binlog_sink_draining", functions=sorted(functions), jobs=busy, before=before,
                         note="the earlier jobs are applied first")
                waited = True
            if self._stop.is_set() and self._stop_deadline and time.monotonic() > self._stop_deadline:
                raise ApplyError(f"stopping: the jobs of {', '.join(sorted(functions))} were not done before {before}")
            await asyncio.sleep(0.02)

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

    async def _apply(self, events: list[ChangeEvent], position: Position | None) -> None:
        assert self.applier is not None
        batch: list[Any] = list(events)
        if position is not None and not self._cluster:
            batch.append(self.positions.set_command(position))  # same script call: atomic with the rows
        outcomes = await self.applier.apply(batch) if batch else []
        if position is not None and self._cluster:
            await self.positions.save(position)
        self.count_outcomes(events, outcomes)

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
        u = f"bl:{self._tag}:{ev.version:x}:{'d' if ev.op is Op.DELETE else 'u'}"
        if ev.version & 0xFFF == 0xFFF:
            # Possibly an overflow-collapsed version shared by many rows: tell them apart.
            u += ":" + hashlib.blake2b(repr(ev.pk).encode(), digest_size=10).hexdigest()
        return u

    async def _submit(self, events: list[ChangeEvent], position: Position | None) -> None:
        # A cascade reads the children in Redis: every earlier job of the tables it touches must
        # be applied before it (jobs of different functions run in any order). So the events up to
        # a run of cascading events go first, then the run waits for those functions to drain.
        start, n = 0, len(events)
        while start < n:
            end = start
            while end < n and events[end].cascade is not None:
                end += 1
            while end < n and events[end].cascade is None:
                end += 1
            run = events[start:end]
            if run[0].cascade is not None:
                await self._drained(self._cascade_functions(run), f"a cascade of {run[0].table}")
            await self._submit_run(run)
            start = end
        if position is not None:
            await self.positions.save(position)
        self.stats.events += len(events)
        self.stats.jobs += len(events)
        self.stats.batches += 1
        metrics.TableCounts().outcomes([ev.table for ev in events], repeat(False)).record_applied(
            read=True, submitted=True)

    async def _submit_run(self, events: Sequence[ChangeEvent]) -> None:
        groups: dict[str, list[ChangeEvent]] = {}
        for ev in events:
            # op cascade of a parent that is not synced: to the function of a child it cascades into
            table = ev.cascade.fks[0].table if ev.op is Op.CASCADE and ev.cascade is not None else ev.table
            groups.setdefault(self.function(table), []).append(ev)
        for fn, evs in groups.items():
            await self.gearman.submit_background_many(fn, [encode_change(e) for e in evs],
                                                      uniques=[self.unique(e) for e in evs])

    def _cascade_functions(self, events: Sequence[ChangeEvent]) -> set[str]:
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
