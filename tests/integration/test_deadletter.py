"""DeadLetterStore against a real redis-server: put/peek/size, replay without loss."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sync.apply.deadletter import DeadLetterStore
from sync.errors import ApplyError
from sync.keys import dead_letter_key, dead_letter_processing_key
from sync.testing.servers import RedisServer
from tests.integration.test_applier import cluster, cluster_nodes  # noqa: F401  (fixtures)


async def test_put_peek_size(aredis: Any) -> None:
    store = DeadLetterStore(aredis)
    assert await store.size("data") == 0
    await store.put("data", b'{"v":1', "payload: invalid JSON at byte 6", function="sync_data", unique="u1")
    await store.put("data", b"\xff\xfe binary", "payload: invalid JSON at byte 0", function=None, unique=None)
    assert await store.size("data") == 2
    first, second = await store.peek("data", 10)
    assert first.raw == b'{"v":1' and first.reason.startswith("payload:")
    assert first.function == "sync_data" and first.unique == "u1"
    assert second.raw == b"\xff\xfe binary" and second.function is None
    when = dt.datetime.strptime(first.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 60
    # the stored record is plain JSON, readable by ops tooling
    stored = [orjson.loads(x) for x in await aredis.lrange(dead_letter_key("data"), 0, -1)]
    assert stored[0]["raw"] == '{"v":1' and stored[0]["raw_b64"] is False
    assert stored[1]["raw_b64"] is True and base64.b64decode(stored[1]["raw"]) == b"\xff\xfe binary"
    assert await store.peek("data", 1) == [first]
    assert await store.size("data") == 2  # peek removes nothing
    assert await store.peek("other", 5) == []


async def test_put_many_and_long_reason(aredis: Any) -> None:
    store = DeadLetterStore(aredis)
    await store.put_many("f", [(b"a", "r" * 5000, "fn", None), (b"b", "r2", None, "u")])
    a, b = await store.peek("f", 5)
    assert len(a.reason) == 2000 and a.reason.endswith("...")
    assert (b.raw, b.reason, b.unique) == (b"b", "r2", "u")


async def test_replay_ack_and_restore(aredis: Any) -> None:
    store = DeadLetterStore(aredis)
    for i in range(10):
        await store.put("data", b"job%d" % i, "reason", function="f", unique=str(i))
    batch = await store.pop_batch("data", 4)
    assert [x.raw for x in batch] == [b"job0", b"job1", b"job2", b"job3"]
    assert await store.size("data") == 6 and await store.processing_size("data") == 4
    assert await store.ack("data", batch[:3]) == 3
    assert await store.processing_size("data") == 1
    # a replayer "crashes" holding job3 and two more
    await store.pop_batch("data", 2)
    assert await store.processing_size("data") == 3
    assert await store.restore("data") == 3
    assert await store.processing_size("data") == 0
    rest = await store.peek("data", 100)
    assert [x.raw for x in rest] == [b"job3", b"job4", b"job5", b"job6", b"job7", b"job8", b"job9"]
    assert await store.pop_batch("data", 0) == []
    everything = await store.pop_batch("data", 100)
    assert len(everything) == 7 and await store.pop_batch("data", 5) == []
    assert await store.ack("data", everything) == 7
    assert await aredis.exists(dead_letter_key("data"), dead_letter_processing_key("data")) == 0


async def test_concurrent_replayers_never_duplicate_or_lose(aredis: Any) -> None:
    store = DeadLetterStore(aredis)
    await store.put_many("d", [(b"%d" % i, "r", None, None) for i in range(500)])
    seen: list[bytes] = []

    async def replayer() -> None:
        while batch := await store.pop_batch("d", 7):
            seen.extend(x.raw for x in batch)
            await asyncio.sleep(0)
            await store.ack("d", batch)

    await asyncio.gather(*(replayer() for _ in range(4)))
    assert sorted(seen) == sorted(b"%d" % i for i in range(500))
    assert await store.size("d") == 0 and await store.processing_size("d") == 0


async def test_identical_records_ack_one_at_a_time(aredis: Any) -> None:
    store = DeadLetterStore(aredis)
    fixed = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rec = DeadLetterStore.encode_record(b"x", "r", function=None, unique=None, now=fixed)
    await aredis.rpush(store.key("d"), rec, rec)
    one = await store.pop_batch("d", 1)
    await store.pop_batch("d", 1)
    assert await store.ack("d", one) == 1
    assert await store.processing_size("d") == 1


async def test_redis_down_raises(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = aioredis.Redis(host=server.host, port=server.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        store = DeadLetterStore(client)
        await store.put("d", b"x", "r")
        server.kill()
        with pytest.raises(ApplyError, match="RPUSH"):
            await store.put("d", b"y", "r")
        with pytest.raises(ApplyError):
            await store.pop_batch("d", 1)
    finally:
        await client.aclose()
        server.stop()


async def test_replay_on_cluster(cluster: Any) -> None:  # noqa: F811  (fixture imported above)
    store = DeadLetterStore(cluster)
    for name in ("data", "a:{b}", "syncToRedis"):
        await store.put_many(name, [(b"%d" % i, "r", None, None) for i in range(20)])
        batch = await store.pop_batch(name, 15)
        assert len(batch) == 15
        assert await store.ack(name, batch[:10]) == 10
        assert await store.restore(name) == 5
        assert [x.raw for x in await store.peek(name, 3)] == [b"10", b"11", b"12"]
        assert await store.size(name) == 10
