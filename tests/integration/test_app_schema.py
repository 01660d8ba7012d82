"""A shop-shaped application (17 tables: FK cascades and SET NULL, a self-referencing tree, composite
keys and FKs, link tables, the application's own triggers, every supported column type) under both
capture paths at once while four connections write to it; then sync-verify on every table and path.

The rig (app_rig.py) runs the commands a user runs; this test asserts what a user would check: no
writer statement failed, and Redis equals MySQL for every table on the trigger path and on the
binlog path. Tables changed by FK actions (app_rig.CASCADE_CHILDREN) are asserted too, separately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer
from tests.fixtures.shop_workload import TABLES

from .app_rig import CASCADE_CHILDREN, PATHS, AppRig
from .udf_fixtures import udf_installed  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(600)

EXPECTED_OPS = {
    "new_order", "order_status", "delete_order", "renumber_order", "coupon_upsert", "coupon_replace",
    "wishlist_replace", "restock_multi_table_update", "rename_sku_cascade", "renumber_customer_cascade",
    "delete_customer_cascade", "delete_category_cascade", "rename_warehouse_cascade", "delete_address_set_null",
    "delete_product_cascade", "load_data_local", "sensor_insert", "sensor_update", "sensor_delete",
}


def test_shop_application_both_paths_with_writers(udf_installed: MariaDBServer, redis_server: RedisServer,  # noqa: F811
                                                  redis_client: Any, gearmand: GearmanServer,
                                                  tmp_path: Path) -> None:
    rig = AppRig(udf_installed, redis_server, gearmand, tmp_path / "rig")
    try:
        result = rig.run(before=1000, transactions=5000, clerks=4, seconds=60)
    finally:
        rig.drop_database()
    table = "\n" + result.render()
    print(table)

    assert result.workload.failed == [], table
    assert EXPECTED_OPS <= set(result.workload.ops), table
    assert result.processes == {"sync-worker": 0, "sync-relay": 0, "sync-binlog": 0}, table
    assert set(result.cells) == {(t, p) for t in TABLES for p in PATHS}
    assert all(result.cells[(t, "trigger")].rows > 0 for t in TABLES), table  # verify compared real rows

    differing = result.differing()
    assert {t: d for t, d in differing.items() if t not in CASCADE_CHILDREN} == {}, table
    # FK cascades captured on both paths (rows changed by ON DELETE/UPDATE CASCADE / SET NULL): equal
    # too, children with two cascading FKs included (test_cascade_race pins their late-change orders).
    assert {t: d for t, d in differing.items() if t in CASCADE_CHILDREN} == {}, table


def test_binary_n_keeps_its_trailing_zero_bytes_on_the_binlog_path(mariadb: MariaDBServer, db: Any,
                                                                    redis_server: RedisServer,
                                                                    redis_client: Any) -> None:
    """Found by the shop run: the row image carries BINARY(n) without its trailing 0x00 pad bytes."""
    from .binlog_rig import Running, diff, mysql_state, redis_state, settings, wait_caught_up

    with db.cursor() as cur:
        cur.execute("CREATE TABLE bin (id BINARY(4) NOT NULL PRIMARY KEY, b BINARY(8), vb VARBINARY(8))")
    with Running(settings(mariadb, db.db_name, ["bin"], redis_server)) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO bin VALUES (%s, %s, %s)",
                        [(b"a", b"ab", b"ab\x00"), (b"\x00", b"\x00\x00", b""), (b"\xff\x00\x01", b"\xff", b"\xff")])
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        expected = mysql_state(mariadb, db.db_name, "bin")
        assert diff(expected, redis_state(redis_client, "bin")) == {}
    assert orjson.loads(redis_client.get("bin:a\x00\x00\x00")) == {"id": "a\x00\x00\x00", "b": "ab" + "\x00" * 6,
                                                                 "vb": "ab\x00"}
