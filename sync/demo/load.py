"""The demo's table and its write load: CREATE_TABLE, the fill statements, and the Load thread
(paced single-row INSERT/UPDATE/DELETE plus a heartbeat update every tick), also run alone by
--load-only (the docker compose load job).

Standard library only at module level; pymysql comes through the connect callable.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sync.demo.common import DATABASE, EXIT_FAILED, EXIT_OK, EXIT_USAGE, HEARTBEAT_ID, TABLE, DemoError, say, step

if TYPE_CHECKING:
    from sync.demo.processes import Stack

# changes per kind of the write load (the heartbeat update comes on top)
LOAD_MIX = (("insert", 0.25), ("update", 0.60), ("delete", 0.15))


CREATE_TABLE = f"""CREATE TABLE {TABLE} (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  volume INT NOT NULL,
  label VARCHAR(64) NOT NULL,
  updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB"""


def fill_statements(rows: int) -> list[str]:
    """The heartbeat row and rows 1..rows (MariaDB's SEQUENCE engine: seq_1_to_<n>)."""
    return [f"INSERT INTO {TABLE} VALUES ({HEARTBEAT_ID}, 0, 'heartbeat', NOW(6))",
            *([f"INSERT INTO {TABLE} SELECT seq, seq % 1000, CONCAT('row-', seq), NOW(6) FROM seq_1_to_{rows}"]
              if rows > 0 else [])]


def create_table(stack: Stack, rows: int) -> None:
    step(f"creating {DATABASE}.{TABLE} with {rows:,} rows (id {HEARTBEAT_ID} is the heartbeat row)")
    stack.mariadb.execute(f"CREATE DATABASE {DATABASE}", f"USE {DATABASE}", CREATE_TABLE, *fill_statements(rows))


class Load(threading.Thread):
    """Paced single-row writes, each its own transaction, plus a heartbeat update every tick."""

    tick_s = 0.05

    def __init__(self, connect: Callable[[], Any], *, rate: float, seconds: float, live_ids: list[int],
                 classic: bool, seed: int | None) -> None:
        super().__init__(name="demo-load", daemon=True)
        self.connect = connect
        self.rate = rate
        self.seconds = seconds
        self.classic = classic
        self.random = random.Random(seed)
        self.live: list[int] = [pk for pk in live_ids if pk != HEARTBEAT_ID]
        self.index = {pk: i for i, pk in enumerate(self.live)}
        self.next_id = max(self.live, default=HEARTBEAT_ID) + 1
        self.counts = {"insert": 0, "update": 0, "delete": 0}
        self.written = 0
        # (n, t): heartbeat n (changes committed before it) committed at monotonic time t
        self.beats: list[tuple[int, float]] = []
        self.touched: set[int] = set()     # classic mode: rows whose UPDATE reached the trigger
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def _pick(self) -> str:
        if self.classic:
            return "update"
        r = self.random.random()
        for kind, weight in LOAD_MIX:
            if r < weight:
                return kind if (kind == "insert" or self.live) else "insert"
            r -= weight
        return "update" if self.live else "insert"

    def _one(self, cur: Any) -> None:
        kind = self._pick()
        if kind == "insert":
            pk = self.next_id
            self.next_id += 1
            cur.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, NOW(6))",
                        (pk, self.random.randrange(1000), f"new-{pk}"))
            self.index[pk] = len(self.live)
            self.live.append(pk)
        else:
            pk = self.live[self.random.randrange(len(self.live))]
            if kind == "update":
                cur.execute(f"UPDATE {TABLE} SET volume = volume + 1, label = %s, updated_at = NOW(6) WHERE id = %s",
                            (f"upd-{self.written}", pk))
                self.touched.add(pk)
            else:
                cur.execute(f"DELETE FROM {TABLE} WHERE id = %s", (pk,))
                i = self.index.pop(pk)
                last = self.live.pop()
                if last != pk:
                    self.live[i] = last
                    self.index[last] = i
        self.counts[kind] += 1
        self.written += 1

    def _beat(self, cur: Any) -> None:
        # Heartbeat k sets volume = k (the classic trigger sends only id and volume); beats[k - 1]
        # remembers how many changes were committed before it, and when it committed.
        k = len(self.beats) + 1
        cur.execute(f"UPDATE {TABLE} SET volume = %s, updated_at = NOW(6) WHERE id = {HEARTBEAT_ID}", (k,))
        self.beats.append((self.written, time.monotonic()))

    def run(self) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                self.started_at = start = time.monotonic()
                end = start + self.seconds
                while not self.stop_event.is_set():
                    now = time.monotonic()
                    due = int(self.rate * (min(now, end) - start)) - self.written
                    for _ in range(max(0, min(due, int(self.rate) + 1))):
                        self._one(cur)
                    self._beat(cur)
                    if now >= end:
                        break
                    self.stop_event.wait(self.tick_s)
        except BaseException as exc:  # reported by the main thread, which stops the demo
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            conn.close()

    @property
    def rows(self) -> int:
        return len(self.live) + 1  # + the heartbeat row


def run_load_only(args: argparse.Namespace) -> int:
    """--load-only: the write load alone against an existing demo table (the compose stack's load job)."""
    from sync.errors import ConfigError, SyncError
    from sync.settings import mysql_settings

    try:
        settings = mysql_settings(args.mysql_url)
        database = settings.database or DATABASE
        conn = settings.connect(database=database)
    except ConfigError as exc:
        raise DemoError(str(exc), EXIT_USAGE) from None
    except SyncError as exc:
        raise DemoError(str(exc), EXIT_FAILED) from None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
            if cur.fetchone()[0] == 0:
                say(f"{database}.{TABLE} is empty: inserting the heartbeat row and {args.rows:,} rows")
                for stmt in fill_statements(args.rows):
                    cur.execute(stmt)
            cur.execute(f"SELECT id FROM {TABLE}")
            ids = [int(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()
    load = Load(lambda: settings.connect(database=database), rate=args.rate, seconds=args.seconds, live_ids=ids,
                classic=args.classic, seed=args.seed)
    say(f"write load on {settings.display}: {args.rate:g} changes/s for {args.seconds:g} s")
    load.start()
    while load.is_alive():
        load.join(timeout=1.0)
        say(f"written={load.written} insert={load.counts['insert']} update={load.counts['update']} "
            f"delete={load.counts['delete']} rows={load.rows}")
    if load.error is not None:
        say(f"demo: error: the write load failed: {load.error!r}")
        return EXIT_FAILED
    return EXIT_OK
