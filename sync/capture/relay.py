"""SpoolRelay: drain `gearsync_spool` into gearmand, in id order, deleting only what gearmand took.

The capture triggers write a change into the spool table when gearmand did not take it (udf mode,
`--on-enqueue-failure spool`) or always (outbox mode). One batch:

    BEGIN                                              -- READ COMMITTED: no gap locks, so the
    SELECT id, function, LENGTH(payload),              -- triggers' INSERTs never wait for us
           IF(LENGTH(payload) <= 1 MiB, payload, NULL)
      FROM gearsync_spool
      ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED       -- rows of other relays are skipped
    -- keep the first rows up to BATCH_BYTES (64 MiB, at least one row), read their big payloads:
    SELECT id, payload FROM gearsync_spool WHERE id IN (…)
    submit_background_many(function, payloads)        -- pipelined, fresh unique ids, each
                                                       -- JOB_CREATED awaited
    DELETE FROM gearsync_spool WHERE id IN (…)
    COMMIT

Nothing is deleted before gearmand acknowledged it. A relay that dies between the submit and the
COMMIT leaves its rows in the spool and they are sent again: delivery is at least once, and the
worker's version fence makes a second apply a no-op. Several relays may run: SKIP LOCKED gives
each its own rows. Order: rows are sent in id order within a batch and batches follow each other;
rows committed late (a long transaction) are sent when they become visible, which is harmless
because every change carries its own version.

Trigger watcher (`watch_triggers`, on by default): every `watch_interval_s` (default 5 s) a
second connection runs `sync-triggers check` over every table that has gearsync triggers in the
served databases and re-installs the stale ones with the options recorded in their marker
(a column added, a trigger dropped, the table swapped by RENAME — pt-online-schema-change,
gh-ost — while the old table still holds our triggers), logging `triggers_reinstalled` for each.
A table whose triggers all vanished is re-installed only when the watcher had seen it installed
and the table was since replaced (its InnoDB table id or CREATE_TIME changed: a swap whose old table was dropped
before the next check); otherwise it was uninstalled on purpose and is left alone. A table that
was not replaced is re-installed when it is stale in two rounds in a row (an uninstall drops the
triggers one by one; the watcher must not re-install a table caught mid-way).

Empty spool: poll every `poll_interval_s` (default 20 ms: the outbox latency). MySQL or gearmand
down: roll back, capped exponential back-off, reconnect. `request_stop()` (SIGTERM): finish the
batch in hand, then exit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from sync import metrics
from sync.capture.spool import SPOOL_TABLE
from sync.capture.trigger_admin import check_table, install_table, installed_triggers, marked_tables, resolve_schema
from sync.capture.triggers import TriggerOptions
from sync.errors import ConfigError, SourceError, short_error
from sync.gearman import GearmanClient, GearmanError
from sync.mysql import MySQLSettings
from sync.retry import Backoff
from sync.rows.schema import quote_ident
from sync.settings import check_float, check_int
from sync.signing import JobKeys, load_keys
from sync.stats import Counters, report_loop

log = structlog.get_logger(__name__)

_RETRYABLE = (1213, 1205)  # deadlock victim, lock wait timeout
# MySQL errors that waiting will not cure: the relay stops with what to change instead of retrying
# forever (server error code -> what is wrong).
_FATAL = {
    1045: "access denied: check GEARSYNC_MYSQL_USER / GEARSYNC_MYSQL_PASSWORD (or the user in --mysql-url)",
    1044: "access to the database denied: GRANT SELECT, DELETE ON <db>.gearsync_spool",
    1142: "command denied: the relay needs SELECT and DELETE on gearsync_spool",
    1049: "unknown database: check --database / GEARSYNC_MYSQL_DATABASE",
    1146: "no table gearsync_spool: create it with `sync-triggers install` (or sql/spool.sql)",
}


def fatal_mysql_error(exc: BaseException) -> str | None:
    """What to change (and the server's error code), when `exc` — or what caused it, e.g. the
    pymysql error inside a SourceError from connect() — is a MySQL error that retrying cannot fix;
    None otherwise."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        code = seen.args[0] if seen.args and isinstance(seen.args[0], int) else None
        if code in _FATAL:
            return f"{_FATAL[code]} (error {code})"
        seen = seen.__cause__ or seen.__context__
    return None

__all__ = ["RelaySettings", "RelayStats", "SpoolRelay", "TriggerWatcher"]

def _close_quietly(conn: Any) -> None:
    """Close a MySQL connection (None: nothing to do) that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # already broken; nothing more to do with it
            pass


BATCH_BYTES = 64 * 1024 * 1024   # payload bytes per batch (at least one row, whatever its size)
INLINE_BYTES = 1024 * 1024


def _first_bytes(rows: Sequence[Any], limit: int) -> list[Any]:
    """The first rows (id, function, size, payload) whose sizes add up to at most `limit`; at least one."""
    out: list[Any] = []
    total = 0
    for row in rows:
        size = int(row[2])
        if out and total + size > limit:
            break
        out.append(row)
        total += size
    return out


@dataclass(frozen=True)
class RelaySettings:
    mysql: MySQLSettings
    databases: tuple[str, ...]                 # each holds a gearsync_spool
    servers: list[tuple[str, int]]
    batch: int = 500
    poll_interval_s: float = 0.02
    stats_interval_s: float = 10.0
    spool_table: str = SPOOL_TABLE
    watch_triggers: bool = True
    watch_interval_s: float = 5.0

    def __post_init__(self) -> None:
        """Checks the values (numbers may be given as option text: they are converted)."""
        if not self.databases:
            raise ConfigError("--database: none given; expected the database holding gearsync_spool")
        for name, value in (("batch", check_int(self.batch, "--batch", 1, 100_000)),
                            ("watch_interval_s", check_float(self.watch_interval_s, "--watch-interval", 0.1, 3600)),
                            ("poll_interval_s", check_float(self.poll_interval_s, "--poll-interval", 0.001, 60)),
                            ("stats_interval_s", check_float(self.stats_interval_s, "--stats-interval", 0, 86400))):
            object.__setattr__(self, name, value)


@dataclass
class RelayStats(Counters):
    relayed: int = 0
    batches: int = 0
    errors: int = 0
    contended: int = 0      # claims lost to a deadlock with another relay (nothing sent)
    resent: int = 0         # rows sent whose DELETE failed: they go out again
    reinstalled: int = 0    # tables whose stale triggers the watcher re-installed


class TriggerWatcher:
    """Checks the capture triggers of `databases` and re-installs the stale ones (see the module
    docstring). `check_once()` is blocking (run it in a thread); returns the tables re-installed."""

    def __init__(self, mysql: MySQLSettings, databases: Sequence[str]) -> None:
        self.mysql = mysql
        self.databases = tuple(databases)
        self._conn: Any = None
        # (database, table) -> (options, identity) of tables seen with up-to-date triggers
        self._known: dict[tuple[str, str], tuple[TriggerOptions, Any]] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._stale_once: set[tuple[str, str]] = set()  # stale in the last round, not yet acted on

    def close(self) -> None:
        conn, self._conn = self._conn, None
        _close_quietly(conn)

    def _identities(self, conn: Any, database: str) -> dict[str, Any]:
        """table -> what changes when the table is replaced: (CREATE_TIME, InnoDB table id)."""
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME, CREATE_TIME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s",
                        (database,))
            times = {(n.decode() if isinstance(n, bytes) else n): t for n, t in cur.fetchall()}
            ids: dict[str, int] = {}
            try:  # needs the PROCESS privilege; CREATE_TIME (seconds) alone otherwise
                cur.execute("SELECT NAME, TABLE_ID FROM information_schema.INNODB_SYS_TABLES WHERE NAME LIKE %s",
                            (database.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%",))
                ids = {(n.decode() if isinstance(n, bytes) else n).split("/", 1)[1]: int(i) for n, i in cur.fetchall()}
            except Exception:  # noqa: BLE001 - optional information
                pass
        return {name: (t, ids.get(name)) for name, t in times.items()}

    def check_once(self) -> list[str]:
        if self._conn is None:
            self._conn = self.mysql.connect(autocommit=True, read_timeout=30, write_timeout=30)
        conn = self._conn
        done = []
        for db in self.databases:
            installed = installed_triggers(conn, db)
            created = self._identities(conn, db)
            tables = set(marked_tables(installed)) | {t for d, t in self._known if d == db}
            for table in sorted(tables):
                if table not in created:
                    continue  # dropped (or mid-swap): nothing to capture
                known = self._known.get((db, table))
                result = check_table(conn, db, table, installed, known[0] if known else None)
                if result.ok:
                    self._known[(db, table)] = (result.options, created[table])  # type: ignore[assignment]
                    self._stale_once.discard((db, table))
                    continue
                replaced = known is not None and known[1] != created[table]
                marked = table in marked_tables(installed)
                if result.options is None or not (marked or replaced):
                    self._known.pop((db, table), None)   # uninstalled on purpose
                    self._stale_once.discard((db, table))
                    self._warn(db, table, result.summary())
                    continue
                if not replaced and (db, table) not in self._stale_once:
                    # Stale for the first time, the table not replaced: act on the next round if it
                    # still is (an uninstall drops the triggers one by one: mid-way, some are missing).
                    self._stale_once.add((db, table))
                    continue
                self._stale_once.discard((db, table))
                try:
                    schema = resolve_schema(conn, db, table, result.options)
                    install_table(conn, schema, result.options, self.mysql.display)
                except (ConfigError, SourceError) as exc:
                    self._warn(db, table, short_error(exc))
                    continue
                log.info("triggers_reinstalled", database=db, table=table, reason="; ".join(result.problems))
                self._known[(db, table)] = (result.options, created[table])
                done.append(f"{db}.{table}")
        return done

    def _warn(self, db: str, table: str, what: str) -> None:
        if (db, table, what) not in self._warned:
            self._warned.add((db, table, what))
            log.warning("triggers_not_reinstalled", database=db, table=table, reason=what)


class SpoolRelay:
    """See the module docstring. `run()` serves until `request_stop()`; `drain()` empties the
    spool once (for tests and one-shot use)."""

    def __init__(self, settings: RelaySettings, *, client: GearmanClient | None = None,
                 keys: JobKeys | None = None) -> None:
        self.settings = settings
        # Spooled payloads are stored unsigned (the spool INSERT must not depend on a key) and
        # signed here, with the current GEARSYNC_JOB_KEY, as they are sent.
        keys = load_keys() if keys is None else keys
        keys.warn_if_off("sync-relay")
        self.client = client or GearmanClient(settings.servers, backoff_initial_s=0.05, backoff_max_s=2.0,
                                              signer=keys.signer)
        self._own_client = client is None
        self.stats = RelayStats()
        self._conn: Any = None
        self._stop = asyncio.Event()
        tables = {db: f"{quote_ident(db)}.{quote_ident(settings.spool_table)}" for db in settings.databases}
        # Payloads up to INLINE_BYTES come with the claim; larger ones are read once the batch is cut
        # to BATCH_BYTES, so a batch of big rows never sits in memory at once.
        self._select = {db: f"SELECT id, function, LENGTH(payload), IF(LENGTH(payload) <= {INLINE_BYTES}, payload, "
                            f"NULL) FROM {t} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED" for db, t in tables.items()}
        self._big = {db: f"SELECT id, payload FROM {t} WHERE id IN " for db, t in tables.items()}
        self._delete = {db: f"DELETE FROM {t} WHERE id IN " for db, t in tables.items()}
        self.watcher = TriggerWatcher(settings.mysql, settings.databases) if settings.watch_triggers else None
        # /healthz: the last round's failure (None: it worked), when the spools were last found
        # drained, the gauge poll's findings.
        self.error: str | None = None
        self.drained_at = time.monotonic()
        self.poll_error: str | None = None
        self._monitor_on = False
        self._count_sql = {db: f"SELECT COUNT(*) FROM {t}" for db, t in tables.items()}
        self._poll_conn: Any = None

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("relay_stopping")
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- MySQL (blocking pymysql calls, run in a thread) ---------------------------------------
    def _connect(self) -> Any:
        if self._conn is None:
            conn = self.settings.mysql.connect(autocommit=True, read_timeout=30, write_timeout=30)
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                cur.execute("SET SESSION innodb_lock_wait_timeout = 5")
            self._conn = conn
        return self._conn

    def _close_mysql(self) -> None:
        conn, self._conn = self._conn, None
        _close_quietly(conn)

    def _claim(self, database: str) -> list[tuple[int, str, bytes]] | None:
        """The rows claimed (locked) for sending; None when InnoDB chose us as a deadlock victim
        (several relays): nothing was sent, try again."""
        import pymysql

        conn = self._connect()
        conn.begin()
        try:
            with conn.cursor() as cur:
                cur.execute(self._select[database], (self.settings.batch,))
                rows = _first_bytes(cur.fetchall(), BATCH_BYTES)
                big = [int(r[0]) for r in rows if r[3] is None]
                if big:
                    cur.execute(self._big[database] + "(" + ",".join(map(str, big)) + ")")
                    payloads = {int(i): p for i, p in cur.fetchall()}
                    rows = [(i, f, n, payloads[int(i)] if p is None else p) for i, f, n, p in rows]
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in _RETRYABLE:
                conn.rollback()
                return None
            raise
        if not rows:
            conn.rollback()
        return [(int(i), f if isinstance(f, str) else f.decode("utf-8"), bytes(p)) for i, f, _, p in rows]

    def _finish(self, database: str, ids: Sequence[int]) -> None:
        """Delete the sent rows and commit. InnoDB may pick this DELETE as a deadlock victim when
        relays work on neighbouring ids (its range scan locks a neighbour that another relay has
        just delete-marked): the rows are unlocked then, so the DELETE is retried on its own; a
        relay that claimed some of them meanwhile sends them a second time (at least once)."""
        import pymysql

        conn = self._conn
        sql = self._delete[database] + "(" + ",".join(str(int(i)) for i in ids) + ")"
        for attempt in range(10):
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                conn.commit()
                return
            except pymysql.err.OperationalError as exc:
                if not (exc.args and exc.args[0] in _RETRYABLE) or attempt == 9:
                    raise
                conn.rollback()
                self.stats.contended += 1
                time.sleep(0.001 * (attempt + 1))

    def _rollback(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except Exception:
                self._close_mysql()

    # -- one batch -------------------------------------------------------------------------------
    async def relay_batch(self, database: str) -> int:
        """Send one batch of `database`'s spool; returns how many rows were relayed (0: empty).
        Raises SourceError (MySQL) or GearmanError (gearmand); the rows then stay in the spool."""
        for _attempt in range(20):
            try:
                rows = await asyncio.to_thread(self._claim, database)
            except Exception as exc:
                await asyncio.to_thread(self._close_mysql)
                fatal = fatal_mysql_error(exc)
                if fatal:
                    raise ConfigError(f"MySQL {self.settings.mysql.display}, database {database!r}: "
                                      f"{fatal}") from exc
                raise SourceError(f"MySQL {self.settings.mysql.display}: spool read failed: {short_error(exc)}") from exc
            if rows is not None:
                break
            self.stats.contended += 1
        else:
            return 0
        if not rows:
            return 0
        try:
            groups: dict[str, list[bytes]] = {}
            for _id, function, payload in rows:   # id order within each function
                groups.setdefault(function, []).append(payload)
            for function, payloads in groups.items():
                await self.client.submit_background_many(function, payloads)
        except BaseException:
            await asyncio.to_thread(self._rollback)
            raise
        try:
            await asyncio.to_thread(self._finish, database, [r[0] for r in rows])
        except Exception as exc:
            # gearmand has them; the rows stay and are sent again (harmless: versions fence).
            self.stats.resent += len(rows)
            metrics.RELAY_RESENT.inc(len(rows))
            await asyncio.to_thread(self._close_mysql)
            raise SourceError(f"MySQL {self.settings.mysql.display}: spool delete failed after send "
                              f"({len(rows)} rows will be sent again): {short_error(exc)}") from exc
        self.stats.relayed += len(rows)
        self.stats.batches += 1
        for function, payloads in groups.items():
            metrics.relayed_by[(database, metrics.table_of_function(function))].inc(len(payloads))
        return len(rows)

    async def drain(self, timeout_s: float = 30.0) -> int:
        """Relay until every spool is empty (rows locked by open transactions are not waited
        for); returns how many were relayed. Errors propagate."""
        total = 0
        deadline = time.monotonic() + timeout_s
        for db in self.settings.databases:
            while time.monotonic() < deadline:
                n = await self.relay_batch(db)
                total += n
                if n < self.settings.batch:
                    break
        return total

    # -- loop ------------------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.settings
        log.info("relay_started", databases=list(s.databases), servers=[f"{h}:{p}" for h, p in s.servers],
                 mysql=s.mysql.display, batch=s.batch, poll_interval_s=s.poll_interval_s)
        backoff = Backoff(initial_s=0.05, max_s=5.0, jitter=0.5)
        tasks = [asyncio.ensure_future(self._report()), asyncio.ensure_future(self._watch())]
        if self._monitor_on:
            tasks.append(asyncio.ensure_future(self._monitor()))
        try:
            while not self.stopping:
                busy = False
                try:
                    for db in s.databases:
                        n = await self.relay_batch(db)
                        busy = busy or n >= s.batch
                        if n and backoff.attempts:
                            log.info("relay_recovered", attempts=backoff.attempts)
                            backoff.reset()
                    if backoff.attempts:
                        backoff.reset()
                    self.error = None
                    if not busy:
                        self.drained_at = time.monotonic()
                except (SourceError, GearmanError, OSError) as exc:
                    self.stats.errors += 1
                    self.error = short_error(exc)
                    metrics.RELAY_ERRORS.inc()
                    delay = backoff.next_delay()
                    log.warning("relay_unavailable", error=short_error(exc), retry_in_s=round(delay, 3),
                                attempt=backoff.attempts)
                    await self._sleep(delay)
                    continue
                if not busy:
                    await self._sleep(s.poll_interval_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()
        log.info("relay_stopped", **self.stats.totals())
        return 0

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    # -- gauges and /healthz ----------------------------------------------------------------------
    def enable_monitor(self) -> None:
        """Poll the gauges and register the /healthz check while running (with --metrics-port)."""
        from sync.health import set_check

        self._monitor_on = True
        metrics.register("sync-relay")
        set_check(self.health)

    def _count_spools(self, timeout_s: float) -> dict[str, int]:
        """Rows in each database's spool, on a connection of its own (blocking; run in a thread)."""
        if self._poll_conn is None:
            self._poll_conn = self.settings.mysql.connect(autocommit=True, read_timeout=timeout_s,
                                                          write_timeout=timeout_s)
        counts = {}
        with self._poll_conn.cursor() as cur:
            for db, sql in self._count_sql.items():
                cur.execute(sql)
                counts[db] = int(cur.fetchone()[0])
        return counts

    def _close_poll(self) -> None:
        conn, self._poll_conn = self._poll_conn, None
        _close_quietly(conn)

    async def _monitor(self) -> None:
        """Every POLL_S: the spool rows of each database (COUNT(*), bounded by POLL_TIMEOUT_S) and
        whether a gearmand answers (an idle relay sends nothing that would tell)."""
        from sync.gearman import admin
        from sync.health import POLL_S, POLL_TIMEOUT_S

        try:
            while not self.stopping:
                problems = []
                try:
                    counts = await asyncio.wait_for(asyncio.to_thread(self._count_spools, POLL_TIMEOUT_S),
                                                    POLL_TIMEOUT_S + 1)
                    for db, n in counts.items():
                        metrics.spool_by[db].set(n)
                except Exception as exc:
                    await asyncio.to_thread(self._close_poll)
                    problems.append(f"MySQL {self.settings.mysql.display}: {short_error(exc) or 'timed out'}")
                answered = 0
                for host, port in self.settings.servers:
                    try:
                        await admin.status(host, port, timeout_s=POLL_TIMEOUT_S)
                        answered += 1
                    except GearmanError:
                        pass
                if not answered:
                    problems.append("no gearmand answers (" + ",".join(f"{h}:{p}" for h, p in self.settings.servers)
                                    + ")")
                self.poll_error = "; ".join(problems) or None
                await self._sleep(POLL_S)
        finally:
            await asyncio.to_thread(self._close_poll)

    def health(self) -> tuple[str | None, dict[str, Any]]:
        """/healthz: MySQL and gearmand reachable (the last round worked, the last poll too), and the
        spools found drained within PROGRESS_S."""
        from sync.health import PROGRESS_S

        idle_s = time.monotonic() - self.drained_at
        details = {"command": "sync-relay", "databases": list(self.settings.databases),
                   "seconds_since_drained": round(idle_s, 1), "relayed": self.stats.relayed}
        error = self.error or self.poll_error
        if error:
            return f"unreachable: {error}", details
        if idle_s > PROGRESS_S:
            return f"no progress: the spool not drained for {idle_s:.0f} s (limit {PROGRESS_S:.0f} s)", details
        return None, details

    async def _watch(self) -> None:
        """The trigger watcher's loop (see TriggerWatcher); errors are logged and retried."""
        watcher = self.watcher
        if watcher is None:
            return
        log.info("trigger_watch_started", interval_s=self.settings.watch_interval_s)
        while not self.stopping:
            try:
                done = await asyncio.to_thread(watcher.check_once)
                self.stats.reinstalled += len(done)
            except Exception as exc:
                await asyncio.to_thread(watcher.close)
                log.warning("trigger_watch_failed", error=short_error(exc))
            await self._sleep(self.settings.watch_interval_s)

    async def _report(self) -> None:
        def report(d: dict[str, float], cur: dict[str, float], seconds: float) -> None:
            log.info("relay_stats", relayed_per_s=round(d["relayed"] / seconds, 1),
                     relayed=int(d["relayed"]), batches=int(d["batches"]), errors=int(d["errors"]),
                     contended=int(d["contended"]), resent=int(d["resent"]),
                     total_relayed=int(cur["relayed"]))

        await report_loop(self.stats, self.settings.stats_interval_s, report, self._stop)

    async def close(self) -> None:
        if self._own_client:
            await self.client.close()
        await asyncio.to_thread(self._close_mysql)
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.close)
