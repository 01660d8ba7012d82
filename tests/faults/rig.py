"""The pieces every fault case is built from: a steady writer, worker/relay processes, settle + verify.

A case (tests/faults/test_faults.py) looks like this:

    rig = Rig(mariadb, database, gearmand, redis, tmp_path)
    rig.make_table(); rig.start_workers(2); rig.start_relay()
    with rig.writer(rate_per_s=300) as w:
        ... inject the fault while w writes ...
    report = rig.settle_and_verify()     # queues + spool drained, then sync-verify (CLI) → 0
    record(case, written=w.changes, lost=report["differences"], ...)

Everything runs for real: single-row UPDATE/INSERT/DELETE statements through the capture triggers
(the UDF sends to gearmand, the spool takes over when it can't), sync-worker / sync-relay /
sync-binlog as separate processes (so SIGKILL means SIGKILL), and sync-verify as the judge.

"Lost" is what sync-verify still finds once every queue and the spool are empty: a change that
was committed in MySQL and never reached Redis shows up as a missing or different key and stays
(the verifier rechecks each difference before it reports it, so changes in flight don't count).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

from sync.capture.triggers import TriggerOptions, install_statements
from sync.gearman import admin
from sync.keys import DEFAULT_TEMPLATE, row_key
from sync.rows.schema import load_table
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
TABLE = "data"
FUNCTION = "gearsync.data"
ROWS = 400                     # ids 1..ROWS; the writer's inserts and deletes stay in this range
UDF_OPTIONS = "timeout_ms=100,do_timeout_ms=5000,retry_ms=1000"  # pipeline=1: the default


class Writer:
    """One connection doing single-row UPDATE / INSERT … ON DUPLICATE KEY UPDATE / DELETE at a bounded
    rate, through the real triggers, until stopped. Survives a MariaDB restart (reconnects).

    changes: row changes committed (affected rows > 0, so a change the triggers saw), counted only
    when the server acknowledged the statement (autocommit: its COMMIT); latencies_s: per statement
    (reconnect waits not included); errors: statements that failed; failed: (id, name) of each
    UPDATE/INSERT that failed on a lost connection (the server killed mid-statement): it may or may
    not have committed, MySQL says which after the restart (every written name is unique);
    written: (monotonic start, id) of every statement attempted."""

    def __init__(self, connect: Callable[[], Any], *, rate_per_s: float = 300.0, seed: int = 1,
                 on_connect: Callable[[Any], None] | None = None, flush: bool = False) -> None:
        self._connect = connect
        self._flush = flush
        self._on_connect = on_connect
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed)
        self.changes = 0
        self.statements = 0
        self.errors = 0
        self.reconnects = 0
        self.attempts = 0
        self.failed: list[tuple[int, str]] = []
        self.written: list[tuple[float, int]] = []
        self.latencies_s: list[tuple[float, float]] = []      # (monotonic start, seconds)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-writer", daemon=True)

    def _statement(self) -> tuple[str, tuple[Any, ...]]:
        rid = self.rng.randrange(1, ROWS + 1)
        p = self.rng.random()
        self.attempts += 1
        if p < 0.6:
            return "UPDATE data SET volume = volume + 1, name = %s WHERE id = %s", (f"u{self.attempts}", rid)
        if p < 0.9:
            return ("INSERT INTO data (id, volume, name) VALUES (%s, 0, %s) "
                    "ON DUPLICATE KEY UPDATE volume = volume + 1, name = VALUES(name)", (rid, f"i{self.attempts}"))
        return "DELETE FROM data WHERE id = %s", (rid,)

    def _open(self) -> Any:
        while not self._stop.is_set():
            try:
                conn = self._connect()
                if self._on_connect:
                    self._on_connect(conn)
                return conn
            except pymysql.err.MySQLError:
                self.reconnects += 1
                time.sleep(0.1)
        return None

    def _run(self) -> None:
        conn = None
        try:
            conn = self._open()
            start = time.monotonic()
            i = 0
            while not self._stop.is_set() and conn is not None:
                due = start + i / self.rate_per_s
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > 1.0:       # fell behind (an outage): don't burst to catch up
                    start, i = now, 0
                sql, args = self._statement()
                i += 1
                t0 = time.monotonic()
                rid = args[-1] if sql.startswith("UPDATE") else args[0]
                self.written.append((t0, rid))
                try:
                    with conn.cursor() as cur:
                        n = cur.execute(sql, args)
                    self.latencies_s.append((t0, time.monotonic() - t0))
                    self.statements += 1
                    self.changes += 1 if n else 0
                except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                    # server gone (restart) or a lock wait: a statement that may not have committed;
                    # either way sync-verify compares against what MySQL holds now.
                    self.errors += 1
                    if exc.args and exc.args[0] in (1205, 1213):
                        continue
                    if not sql.startswith("DELETE"):
                        self.failed.append((rid, args[0] if sql.startswith("UPDATE") else args[1]))
                    try:
                        conn.close()
                    except Exception:
                        pass
                    conn = self._open()
            if conn is not None and self._flush:
                with conn.cursor() as cur:
                    cur.execute("SELECT gman_flush()")   # only if asked: the keeper thread delivers them anyway
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> Writer:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error
        return self

    def __enter__(self) -> Writer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rows_written_between(self, since: float, until: float) -> set[int]:
        """Ids of the rows the statements started in [since, until] wrote (or tried to)."""
        return {rid for t, rid in self.written if since <= t <= until}

    def worst_latency_s(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((d for t, d in self.latencies_s if since <= t <= until), default=0.0)


class Proc:
    """A gearsync console script run as its own process, output to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env = name, args, env
        self.log_path = log_dir / f"{name}-{int(time.monotonic() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self._fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / self.args[0]), *self.args[1:]], env={**os.environ, **self.env},
                                     stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self._wait(10)

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self._fh.close()
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


class Rig:
    """One database with the `data` table and its triggers, a gearmand, a Redis, and the processes."""

    def __init__(self, mariadb: MariaDBServer, database: str, gearmand: GearmanServer | None, redis: RedisServer,
                 log_dir: Path) -> None:
        self.mariadb, self.database, self.gearmand, self.redis = mariadb, database, gearmand, redis
        self.log_dir = log_dir
        self.workers: list[Proc] = []
        self.procs: list[Proc] = []
        self.udf_options = UDF_OPTIONS      # what point_udf passes to gman_servers_set

    # -- set-up -----------------------------------------------------------------------------------
    def connect(self) -> Any:
        return self.mariadb.connect(self.database, read_timeout=30, write_timeout=30)

    def point_udf(self, conn: Any) -> None:
        if self.gearmand is not None:
            with conn.cursor() as cur:
                cur.execute("SELECT gman_servers_set(%s, %s)", (self.gearmand.address, self.udf_options))

    def make_table(self, *, triggers: bool = True, mode: str = "udf") -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT NOT NULL, "
                            "name VARCHAR(40) CHARACTER SET utf8mb4) ENGINE=InnoDB")
                if triggers:
                    self.point_udf(conn)
                    schema = load_table(conn, self.database, TABLE)
                    for stmt in install_statements(schema, TriggerOptions.for_table(TABLE, mode=mode)):
                        cur.execute(stmt)
                # the starting rows go through the triggers too
                cur.execute(f"INSERT INTO data SELECT seq, 0, CONCAT('n', seq) FROM seq_1_to_{ROWS}")
                if triggers:
                    cur.execute("SELECT gman_flush()")
        finally:
            conn.close()

    @property
    def env(self) -> dict[str, str]:
        env = {"GEARSYNC_REDIS_URL": f"redis://{self.redis.host}:{self.redis.port}/0",
               "GEARSYNC_MYSQL_URL": f"mysql://root@{self.mariadb.host}:{self.mariadb.port}/{self.database}",
               "GEARSYNC_MYSQL_PASSWORD": "", "GEARSYNC_REDIS_PASSWORD": ""}
        if self.gearmand is not None:
            env["GEARSYNC_GEARMAN_SERVERS"] = self.gearmand.address
        return env

    def writer(self, rate_per_s: float = 300.0, seed: int = 1, flush: bool = False) -> Writer:
        return Writer(self.connect, rate_per_s=rate_per_s, seed=seed, flush=flush)

    # -- processes --------------------------------------------------------------------------------
    def spawn(self, name: str, *args: str) -> Proc:
        p = Proc(name, list(args), self.env, self.log_dir).start()
        self.procs.append(p)
        return p

    def start_worker(self, *extra: str) -> Proc:
        w = self.spawn("sync-worker", "sync-worker", "--table", TABLE, "--log-format", "json",
                       "--stats-interval", "0", *extra)
        self.workers.append(w)
        return w

    def start_workers(self, n: int = 2, *extra: str) -> list[Proc]:
        return [self.start_worker(*extra) for _ in range(n)]

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = [w for w in self.workers if w.alive()]

    def start_relay(self, *extra: str) -> Proc:
        return self.spawn("sync-relay", "sync-relay", "--database", self.database, "--log-format", "json",
                          "--stats-interval", "0", "--poll-interval", "0.05", *extra)

    def close(self) -> None:
        for p in self.procs:
            if p.alive():
                p.stop(10)

    # -- observing --------------------------------------------------------------------------------
    def queued(self) -> int:
        """Jobs of gearsync.data gearmand holds (queued + running); 0 when gearmand is down."""
        return self._function_count("queued")

    def running(self) -> int:
        """Jobs of gearsync.data a worker holds (grabbed, not completed); 0 when gearmand is down."""
        return self._function_count("running")

    def _function_count(self, field: str) -> int:
        """One column of gearmand's `status` row for gearsync.data; -1 when the admin call fails."""
        if self.gearmand is None or not self.gearmand.running:
            return 0
        try:
            statuses = asyncio.run(admin.status(self.gearmand.host, self.gearmand.port, timeout_s=5))
        except Exception:
            return -1
        return sum(getattr(s, field) for s in statuses if s.name == FUNCTION)

    def spool(self) -> int:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM gearsync_spool")
                return int(cur.fetchone()[0])
        except pymysql.err.ProgrammingError:  # no spool table (binlog cases)
            return 0
        finally:
            conn.close()

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout_s}s; logs: "
                                     + ", ".join(str(p.log_path) for p in self.procs))
            time.sleep(0.1)

    def verify(self, *, repair: bool = False, recheck_delay_s: float = 1.0) -> dict[str, Any]:
        """sync-verify (the console script, as an operator runs it) → its JSON report + exit code."""
        args = [str(BIN / "sync-verify"), "--table", TABLE, "--database", self.database, "--json",
                "--recheck-delay", str(recheck_delay_s)]
        if repair:
            args.append("--repair")
        r = subprocess.run(args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120)
        assert r.returncode in (0, 1), f"sync-verify failed ({r.returncode}): {r.stderr[-2000:]}"
        report = json.loads(r.stdout.strip().splitlines()[-1])
        report["exit_code"] = r.returncode
        return report

    def settle_and_verify(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Wait until the spool and gearmand's queue are empty and Redis stopped changing, then run
        sync-verify; a report with differences is retried once after a pause (late in-flight jobs)."""
        self.wait(lambda: self.spool() == 0 and self.queued() == 0, timeout_s, "spool and queue empty")
        time.sleep(0.5)
        report = self.verify()
        if report["exit_code"] != 0:
            time.sleep(3)
            self.wait(lambda: self.spool() == 0 and self.queued() == 0, timeout_s, "spool and queue empty")
            report = self.verify()
        return report

    def names_in_mysql(self, names: list[str]) -> set[str]:
        """Which of these written names MySQL holds now (a statement that committed, or not)."""
        if not names:
            return set()
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT name FROM data WHERE name IN %s", (names,))
                return {r[0] for r in cur.fetchall()}
        finally:
            conn.close()

    def name_in_redis(self, rid: int) -> str | None:
        """The name Redis holds for row `rid` (None: no key)."""
        client = self.redis.client()
        try:
            raw = client.get(row_key(DEFAULT_TEMPLATE, TABLE, (("id", rid),)))
        finally:
            client.close()
        return None if raw is None else json.loads(raw).get("name")

    def worker_totals(self) -> dict[str, int]:
        """Sum of the worker_stopped counters of every worker that stopped cleanly."""
        totals: dict[str, int] = {}
        for p in self.procs:
            if p.args[0] != "sync-worker":
                continue
            for ev in p.events():
                if ev.get("event") == "worker_stopped":
                    for k in ("jobs", "applied", "stale", "dead", "retries"):
                        totals[k] = totals.get(k, 0) + int(ev.get(k, 0))
        return totals
