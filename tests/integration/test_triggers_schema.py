"""Schema changes on the trigger path (real MariaDB + gearsync UDFs + gearmand + Redis):
`sync-triggers alter` with writers running, `check`, many tables, the relay's trigger watcher."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest

from sync.rows.schema import load_table
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .triggers_rig import install, relay_thread, worker_thread
from .udf_fixtures import point_at, udf_installed  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"


@pytest.fixture
def gm(udf_installed: MariaDBServer, gearmand: GearmanServer, db) -> GearmanServer:  # noqa: F811
    point_at(db, gearmand)
    return gearmand


def cli(mariadb: MariaDBServer, db: Any, *args: str, prog: str = "sync-triggers") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *args, "--mysql-url", f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"],
        capture_output=True, text=True, env={**os.environ, "GEARSYNC_MYSQL_PASSWORD": ""}, timeout=300,
    )


def make_table(db: Any, name: str = "t", rows: int = 300) -> None:
    with db.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, v INT, w VARCHAR(20), u INT) ENGINE=InnoDB")
    fill(db, name, rows)


def fill(db: Any, name: str, rows: int) -> None:
    if rows:
        with db.cursor() as cur:
            cur.execute(f"INSERT INTO {name} SELECT seq, seq, CONCAT('w', seq), 0 FROM seq_1_to_{rows}")


class Writers:
    """Threads that insert, update and delete rows of `table` (columns id, v only) until stopped;
    every failed statement is kept."""

    def __init__(self, server: MariaDBServer, database: str, table: str, n: int = 2) -> None:
        self.server, self.database, self.table = server, database, table
        self.failures: list[str] = []
        self.statements = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        conn = self.server.connect(self.database)
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    k = rnd.randint(1, 400)
                    op = rnd.random()
                    sql = (f"INSERT INTO {self.table} (id, v) VALUES ({k}, {k}) ON DUPLICATE KEY UPDATE v = v + 1"
                           if op < 0.4 else f"UPDATE {self.table} SET v = v + 7 WHERE id = {k}"
                           if op < 0.8 else f"DELETE FROM {self.table} WHERE id = {k}")
                    try:
                        cur.execute(sql)
                    except pymysql.MySQLError as exc:
                        self.failures.append(f"{sql}: {exc}")
                    self.statements += 1
        finally:
            conn.close()

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        while self.statements < 20 and not self.failures:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def common_columns_match(mariadb: MariaDBServer, db: Any, redis_client: Any, table: str,
                         columns: tuple[str, ...], timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until every row's `columns` in Redis equal MySQL's (and no extra keys); returns the
    remaining differences. Fields of other columns are ignored (rows written before the ALTER
    keep the old shape until sync-verify --repair)."""
    deadline = time.monotonic() + timeout_s
    while True:
        conn = mariadb.connect(db.db_name, cursorclass=pymysql.cursors.DictCursor)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
                want = {f"{table}:{r['id']}": {c: r[c] for c in columns} for r in cur.fetchall()}
        finally:
            conn.close()
        have = {}
        for raw in redis_client.scan_iter(match=f"{table}:*", count=1000):
            value = redis_client.get(raw)
            if value is not None:   # deleted since the SCAN saw it
                have[raw.decode()] = {c: orjson.loads(value).get(c) for c in columns}
        diff = {k: (want.get(k), have.get(k)) for k in set(want) | set(have) if want.get(k) != have.get(k)}
        if not diff or time.monotonic() > deadline:
            return diff


def verify(mariadb: MariaDBServer, db: Any, redis_server: RedisServer, table: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(mariadb, db, "--table", table, "--redis-url", f"redis://{redis_server.host}:{redis_server.port}/0",
               "--recheck-delay", "0.2", *extra, prog="sync-verify")


@pytest.mark.parametrize(("spec", "common", "new_column"), [
    ("DROP COLUMN w", ("id", "v", "u"), None),
    ("ADD COLUMN z INT", ("id", "v", "w", "u"), "z"),
    ("MODIFY COLUMN w VARCHAR(40)", ("id", "v", "w", "u"), None),
    ("RENAME COLUMN w TO w2", ("id", "v", "u"), "w2"),
])
def test_alter_with_writers_running_fails_nothing_and_misses_nothing(
        mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer, redis_client,
        spec: str, common: tuple[str, ...], new_column: str | None) -> None:
    make_table(db, rows=0)
    install(db, "t")
    with worker_thread(gm, redis_server, "t"):
        fill(db, "t", 300)   # through the triggers: Redis starts equal
        with Writers(mariadb, db.db_name, "t") as writers:
            result = cli(mariadb, db, "alter", "--table", "t", spec)
            before = writers.statements
            while writers.statements < before + 20 and not writers.failures:
                time.sleep(0.01)   # some writes after the ALTER, through the new triggers
        assert result.returncode == 0, result.stderr
        assert "altered" in result.stdout
        assert writers.failures == []
        assert common_columns_match(mariadb, db, redis_client, "t", common) == {}
        if new_column:
            with db.cursor() as cur:
                cur.execute(f"UPDATE t SET {new_column} = 5 WHERE id = (SELECT MIN(id) FROM t)")
                cur.execute("SELECT MIN(id) FROM t")
                first = cur.fetchone()[0]
            assert _wait(lambda: orjson.loads(redis_client.get(f"t:{first}")).get(new_column) in (5, "5"))
        assert cli(mariadb, db, "check", "--table", "t").returncode == 0
        # Rows last written before the ALTER keep the old shape: the recipe's repair fixes them.
        assert verify(mariadb, db, redis_server, "t", "--repair").returncode in (0, 1)
        final = verify(mariadb, db, redis_server, "t")
        assert final.returncode == 0, final.stdout + final.stderr


def test_alter_that_mysql_rejects_leaves_the_triggers(mariadb: MariaDBServer, gm: GearmanServer, db) -> None:
    make_table(db, rows=3)
    install(db, "t")
    with db.cursor() as cur:
        cur.execute("SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s",
                    (db.db_name,))
        before = sorted(cur.fetchall())
    result = cli(mariadb, db, "alter", "--table", "t", "DROP COLUMN w, DROP COLUMN nope")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nope" in result.stderr and "as they were" in result.stderr
    with db.cursor() as cur:
        cur.execute("SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s",
                    (db.db_name,))
        assert sorted(cur.fetchall()) == before
        cur.execute("INSERT INTO t VALUES (10, 1, 'x', 0)")   # writes still work
    assert cli(mariadb, db, "check", "--table", "t").returncode == 0


def test_alter_bad_input(mariadb: MariaDBServer, gm: GearmanServer, db) -> None:
    make_table(db, rows=1)
    for args, words in [
        (("alter", "--table", "t"), "no ALTER specification"),
        (("alter", "--table", "t", "RENAME TO t2"), "renames the table"),
        (("alter", "--table", "t,u", "DROP COLUMN w"), "one table only"),
        (("alter", "--table", "t", "DROP COLUMN w"), "no gearsync triggers"),   # not installed
        (("install", "--table", "t", "DROP COLUMN w"), "only for alter"),
    ]:
        result = cli(mariadb, db, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_check_names_each_stale_or_missing_trigger(mariadb: MariaDBServer, gm: GearmanServer, db) -> None:
    make_table(db, rows=3)
    make_table(db, "o", rows=3)
    result = cli(mariadb, db, "install", "--table", "t", "--table", "o")
    assert result.returncode == 0, result.stderr
    assert "installed 2, skipped 0" in result.stdout
    ok = cli(mariadb, db, "check", "--all-tables")
    assert ok.returncode == 0 and f"{db.db_name}.t: ok" in ok.stdout and f"{db.db_name}.o: ok" in ok.stdout
    with db.cursor() as cur:
        cur.execute("ALTER TABLE t ADD COLUMN z INT")
        cur.execute("DROP TRIGGER gearsync_o_ad")
    stale = cli(mariadb, db, "check", "--all-tables")
    assert stale.returncode == 1
    assert "gearsync_t_ai: column z added" in stale.stdout
    assert "gearsync_o_ad missing" in stale.stdout
    assert "stale 2" in stale.stdout
    # A table swapped by RENAME (pt-online-schema-change, gh-ost): the triggers stay on the old one.
    with db.cursor() as cur:
        cur.execute("CREATE TABLE o_new LIKE o")
        cur.execute("RENAME TABLE o TO o_old, o_new TO o")
    swapped = cli(mariadb, db, "check", "--table", "o")
    assert swapped.returncode == 1 and "gearsync_o_ai is on table o_old, not o" in swapped.stdout
    assert cli(mariadb, db, "install", "--table", "o").returncode == 0   # moves them over
    assert cli(mariadb, db, "check", "--table", "o").returncode == 0
    # --columns are remembered: a new column is not "missing" from a table synced by choice.
    assert cli(mariadb, db, "install", "--table", "t", "--columns", "v").returncode == 0
    with db.cursor() as cur:
        cur.execute("ALTER TABLE t ADD COLUMN y INT")
    assert cli(mariadb, db, "check", "--table", "t").returncode == 0
    never = cli(mariadb, db, "check", "--table", "o_old")
    assert never.returncode == 1 and "no gearsync triggers" in never.stdout


def test_check_bad_input_and_unreachable(mariadb: MariaDBServer, db) -> None:
    bad = cli(mariadb, db, "check", "--table", "t", "--all-tables")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    gone = subprocess.run([str(BIN / "sync-triggers"), "check", "--table", "t", "--mysql-url", "mysql://root@127.0.0.1:1/x"],
                          capture_output=True, text=True, env={**os.environ, "GEARSYNC_MYSQL_PASSWORD": ""})
    assert gone.returncode == 3 and gone.stderr.count("\n") == 1


def test_all_tables_installs_what_has_a_key_and_says_why_not(mariadb: MariaDBServer, gm: GearmanServer, db) -> None:
    make_table(db, "a", rows=1)
    make_table(db, "b", rows=1)
    with db.cursor() as cur:
        cur.execute("CREATE TABLE nokey (x INT)")
        cur.execute("CREATE TABLE uk (x INT NOT NULL, UNIQUE KEY (x))")
    result = cli(mariadb, db, "install", "--all-tables")
    assert result.returncode == 0, result.stderr
    assert f"skipped {db.db_name}.nokey: neither a primary key nor a unique key over NOT NULL columns" in result.stdout
    assert f"skipped {db.db_name}.gearsync_spool: gearsync's own spool" not in result.stdout  # created by this run
    assert result.stdout.strip().splitlines()[-1] == "installed 3, skipped 1"
    assert cli(mariadb, db, "check", "--all-tables").stdout.strip().splitlines()[-1] == "checked 3, ok 3, stale 0"
    again = cli(mariadb, db, "install", "--all-tables")
    assert f"skipped {db.db_name}.gearsync_spool: gearsync's own spool" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == "installed 3, skipped 2"
    gone = cli(mariadb, db, "uninstall", "--all-tables")
    assert gone.returncode == 0 and "uninstalled 3" in gone.stdout
    with db.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s", (db.db_name,))
        assert cur.fetchone()[0] == 0


def _wait(predicate: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_relay_watcher_reinstalls_stale_triggers(mariadb: MariaDBServer, gm: GearmanServer, db) -> None:
    make_table(db, rows=3)
    make_table(db, "keep", rows=3)
    install(db, "t", mode="outbox")
    install(db, "keep")
    with relay_thread(mariadb, db.db_name, gm, watch_interval_s=0.2) as relay:
        with db.cursor() as cur:
            cur.execute("ALTER TABLE t ADD COLUMN z INT")
        assert _wait(lambda: cli(mariadb, db, "check", "--table", "t").returncode == 0)
        # pt-online-schema-change / gh-ost: swap by RENAME, then drop the old table.
        with db.cursor() as cur:
            cur.execute("CREATE TABLE t_new LIKE t")
            cur.execute("INSERT INTO t_new SELECT * FROM t")
            cur.execute("RENAME TABLE t TO t_old, t_new TO t")
            cur.execute("DROP TABLE t_old")
        assert _wait(lambda: cli(mariadb, db, "check", "--table", "t").returncode == 0)
        # The re-installed trigger keeps the options it was installed with (outbox).
        with db.cursor() as cur:
            cur.execute("UPDATE t SET z = 1 WHERE id = 1")
            cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA=%s "
                        "AND EVENT_OBJECT_TABLE='t' AND ACTION_STATEMENT LIKE '%%gman_do_background%%'", (db.db_name,))
            assert cur.fetchall() == ()
        # Uninstalled on purpose: left alone.
        assert cli(mariadb, db, "uninstall", "--table", "keep").returncode == 0
        reinstalled = relay.obj.stats.reinstalled
        time.sleep(1.0)   # several watcher rounds (a wait for a non-event, not a timing assertion)
        assert cli(mariadb, db, "check", "--table", "keep").returncode == 1
        assert relay.obj.stats.reinstalled == reinstalled
    assert load_table(db, db.db_name, "t").column("z")


def test_status_shows_the_triggers_per_table(mariadb: MariaDBServer, gm: GearmanServer, db, redis_server: RedisServer) -> None:
    make_table(db, rows=1)
    make_table(db, "o", rows=1)
    assert cli(mariadb, db, "install", "--table", "t,o").returncode == 0
    with db.cursor() as cur:
        cur.execute("ALTER TABLE o ADD COLUMN z INT")
    args = ("--table", "t", "--servers", gm.address, "--redis-url", f"redis://{redis_server.host}:{redis_server.port}/0")
    state = orjson.loads(cli(mariadb, db, *args, "--json", prog="sync-status").stdout)
    assert state["tables"]["t"]["triggers"] == "ok"
    assert state["triggers"][f"{db.db_name}.o"].startswith("stale: gearsync_o_ai: column z added")
    text = cli(mariadb, db, *args, prog="sync-status")
    assert text.returncode == 0, text.stderr
    assert f"triggers {db.db_name}.t: ok" in text.stdout
    assert f"triggers {db.db_name}.o: stale: gearsync_o_ai: column z added" in text.stdout
