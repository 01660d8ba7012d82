"""sync-snapshot: copy the rows a table already has into Redis, through the same fenced applier.

    reader = TableReader(mysql.connect(), schema)
    snap = Snapshot(reader, applier, progress, chunk=5000)
    result = await snap.run()               # resumes after the saved key unless restart=True

Rows are read in primary-key order with keyset pagination, `chunk` rows per query:

    SELECT UUID_SHORT() AS __gearsync_version, <columns> FROM db.t
    WHERE (k1 > %s) OR (k1 = %s AND k2 > %s)        -- after the last key of the previous chunk
    ORDER BY k1, k2 LIMIT 5000 LOCK IN SHARE MODE

so memory is bounded by one chunk (plus the one read ahead while the previous is applied),
whatever the table size. MariaDB 10.11 does not turn a row-constructor comparison
`(k1, k2) > (%s, %s)` into an index range (EXPLAIN: type "index", a scan from the first row on
every chunk), so the condition is spelled out as the equivalent OR of prefixes, which it does
range-scan. Each row becomes ChangeEvent(op=insert, source=snapshot) and goes through
RedisApplier, so its key and value are exactly what the triggers and verify produce
(`schema.canonical_row`, `keys.row_key`, `rowcodec`).

Resuming: after each chunk is applied, the chunk's last key (canonical pk values, JSON) is saved
in the hash `keys.snapshot_progress_key(table)`, with the row count and the settings. A new run
resumes after that key ("resuming after key id=…"), `restart=True` starts over; a finished
snapshot is marked done and the next run starts over. A crash between the apply and the save
re-applies one chunk: harmless, the rows are read again under new versions.

Why a snapshot row never overwrites a newer change (trigger versions)
----------------------------------------------------------------------
Trigger changes carry UUID_SHORT() taken inside an AFTER trigger, i.e. while the writing
statement holds the exclusive lock of the row, and Redis keeps a change only when its version is
newer than the stored one. The snapshot takes its version from the same server-wide, increasing
counter, in the same SELECT that takes a shared lock on the row, and the value is computed per
row after that row's lock is granted (checked: with an UPDATE of row 5 left uncommitted, the
snapshot's SELECT blocks on row 5, the writer then calls UUID_SHORT() and commits, and row 5's
snapshot version is larger than the writer's while rows 1-4 got smaller ones;
tests/integration/test_snapshot.py::test_version_is_taken_after_the_row_lock). So for any row:

- a writer that changed the row before our read committed before our lock was granted (a shared
  lock waits for an uncommitted writer), took its version earlier (smaller), and we read its
  committed value: whichever of the two reaches Redis last, the row ends with that value;
- a writer after our read waits for our shared lock (held until the chunk's short transaction
  commits) and its trigger then takes a larger version: its change wins over our row, even if
  our apply reaches Redis after it;
- a rolled-back writer (udf mode queues before COMMIT) took a smaller version and we read the
  old value under a larger one: the snapshot even repairs the phantom change.

A row deleted before our read is simply not read; one deleted after waits for our lock and its
tombstone carries a larger version. The locks are held for one chunk's read only (a few ms).
This needs the UUID_SHORT() versions of sync.capture.triggers (AFTER triggers: the version is taken
under the row lock) and one MySQL server (UUID_SHORT is per server).

Binlog versions (`versions="binlog"`): a snapshot to be followed by sync-binlog
----------------------------------------------------------------------------------
sync-binlog versions a change by its commit position, `gtid_version(seq, i) = seq << 20 | i`
(sync.capture.binlog.reader; seq = the transaction's GTID sequence number, i = row index in it), ~2**40;
UUID_SHORT() versions are ~2**56, so the two kinds must never share keys, and a snapshot that
sync-binlog will continue uses binlog-comparable versions instead of UUID_SHORT():

    START TRANSACTION WITH CONSISTENT SNAPSHOT
    SHOW STATUS LIKE 'binlog_snapshot_file' / 'binlog_snapshot_position'   -- MariaDB: the binlog
    SELECT BINLOG_GTID_POS(file, pos)                                        -- point of that view → P

All chunks are then read, with the same keyset pagination, as plain consistent reads INSIDE that
one transaction (no row locks), and every row gets the version V = gtid_version(P.seq, ROW_MASK)
(P.seq = P's sequence number in the server's gtid_domain_id). MariaDB guarantees that the view
holds exactly the transactions written to the binlog before binlog_snapshot_position, i.e. the
transactions with seq <= P.seq. So for any change c of a row, with version v(c):

- c at or before P (c.seq <= P.seq): v(c) = c.seq << 20 | i <= P.seq << 20 | ROW_MASK = V, and
  the row we read already includes c. If c reaches Redis first, our row (V >= v(c)) replaces it
  with a value that contains it; if it comes after (a replay from an older position), it is
  STALE (equal or older). Either way the key ends with a state that includes c.
- c after P (c.seq >= P.seq + 1): v(c) >= (P.seq + 1) << 20 > V. It wins over our row whichever
  reaches Redis first; sync-binlog started at P applies exactly these changes.

So the user starts `sync-binlog --start P` (any position at or before P is also correct, only
slower). When the snapshot finishes, P is also stored as sync-binlog's saved position under the
stream name sync-binlog uses by default for this one table (`binlog_service.stream_name`, or
`--binlog-name`), unless a position already saved there is at or after P (a sync-binlog that
already applied beyond P: keeping its position is correct by the same argument). The command
prints P either way.

Costs and limits of this mode: the transaction stays open for the whole snapshot (MVCC keeps the
undo history of every change made meanwhile: purge is held back, and a very long snapshot of a
busy table grows the undo log — acceptable for a bootstrap, but run it when the undo space allows).
It needs MariaDB (binlog_snapshot_file/position; MySQL has no equivalent status) with log_bin on;
versions are only comparable within one GTID domain (as for sync-binlog itself). A row deleted
before P whose key is already in Redis is not removed (as in trigger mode: sync-verify --repair).

Resuming in binlog mode: the old consistent view is gone with its connection, so a resumed run
opens a new one at P2 (>= P1, the first run's point) and versions the rows it reads with
gtid_version(P2.seq, ROW_MASK), while the position to start sync-binlog from stays P1 (saved in
the progress record). Each key then holds the state at P1 (rows of the first run) or P2 (rows
read after resuming) with the matching version; sync-binlog from P1 replays every change after
P1: the ones <= the row's own snapshot point are STALE (already included), the later ones win.
So every row converges to MySQL's state, whatever the number of interruptions. If the saved P1 is
missing, unreadable, from another domain, or ahead of the server (a different server), the
snapshot starts over from the first row and says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

import structlog

from sync.apply.applier import Outcome, RedisApplier
from sync.capture.spool import SPOOL_TABLE
from sync.errors import ConfigError, short_error
from sync.events import ChangeEvent, JSONValue
from sync.rows.fkgraph import load_foreign_keys
from sync.rows.reader import BinlogPoint, TableReader, fast_conversions, format_pk, row_events
from sync.rows.schema import TableSchema
from sync.tables import TableSpec, check_table_name
from sync.tools.progress import ProgressStore

log = structlog.get_logger(__name__)

__all__ = [
    "Versions",
    "Snapshot",
    "SnapshotResult",
    "TableTarget",
    "open_table",
    "open_tables",
    "TablesTarget",
    "split_tables",
    "store_binlog_start",
    "finished_in_interrupted_run",
    "apply_events",
]

APPLY_BATCH = 1000          # events per applier call (one Lua run blocks Redis ~1-2 ms)
DEFAULT_CHUNK = 5000


class Versions(StrEnum):
    TRIGGER = "trigger"
    BINLOG = "binlog"


async def apply_events(applier: RedisApplier, events: Sequence[ChangeEvent]) -> tuple[int, int]:
    """Apply in calls of APPLY_BATCH events, sent together on pooled connections (the rows of a
    snapshot are distinct, so their order across calls does not matter). (applied, stale)."""
    if not events:
        return 0, 0
    parts = [events[i : i + APPLY_BATCH] for i in range(0, len(events), APPLY_BATCH)]
    results = await asyncio.gather(*(applier.apply(p) for p in parts))
    applied = sum(1 for r in results for o in r if o is Outcome.APPLIED)
    return applied, len(events) - applied


# -- the run -------------------------------------------------------------------------------------

@dataclass
class SnapshotResult:
    rows: int = 0                   # rows read and applied in this run
    applied: int = 0
    stale: int = 0                  # rows a newer change had already written
    total_rows: int = 0             # including the rows of the run(s) resumed
    resumed_after: list[JSONValue] | None = None
    last: list[JSONValue] | None = None
    interrupted: bool = False
    elapsed_s: float = 0.0
    chunks: int = 0
    notes: list[str] = field(default_factory=list)
    # binlog mode: where sync-binlog must start (P1, the first run's point), the point this run
    # read at (its rows' version), and what happened to sync-binlog's saved position
    binlog_start: BinlogPoint | None = None
    binlog_read_at: BinlogPoint | None = None
    position_note: str | None = None


ProgressFn = Callable[[int, list[JSONValue] | None], None]


class Snapshot:
    """One table's snapshot run; see the module docstring."""

    def __init__(
        self,
        reader: TableReader,
        applier: RedisApplier,
        progress: ProgressStore,
        spec: TableSpec,
        *,
        chunk: int = DEFAULT_CHUNK,
        versions: Versions = Versions.TRIGGER,
        binlog_positions: Any = None,
    ) -> None:
        """`binlog_positions`: binlog mode only, a sync.position.PositionStore (sync-binlog's saved
        position of the stream) to set to P when the snapshot is done; None: only report P."""
        if not 1 <= chunk <= 1_000_000:
            raise ConfigError(f"--chunk: {chunk}; expected 1 to 1000000 rows")
        self.binlog_positions = binlog_positions
        self._point: BinlogPoint | None = None
        self.reader = reader
        self.schema = reader.schema
        self.graph = load_foreign_keys(reader.conn, self.schema.database)  # child rows get their refs
        self.applier = applier
        self.progress = progress
        self.spec = spec
        self.chunk = chunk
        self.versions = versions
        self._stop = False

    @property
    def settings(self) -> dict[str, str]:
        """What a resumed run must share with the run it continues."""
        return {
            "database": self.schema.database,
            "key_template": self.spec.key_template,
            "format": self.spec.format,
            "columns": ",".join(c.name for c in self.schema.columns),
            "versions": self.versions.value,
        }

    def request_stop(self) -> None:
        """Stop after the chunk being applied (its progress is saved)."""
        self._stop = True

    async def start_point(self, restart: bool) -> tuple[list[JSONValue] | None, int, int, list[str]]:
        """(resume after this key or None, rows already done, started_ms, notes)."""
        notes: list[str] = []
        now_ms = int(time.time() * 1000)
        if restart:
            await self.progress.clear()
            return None, 0, now_ms, notes
        saved = await self.progress.load()
        if saved is None:
            return None, 0, now_ms, notes
        if saved.state == "done":
            notes.append(f"the previous snapshot finished ({saved.rows} rows); starting a new one")
            return None, 0, now_ms, notes
        mine = self.settings
        diff = [k for k in mine if saved.settings.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise ConfigError(
                f"the interrupted snapshot of {self.schema.name!r} used {k} {saved.settings.get(k)!r}, this run "
                f"{mine[k]!r}; expected the same settings to resume, or --restart to start over"
            )
        if saved.last is None:
            return None, 0, saved.started_ms or now_ms, notes
        if len(saved.last) != len(self.schema.key):
            raise ConfigError(f"snapshot progress {self.progress.key!r} holds a key of {len(saved.last)} columns; "
                              f"expected {len(self.schema.key)}: run with --restart")
        if self.versions is Versions.BINLOG and await self.progress.load_binlog_start() is None:
            notes.append("the interrupted binlog-mode snapshot has no readable start point; starting over")
            return None, 0, now_ms, notes
        return list(saved.last), saved.rows, saved.started_ms or now_ms, notes

    async def _binlog_begin(self, after: list[JSONValue] | None, done: int,
                            notes: list[str]) -> tuple[BinlogPoint, BinlogPoint, list[JSONValue] | None, int]:
        """Open the consistent snapshot: (P1 = where sync-binlog must start, P = this run's read
        point, after, done) — resuming keeps P1 only while that stays correct (module docstring)."""
        point = await asyncio.to_thread(self.reader.begin_consistent)
        start = point
        if after is not None:
            saved = await self.progress.load_binlog_start()
            if saved is None or saved.domain != point.domain or saved.seq > point.seq:
                why = ("has no start point" if saved is None else
                       f"started in GTID domain {saved.domain}, the server writes domain {point.domain}"
                       if saved.domain != point.domain else
                       f"started at {saved.gtid}, ahead of this server's {point.gtid} (another server?)")
                notes.append(f"the interrupted binlog-mode snapshot {why}; starting over from the first row")
                after, done = None, 0
            else:
                start = saved
        await self.progress.save_binlog_start(start)
        self._point = point
        log.info("snapshot_binlog_point", start=start.gtid, read_at=point.gtid, version=point.version,
                 file=point.file, pos=point.pos)
        return start, point, after, done

    async def _binlog_store_position(self, start: BinlogPoint) -> str:
        """Done: make sync-binlog's saved position P1 unless it is already at or after P1."""
        if self.binlog_positions is None:
            return f"start sync-binlog with --start {start.gtid}"
        return await store_binlog_start(self.binlog_positions, [start])

    def _read(self, after: list[JSONValue] | None) -> tuple[list[ChangeEvent], list[JSONValue] | None, int]:
        if self._point is not None:
            rows = self.reader.chunk_consistent(after, self.chunk, self._point.version)
        else:
            rows = self.reader.chunk(after, self.chunk, versioned=True)
        if not rows:
            return [], None, 0
        events = row_events(self.schema, rows, graph=self.graph)
        return events, [v for _, v in events[-1].pk], len(rows)

    async def run(self, *, restart: bool = False, on_progress: ProgressFn | None = None) -> SnapshotResult:
        after, done, started_ms, notes = await self.start_point(restart)
        binlog_start: BinlogPoint | None = None
        if self.versions is Versions.BINLOG:
            binlog_start, _, after, done = await self._binlog_begin(after, done, notes)
        res = SnapshotResult(resumed_after=after, total_rows=done, notes=notes, binlog_start=binlog_start,
                             binlog_read_at=self._point)
        t0 = time.perf_counter()
        settings = self.settings
        pending = None
        try:
            await self.progress.save(state="running", last=after, rows=done, settings=settings, started_ms=started_ms)
            log.info("snapshot_started", table=self.schema.name, chunk=self.chunk, versions=self.versions.value,
                     resume_after=format_pk(self.schema, after) if after else None)
            pending = asyncio.ensure_future(asyncio.to_thread(self._read, after))
            while True:
                assert pending is not None  # set before the loop and before every further round
                events, last, n = await pending
                pending = None
                if not n:
                    break
                full = n == self.chunk
                if full and not self._stop:
                    # Read the next chunk while this one goes to Redis.
                    pending = asyncio.ensure_future(asyncio.to_thread(self._read, last))
                applied, stale = await apply_events(self.applier, events)
                res.rows += n
                res.applied += applied
                res.stale += stale
                res.chunks += 1
                res.total_rows += n
                res.last = last
                await self.progress.save(state="running", last=last, rows=res.total_rows, settings=settings,
                                         started_ms=started_ms)
                if on_progress is not None:
                    on_progress(res.total_rows, last)
                if not full:
                    break
                if self._stop:
                    res.interrupted = True
                    break
            if not res.interrupted:
                await self.progress.save(state="done", last=res.last or after, rows=res.total_rows,
                                         settings=settings, started_ms=started_ms)
                if binlog_start is not None:
                    res.position_note = await self._binlog_store_position(binlog_start)
        finally:
            if pending is not None:
                # Let an in-flight read finish (its transaction commits; the connection stays usable).
                await asyncio.gather(pending, return_exceptions=True)
            if self._point is not None:
                self._point = None
                await asyncio.to_thread(self.reader.end_consistent)
        res.elapsed_s = time.perf_counter() - t0
        log.info("snapshot_stopped" if res.interrupted else "snapshot_done", table=self.schema.name,
                 rows=res.rows, applied=res.applied, stale=res.stale, total_rows=res.total_rows,
                 seconds=round(res.elapsed_s, 3))
        return res


async def store_binlog_start(store: Any, starts: Sequence[BinlogPoint]) -> str:
    """Set sync-binlog's saved position (a sync.position.PositionStore) to the earliest of the
    snapshots' points `starts` (any point at or before a table's own P is correct for it), unless
    the saved one is already at or after every one of them (a sync-binlog that went further)."""
    from sync.position import parse_mariadb_gtids

    first = min(starts, key=lambda p: p.seq)
    saved = await store.load()
    if saved is not None and saved.flavor == "mariadb" and saved.gtid:
        state = parse_mariadb_gtids(saved.gtid, "saved position")
        if all(state.get(d, (0, -1))[1] >= n for p in starts
               for d, (_, n) in parse_mariadb_gtids(p.gtid, "snapshot position").items()):
            return f"sync-binlog's saved position {saved.gtid} ({store.key}) is already at or after {first.gtid}: kept"
    await store.save(first.position())
    return f"sync-binlog's position {store.key} set to {first.gtid}"


async def finished_in_interrupted_run(redis: Any, tables: Sequence[str], restart: bool) -> list[str]:
    """Several tables: when one of them has an interrupted snapshot (state running), the run that
    left it was this list's: the tables it had finished are skipped, so running the same command
    again resumes the list. Otherwise (or with --restart) every table is copied."""
    if restart or len(tables) < 2:
        return []
    saved = {t: await ProgressStore(redis, t).load() for t in tables}
    if not any(p is not None and p.state == "running" for p in saved.values()):
        return []
    return [t for t, p in saved.items() if p is not None and p.state == "done"]


# -- shared by the sync-snapshot / sync-verify commands ------------------------------------------

@dataclass
class TableTarget:
    """A table opened for snapshot/verify: MySQL connection + schema, Redis client + spec."""

    conn: Any
    schema: TableSchema
    spec: TableSpec
    redis: Any
    tombstone_ttl_s: int
    mysql: Any = None               # sync.mysql.MySQLSettings (binlog mode: sync-binlog's stream name)

    def applier(self) -> RedisApplier:
        # stats=False: snapshot/repair writes are not live changes; the per-table
        # last_applied_ms that sync-status reads as "lag" must not look fresh because of them.
        return RedisApplier(self.redis, {self.spec.name: self.spec}, tombstone_ttl_s=self.tombstone_ttl_s,
                            stats=False)

    async def close(self) -> None:
        await close_connections(self.conn, self.redis)


async def close_connections(conn: Any, redis: Any) -> None:
    try:
        conn.close()
    except Exception as exc:
        log.debug("mysql_close_failed", error=short_error(exc))
    try:
        await redis.aclose()
    except Exception as exc:
        log.debug("redis_close_failed", error=short_error(exc))


@dataclass
class TablesTarget:
    """Several tables opened for snapshot/verify, one after another on one MySQL connection and
    one Redis client; `skipped`: (table, why) of --all-tables' tables that cannot be synced."""

    tables: list[TableTarget]
    skipped: list[tuple[str, str]]
    conn: Any
    redis: Any
    mysql: Any
    database: str

    async def close(self) -> None:
        await close_connections(self.conn, self.redis)


OWN_TABLES = {SPOOL_TABLE: "gearsync's own spool table"}


def split_tables(values: Sequence[str] | None, database: str | None) -> tuple[list[str], str | None]:
    """--table values ("a,b", repeated, NAME or DB.NAME) → (names in order without repeats, database)."""
    names: list[str] = []
    for value in values or ():
        for item in value.split(","):
            name = item.strip()
            if "." in name and not name.startswith("."):
                db, name = name.split(".", 1)
                if database is not None and db != database:
                    raise ConfigError(f"--table: {item.strip()!r} is in database {db!r}, another table in "
                                      f"{database!r}; expected tables of one database")
                database = db
            check_table_name(name)
            names.append(name)
    return list(dict.fromkeys(names)), database


def open_tables(
    *,
    tables: Sequence[str] | None,
    all_tables: bool = False,
    database: str | None = None,
    columns: Sequence[str] | None = None,
    mysql_url: str | None = None,
    redis_url: str | None = None,
    redis_cluster: bool | None = None,
    key_template: str | None = None,
    fmt: str | None = None,
    ttl_s: int | None = None,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
) -> TablesTarget:
    """Settings from options / env / config file (as sync-worker reads them: an option applies to
    every table, else the table's [tables.<name>]), then connect and read the tables' schemas.
    `all_tables`: every table of the database that has a usable key (the others in `skipped`)."""
    from sync.config import worker_settings
    from sync.redis_client import connect_redis
    from sync.rows.schema import current_database, list_tables, load_table
    from sync.settings import config_for, mysql_settings

    cfg = config_for(SimpleNamespace(config=config_path), env)
    if not tables and not all_tables and cfg is not None:
        tables = list(cfg.tables)  # without --table: every [tables.NAME] of the config file
    names, database = split_tables(tables, database)
    if all_tables and names:
        raise ConfigError(f"--all-tables with --table {','.join(names)}; expected one of them")
    if not all_tables and not names:
        raise ConfigError("--table: none given; expected --table NAME[,NAME…] or --all-tables")
    if columns and (all_tables or len(names) > 1):
        raise ConfigError("--columns with several tables; expected it with one --table only")

    def settings(names: list[str]) -> Any:
        ws = worker_settings(tables=names, config_path=config_path, redis_url=redis_url, key_template=key_template,
                             fmt=fmt, ttl_s=ttl_s, redis_cluster=redis_cluster, env=env)
        shared = [t for t in ws.tables.values() if "{table}" not in t.key_template]
        if len(ws.tables) > 1 and shared:
            raise ConfigError(f"key template {shared[0].key_template!r} of table {shared[0].name!r} has no "
                              "{table}: the rows of several tables would share keys; expected {table} in it")
        return ws

    ws = settings(names) if names else None
    my = mysql_settings(mysql_url, env=env, cfg=cfg)
    conn = my.connect(database=database, conv=fast_conversions())
    try:
        db = database or my.database or current_database(conn)
        if all_tables:
            schemas, skipped = list_tables(conn, db, OWN_TABLES)
            if not schemas:
                raise ConfigError(f"--all-tables: database {db!r} has no table with a primary key or a NOT NULL "
                                  "unique key" + "".join(f"; {t}: {why}" for t, why in skipped[:10]))
            ws = settings([s.name for s in schemas])
        else:
            file_columns = {n: v.get("columns") for n, v in (cfg.tables if cfg is not None else {}).items()}
            schemas = [load_table(conn, db, n).select(list(columns) if columns else file_columns.get(n)) for n in names]
            skipped = []
    except BaseException:
        conn.close()
        raise
    assert ws is not None
    redis = connect_redis(ws.redis, socket_timeout_s=30.0)
    targets = [TableTarget(conn, s, ws.tables[s.name], redis, ws.tombstone_ttl_s, mysql=my) for s in schemas]
    return TablesTarget(targets, skipped, conn, redis, my, db)


def open_table(*, table: str, **options: Any) -> TableTarget:
    """One table (NAME or DB.NAME); `options` as for open_tables."""
    return open_tables(tables=[table], **options).tables[0]
