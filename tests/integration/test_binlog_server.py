"""sync-binlog against a MariaDB of its own: restart mid-stream, purged position, and each start-up
check (binlog settings, privileges) with its one-line message. One server for the module, restarted
with other settings where a test needs them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.keys import stats_key
from sync.testing.servers import MariaDBServer, RedisServer

from .binlog_rig import Running, diff, mysql_state, redis_state, settings, wait_caught_up

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
DB = "app"


@pytest.fixture(scope="module")
def own_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("binlog-mariadb"))
    server.start()
    server.execute(f"CREATE DATABASE {DB}", f"CREATE TABLE {DB}.data (id INT PRIMARY KEY, volume INT)")
    yield server
    server.stop()


def _restart_with(server: MariaDBServer, *args: str) -> None:
    server.extra_args = list(args)
    server.restart()


def _cli(server: MariaDBServer, redis_server: RedisServer, *args: str, user: str = "root", password: str = "") -> tuple[int, str]:
    url = f"mysql://{user}@{server.host}:{server.port}/{DB}"
    p = subprocess.run(
        [str(BIN / "sync-binlog"), "--table", "data", "--mysql-url", url,
         "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0", "--log-format", "json", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "GEARSYNC_MYSQL_PASSWORD": password},
    )
    errors = [line for line in p.stderr.splitlines() if line.startswith("sync-binlog: error:")]
    return p.returncode, errors[0] if errors else p.stderr[-1500:]


def test_mariadb_restart_mid_stream(own_db: MariaDBServer, redis_server: RedisServer, redis_client) -> None:
    _restart_with(own_db)
    own_db.execute(f"TRUNCATE TABLE {DB}.data")
    st = settings(own_db, DB, ["data"], redis_server, start="current")
    with Running(st) as run:
        own_db.execute(*(f"INSERT INTO {DB}.data VALUES ({i}, 0)" for i in range(100)))
        conn = own_db.connect(DB)
        with conn.cursor() as cur:
            for i in range(300):
                cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i % 100,))
        conn.close()
        own_db.stop()      # the reader's connection drops; it retries until the server is back
        own_db.start()
        conn = own_db.connect(DB)
        with conn.cursor() as cur:
            for i in range(300):
                cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i % 100,))
            cur.execute("FLUSH BINARY LOGS")  # rotation while streaming
            for i in range(100):
                cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i,))
        conn.close()
        wait_caught_up(own_db, redis_client, run.service.positions.key, timeout_s=60)
    assert diff(mysql_state(own_db, DB, "data"), redis_state(redis_client, "data")) == {}
    assert int(redis_client.hget(stats_key("data"), "applied_total")) == 800


def test_purged_position_says_how_to_resnapshot(own_db: MariaDBServer, redis_server: RedisServer, redis_client) -> None:
    _restart_with(own_db)
    st = settings(own_db, DB, ["data"], redis_server, start="current", name="purge-test")
    with Running(st) as run:
        own_db.execute(f"INSERT INTO {DB}.data VALUES (1, 0) ON DUPLICATE KEY UPDATE volume = volume + 1")
        wait_caught_up(own_db, redis_client, run.service.positions.key)
    saved_seq = int(redis_client.get(run.service.positions.key).split(b'"gtid":"')[1].split(b'"')[0].split(b"-")[2])
    conn = own_db.connect(DB)
    deadline = time.monotonic() + 30
    with conn.cursor() as cur:
        # MariaDB keeps binlogs InnoDB may still need for recovery (the binlog checkpoint): rotate
        # and purge until the oldest binlog starts after the saved position.
        while True:
            cur.execute("INSERT INTO data VALUES (2, 0) ON DUPLICATE KEY UPDATE volume = volume + 1")
            cur.execute("FLUSH BINARY LOGS")
            cur.execute("SHOW MASTER STATUS")
            cur.execute("PURGE BINARY LOGS TO %s", (cur.fetchone()[0],))
            cur.execute("SHOW BINARY LOGS")
            first = cur.fetchone()[0]
            cur.fetchall()
            cur.execute("SELECT BINLOG_GTID_POS(%s, 4)", (first,))
            got = cur.fetchone()[0]
            if int((got or "0-0-0").split("-")[2]) > saved_seq:
                break
            assert time.monotonic() < deadline, f"could not purge the binlog past the saved position ({first}, {got!r}, {saved_seq})"
            time.sleep(0.2)
    conn.close()
    code, err = _cli(own_db, redis_server, "--name", "purge-test")
    assert code == 3, err
    assert "purged" in err and "re-run sync-snapshot --table data --versions binlog" in err
    # As told: --start current goes on from the end of the binlog.
    st = settings(own_db, DB, ["data"], redis_server, start="current", name="purge-test")
    with Running(st) as run:
        own_db.execute(f"REPLACE INTO {DB}.data VALUES (3, 77)")
        wait_caught_up(own_db, redis_client, run.service.positions.key)
    assert redis_client.get("data:3") == b'{"id":3,"volume":77}'


@pytest.mark.parametrize(
    "grants, expected",
    [
        ("BINLOG MONITOR ON *.*", "lacks REPLICATION SLAVE: run GRANT REPLICATION SLAVE ON *.*"),
        ("REPLICATION SLAVE ON *.*", "lacks BINLOG MONITOR (REPLICATION CLIENT): run GRANT BINLOG MONITOR ON *.*"),
        ("REPLICATION SLAVE, BINLOG MONITOR ON *.*", f"lacks SELECT on {DB}.data: run GRANT SELECT ON `{DB}`.*"),
    ],
)
def test_privilege_checks(own_db: MariaDBServer, redis_server: RedisServer, grants: str, expected: str) -> None:
    if own_db.extra_args:
        _restart_with(own_db)
    user = "syncer"
    own_db.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'", f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw'",
                   f"GRANT {grants} TO '{user}'@'127.0.0.1'")
    if "SELECT" not in expected:
        own_db.execute(f"GRANT SELECT ON {DB}.* TO '{user}'@'127.0.0.1'")
    code, err = _cli(own_db, redis_server, "--start", "current", user=user, password="pw")
    assert code == 3 and expected in err, err
    assert "pw" not in err.replace("pwd", "")


def test_privileges_enough(own_db: MariaDBServer, redis_server: RedisServer, redis_client) -> None:
    """REPLICATION SLAVE + BINLOG MONITOR + SELECT is all sync-binlog needs on MariaDB 10.11."""
    if own_db.extra_args:
        _restart_with(own_db)
    own_db.execute("DROP USER IF EXISTS 'syncer'@'127.0.0.1'", "CREATE USER 'syncer'@'127.0.0.1' IDENTIFIED BY 'pw'",
                   "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'syncer'@'127.0.0.1'",
                   f"GRANT SELECT ON {DB}.* TO 'syncer'@'127.0.0.1'")
    from dataclasses import replace

    st = settings(own_db, DB, ["data"], redis_server, start="current", name="least-privilege")
    st = replace(st, mysql=replace(st.mysql, user="syncer", password="pw"))
    with Running(st) as run:
        own_db.execute(f"REPLACE INTO {DB}.data VALUES (4, 5)")
        wait_caught_up(own_db, redis_client, run.service.positions.key)
    assert redis_client.get("data:4") == b'{"id":4,"volume":5}'


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--binlog-format=STATEMENT",), "binlog_format is STATEMENT; expected ROW: SET GLOBAL binlog_format=ROW"),
        (("--binlog-row-metadata=MINIMAL",), "binlog_row_metadata is MINIMAL; expected FULL"),
        (("--binlog-row-image=MINIMAL",), "binlog_row_image is MINIMAL; expected FULL"),
        (("--skip-log-bin",), "binary logging is off; start the server with log_bin"),
    ],
)
def test_server_setting_checks(own_db: MariaDBServer, redis_server: RedisServer, args: tuple[str, ...], expected: str) -> None:
    _restart_with(own_db, *args)
    code, err = _cli(own_db, redis_server, "--start", "current")
    assert code == 3 and expected in err, err
    assert err.count("\n") == 0
