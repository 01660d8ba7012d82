"""Capture triggers end to end: real MariaDB (gearsync UDFs) → gearmand → sync-worker → Redis.

"Redis equals MySQL" is computed from MySQL's committed rows with sync.rows.expected (the one
canonical mapping), never hand-written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pymysql
import pytest

from sync.rows.schema import load_table, quote_ident
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .triggers_rig import (
    classic_setup,
    classic_worker_thread,
    install,
    redis_state,
    spool_count,
    wait_converged,
    worker_thread,
)
from .udf_fixtures import grab_all, point_at, udf_installed  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

ALL_TYPES = """
CREATE TABLE {name} (
  tenant VARCHAR(20) CHARACTER SET utf8mb4 NOT NULL,
  id BIGINT UNSIGNED NOT NULL,
  i INT, d DECIMAL(30,10), f FLOAT, g DOUBLE, dt DATE, tm TIME, dtm DATETIME(6), ts TIMESTAMP NULL,
  s VARCHAR(100) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4, bl BLOB, js JSON,
  en ENUM('red','green','blue'), st SET('a','b','c'), bt BIT(12), l1 VARCHAR(20) CHARACTER SET latin1,
  PRIMARY KEY (tenant, id)
) DEFAULT CHARSET=utf8mb4
"""

ROWS = [
    ("acme", 1, 1, "12345678901234567890.0123456789", 0.1, 2.5, "2024-02-29", "-838:59:59", "2024-01-02 03:04:05.123456",
     "2024-06-01 12:00:00", "héllo 😀", "tab\there\nnew \"q\" \\ ", b"\x00\xff\xfe binary", '{"a": [1, 2]}',
     "green", "a,c", 0b101010101010, "café"),
    ("acme", 18446744073709551615, -2147483648, "-0.0000000001", -1.25e-5, 1.0e300, "1000-01-01", "00:00:00",
     "9999-12-31 23:59:59.999999", "2038-01-19 03:14:07", "", "", b"", "null", "red", "", 0, ""),
    ("b:c", 7, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None),
]
COLS = "tenant, id, i, d, f, g, dt, tm, dtm, ts, s, tx, bl, js, en, st, bt, l1"


@pytest.fixture
def gm(udf_installed: MariaDBServer, gearmand: GearmanServer, db) -> GearmanServer:  # noqa: F811
    point_at(db, gearmand)
    return gearmand


def data_table(db, rows: int = 0, name: str = "data") -> None:
    with db.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, volume INT, name VARCHAR(50) CHARACTER SET utf8mb4) "
                    "ENGINE=InnoDB")
        if rows:
            cur.execute(f"INSERT INTO {name} SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_{rows}")


def test_data_insert_update_delete(mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer, redis_client) -> None:
    data_table(db)
    result = subprocess.run(
        [str(BIN / "sync-triggers"), "install", "--table", "data",
         "--mysql-url", f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"],
        capture_output=True, text=True, env={**os.environ, "GEARSYNC_MYSQL_PASSWORD": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "gearsync_data_ai, gearsync_data_au, gearsync_data_ad" in result.stdout
    schema = load_table(db, db.db_name, "data")
    with worker_thread(gm, redis_server, "data"), db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, %s, %s)", [(i, i * 10, f"näme {i} 😀") for i in range(1, 51)])
        cur.execute("UPDATE data SET volume = volume + 1 WHERE id <= 20")
        cur.execute("UPDATE data SET name = NULL WHERE id = 3")
        cur.execute("DELETE FROM data WHERE id > 40")
        assert wait_converged(mariadb, schema, redis_client) == {}
        assert orjson.loads(redis_client.get("data:3")) == {"id": 3, "volume": 31, "name": None}
        assert redis_client.get("data:41") is None
    assert spool_count(db) == 0


def test_update_that_changes_nothing_synced_sends_nothing(gm: GearmanServer, db) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci, "
                    "b BLOB, c FLOAT, unsynced INT)")
        cur.execute("INSERT INTO t VALUES (1, 'abc', 'x', 1.5, 0), (2, NULL, NULL, NULL, 0)")
    install(db, "t", ["a", "b", "c"])
    with db.cursor() as cur:
        cur.execute("UPDATE t SET a = 'abc', b = 'x', c = 1.5 WHERE id = 1")  # same values
        cur.execute("UPDATE t SET unsynced = unsynced + 1")              # not synced
        cur.execute("UPDATE t SET a = NULL WHERE id = 2")                # NULL <=> NULL
        assert grab_all(gm, "gearsync.t", timeout_s=0.5) == []
        cur.execute("UPDATE t SET a = 'ABC' WHERE id = 1")              # equal under _ci, still a change
        cur.execute("UPDATE t SET a = 'ABC ' WHERE id = 1")             # equal under PAD SPACE, still a change
        cur.execute("UPDATE t SET b = NULL WHERE id = 1")
    jobs = grab_all(gm, "gearsync.t", expect=3)
    rows = [orjson.loads(j.workload)["row"] for j in jobs]
    assert [(r["a"], r["b"]) for r in rows] == [("ABC", "x"), ("ABC ", "x"), ("ABC ", None)]
    assert all("unsynced" not in r for r in rows)


def test_update_changing_the_key_moves_the_row(mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer,
                                               redis_client) -> None:
    data_table(db, rows=5, name="mv")
    schema = install(db, "mv")
    with db.cursor() as cur:
        cur.execute("UPDATE mv SET id = id + 100 WHERE id = 2")
        cur.execute("UPDATE mv SET id = 200, volume = 7 WHERE id = 3")
    jobs = [orjson.loads(j.workload) for j in grab_all(gm, "gearsync.mv", expect=4)]
    assert [(j["op"], j["pk"]) for j in jobs] == [
        ("delete", {"id": 2}), ("update", {"id": 102}), ("delete", {"id": 3}), ("update", {"id": 200})]
    assert jobs[0]["version"] < jobs[1]["version"] < jobs[2]["version"] < jobs[3]["version"]
    with db.cursor() as cur:  # once more, now through the worker
        cur.execute("UPDATE mv SET volume = volume")  # nothing
        cur.execute("UPDATE mv SET volume = volume + 1")
        with worker_thread(gm, redis_server, "mv"):
            cur.execute("UPDATE mv SET id = id * 10")
            assert wait_converged(mariadb, schema, redis_client) == {}
    assert sorted(redis_state(redis_client, TableSpec("mv"))) == ["mv:10", "mv:1020", "mv:2000", "mv:40", "mv:50"]


@pytest.mark.parametrize("fmt", ["json", "hash"])
def test_all_types_composite_key(mariadb: MariaDBServer, fmt: str, gm: GearmanServer, db, redis_server: RedisServer, redis_client) -> None:
    with db.cursor() as cur:
        cur.execute(ALL_TYPES.format(name="typed"))
    schema = install(db, "typed")
    spec = TableSpec("typed", format=fmt)
    with worker_thread(gm, redis_server, "typed", fmt=fmt), db.cursor() as cur:
        cur.executemany(f"INSERT INTO typed ({COLS}) VALUES ({', '.join(['%s'] * 18)})", ROWS)
        cur.execute("UPDATE typed SET s = 'changed ✓', bl = UNHEX('C3'), d = d * 2, bt = b'1', en = NULL "
                    "WHERE id = 1")
        cur.execute("UPDATE typed SET tenant = 'moved' WHERE id = 7")
        cur.execute("INSERT INTO typed (tenant, id) VALUES ('gone', 1)")
        cur.execute("DELETE FROM typed WHERE tenant = 'gone'")
        assert wait_converged(mariadb, schema, redis_client, spec) == {}
    state = redis_state(redis_client, spec)
    assert len(state) == 3 and "typed:moved:7" in state and "typed:b\\:c:7" not in state


def test_integral_floats(mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer, redis_client) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE fl (id INT PRIMARY KEY, f FLOAT, g DOUBLE)")
    schema = install(db, "fl")
    with worker_thread(gm, redis_server, "fl"), db.cursor() as cur:
        cur.execute("INSERT INTO fl VALUES (1, 3.0, -2.0), (2, 0, 1e16)")
        assert wait_converged(mariadb, schema, redis_client, timeout_s=3) == {}


HOSTILE_TABLE = "we`ird 'tab;le\"--*/ Größe"
HOSTILE_COLS = ["i`d", "it's", 'dq"x', "sp ace", "semi;colon", "Größe名前", "select", "*/", "--", "json_x", "a\\b",
                "x' OR 1=1 --"]


def test_hostile_names_end_to_end(mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer, redis_client) -> None:
    cols = ", ".join(f"{quote_ident(c)} VARCHAR(40) CHARACTER SET utf8mb4" for c in HOSTILE_COLS[1:])
    with db.cursor() as cur:
        cur.execute("CREATE TABLE canary (id INT PRIMARY KEY)")
        cur.execute(f"CREATE TABLE {quote_ident(HOSTILE_TABLE)} ({quote_ident(HOSTILE_COLS[0])} VARCHAR(30) "
                    f"CHARACTER SET utf8mb4 PRIMARY KEY, {cols})")
    schema = install(db, HOSTILE_TABLE)  # default function 'gearsync.<table>', spaces and all
    with db.cursor() as cur:
        cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
                    "ORDER BY TRIGGER_NAME", (db.db_name,))
        names = [r[0] for r in cur.fetchall()]
    assert names == sorted(f"gearsync_{HOSTILE_TABLE}_{s}" for s in ("ad", "ai", "au"))
    with worker_thread(gm, redis_server, HOSTILE_TABLE), db.cursor() as cur:
        placeholders = ", ".join(["%s"] * len(HOSTILE_COLS))
        collist = ", ".join(quote_ident(c) for c in HOSTILE_COLS)
        cur.execute(f"INSERT INTO {quote_ident(HOSTILE_TABLE)} ({collist}) VALUES ({placeholders})",
                    ["k:1'; DROP TABLE canary; --", *[f"v{i} `'\"\\;" for i in range(1, len(HOSTILE_COLS))]])
        cur.execute(f"INSERT INTO {quote_ident(HOSTILE_TABLE)} ({collist}) VALUES ({placeholders})",
                    ["{\"json\": 1}", *(['{"a":1}'] * (len(HOSTILE_COLS) - 1))])
        cur.execute(f"UPDATE {quote_ident(HOSTILE_TABLE)} SET {quote_ident('json_x')} = '[1,2]', "
                    f"{quote_ident('select')} = 'sel'")
        assert wait_converged(mariadb, schema, redis_client) == {}
        cur.execute("SELECT COUNT(*) FROM canary")
    state = redis_state(redis_client, TableSpec(HOSTILE_TABLE))
    assert len(state) == 2
    row = orjson.loads(state[HOSTILE_TABLE.replace(":", "\\:") + ":k\\:1'; DROP TABLE canary; --"])
    assert sorted(row) == sorted(HOSTILE_COLS)  # every name arrived byte-exact, json_x too
    assert row["json_x"] == "[1,2]" and row["select"] == "sel"


def test_table_without_usable_key_and_unique_key_table(mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer,
                                                       redis_client) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE nokey (a INT, b INT, UNIQUE KEY (a))")  # unique but nullable
        cur.execute("CREATE TABLE ukey (code VARCHAR(10) CHARACTER SET utf8mb4 NOT NULL, v INT, UNIQUE KEY u (code))")
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"}
    result = subprocess.run([str(BIN / "sync-triggers"), "install", "--table", "nokey"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"sync-triggers: error: table {db.db_name}.'nokey' has neither a primary key nor a unique key over "
        "NOT NULL columns; expected one, so each row maps to one Redis key")
    schema = install(db, "ukey")
    assert schema.key == ("code",)
    with worker_thread(gm, redis_server, "ukey"), db.cursor() as cur:
        cur.execute("INSERT INTO ukey VALUES ('a', 1), ('b', 2)")
        cur.execute("UPDATE ukey SET code = 'c' WHERE code = 'a'")
        assert wait_converged(mariadb, schema, redis_client) == {}
    assert sorted(redis_state(redis_client, TableSpec("ukey"))) == ["ukey:b", "ukey:c"]


def test_reinstall_coexists_with_user_triggers_and_follows_them(mariadb: MariaDBServer, gm: GearmanServer, db) -> None:
    data_table(db, rows=3, name="ri")
    with db.cursor() as cur:
        cur.execute("CREATE TABLE audit (n INT)")
        cur.execute("CREATE TRIGGER user_au AFTER UPDATE ON ri FOR EACH ROW INSERT INTO audit VALUES (NEW.id)")
    install(db, "ri")
    with db.cursor() as cur:
        cur.execute("CREATE TRIGGER user_au2 AFTER UPDATE ON ri FOR EACH ROW INSERT INTO audit VALUES (-NEW.id)")
    install(db, "ri", on_enqueue_failure="fail")  # re-run: moves after user_au2
    with db.cursor() as cur:
        cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s "
                    "AND EVENT_MANIPULATION='UPDATE' ORDER BY ACTION_ORDER", (db.db_name,))
        assert [r[0] for r in cur.fetchall()] == ["user_au", "user_au2", "gearsync_ri_au"]
        cur.execute("UPDATE ri SET volume = 9 WHERE id = 1")
        cur.execute("SELECT COUNT(*) FROM audit")
        assert cur.fetchone()[0] == 2
    assert len(grab_all(gm, "gearsync.ri", expect=1)) == 1
    result = subprocess.run([str(BIN / "sync-triggers"), "uninstall", "--table", "ri", "--mysql-url",
                             f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with db.cursor() as cur:
        cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s ORDER BY 1",
                    (db.db_name,))
        assert [r[0] for r in cur.fetchall()] == ["user_au", "user_au2"]


def test_show_writes_files_a_dba_can_apply(mariadb: MariaDBServer, gm: GearmanServer, db, tmp_path: Path) -> None:
    data_table(db, rows=2)
    url = f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"
    result = subprocess.run([str(BIN / "sync-triggers"), "show", "--table", "data", "--mode", "outbox",
                             "--output", str(tmp_path), "--mysql-url", url], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    script = tmp_path / "data.triggers.sql"
    for _ in range(2):  # re-runnable
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(mariadb.port), "-u", "root", db.db_name],
                       stdin=script.open("rb"), check=True, capture_output=True)
    with db.cursor() as cur:
        cur.execute("UPDATE data SET volume = 5")
    assert spool_count(db) == 2  # outbox: into the spool only
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(mariadb.port), "-u", "root", db.db_name],
                   stdin=(tmp_path / "data.uninstall.sql").open("rb"), check=True, capture_output=True)
    bad = subprocess.run([str(BIN / "sync-triggers"), "show", "--table", "data", "--columns", "volume,nope",
                          "--mysql-url", url], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'nope'" in bad.stderr


def test_fail_mode_refuses_the_write_when_gearmand_is_down(gm: GearmanServer, db) -> None:
    data_table(db, rows=3)
    install(db, "data", on_enqueue_failure="fail")
    # pipeline=0: gman_do_background returns only after gearmand's JOB_CREATED. With the default
    # pipeline=1 the first call on a mysqld thread after gearmand died can still return non-NULL
    # (the job waits in that thread's resend buffer, see the module notes in the report).
    point_at(db, gm, options="timeout_ms=100,do_timeout_ms=5000,retry_ms=1000,pipeline=0")
    with db.cursor() as cur:
        cur.execute("UPDATE data SET volume = 100 WHERE id = 1")
        gm.stop()
        with pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute("UPDATE data SET volume = 200 WHERE id = 1")
        assert info.value.args == (1644, "gearsync: change to data not queued: gearmand unreachable")
        cur.execute("SELECT volume FROM data WHERE id = 1")
        assert cur.fetchone()[0] == 100
    assert spool_count(db) == 0


def test_classic_recipe(mariadb: MariaDBServer, udf_installed: MariaDBServer, gearmand: GearmanServer, db,  # noqa: F811
                        redis_server: RedisServer, redis_client) -> None:
    point_at(db, gearmand)
    classic_setup(mariadb, db, rows=2)
    with classic_worker_thread(gearmand, redis_server), db.cursor() as cur:
        cur.execute("UPDATE data SET volume = volume + 5")
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and redis_client.get("2") is None:
            time.sleep(0.05)
    assert redis_client.get("1") == b'{"id":1,"volume":15}'
    assert redis_client.get("2") == b'{"id":2,"volume":25}'


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
