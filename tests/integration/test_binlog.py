"""sync-binlog against real MariaDB + Redis (+ gearmand): values, keys, ALTER, SIGKILL, gearman path."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sync.capture.binlog.service import stream_name
from sync.config import WorkerSettings
from sync.keys import binlog_position_key, stats_key
from sync.mysql import from_url
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .binlog_rig import Running, diff, mysql_state, redis_state, settings, wait_caught_up

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

TYPED = """
CREATE TABLE typed (
  k1 VARCHAR(20) CHARACTER SET utf8mb4 NOT NULL, k2 BIGINT UNSIGNED NOT NULL,
  i INT, d DECIMAL(30,10), f FLOAT, g DOUBLE, dt DATE, tm TIME, tm3 TIME(3), dtm DATETIME(6), dz DATETIME,
  ts TIMESTAMP NULL, ts2 TIMESTAMP(2) NULL, s VARCHAR(100) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4,
  bl BLOB, vb VARBINARY(16), js JSON, en ENUM('red','green','blue'), st SET('z','a','m'), bt BIT(12), y YEAR,
  l1 VARCHAR(20) CHARACTER SET latin1, tl TEXT CHARACTER SET latin1, tm1 TIME(1), tm6 TIME(6), dt3 DATETIME(3),
  PRIMARY KEY (k1, k2)
) DEFAULT CHARSET=utf8mb4
"""
COLS = ("k1", "k2", "i", "d", "f", "g", "dt", "tm", "tm3", "dtm", "dz", "ts", "ts2", "s", "tx", "bl", "vb", "js",
        "en", "st", "bt", "y", "l1", "tl", "tm1", "tm6", "dt3")
ROWS = [
    ("acme", 1, 1, "12345678901234567890.0123456789", 0.1, 2.5, "2024-02-29", "-838:59:59", "-838:59:59.999",
     "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05", "2024-06-01 12:00:00", "2024-06-01 12:00:00.25",
     "héllo 😀 \U0010FFFF", "tab\there\nnew \"q\" \\ ", b"\x00\xff\xfe binary", b"\x80\x81", '{"b": [1, 2.5], "a": null}',
     "green", "m,z", 0b101010101010, 2024, "café", "ÿ latin", "-12:00:00.5", "-838:59:59.000001",
     "2024-01-02 03:04:05.999"),
    ("acme", 18446744073709551615, -2147483648, "-0.0000000001", -1.25e-5, 1.0e300, "1000-01-01", "00:00:00",
     "-00:00:00.500", "9999-12-31 23:59:59.999999", "1000-01-01 00:00:00", "2038-01-19 03:14:07",
     "1970-01-01 05:00:01.01", "", "", b"", b"", "null", "red", "", 0, 1901, "", "", "-00:00:00.1", "-00:00:00.000001",
     "1000-01-01 00:00:00.001"),
    ("b:c", 7, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None,
     None, None, None, None, None, None, None, None),
    ("z", 3, 3, "0.5000000000", 3.0, 3.0, "2000-01-01", "123:04:05", "-01:02:03.040", "2000-01-01 00:00:00.000001",
     "2000-01-01 00:00:00", "2000-01-01 00:00:00", "2000-01-01 00:00:00.99", "x", "y", b"ok utf8 \xc3\xa9", b"a",
     '[1, "two", {"3": 4}]', "blue", "a", 4095, 2155, "x", "y", "838:59:59.9", "-01:00:00.999999",
     "2000-01-01 00:00:00.5"),
]


def _insert(cur, rows) -> None:
    cur.executemany(f"INSERT INTO typed ({', '.join(COLS)}) VALUES ({', '.join(['%s'] * len(COLS))})", rows)


@pytest.mark.parametrize("sink", ["redis"])
def test_types_insert_update_delete_composite_key(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client, sink: str) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute(TYPED)
    st = settings(mariadb, name, ["typed"], redis_server)
    with Running(st) as run, db.cursor() as cur:
        cur.execute("SET time_zone = '+05:00'")  # TIMESTAMPs must still end up in UTC
        _insert(cur, ROWS)
        cur.execute("SET sql_mode = ''")  # zero dates
        _insert(cur, [("zero", 0, 0, "0", 0, 0, "0000-00-00", "00:00:00", "00:00:00.000", "0000-00-00 00:00:00",
                       "0000-00-00 00:00:00", "0000-00-00 00:00:00", "0000-00-00 00:00:00", "", "", b"", b"", "{}",
                       "", "", 0, 0, "", "", "00:00:00.0", "-00:00:01.000000", "0000-00-00 00:00:00.000")])
        cur.execute("UPDATE typed SET dt = '2024-00-10', dz = '2024-05-00 10:00:00' WHERE k1 = 'zero'")
        cur.execute("SET sql_mode = DEFAULT")
        cur.execute("UPDATE typed SET s = 'changed ✓', bl = UNHEX('C3'), d = d * 2, bt = b'1', en = NULL, st = 'a,z' "
                    "WHERE k2 = 1")
        cur.execute("UPDATE typed SET k1 = 'moved' WHERE k2 = 7")                 # key change
        cur.execute("UPDATE typed SET st = '' WHERE k1 = 'z'")                     # empty SET, not NULL
        cur.execute("BEGIN")
        cur.execute("INSERT INTO typed (k1, k2) VALUES ('gone', 1)")
        cur.execute("UPDATE typed SET i = 5 WHERE k1 = 'gone'")
        cur.execute("DELETE FROM typed WHERE k1 = 'gone'")
        cur.execute("COMMIT")
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        expected = mysql_state(mariadb, name, "typed")
        assert diff(expected, redis_state(redis_client, "typed")) == {}
    assert len(expected) == 5 and "typed:moved:7" in expected and "typed:b\\:c:7" not in expected


def test_columns_subset_and_untouched_updates(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, other VARCHAR(10))")
        cur.execute("INSERT INTO data VALUES (1, 1, 'a')")
    st = settings(mariadb, name, ["data"], redis_server, columns={"data": ("volume",)})
    with Running(st) as run, db.cursor() as cur:
        cur.execute("INSERT INTO data VALUES (2, 2, 'b')")
        cur.execute("UPDATE data SET other = 'c' WHERE id = 2")       # not a chosen column: nothing
        cur.execute("UPDATE data SET volume = 3 WHERE id = 2")
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        stats = run.service.stats.snapshot()
    assert redis_client.get("data:2") == b'{"id":2,"volume":3}'
    assert redis_client.get("data:1") is None  # before the start
    assert stats["events"] == 2


def test_alter_table_mid_stream(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, name VARCHAR(20))")
    st = settings(mariadb, name, ["data"], redis_server)
    with Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, %s, %s)", [(i, i, f"n{i}") for i in range(20)])
        cur.execute("ALTER TABLE data ADD COLUMN extra DECIMAL(5,2) DEFAULT 1.5")
        cur.execute("UPDATE data SET volume = volume + 1")
        cur.execute("ALTER TABLE data DROP COLUMN name")
        cur.execute("UPDATE data SET volume = volume + 1 WHERE id < 10")
        cur.execute("INSERT INTO data (id, volume) VALUES (100, 100)")
        cur.execute("ALTER TABLE data RENAME COLUMN volume TO vol")
        cur.execute("UPDATE data SET vol = vol + 1")
        cur.execute("ALTER TABLE data ADD COLUMN first_col INT FIRST")
        cur.execute("UPDATE data SET first_col = id")
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}
        # The key column renamed too: the reader re-reads the key.
        cur.execute("ALTER TABLE data RENAME COLUMN id TO ident")
        cur.execute("UPDATE data SET vol = vol + 1")
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
    # Rows written before the rename carry "id"; those after it "ident", under the same keys.
    assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}


def _writer(server: MariaDBServer, database: str, n: int, stop: threading.Event, done: list[int]) -> None:
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:
            for i in range(n):
                if stop.is_set():
                    break
                if i % 50 == 0:  # some multi-row transactions too
                    cur.execute("BEGIN")
                    cur.execute("UPDATE data SET volume = volume + 1, n = n + 1 WHERE id BETWEEN %s AND %s",
                                (i % 200, i % 200 + 4))
                    cur.execute("COMMIT")
                    done[0] += 5
                else:
                    cur.execute("UPDATE data SET volume = volume + 1, n = n + 1 WHERE id = %s", (i % 200,))
                    done[0] += 1
    finally:
        conn.close()


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    fh = open(log_path, "ab")
    return subprocess.Popen([str(BIN / "sync-binlog"), *args, "--log-format", "json"], stdout=fh, stderr=fh)


def test_sigkill_mid_stream_no_loss_no_double_apply(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client,
                                                    tmp_path: Path) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, n INT)")
    url = mariadb.url + name
    args = ["--table", "data", "--mysql-url", url, "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0",
            "--start", "current", "--stats-interval", "0"]
    key = binlog_position_key(stream_name(from_url(url), name, ["data"]))
    proc = _spawn(args, tmp_path / "run1.log")
    deadline = time.monotonic() + 30
    while redis_client.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, 0, 0)", [(i,) for i in range(205)])
    stop, done = threading.Event(), [205]
    writer = threading.Thread(target=_writer, args=(mariadb, name, 3000, stop, done))
    writer.start()
    kills = 0
    try:
        for _ in range(3):
            time.sleep(0.6)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            # Restarts resume from the saved position (no --start).
            proc = _spawn(args[:-4] + ["--stats-interval", "0"], tmp_path / f"run{kills + 1}.log")
        writer.join(120)
        wait_caught_up(mariadb, redis_client, key, timeout_s=60)
        log_path = tmp_path / f"run{kills + 1}.log"
        deadline = time.monotonic() + 30
        while b"binlog_connected" not in log_path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join(10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / f"run{kills + 1}.log").read_text()[-2000:]
    assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}
    # Every change took effect exactly once: the applier counts only APPLIED (not STALE) events.
    assert int(redis_client.hget(stats_key("data"), "applied_total")) == done[0]


def test_gearman_sink_through_sync_worker(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client,
                                          gearmand: GearmanServer) -> None:
    from sync.apply.worker import SyncWorker

    name = db.db_name
    with db.cursor() as cur:
        cur.execute(TYPED)
    st = settings(mariadb, name, ["typed"], redis_server, sink="gearman", servers=((gearmand.host, gearmand.port),))
    ws = WorkerSettings(servers=[(gearmand.host, gearmand.port)], redis=st.redis,
                        tables={"typed": TableSpec("typed", function="gearsync.typed")}, stats_interval_s=0)
    worker = SyncWorker(ws)
    loop = asyncio.new_event_loop()
    wt = threading.Thread(target=lambda: loop.run_until_complete(worker.run()), daemon=True)
    wt.start()
    try:
        with Running(st) as run, db.cursor() as cur:
            _insert(cur, ROWS)
            cur.execute("UPDATE typed SET s = 'changed', i = i + 1 WHERE k1 = 'acme'")
            cur.execute("UPDATE typed SET k1 = 'moved' WHERE k2 = 7")
            cur.execute("DELETE FROM typed WHERE k1 = 'z'")
            wait_caught_up(mariadb, redis_client, run.service.positions.key)
            expected = mysql_state(mariadb, name, "typed")
            deadline = time.monotonic() + 20
            while diff(expected, redis_state(redis_client, "typed")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert diff(expected, redis_state(redis_client, "typed")) == {}
            assert run.service.stats.events == 9  # 4 inserts, 2 updates, key change = delete + upsert, 1 delete
            assert 1 <= run.service.stats.jobs <= 9  # several changes a job (--job-changes)
    finally:
        loop.call_soon_threadsafe(worker.request_stop)
        wt.join(30)


def test_cli_bad_options(tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, str]:
        p = subprocess.run([str(BIN / "sync-binlog"), *args], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "GEARSYNC_MYSQL_DATABASE": ""})
        return p.returncode, p.stderr

    code, err = run("--table", "data", "--mysql-url", "mysql://u@127.0.0.1:1/db", "--sink", "kafka")
    assert code == 2 and "--sink" in err
    code, err = run("--table", "data", "--mysql-url", "mysql://u@127.0.0.1:1/")
    assert code == 2 and "--database" in err and err.count("\n") == 1
    code, err = run("--table", "a,b", "--mysql-url", "mysql://u@127.0.0.1:1/db", "--columns", "x")
    assert code == 2 and "table.column" in err
    code, err = run("--table", "data", "--mysql-url", "mysql://u:secret@127.0.0.1:1/db")
    assert code == 2 and "secret" not in err
    code, err = run("--table", "data", "--mysql-url", "mysql://u@127.0.0.1:1/db", "--redis-url", "redis://127.0.0.1:1/0",
                    "--startup-wait", "0")
    assert code == 3 and "cannot connect" in err and err.count("\n") == 1


def test_redis_hung_mid_stream_holds_then_catches_up(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = settings(mariadb, name, ["data"], redis_server)
    with Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, 0)", [(i,) for i in range(50)])
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        redis_server.pause()  # SIGSTOP: connections hang, applies time out and are retried
        try:
            for i in range(200):
                cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i % 50,))
            time.sleep(6)     # longer than the client's socket timeout (5 s)
        finally:
            redis_server.resume()
        wait_caught_up(mariadb, redis_client, run.service.positions.key, timeout_s=60)
        assert run.service.stats.retries >= 1
    assert diff(mysql_state(mariadb, name, "data"), redis_state(redis_client, "data")) == {}
    assert int(redis_client.hget(stats_key("data"), "applied_total")) == 250
