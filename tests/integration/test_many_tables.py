"""sync-snapshot / sync-verify over several tables (--table a,b, repeated --table, --all-tables)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.capture.spool import spool_ddl
from sync.keys import binlog_position_key
from sync.tables import TableSpec
from sync.testing.servers import MariaDBServer, RedisServer
from tests.integration.test_snapshot import expected_state, redis_state

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"


def make_tables(db: Any) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, name VARCHAR(64))")
        cur.execute("INSERT INTO data SELECT seq, CONCAT('row-', seq) FROM seq_1_to_300")
        cur.execute("CREATE TABLE users (email VARCHAR(64) NOT NULL, org INT NOT NULL, age INT, "
                    "UNIQUE KEY who (org, email))")
        cur.execute("INSERT INTO users SELECT CONCAT('u', seq, '@x'), seq % 3, seq FROM seq_1_to_120")
        cur.execute("CREATE TABLE nokey (a INT, b INT)")
        cur.execute("INSERT INTO nokey VALUES (1, 2)")
        cur.execute("CREATE VIEW data_view AS SELECT id FROM data")
        cur.execute(spool_ddl(db.db_name))


def run(tool: str, mariadb: MariaDBServer, db: Any, r: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
    extra = ["--recheck-delay", "0"] if tool == "sync-verify" else []
    return subprocess.run([str(BIN / tool), "--progress", "log", *extra, *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_all_tables_snapshot_then_verify(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                         redis_client: Any) -> None:
    make_tables(db)
    p = run("sync-snapshot", mariadb, db, redis_server, "--all-tables")
    assert p.returncode == 0, p.stderr
    for line in (f"skipped {db.db_name}.nokey: neither a primary key nor a unique key over NOT NULL columns",
                 f"skipped {db.db_name}.data_view: a view",
                 f"skipped {db.db_name}.gearsync_spool: gearsync's own spool table",
                 f"summary of {db.db_name}: 2 tables, 420 rows copied", "  data: 300 rows copied",
                 "  users: 120 rows copied"):
        assert line in p.stderr, p.stderr
    assert redis_state(redis_client, "data:*", "json") == expected_state(db, "data", TableSpec("data"))
    assert redis_state(redis_client, "users:*", "json") == expected_state(db, "users", TableSpec("users"))
    assert not redis_state(redis_client, "nokey*", "json")

    p = run("sync-verify", mariadb, db, redis_server, "--all-tables")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"summary of {db.db_name}: 2 tables, all equal" in p.stdout
    assert "  total: 420 rows, 0 missing, 0 different, 0 extra" in p.stdout

    key = next(iter(redis_state(redis_client, "users:*", "json")))
    redis_client.set(key, b'{"changed":1}')
    redis_client.delete("data:7")
    redis_client.set("data:9999", b"{}")
    p = run("sync-verify", mariadb, db, redis_server, "--table", "data", "--table", "users", "--json")
    assert p.returncode == 1, p.stderr
    doc = orjson.loads(p.stdout)
    assert doc["equal"] is False
    assert [(t["table"], t["missing"], t["different"], t["extra"]) for t in doc["tables"]] == [
        (f"{db.db_name}.data", 1, 0, 1), (f"{db.db_name}.users", 0, 1, 0)]
    assert doc["totals"]["rows"] == 420 and doc["totals"]["missing"] == 1 and doc["totals"]["different"] == 1
    p = run("sync-verify", mariadb, db, redis_server, "--table", "users,data")
    assert p.returncode == 1 and f"summary of {db.db_name}: 2 tables, 2 differ (users, data)" in p.stdout, p.stdout
    assert "  users: 120 rows, 0 missing, 1 different, 0 extra" in p.stdout
    p = run("sync-verify", mariadb, db, redis_server, "--all-tables", "--repair")
    assert "repaired 2 rows, deleted 1 keys" in p.stdout, p.stdout
    assert run("sync-verify", mariadb, db, redis_server, "--all-tables").returncode == 0


def test_config_gives_each_table_its_settings(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                              redis_client: Any, tmp_path: Path) -> None:
    make_tables(db)
    cfg = tmp_path / "gearsync.toml"
    cfg.write_text('[tables.users]\nkey_template = "u:{table}:{pk}"\nformat = "hash"\n')
    p = run("sync-snapshot", mariadb, db, redis_server, "--table", "data,users", "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    users = TableSpec("users", "u:{table}:{pk}", "hash")
    assert redis_state(redis_client, "u:users:*", "hash") == expected_state(db, "users", users)
    assert redis_state(redis_client, "data:*", "json") == expected_state(db, "data", TableSpec("data"))
    assert run("sync-verify", mariadb, db, redis_server, "--all-tables", "--config", str(cfg)).returncode == 0
    # An option applies to every table: users in json under the default template is then missing.
    p = run("sync-verify", mariadb, db, redis_server, "--table", "data,users", "--format", "json", "--no-extra")
    assert p.returncode == 1 and "  users: 120 rows, 120 missing" in p.stdout, p.stdout


def test_rerun_skips_tables_the_interrupted_run_finished(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                         redis_client: Any) -> None:
    make_tables(db)
    assert run("sync-snapshot", mariadb, db, redis_server, "--table", "data,users").returncode == 0
    # As an interrupted run of the list leaves it: data done, users stopped after its first rows.
    redis_client.hset("gearsync:snapshot:users", "state", "running")
    redis_client.delete("data:1")
    p = run("sync-snapshot", mariadb, db, redis_server, "--table", "data,users")
    assert p.returncode == 0, p.stderr
    assert "data: already copied by the interrupted run; skipped" in p.stderr
    assert "  data: copied by the interrupted run" in p.stderr
    assert redis_client.get("data:1") is None          # data really was not copied again
    p = run("sync-snapshot", mariadb, db, redis_server, "--table", "data,users")
    assert "already copied" not in p.stderr and redis_client.get("data:1") is not None


def test_binlog_versions_store_the_earliest_point_for_the_stream(db: Any, mariadb: MariaDBServer,
                                                                  redis_server: RedisServer, redis_client: Any) -> None:
    from sync.capture.binlog.service import stream_name
    from sync.settings import mysql_settings

    make_tables(db)
    p = run("sync-snapshot", mariadb, db, redis_server, "--table", "data,users", "--versions", "binlog")
    assert p.returncode == 0, p.stderr
    points = [line.split("GTID ")[1].split()[0] for line in p.stderr.splitlines() if "binlog point of" in line]
    assert len(points) == 2
    my = mysql_settings(f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}", env={})
    saved = orjson.loads(redis_client.get(binlog_position_key(stream_name(my, db.db_name, ["data", "users"]))))
    assert saved["gtid"] == points[0], p.stderr
    assert "next: sync-binlog --table data,users" in p.stderr


@pytest.mark.parametrize("args, message", [
    (("--table", "data", "--all-tables"), "--all-tables with --table data; expected one of them"),
    ((), "--table: none given; expected --table NAME[,NAME…] or --all-tables"),
    (("--table", "data,users", "--columns", "name"), "--columns with several tables"),
    (("--table", "a.data,b.users"), "expected tables of one database"),
    (("--table", "data,users", "--key-template", "k:{pk}"), "the rows of several tables would share keys"),
    (("--table", "data,nokey"), "nokey' has neither a primary key"),
])
def test_bad_table_lists(db: Any, mariadb: MariaDBServer, redis_server: RedisServer, args: tuple[str, ...],
                         message: str) -> None:
    make_tables(db)
    for tool in ("sync-snapshot", "sync-verify"):
        p = run(tool, mariadb, db, redis_server, *args)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (tool, p.stderr)
