"""sync-verify --repair on a table synced by sync-binlog: the versions it writes must let sync-binlog's
later changes land (--versions binlog); the default UUID_SHORT() versions make them STALE.

Real servers: MariaDB (ROW binlog, GTIDs), Redis, sync-binlog --sink redis in a thread, sync-verify.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.keys import version_key
from sync.position import ROW_MASK, gtid_version, parse_mariadb_gtids
from sync.testing.servers import MariaDBServer, RedisServer

from .binlog_rig import Running, binlog_pos, diff, mysql_state, redis_state, settings, wait_caught_up
from .test_snapshot_binlog import Writer, make_data

pytestmark = pytest.mark.timeout(180)

VERIFY_BIN = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sync-verify")
ROWS = [(i, i * 10) for i in range(1, 7)]


def verify(server: MariaDBServer, database: str, r: RedisServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{server.port}/{database}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
    return subprocess.run([VERIFY_BIN, "--table", "data", "--recheck-delay", "0", *args], env=env,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("versions", ["binlog", "trigger"])
def test_repair_versions_on_a_binlog_synced_table(mariadb: MariaDBServer, db: Any, redis_server: RedisServer,
                                                 redis_client: Any, versions: str) -> None:
    database = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT) ENGINE=InnoDB")
    st = settings(mariadb, database, ["data"], redis_server, start="current", name=f"verify-{versions}")
    with Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, %s)", ROWS)
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert diff(mysql_state(mariadb, database, "data"), redis_state(redis_client, "data")) == {}

        # Redis differs from MySQL (as after a RENAME that brought other rows): a key gone, a value
        # changed, a key of a row that does not exist
        redis_client.delete("data:1")
        redis_client.set("data:2", b'{"id":2,"volume":-1}')
        redis_client.set("data:99", b'{"id":99,"volume":-1}')
        p = verify(mariadb, database, redis_server, "--repair", "--json", *(
            ("--versions", "binlog") if versions == "binlog" else ()))
        assert p.returncode == 0, (p.stdout, p.stderr)
        report = orjson.loads(p.stdout)
        assert (report["missing"], report["different"], report["extra"]) == (0, 0, 0), report
        assert (report["repaired"], report["deleted"]) == (2, 1), report
        assert redis_client.get("data:1") == b'{"id":1,"volume":10}' and redis_client.get("data:99") is None

        repaired_at = int(redis_client.get(version_key("data:1")))
        seq = parse_mariadb_gtids(binlog_pos(mariadb))[0][1]  # the position when the repair ran (no write since)
        if versions == "binlog":
            assert repaired_at == gtid_version(seq, ROW_MASK), repaired_at
        else:  # UUID_SHORT(): beyond the binlog versions of the next million transactions
            assert repaired_at > gtid_version(seq + 10**6), repaired_at

        # sync-binlog's later changes of the repaired rows (and of the deleted key's row)
        cur.execute("UPDATE data SET volume = volume + 1 WHERE id IN (1, 2)")
        cur.execute("INSERT INTO data VALUES (99, 990)")
        cur.execute("UPDATE data SET volume = 31 WHERE id = 3")  # an untouched row: always lands
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert redis_client.get("data:3") == b'{"id":3,"volume":31}'
        differ = diff(mysql_state(mariadb, database, "data"), redis_state(redis_client, "data"))

    p = verify(mariadb, database, redis_server, "--json")
    report = orjson.loads(p.stdout)
    if versions == "binlog":
        assert differ == {}
        assert p.returncode == 0 and report["equal"], (report, p.stderr)
    else:
        # why --versions binlog exists: every repaired row (and the fenced delete) refuses the later
        # binlog changes as STALE, silently
        assert differ == {"data:1": (b'{"id":1,"volume":11}', b'{"id":1,"volume":10}'),
                          "data:2": (b'{"id":2,"volume":21}', b'{"id":2,"volume":20}'),
                          "data:99": (b'{"id":99,"volume":990}', None)}, differ
        assert p.returncode == 1 and (report["missing"], report["different"]) == (1, 2), report


def test_versions_binlog_needs_a_binlog(tmp_path: Path, redis_server: RedisServer) -> None:
    server = MariaDBServer(tmp_path / "nobinlog", extra_args=["--skip-log-bin"])
    server.start()
    try:
        server.execute("CREATE DATABASE d", "CREATE TABLE d.data (id INT PRIMARY KEY, volume INT)",
                       "INSERT INTO d.data VALUES (1, 10)")
        p = verify(server, "d", redis_server, "--repair", "--versions", "binlog")
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert p.stderr == (b"sync-verify: error: --versions binlog: log_bin is OFF on this server (no binlog "
                            b"positions); expected log_bin=ON, or --versions trigger\n"), p.stderr
        # the default needs no binlog: the repair works
        p = verify(server, "d", redis_server, "--repair")
        assert p.returncode == 0, (p.stdout, p.stderr)
    finally:
        server.stop()


def test_repair_racing_live_binlog_changes_converges(mariadb: MariaDBServer, db: Any, redis_server: RedisServer,
                                                     redis_client: Any) -> None:
    """A writer commits updates, inserts and deletes while sync-binlog applies them and the repair runs:
    whichever reaches Redis first, a change after the repair's read wins, and Redis ends equal to MySQL."""
    rows = 2000
    make_data(db, rows)
    database = db.db_name
    st = settings(mariadb, database, ["data"], redis_server, start="current", name="verify-race")
    with Running(st) as run:
        with db.cursor() as cur:
            cur.execute("UPDATE data SET volume = volume + 1")  # every row once through sync-binlog
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        # a third of the keys lost, a third wrong, keys of rows that do not exist
        pipe = redis_client.pipeline(transaction=False)
        for i in range(1, rows + 1):
            if i % 3 == 0:
                pipe.delete(f"data:{i}")
            elif i % 3 == 1:
                pipe.set(f"data:{i}", b'{"id":0}')
        for i in range(rows + 300, rows + 400):
            pipe.set(f"data:{i}", b'{"id":0}')
        pipe.execute()
        with Writer(mariadb, database, rows) as writer:
            p = verify(mariadb, database, redis_server, "--repair", "--versions", "binlog", "--chunk", "100", "--json")
            writer.stop()
        assert writer.n > 0
        assert p.returncode in (0, 1), (p.stdout, p.stderr)  # 1: a difference the writer made after its pass
        report = orjson.loads(p.stdout)
        assert report["repaired"] > 0 and report["deleted"] >= 100, report  # rows the writer did not fix first
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert diff(mysql_state(mariadb, database, "data"), redis_state(redis_client, "data")) == {}
    p = verify(mariadb, database, redis_server)
    assert p.returncode == 0, (p.stdout, p.stderr)
