"""sync-binlog --sink gearman from the reader thread (sync.capture.binlog.writer.GearmanWriter on
sync.gearman.blocking.BlockingSubmitter) and --sink redis on a Redis Cluster, against real gearmand,
Redis and MariaDB: jobs pipelined and acknowledged, failover, a hung server, gearmand away mid-stream
(the position never ahead of the jobs gearmand holds)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from sync.apply.worker import SyncWorker, WorkerSettings
from sync.capture.binlog.service import BinlogSettings
from sync.gearman import admin
from sync.gearman.blocking import BlockingSubmitter
from sync.gearman.errors import GearmanConnectionError, GearmanTimeoutError
from sync.mysql import from_url
from sync.redis_client import RedisSettings
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer, free_port

from .binlog_rig import Running, diff, mysql_state, redis_state, settings, update_until_retried, wait_caught_up


def queued(gearmand: GearmanServer, function: str) -> int:
    status = asyncio.run(admin.status(gearmand.host, gearmand.port))
    return sum(f.queued for f in status if f.name == function)


def test_submitter_pipelines_and_a_resubmission_merges(gearmand: GearmanServer) -> None:
    sub = BlockingSubmitter([(gearmand.host, gearmand.port)])
    try:
        packets = [sub.pack("bs.pipe", b"job %d" % i, f"u-{i}") for i in range(500)]
        sub.send(packets[:300])
        sub.send(packets[300:])        # two writes, one wait for all of their answers
        assert sub.owed == 500
        assert sub.wait() == 500
        assert sub.owed == 0
        assert queued(gearmand, "bs.pipe") == 500
        sub.send(packets)              # the same unique ids: merged into the queued jobs
        assert sub.wait() == 500
        assert queued(gearmand, "bs.pipe") == 500
    finally:
        sub.close()


def test_submitter_fails_over_to_the_next_server(gearmand: GearmanServer) -> None:
    dead = free_port()
    sub = BlockingSubmitter([("127.0.0.1", dead), (gearmand.host, gearmand.port)], connect_timeout_s=1.0)
    try:
        packet = sub.pack("bs.failover", b"x", "only-one")
        with pytest.raises(GearmanConnectionError, match=f"127.0.0.1:{dead}: connect failed"):
            sub.send([packet])
        sub.send([packet])             # the next server in the list
        assert sub.wait() == 1
        assert sub.address == (gearmand.host, gearmand.port)
        assert queued(gearmand, "bs.failover") == 1
    finally:
        sub.close()


def test_submitter_gives_up_on_a_hung_server_and_resends_after(gearmand: GearmanServer) -> None:
    sub = BlockingSubmitter([(gearmand.host, gearmand.port)], io_timeout_s=0.5)
    packets = [sub.pack("bs.hung", b"x", f"h-{i}") for i in range(3)]
    try:
        gearmand.pause()
        try:
            sub.send(packets)
            with pytest.raises(GearmanTimeoutError, match="no answer within 0.5s"):
                sub.wait()
            assert sub.owed == 0       # the connection is closed: nothing is owed on it any more
        finally:
            gearmand.resume()
        sub.send(packets)
        assert sub.wait() == 3
        assert queued(gearmand, "bs.hung") == 3   # the first copy (if it got in) merged with the second
    finally:
        sub.close()


@contextmanager
def sync_worker(gearmand: GearmanServer, redis: RedisSettings, *tables: str, connections: int = 1) -> Iterator[SyncWorker]:
    ws = WorkerSettings(servers=[(gearmand.host, gearmand.port)], redis=redis, connections=connections,
                        tables={t: TableSpec(t, function=f"gearsync.{t}") for t in tables}, stats_interval_s=0)
    worker = SyncWorker(ws)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        loop.call_soon_threadsafe(worker.request_stop)
        thread.join(30)


def wait_equal(mariadb: MariaDBServer, database: str, client: Any, table: str, timeout_s: float = 30) -> None:
    expected = mysql_state(mariadb, database, table)
    deadline = time.monotonic() + timeout_s
    while diff(expected, redis_state(client, table)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert diff(expected, redis_state(client, table)) == {}


def test_gearmand_away_mid_stream_holds_the_position_then_catches_up(mariadb: MariaDBServer, db, redis_server: RedisServer,
                                                                    redis_client, gearmand: GearmanServer) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = settings(mariadb, name, ["data"], redis_server, sink="gearman", servers=((gearmand.host, gearmand.port),))
    with sync_worker(gearmand, st.redis, "data"), Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, 0)", [(i,) for i in range(50)])
        before = wait_caught_up(mariadb, redis_client, run.service.positions.key)
        wait_equal(mariadb, name, redis_client, "data")
        gearmand.stop()                # refused: the batch is held, the reader stops reading
        try:
            update_until_retried(cur, run)
            # No gearmand holds these jobs, so the position has not moved past them.
            assert orjson.loads(redis_client.get(run.service.positions.key))["gtid"] == before
        finally:
            gearmand.start()           # same port, empty queue: every update is submitted again
        wait_caught_up(mariadb, redis_client, run.service.positions.key, timeout_s=60)
        wait_equal(mariadb, name, redis_client, "data", timeout_s=60)
        assert run.service.stats.events >= 250


@pytest.mark.parametrize("job_changes", [1, 256])
def test_batch_jobs_end_with_redis_equal_to_mysql(mariadb: MariaDBServer, db, redis_server: RedisServer, redis_client,
                                                  gearmand: GearmanServer, job_changes: int) -> None:
    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, note VARCHAR(40))")
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")
    st = settings(mariadb, name, ["data", "users"], redis_server, sink="gearman",
                  servers=((gearmand.host, gearmand.port),), job_changes=job_changes)
    with sync_worker(gearmand, st.redis, "data", "users", connections=2), Running(st) as run, db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, 0, %s)", [(i, f"n{i}") for i in range(600)])
        cur.executemany("INSERT INTO users VALUES (%s, %s)", [(i, f"u{i}") for i in range(300)])
        cur.execute("UPDATE data SET volume = volume + 1, note = 'x' WHERE id % 3 = 0")
        for i in range(0, 300, 7):           # single-row transactions between the bulk ones
            cur.execute("UPDATE users SET name = CONCAT(name, '!') WHERE id = %s", (i,))
        cur.execute("DELETE FROM data WHERE id % 5 = 0")
        cur.execute("DELETE FROM users WHERE id >= 290")
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        wait_equal(mariadb, name, redis_client, "data")
        wait_equal(mariadb, name, redis_client, "users")
        stats = run.service.stats
    assert stats.events == 600 + 300 + 200 + 43 + 120 + 10
    if job_changes == 1:
        assert stats.jobs == stats.events
    else:
        assert stats.jobs < stats.events / 4   # several changes a job


def test_a_stream_read_again_lands_once_batched_differently(mariadb: MariaDBServer, db, redis_server: RedisServer,
                                                            redis_client, gearmand: GearmanServer) -> None:
    """A restart that lost the position reads the changes again: identical batches merge in
    gearmand, differently cut ones are applied again as STALE no-ops, never over newer values."""
    from .binlog_rig import binlog_pos

    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    start = binlog_pos(mariadb)
    st = settings(mariadb, name, ["data"], redis_server, sink="gearman", servers=((gearmand.host, gearmand.port),),
                  start=start)
    with db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, 0)", [(i,) for i in range(400)])
        with Running(st) as run:          # no worker yet: gearmand holds the jobs
            wait_caught_up(mariadb, redis_client, run.service.positions.key)
            first_jobs = run.service.stats.jobs
        for i in range(0, 400, 2):
            cur.execute("UPDATE data SET volume = volume + 1 WHERE id = %s", (i,))
        cur.execute("DELETE FROM data WHERE id >= 380")
    with Running(st) as run:              # from `start` again: every insert once more, then the rest
        wait_caught_up(mariadb, redis_client, run.service.positions.key)
        second_jobs, second_events = run.service.stats.jobs, run.service.stats.events
    assert second_events == 400 + 200 + 20
    held = queued(gearmand, "gearsync.data")
    assert held <= first_jobs + second_jobs
    with sync_worker(gearmand, st.redis, "data", connections=2) as worker:
        wait_equal(mariadb, name, redis_client, "data")
        deadline = time.monotonic() + 30
        while queued(gearmand, "gearsync.data") and time.monotonic() < deadline:
            time.sleep(0.05)
    # Every change gearmand held was applied or fenced; what was merged never reached the worker.
    assert worker.stats.dead == 0
    assert worker.stats.applied + worker.stats.stale <= 400 + second_events
    assert worker.stats.stale + (first_jobs + second_jobs - held) > 0   # the replay was merged or fenced


def test_redis_sink_on_a_cluster(mariadb: MariaDBServer, db, redis_cluster) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    name = db.db_name
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = BinlogSettings(mysql=from_url(mariadb.url + name), database=name, tables=("data",),
                        redis=RedisSettings(url=redis_cluster.url, cluster=True), stats_interval_s=0, heartbeat_s=0.5)
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    try:
        with Running(st) as run, db.cursor() as cur:
            cur.executemany("INSERT INTO data VALUES (%s, 0)", [(i,) for i in range(100)])
            cur.execute("UPDATE data SET volume = 5 WHERE id < 10")
            cur.execute("DELETE FROM data WHERE id >= 90")
            wait_caught_up(mariadb, client, run.service.positions.key)
        assert client.get("data:3") == b'{"id":3,"volume":5}'
        assert client.get("data:50") == b'{"id":50,"volume":0}'
        assert client.get("data:95") is None
        assert run.service.stats.applied == 120
    finally:
        client.flushall(target_nodes=RedisCluster.ALL_NODES)
        client.close()


def test_submitter_an_error_answer_fails_the_wait_and_the_next_send_works(gearmand: GearmanServer) -> None:
    from sync.gearman.errors import GearmanServerError

    sub = BlockingSubmitter([(gearmand.host, gearmand.port)])
    try:
        too_long = b"u" * 200   # past gearmand's unique limit (pack() would refuse it; pack_checked trusts it)
        sub.send([sub.pack_checked(b"bs.error", b"x", too_long)])
        with pytest.raises(GearmanServerError, match="gearmand error"):
            sub.wait()
        assert sub.owed == 0
        sub.send([sub.pack("bs.error", b"x", "fine")])
        assert sub.wait() == 1
        assert queued(gearmand, "bs.error") == 1
    finally:
        sub.close()


def test_batch_unique_ids_tell_collapsed_versions_apart(mariadb: MariaDBServer, redis_server: RedisServer,
                                                        gearmand: GearmanServer) -> None:
    """Past 2**20 changes in one transaction the versions collapse to one (sync.capture.binlog.reader):
    two batches with the same first and last version must still not merge in gearmand."""
    from sync.capture.binlog.service import BinlogService
    from sync.capture.binlog.writer import GearmanWriter
    from sync.events import ChangeEvent, Op, Source

    st = settings(mariadb, "x", ["data"], redis_server, sink="gearman", servers=((gearmand.host, gearmand.port),))
    writer = GearmanWriter(BinlogService(st))
    collapsed = (7 << 20) | 0xFFFFF

    def batch(ids: range, version: int) -> list[ChangeEvent]:
        return [ChangeEvent("data", Op.UPDATE, (("id", i),), {"id": i}, version, Source.BINLOG) for i in ids]

    a, b = writer._batch_unique(batch(range(0, 3), collapsed)), writer._batch_unique(batch(range(3, 6), collapsed))
    assert a != b and len(a) <= 64 and len(b) <= 64
    assert writer._batch_unique(batch(range(0, 3), collapsed)) == a          # the same batch read again: merges
    plain = writer._batch_unique(batch(range(0, 3), 7 << 20))
    assert plain == f"bl:{writer.service.tag}:{7 << 20:x}:{7 << 20:x}:b".encode()
    writer.close()
