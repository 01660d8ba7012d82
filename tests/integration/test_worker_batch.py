"""sync-worker on batch jobs (several changes in one job, sync.events) against real gearmand and
Redis: each change goes the way of a single-change job (fence, dead letters with their reason),
next to classic and v1 single-change jobs."""

from __future__ import annotations

import orjson

from sync.config import worker_settings
from sync.events import encode_batch
from sync.gearman import GearmanClient
from sync.signing import ENV_KEY, load_keys
from sync.testing.servers import GearmanServer, RedisServer

from .test_sync_worker import (
    SyncWorker,
    assert_all_rows,
    change,
    expected_rows,
    kill_mid_load_then_drain,
    make_worker,
    run_worker_until_drained,
    submit,
    submit_sync,
)

DEAD = "gearsync:dead:{data}"


async def test_a_batch_with_bad_changes_applies_the_rest_beside_classic_and_v1_jobs(
        gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    bad_version = b'{"v":1,"table":"data","op":"update","pk":{"id":7},"row":{"id":7},"version":1.5,"source":"trigger"}'
    wrong_table = change("users", "insert", {"id": 1}, {"id": 1}, 3)
    batch = encode_batch([
        change("data", "insert", {"id": 1}, {"id": 1, "volume": 1}, 1),
        bad_version,
        change("data", "insert", {"id": 2}, {"id": 2, "volume": 2}, 2),
        wrong_table,
        change("data", "update", {"id": 1}, {"id": 1, "volume": 10}, 4),
    ])
    single = change("data", "insert", {"id": 3}, {"id": 3, "volume": 3}, 5)
    await submit(gearmand, "gearsync.data", [batch, single, b"{not json"])
    await submit(gearmand, "syncToRedis", [b'{"id": "c1", "volume": 3}'])
    settings = worker_settings(tables=["data"], classic=True, servers=gearmand.address,
                               redis_url=f"redis://127.0.0.1:{redis_server.port}/0", env={})
    workers = [SyncWorker(settings), SyncWorker(settings)]
    await run_worker_until_drained(workers[0], gearmand, "gearsync.data")
    await run_worker_until_drained(workers[1], gearmand, "syncToRedis")
    stats = [sum(getattr(w.stats, k) for w in workers) for k in ("jobs", "applied", "dead")]

    assert orjson.loads(redis_client.get("data:1")) == {"id": 1, "volume": 10}
    assert orjson.loads(redis_client.get("data:2")) == {"id": 2, "volume": 2}
    assert orjson.loads(redis_client.get("data:3")) == {"id": 3, "volume": 3}
    assert redis_client.get("data:7") is None
    assert redis_client.get("c1") == b'{"id": "c1", "volume": 3}'      # the classic job
    assert stats == [4, 5, 3]
    records = [orjson.loads(r) for r in redis_client.lrange(DEAD, 0, -1)]
    by_raw = {r["raw"].encode(): r for r in records}
    assert set(by_raw) == {bad_version, wrong_table, b"{not json"}    # each bad change alone, as its JSON
    assert by_raw[bad_version]["reason"].startswith("changes[1]: version: expected")
    assert by_raw[wrong_table]["reason"].startswith("changes[3]: table: 'users' arrived on function 'gearsync.data'")
    assert "invalid JSON" in by_raw[b"{not json"]["reason"]
    assert all(r["function"] == "gearsync.data" for r in records)


async def test_a_redelivered_batch_is_stale_and_an_overlapping_one_applies_only_what_is_new(
        gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    first = encode_batch([
        change("data", "insert", {"id": 1}, {"id": 1, "volume": 1}, 101),
        change("data", "insert", {"id": 2}, {"id": 2, "volume": 2}, 102),
        change("data", "update", {"id": 1}, {"id": 1, "volume": 3}, 103),
        change("data", "delete", {"id": 2}, None, 104),
    ])
    await submit(gearmand, "gearsync.data", [first])
    worker = make_worker(gearmand, redis_server, ["data"])
    await run_worker_until_drained(worker, gearmand, "gearsync.data")
    assert (worker.stats.applied, worker.stats.stale) == (4, 0)
    after_first = {k: redis_client.get(k) for k in redis_client.keys("data:*")}

    # The same batch again (gearmand redelivers it after a worker died before WORK_COMPLETE), then
    # a batch cut differently after a restart of sync-binlog: 103..104 again, then 105..106 new.
    overlapping = encode_batch([
        change("data", "update", {"id": 1}, {"id": 1, "volume": 3}, 103),
        change("data", "delete", {"id": 2}, None, 104),
        change("data", "insert", {"id": 2}, {"id": 2, "volume": 20}, 105),
        change("data", "update", {"id": 1}, {"id": 1, "volume": 30}, 106),
    ])
    await submit(gearmand, "gearsync.data", [first])
    worker = make_worker(gearmand, redis_server, ["data"])
    await run_worker_until_drained(worker, gearmand, "gearsync.data")
    assert (worker.stats.applied, worker.stats.stale) == (0, 4)       # the fence: a no-op
    assert {k: redis_client.get(k) for k in redis_client.keys("data:*")} == after_first
    await submit(gearmand, "gearsync.data", [overlapping])
    worker = make_worker(gearmand, redis_server, ["data"])
    await run_worker_until_drained(worker, gearmand, "gearsync.data")
    assert (worker.stats.applied, worker.stats.stale) == (2, 2)
    assert orjson.loads(redis_client.get("data:1")) == {"id": 1, "volume": 30}
    assert orjson.loads(redis_client.get("data:2")) == {"id": 2, "volume": 20}
    assert redis_client.llen(DEAD) == 0


async def test_a_bad_change_of_a_signed_batch_is_stored_signed_so_a_replay_checks_it_again(
        gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    keys = load_keys({ENV_KEY: "k" * 32})
    wrong_table = change("users", "insert", {"id": 1}, {"id": 1}, 3)
    batch = encode_batch([change("data", "insert", {"id": 1}, {"id": 1, "volume": 1}, 1), wrong_table])
    async with GearmanClient([(gearmand.host, gearmand.port)], signer=keys.signer) as client:
        await client.submit_background_many("gearsync.data", [batch])
    settings = worker_settings(tables=["data"], servers=gearmand.address,
                               redis_url=f"redis://127.0.0.1:{redis_server.port}/0", env={})
    worker = SyncWorker(settings, keys=keys)
    await run_worker_until_drained(worker, gearmand, "gearsync.data")
    assert (worker.stats.applied, worker.stats.dead) == (1, 1)
    (record,) = [orjson.loads(r) for r in redis_client.lrange(DEAD, 0, -1)]
    assert record["raw"].encode() != wrong_table and record["raw"].encode().endswith(wrong_table)
    # A replay verifies the letter like a job: the reason is the table again, not a missing signature.
    replayer = SyncWorker(settings, keys=keys)
    assert await replayer.replay_dead() == (0, 1)
    await replayer.aclose()
    (again,) = [orjson.loads(r) for r in redis_client.lrange(DEAD, 0, -1)]
    assert again["reason"].startswith("table: 'users' arrived on function 'gearsync.data'")


def test_a_worker_killed_mid_load_of_batch_jobs_loses_nothing(gearmand: GearmanServer, redis_server: RedisServer,
                                                              redis_client) -> None:
    n, per_job = 40000, 200
    rows = expected_rows(n, 1_000_000)
    submit_sync(gearmand, "gearsync.data", [encode_batch(rows[i:i + per_job]) for i in range(0, n, per_job)])
    kill_mid_load_then_drain(gearmand, redis_server, redis_client, "--batch", "4")
    assert_all_rows(redis_client, n, 1_000_000)
    assert redis_client.llen(DEAD) == 0


async def test_batch_jobs_on_a_redis_cluster(gearmand: GearmanServer, redis_cluster) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    from sync.rows.rowcodec import encode_json

    n = 300   # rows over every slot owner; one batch holds a row's newer and older change
    newer = [change("data", "update", {"id": i}, {"id": i, "volume": 1}, 10 + i) for i in range(n)]
    older = [change("data", "update", {"id": i}, {"id": i, "volume": 0}, 5) for i in range(n)]
    deletes = [change("data", "delete", {"id": i}, None, 10_000) for i in range(0, n, 3)]
    await submit(gearmand, "gearsync.data", [encode_batch(newer[:150] + older[:150]),
                                             encode_batch(older[150:] + newer[150:] + deletes)])
    settings = worker_settings(tables=["data"], servers=gearmand.address, redis_url=redis_cluster.url,
                               redis_cluster=True, env={})
    await run_worker_until_drained(SyncWorker(settings), gearmand, "gearsync.data")
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    try:
        for i in range(n):
            assert client.get(f"data:{i}") == (None if i % 3 == 0 else encode_json({"id": i, "volume": 1})), i
    finally:
        client.flushall(target_nodes=RedisCluster.ALL_NODES)
        client.close()
