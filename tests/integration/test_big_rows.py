"""A row as large as max_allowed_packet allows syncs on every path: trigger (udf mode, outbox +
relay) and binlog; past the limits, a dead letter naming the limit and the size.

The session MariaDB runs with max_allowed_packet=64M; these tests raise it (SET GLOBAL, for the
connections they open) so that a 64 MiB row can be written, and put it back afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sync.keys import dead_letter_key
from sync.rows.schema import load_table
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .binlog_rig import Running, settings, wait_caught_up
from .triggers_rig import (
    diff,
    expected_state,
    install,
    redis_state,
    relay_thread,
    wait_converged,
    worker_thread,
)
from .udf_fixtures import point_at, udf_installed  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(300)

MIB = 1024 * 1024
BIG = 64 * MIB


@pytest.fixture
def big_packets(udf_installed: MariaDBServer) -> Iterator[MariaDBServer]:  # noqa: F811
    """max_allowed_packet 256M for the connections opened meanwhile (a 64 MiB row and its JSON)."""
    udf_installed.execute("SET GLOBAL max_allowed_packet = 256 * 1024 * 1024")
    try:
        yield udf_installed
    finally:
        udf_installed.execute("SET GLOBAL max_allowed_packet = 64 * 1024 * 1024")


def make_big(server: MariaDBServer, database: str) -> Any:
    conn = server.connect(database)
    conn.db_name = database
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, note VARCHAR(20), body LONGTEXT, bin LONGBLOB)")
    return conn


def write_big(conn: Any, size: int) -> None:
    """A row whose body is `size` bytes of text (and a small binary column), then an update of it."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO data VALUES (1, 'small', 'x', UNHEX('FF00'))")
        cur.execute("INSERT INTO data VALUES (2, 'big', REPEAT('a', %s), UNHEX('C3'))", (size,))
        cur.execute("UPDATE data SET body = CONCAT(REPEAT('b', %s), 'é'), note = 'updated' WHERE id = 2", (size - 2,))
        cur.execute("INSERT INTO data VALUES (3, 'after', 'y', NULL)")


def dead_letters(client: Any) -> list[dict[str, Any]]:
    return [orjson.loads(r) for r in client.lrange(dead_letter_key("data"), 0, -1)]


@pytest.mark.parametrize("mode", ["udf", "outbox"])
def test_64mib_row_on_the_trigger_path(big_packets: MariaDBServer, gearmand: GearmanServer, db: Any,
                                       redis_server: RedisServer, redis_client: Any, mode: str) -> None:
    """Default limits (UDF max_payload 256 MiB, worker 1 GiB): a 64 MiB row goes through udf mode
    (handed over, or spooled and relayed when the submit takes longer than timeout_ms) and
    outbox + relay, and Redis equals MySQL."""
    conn = make_big(big_packets, db.db_name)
    point_at(conn, gearmand)
    schema = install(conn, "data", mode=mode)
    with worker_thread(gearmand, redis_server, "data"), relay_thread(big_packets, db.db_name, gearmand):
        write_big(conn, BIG)
        assert wait_converged(big_packets, schema, redis_client, TableSpec("data"), timeout_s=120) == {}
    assert len(redis_client.get("data:2")) > BIG
    assert dead_letters(redis_client) == []
    conn.close()


def test_64mib_row_on_the_binlog_path(big_packets: MariaDBServer, db: Any, redis_server: RedisServer,
                                      redis_client: Any) -> None:
    conn = make_big(big_packets, db.db_name)
    st = settings(big_packets, db.db_name, ["data"], redis_server)
    with Running(st) as run:
        write_big(conn, BIG)
        wait_caught_up(big_packets, redis_client, run.service.positions.key, timeout_s=120)
    schema = load_table(conn, db.db_name, "data")
    assert diff(expected_state(big_packets, schema, TableSpec("data")), redis_state(redis_client, TableSpec("data"))) == {}
    assert len(redis_client.get("data:2")) > BIG
    conn.close()


@pytest.mark.parametrize("mode", ["udf", "outbox"])
def test_row_over_max_payload_is_a_dead_letter_with_the_reason(udf_installed: MariaDBServer,  # noqa: F811
                                                               gearmand: GearmanServer, db: Any,
                                                               redis_server: RedisServer, redis_client: Any,
                                                               mode: str) -> None:
    """The row's JSON over the UDF's max_payload (lowered to 1 MiB): the write still commits, the
    change becomes a dead letter naming the limit and the row's size, the other rows sync."""
    conn = make_big(udf_installed, db.db_name)
    point_at(conn, gearmand, options="max_payload=1048576")
    try:
        install(conn, "data", mode=mode)
        with worker_thread(gearmand, redis_server, "data"), relay_thread(udf_installed, db.db_name, gearmand):
            write_big(conn, 2 * MIB)
            deadline = time.monotonic() + 60
            while (len(dead_letters(redis_client)) < 2 or redis_client.get("data:3") is None) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        point_at(conn, gearmand)
    letters = dead_letters(redis_client)
    assert len(letters) == 2                     # the insert and the update of row 2
    for letter in letters:
        assert "the row's JSON is over the UDF's max_payload" in letter["reason"], letter["reason"]
        assert orjson.loads(letter["raw"])["pk"] == {"id": 2}
    with conn.cursor() as cur:
        cur.execute("SELECT LENGTH(id) + LENGTH(note) + LENGTH(body) + LENGTH(bin), LENGTH(body) FROM data WHERE id = 2")
        updated, body = cur.fetchone()
    assert "row data: 2097157 bytes" in letters[0]["reason"]          # 1 + 3 + 2 MiB + 1
    assert f"row data: {updated} bytes" in letters[1]["reason"]
    assert body >= 2 * MIB - 1                   # the write itself committed
    assert orjson.loads(redis_client.get("data:1"))["note"] == "small"
    assert orjson.loads(redis_client.get("data:3"))["note"] == "after"
    assert redis_client.get("data:2") is None
    conn.close()


def test_relay_batches_are_bounded_by_bytes(big_packets: MariaDBServer, gearmand: GearmanServer, db: Any) -> None:
    """Three 40 MiB changes in the spool: a batch holds at most 64 MiB of payloads (but always one
    row): two of them never share a batch; the last one goes with the small ones behind it."""
    import asyncio

    from sync.capture.relay import SpoolRelay
    from sync.capture.spool import spool_ddl

    from .triggers_rig import relay_settings

    conn = big_packets.connect(db.db_name)
    with conn.cursor() as cur:
        cur.execute(spool_ddl(db.db_name))
        for i in range(3):
            cur.execute("INSERT INTO gearsync_spool (function, payload) VALUES ('big', REPEAT(%s, %s))",
                        (str(i), 40 * MIB))
        cur.execute("INSERT INTO gearsync_spool (function, payload) SELECT 'small', 'x' FROM seq_1_to_5")

    async def batches() -> list[int]:
        relay = SpoolRelay(relay_settings(big_packets, db.db_name, gearmand))
        try:
            return [await relay.relay_batch(db.db_name) for _ in range(5)]
        finally:
            await relay.client.close()

    assert asyncio.run(batches()) == [1, 1, 6, 0, 0]
    conn.close()
