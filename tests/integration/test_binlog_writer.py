"""sync-binlog --sink redis, the writer in the reader thread: flushing when the server goes quiet,
holding a batch while Redis is away, and giving it up at a stop (exit 0) with the position never
ahead of the rows."""

from __future__ import annotations

import time

import orjson

from sync.keys import stats_key
from sync.testing.servers import MariaDBServer, RedisServer

from .binlog_rig import (
    Running,
    binlog_pos,
    diff,
    mysql_state,
    redis_state,
    settings,
    update_until_retried,
    wait_caught_up,
)


def test_quiet_server_flushes_a_small_batch_at_once(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client) -> None:
    # --batch and --flush-ms far beyond this test: only the "server went quiet" flush can send
    # these three changes (a heartbeat alone does not: it just hands over the pending events).
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = settings(mariadb, name, ["data"], redis_server, batch=100_000, flush_ms=600_000)
    with Running(st) as run, db.cursor() as cur:
        for i in range(3):
            cur.execute("INSERT INTO data VALUES (%s, %s)", (i, i * 10))
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        assert redis_client.get("data:2") == b'{"id":2,"volume":20}'
        assert run.service.stats.batches >= 1
    assert int(redis_client.hget(stats_key("data"), "applied_total")) == 3


def test_redis_restart_mid_stream_resends_the_held_batch(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = settings(mariadb, name, ["data"], redis_server)
    with Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, 0)", [(i,) for i in range(50)])
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        redis_server.stop()   # connection refused; the restarted server is empty (no script either)
        try:
            update_until_retried(cur, run)
        finally:
            redis_server.start()
        client = redis_server.client()
        try:
            wait_caught_up(mariadb, client, run.service.positions.key, timeout_s=60)
            # Every row changed while Redis was away, so all of them are back, at their last value.
            assert diff(mysql_state(mariadb, name, "data"), redis_state(client, "data")) == {}
        finally:
            client.close()
        assert run.service.stats.retries >= 2


def test_stop_while_redis_hangs_gives_up_the_batch_within_the_timeout(mariadb: MariaDBServer, db, redis_server: RedisServer,
                                                                      redis_client) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = settings(mariadb, name, ["data"], redis_server, shutdown_timeout_s=1.0)
    run = Running(st).wait_started()
    try:
        with db.cursor() as cur:
            cur.execute("INSERT INTO data VALUES (1, 0)")
        saved_gtid = wait_caught_up(mariadb, redis_client, run.service.positions.key)
        redis_server.pause()  # SIGSTOP: the batch is sent, its reply never comes (5 s socket timeout)
        try:
            with db.cursor() as cur:
                cur.execute("UPDATE data SET volume = 7 WHERE id = 1")
            assert binlog_pos(mariadb) != saved_gtid
            deadline = time.monotonic() + 30
            while run.service.stats.retries < 1 and time.monotonic() < deadline:
                time.sleep(0.05)   # the batch is out and its reply timed out once
            assert run.stop(timeout_s=30) == 0
        finally:
            redis_server.resume()
    finally:
        if run.thread.is_alive():
            run.stop()
    # Given up: the request may still have sat in the hung server's socket and run on SIGCONT.
    # Either way the position is never ahead of the rows (it rides in the script call of the
    # rows it covers), and a restart reads from the position that is there.
    saved = orjson.loads(redis_client.get(run.service.positions.key))["gtid"]
    row = redis_client.get("data:1")
    assert saved in (saved_gtid, binlog_pos(mariadb))
    if saved != saved_gtid:
        assert row == b'{"id":1,"volume":7}'
    assert run.service.stats.retries >= 1
    assert run.service.position is not None and run.service.position.gtid == saved_gtid  # never acknowledged
    with Running(st) as again:
        wait_caught_up(mariadb, redis_client, again.service.positions.key)
    assert redis_client.get("data:1") == b'{"id":1,"volume":7}'
