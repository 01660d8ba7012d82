"""Foreign-key cascades end to end (issue 13): InnoDB cascades fire no trigger and write no row
event, so the applier performs them; Redis must equal MySQL afterwards without any repair."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from sync.apply.worker import SyncWorker
from sync.config import worker_settings
from sync.rows.fkgraph import load_foreign_keys
from sync.rows.schema import load_table
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .triggers_rig import LoopThread, diff, expected_state
from .udf_fixtures import point_at, udf_installed  # noqa: F401  (fixture)

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"

SCHEMA = [
    "CREATE TABLE orders (id INT PRIMARY KEY, name VARCHAR(20))",
    "CREATE TABLE tag (id INT PRIMARY KEY, label VARCHAR(20))",
    "CREATE TABLE line (id INT PRIMARY KEY, order_id INT, qty INT, "
    " FOREIGN KEY fk_line (order_id) REFERENCES orders (id) ON UPDATE CASCADE ON DELETE CASCADE)",
    "CREATE TABLE note (id INT PRIMARY KEY, line_id INT, body VARCHAR(20), "
    " FOREIGN KEY fk_note (line_id) REFERENCES line (id) ON UPDATE SET NULL ON DELETE SET NULL)",
    "CREATE TABLE link (order_id INT NOT NULL, tag_id INT NOT NULL, w INT, PRIMARY KEY (order_id, tag_id), "
    " FOREIGN KEY fk_link_o (order_id) REFERENCES orders (id) ON UPDATE CASCADE ON DELETE CASCADE, "
    " FOREIGN KEY fk_link_t (tag_id) REFERENCES tag (id) ON UPDATE CASCADE ON DELETE CASCADE)",
    "CREATE TABLE pair (a INT NOT NULL, b INT NOT NULL, PRIMARY KEY (a, b))",
    "CREATE TABLE comp (id INT PRIMARY KEY, pa INT, pb INT, "
    " FOREIGN KEY fk_comp (pa, pb) REFERENCES pair (a, b) ON UPDATE CASCADE ON DELETE CASCADE)",
    "CREATE TABLE tree (id INT PRIMARY KEY, parent_id INT, "
    " FOREIGN KEY fk_tree (parent_id) REFERENCES tree (id) ON DELETE CASCADE)",
]
SYNCED = ["orders", "line", "note", "link", "pair", "comp", "tree"]  # tag is not synced


def make_schema(db: Any) -> None:
    with db.cursor() as cur:
        for stmt in SCHEMA:
            cur.execute(stmt)


def populate(db: Any) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO orders SELECT seq, CONCAT('o', seq) FROM seq_1_to_20")
        cur.execute("INSERT INTO tag SELECT seq, CONCAT('t', seq) FROM seq_1_to_10")
        cur.execute("INSERT INTO pair SELECT seq, seq * 10 FROM seq_1_to_5")
        cur.execute("INSERT INTO line SELECT seq, 1 + seq % 20, seq FROM seq_1_to_200")
        cur.execute("INSERT INTO note SELECT seq, IF(seq % 7 = 0, NULL, seq), 'n' FROM seq_1_to_150")
        cur.execute("INSERT INTO link SELECT o.seq, t.seq, o.seq * t.seq FROM seq_1_to_20 o, seq_1_to_10 t "
                    "WHERE (o.seq + t.seq) % 3 = 0")
        cur.execute("INSERT INTO comp SELECT seq, 1 + seq % 5, 10 + 10 * (seq % 5) FROM seq_1_to_40")
        cur.execute("INSERT INTO tree VALUES (1, NULL), (2, 1), (3, 2), (4, 3), (5, 1), (6, NULL), (7, 6)")


def workload(server: MariaDBServer, db: Any) -> None:
    """Parent key changes and deletes (cascades in InnoDB) while a writer changes children."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def child_writer(server_conn: Any) -> None:
        try:
            i = 0
            with server_conn.cursor() as cur:
                while not stop.is_set():
                    i += 1
                    cur.execute("UPDATE line SET qty = qty + 1 WHERE id = %s", (1 + i % 200,))
                    cur.execute("UPDATE note SET body = %s WHERE id = %s", (f"b{i}", 1 + i % 150))
        except BaseException as exc:  # reported below
            errors.append(exc)

    other = server.connect(db.db_name)
    t = threading.Thread(target=child_writer, args=(other,))
    t.start()
    try:
        with db.cursor() as cur:
            cur.execute("UPDATE orders SET id = id + 100 WHERE id <= 8")          # cascade update (line, link)
            cur.execute("DELETE FROM orders WHERE id IN (9, 10, 105)")            # cascade delete -> note set null
            cur.execute("UPDATE line SET id = id + 1000 WHERE id BETWEEN 20 AND 40")  # note set null on update
            cur.execute("UPDATE tag SET id = id + 50 WHERE id <= 4")              # not synced parent: op cascade
            cur.execute("DELETE FROM tag WHERE id = 9")
            cur.execute("UPDATE pair SET b = b + 1 WHERE a IN (1, 2)")            # composite fk
            cur.execute("DELETE FROM pair WHERE a = 3")
            cur.execute("DELETE FROM tree WHERE id = 1")                          # self reference: subtree
            cur.execute("UPDATE orders SET id = id + 100 WHERE id = 101")         # again
    finally:
        stop.set()
        t.join()
        other.close()
    assert not errors, errors


def differences(server: MariaDBServer, db: Any, client: Any) -> dict[str, Any]:
    return differences_of(server, db, client, SYNCED)


def differences_of(server: MariaDBServer, db: Any, client: Any, tables: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in tables:
        schema = load_table(db, db.db_name, table)
        spec = TableSpec(table)
        expected = expected_state(server, schema, spec)
        actual = {k.decode(): client.get(k) for k in client.scan_iter(match=f"{table}:*", count=1000)}
        out.update(diff(expected, actual))
    return out


def wait_equal(server: MariaDBServer, db: Any, client: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        d = differences(server, db, client)
        if not d or time.monotonic() > deadline:
            return d
        time.sleep(0.2)


def test_fk_graph_reader(mariadb: MariaDBServer, db: Any) -> None:
    make_schema(db)
    graph = load_foreign_keys(db, db.db_name)
    names = {(f.child, f.name): (f.columns, f.parent, f.ref, f.on_update, f.on_delete) for f in graph.fks}
    assert names[("link", "fk_link_t")] == (("tag_id",), "tag", ("id",), "cascade", "cascade")
    assert names[("note", "fk_note")] == (("line_id",), "line", ("id",), "set_null", "set_null")
    assert names[("comp", "fk_comp")] == (("pa", "pb"), "pair", ("a", "b"), "cascade", "cascade")
    assert names[("tree", "fk_tree")] == (("parent_id",), "tree", ("id",), "none", "cascade")
    assert graph.tables("orders") == {"line", "link", "note"}


@pytest.fixture
def gm(udf_installed: MariaDBServer, gearmand: GearmanServer, db: Any) -> GearmanServer:  # noqa: F811
    point_at(db, gearmand)
    return gearmand


def sync_triggers(server: MariaDBServer, db: Any, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "sync-triggers"), *args, "--mysql-url", f"mysql://root@127.0.0.1:{server.port}/{db.db_name}"],
        capture_output=True, text=True, env={**os.environ, "GEARSYNC_MYSQL_PASSWORD": ""},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_trigger_path_cascades(mariadb: MariaDBServer, gm: GearmanServer, db: Any, redis_server: RedisServer,
                               redis_client: Any) -> None:
    make_schema(db)
    for table in SYNCED:
        out = sync_triggers(mariadb, db, "install", "--table", table)
        if table == "link":
            assert "also installed on parent" in out and ".tag: cascades start there" in out
    # One worker serves every FK-related table; tag's cascade-only triggers send to link's function.
    with LoopThread(lambda: SyncWorker(worker_settings(
            tables=SYNCED, servers=gm.address, redis_url=f"redis://{redis_server.host}:{redis_server.port}/0",
            env={}), idle_timeout_s=0.2)):
        populate(db)
        workload(mariadb, db)
        d = wait_equal(mariadb, db, redis_client)
        assert d == {}, sorted(d.items())[:20]
    assert int(redis_client.llen("gearsync:dead:{orders}") or 0) == 0


def tool(name: str, server: MariaDBServer, db: Any, r: RedisServer, *args: str) -> str:
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{server.port}/{db.db_name}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0", "GEARSYNC_MYSQL_PASSWORD": ""}
    result = subprocess.run([str(BIN / name), *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_snapshot_gives_children_their_refs(mariadb: MariaDBServer, gm: GearmanServer, db: Any,
                                            redis_server: RedisServer, redis_client: Any) -> None:
    """Rows written by sync-snapshot (and sync-verify --repair) join the FK index: a parent key
    change captured by the triggers afterwards cascades to them."""
    make_schema(db)
    populate(db)  # before any capture: only the snapshot brings these rows
    for table in SYNCED:
        sync_triggers(mariadb, db, "install", "--table", table)
        tool("sync-snapshot", mariadb, db, redis_server, "--table", table)
    redis_client.delete("line:7")  # one child row lost: sync-verify --repair writes it back, with its refs
    tool("sync-verify", mariadb, db, redis_server, "--table", "line", "--repair")
    with LoopThread(lambda: SyncWorker(worker_settings(
            tables=SYNCED, servers=gm.address, redis_url=f"redis://{redis_server.host}:{redis_server.port}/0",
            env={}), idle_timeout_s=0.2)):
        with db.cursor() as cur:
            cur.execute("UPDATE orders SET id = id + 100 WHERE id <= 8")   # line 7 has order_id 8
            cur.execute("DELETE FROM orders WHERE id = 12")
            cur.execute("UPDATE tag SET id = id + 50 WHERE id <= 4")
            cur.execute("UPDATE pair SET b = b + 1 WHERE a = 1")
            cur.execute("DELETE FROM tree WHERE id = 1")
        d = wait_equal(mariadb, db, redis_client)
        assert d == {}, sorted(d.items())[:20]


def test_uninstall_keeps_parent_triggers_other_children_need(mariadb: MariaDBServer, gm: GearmanServer,
                                                             db: Any) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE p (id INT PRIMARY KEY)")
        for child in ("c1", "c2"):
            cur.execute(f"CREATE TABLE {child} (id INT PRIMARY KEY, p_id INT, "
                        f"FOREIGN KEY (p_id) REFERENCES p (id) ON UPDATE CASCADE ON DELETE CASCADE)")

    def parent_triggers() -> int:
        with db.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s "
                        "AND EVENT_OBJECT_TABLE='p'", (db.db_name,))
            return int(cur.fetchone()[0])

    sync_triggers(mariadb, db, "install", "--table", "c1")
    sync_triggers(mariadb, db, "install", "--table", "c2")
    installed = parent_triggers()
    assert installed > 0
    sync_triggers(mariadb, db, "uninstall", "--table", "c1")
    assert parent_triggers() == installed   # c2 still needs p's cascades
    sync_triggers(mariadb, db, "uninstall", "--table", "c2")
    assert parent_triggers() == 0


LATE_SCHEMA = [
    "CREATE TABLE orders (id INT PRIMARY KEY)",
    "CREATE TABLE item (order_id INT NOT NULL, n INT NOT NULL, q INT, PRIMARY KEY (order_id, n), "
    " FOREIGN KEY fk_item (order_id) REFERENCES orders (id) ON UPDATE CASCADE ON DELETE CASCADE)",
    "CREATE TABLE ship (id INT PRIMARY KEY, order_id INT NOT NULL, n INT NOT NULL, "
    " FOREIGN KEY fk_ship (order_id, n) REFERENCES item (order_id, n) ON UPDATE CASCADE ON DELETE CASCADE)",
    "CREATE TABLE cat (id INT PRIMARY KEY, parent_id INT, "
    " FOREIGN KEY fk_cat (parent_id) REFERENCES cat (id) ON DELETE SET NULL)",
]


async def test_late_child_deletes_on_the_trigger_path(udf_installed: MariaDBServer, db: Any,  # noqa: F811
                                                      redis_server: RedisServer, aredis: Any,
                                                      redis_client: Any) -> None:
    """Found by the shop run: the jobs of a parent and of its children travel in different Gearman
    functions (and several worker connections), so a child's own delete can reach the applier after
    a newer cascade of its parent. Here the worker gets the parents' jobs first: every change that
    carries a cascade, newest first, then the others. An item deleted (with its shipment, by InnoDB)
    before its order was renumbered stays deleted; a category inserted and deleted before its parent
    was deleted (ON DELETE SET NULL) stays deleted. The triggers (outbox mode: the payloads read back
    from the spool) send a child's delete with its old FK values."""
    from sync.apply.applier import RedisApplier
    from sync.capture.spool import SPOOL_TABLE
    from sync.events import parse_change

    with db.cursor() as cur:
        for stmt in LATE_SCHEMA:
            cur.execute(stmt)
    tables = ["orders", "item", "ship", "cat"]
    for table in tables:
        sync_triggers(udf_installed, db, "install", "--table", table, "--mode", "outbox")
    applier = RedisApplier(aredis, {t: TableSpec(t) for t in tables})

    def spooled() -> list[Any]:
        with db.cursor() as cur:
            cur.execute(f"SELECT payload FROM {SPOOL_TABLE} ORDER BY id")
            events = [parse_change(raw) for (raw,) in cur.fetchall()]
            cur.execute(f"DELETE FROM {SPOOL_TABLE}")
        return events

    with db.cursor() as cur:
        cur.execute("INSERT INTO orders VALUES (5), (8)")
        cur.execute("INSERT INTO item VALUES (5, 1, 10), (5, 2, 20), (8, 1, 30)")
        cur.execute("INSERT INTO ship VALUES (7, 5, 1), (8, 5, 2)")
        cur.execute("INSERT INTO cat VALUES (1, NULL)")
    await applier.apply(spooled())
    with db.cursor() as cur:
        cur.execute("DELETE FROM item WHERE order_id = 5 AND n = 1")   # ship 7 goes with it (InnoDB)
        cur.execute("UPDATE orders SET id = 6 WHERE id = 5")           # item (5, 2) and ship 8 follow
        cur.execute("INSERT INTO cat VALUES (2, 1), (3, 1)")
        cur.execute("DELETE FROM cat WHERE id = 2")
        cur.execute("DELETE FROM cat WHERE id = 1")                    # cat 3: parent_id NULL
    events = spooled()
    gone = [ev for ev in events if ev.table == "item" and ev.op.value == "delete"]
    assert [ev.refs for ev in gone] == [{"fk_item": (5,)}]
    parents = sorted((ev for ev in events if ev.cascade is not None), key=lambda ev: -ev.version)
    await applier.apply(parents + [ev for ev in events if ev.cascade is None])
    assert differences_of(udf_installed, db, redis_client, tables) == {}
    assert redis_client.get("item:6:2") is not None and redis_client.get("cat:3") is not None
