"""Shaping end to end through the commands a user runs, on real MariaDB + Redis (issue 17):
sync-snapshot builds shaped rows and their indexes from a config file, sync-verify finds index and
filter differences (missing, extra, wrong score) and --repair fixes them; a bad shaping key in the
config file is one line and exit 2 for every command that reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.shape import build_shape, score_of
from sync.testing.servers import MariaDBServer, RedisServer

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

SHAPING = """
[tables.items]
exclude = ["secret"]
rename = { price = "cost" }
filter = "active = 1 AND price > 0"
[[tables.items.indexes]]
type = "zset"
column = "price"
[[tables.items.indexes]]
type = "set"
column = "store_id"
[tables.items.stream]
maxlen = 1000
"""


def write_config(tmp_path: Path, mariadb: MariaDBServer, db: Any, r: RedisServer, tables: str = SHAPING) -> Path:
    path = tmp_path / "gearsync.toml"
    path.write_text(f'[mysql]\nurl = "mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"\n'
                    f'[redis]\nurl = "redis://127.0.0.1:{r.port}/0"\n' + tables)
    path.chmod(0o600)
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120, cwd=REPO)


def make_items(db: Any, n: int) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, price DECIMAL(10,2), store_id INT, active TINYINT, "
                    "secret VARCHAR(20))")
        if n:
            cur.execute(f"INSERT INTO items SELECT seq, IF(seq % 7 = 0, NULL, CAST(seq % 50 AS SIGNED) - 5 + 0.25), "
                        f"IF(seq % 11 = 0, NULL, seq % 4), seq % 5 != 0, 'pw' FROM seq_1_to_{n}")


def implied(db: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, set[str]]]:
    """Rows, zset and sets as MySQL implies them (computed here, from the rules in docs/shaping.md)."""
    with db.cursor() as cur:
        cur.execute("SELECT id, price, store_id, active FROM items WHERE active = 1 AND price > 0")
        got = cur.fetchall()
    rows = {f"items:{i}": {"id": i, "cost": f"{p:.2f}", "store_id": s, "active": 1} for i, p, s, _ in got}
    zset = {f"items:{i}": float(p) for i, p, _, _ in got}
    sets: dict[str, set[str]] = {}
    for i, _, s, _ in got:
        if s is not None:
            sets.setdefault(f"items:store_id:{s}", set()).add(f"items:{i}")
    return rows, zset, sets


def held(client: Any) -> tuple[dict[str, Any], dict[str, float], dict[str, set[str]]]:
    rows = {k.decode(): orjson.loads(client.get(k)) for k in client.scan_iter(match="items:[0-9]*")}
    zset = {m.decode(): s for m, s in client.zrange("items:by:price", 0, -1, withscores=True)}
    sets = {k.decode(): {m.decode() for m in client.smembers(k)} for k in client.scan_iter(match="items:store_id:*")}
    return rows, zset, sets


def test_snapshot_builds_and_verify_checks_and_repairs_the_indexes(tmp_path: Path, db: Any, mariadb: MariaDBServer,
                                                                   redis_server: RedisServer, redis_client: Any) -> None:
    make_items(db, 400)
    cfg = write_config(tmp_path, mariadb, db, redis_server)
    r = run("sync-snapshot", "--config", str(cfg), "--progress", "log")
    assert r.returncode == 0, r.stderr
    want = implied(db)
    assert held(redis_client) == want and len(want[0]) > 100
    assert all("secret" not in v for v in want[0].values())
    r = run("sync-verify", "--config", str(cfg), "--recheck-delay", "0")
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr

    live = sorted(want[1], key=lambda k: int(k.split(":")[1]))
    a, b, c, d = live[:4]
    redis_client.zrem("items:by:price", a)                          # missing from the zset
    redis_client.zadd("items:by:price", {b: 999.0})                 # wrong score
    redis_client.zadd("items:by:price", {"items:100000": 1.0})      # a row MySQL does not have
    redis_client.zadd("items:by:price", {"items:5": 1.0})           # a row the filter leaves out (active = 0)
    store = next(k for k, v in want[2].items() if c in v)
    redis_client.srem(store, c)                                     # missing from its set
    other = next(k for k in want[2] if d not in want[2][k])
    redis_client.sadd(other, d)                                     # in a set its value does not name
    redis_client.set("items:10", b"{}")                             # a row the filter leaves out, present
    e = live[4]                                                     # a row gone from MySQL and Redis, its
    with db.cursor() as cur:                                        # index entries left (as after a TRUNCATE,
        cur.execute(f"DELETE FROM items WHERE id = {int(e.split(':')[1])}")  # which removes only the rows)
    redis_client.delete(e)
    want = implied(db)
    r = run("sync-verify", "--config", str(cfg), "--recheck-delay", "0", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    rep = orjson.loads(r.stdout)
    report = rep["tables"][0] if "tables" in rep else rep
    assert (report["index_missing"], report["index_wrong"], report["index_extra"]) == (2, 1, 5), report
    assert report["different"] == 1 and report["missing"] == 0 and report["extra"] == 0, report

    r = run("sync-verify", "--config", str(cfg), "--recheck-delay", "0", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert held(redis_client) == want
    r = run("sync-verify", "--config", str(cfg), "--recheck-delay", "0")
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr


def test_shaping_helpers_agree_with_the_test_oracle() -> None:
    shape = build_shape("items", {"filter": "active = 1 AND price > 0"}, "[tables.items]")
    assert shape is not None
    assert shape.matches({"active": 1, "price": "0.25"}) and not shape.matches({"active": 1, "price": "-4.75"})
    assert not shape.matches({"active": 1, "price": None}) and score_of("12.25") == "12.25"


BAD = {
    'filter = "price >"': "[tables.items].filter: 'price >' ends too early; expected a number or a 'quoted string'",
    'filter = "price > 0 OR active = 1"': "'OR' at position 11 of 'price > 0 OR active = 1'; expected AND or the end",
    'indexes = [{ type = "list", column = "price" }]': "[tables.items].indexes[0].type: 'list'; expected zset or set",
    'indexes = [{ type = "set", column = "store_id", key = "s:{column}" }]':
        "[tables.items].indexes[0].key: 's:{column}' has no {value}; expected one",
    'stream = { maxlen = 0 }': "[tables.items].stream.maxlen: 0; expected an integer from 1 to",
    'rename = { price = 5 }': "[tables.items].rename.price: 5; expected a field name",
}


@pytest.mark.parametrize("command", ["sync-worker", "sync-snapshot", "sync-verify", "sync-binlog"])
@pytest.mark.parametrize("line", list(BAD))
def test_a_bad_shaping_key_is_one_line_and_exit_2(tmp_path: Path, command: str, line: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f"[tables.items]\n{line}\n")
    path.chmod(0o600)
    r = run(command, "--config", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"{command}: error: --config {path}: ") and BAD[line] in lines[0], lines[0]


def test_the_binlog_path_shapes_like_the_applier(tmp_path: Path, db: Any, mariadb: MariaDBServer,
                                                 redis_server: RedisServer, redis_client: Any) -> None:
    """sync-binlog (sink redis) with the same [tables.items] section: rows, indexes and stream as MySQL
    implies after inserts, filter transitions, moves between sets and deletes; sync-verify agrees."""
    import tomllib

    from tests.integration.binlog_rig import Running, settings, wait_caught_up

    make_items(db, 0)
    section = tomllib.loads(SHAPING)["tables"]["items"]
    shape = build_shape("items", section, "[tables.items]")
    st = settings(mariadb, db.db_name, ["items"], redis_server, shapes={"items": shape}, start="current")
    with Running(st) as running, db.cursor() as cur:
        cur.execute("INSERT INTO items SELECT seq, seq % 9 + 0.5, seq % 3, 1, 'pw' FROM seq_1_to_60")
        cur.execute("UPDATE items SET active = 0 WHERE id % 4 = 0")            # filtered out
        cur.execute("UPDATE items SET store_id = 7 WHERE id % 5 = 0")          # set moves
        cur.execute("UPDATE items SET price = -1 WHERE id % 6 = 0")            # out by price
        cur.execute("UPDATE items SET active = 1 WHERE id % 8 = 0")            # back in
        cur.execute("DELETE FROM items WHERE id % 7 = 0")
        wait_caught_up(mariadb, redis_client, running.service.positions.key)
    assert held(redis_client) == implied(db)
    entries = redis_client.xrange("items:changes")
    assert len(entries) > 60 and {f[b"op"] for _, f in entries} == {b"insert", b"update", b"delete"}
    cfg = write_config(tmp_path, mariadb, db, redis_server)
    r = run("sync-verify", "--config", str(cfg), "--recheck-delay", "0")
    assert r.returncode == 0 and "equal" in r.stdout, r.stdout + r.stderr
