"""RedisApplier against real redis-server processes (standalone and a 3-node cluster)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from sync.apply.applier import APPLY_SCRIPT, Outcome, RedisApplier
from sync.errors import ApplyError, ConfigError, PayloadError
from sync.events import ChangeEvent, ClassicSet, Op, Source, parse_classic
from sync.keys import row_key, stats_key, version_key
from sync.rows.rowcodec import encode_hash, encode_json
from sync.tables import TableSpec
from sync.testing.servers import RedisClusterNodes, RedisServer

A, S = Outcome.APPLIED, Outcome.STALE
TABLES = {
    "data": TableSpec("data"),
    "h": TableSpec("h", format="hash"),
    "hx": TableSpec("hx", format="hash", ttl_s=100),
    "jx": TableSpec("jx", ttl_s=50),
    "comp": TableSpec("comp", key_template="{{{table}}}:{pk}"),
}


def up(table: str, pk: Any, version: int, **cols: Any) -> ChangeEvent:
    pk_t = tuple(pk.items()) if isinstance(pk, dict) else (("id", pk),)
    row = dict(pk_t)
    row.update(cols)
    return ChangeEvent(table, Op.UPDATE, pk_t, row, version, Source.TRIGGER)


def ins(table: str, pk: Any, version: int, **cols: Any) -> ChangeEvent:
    ev = up(table, pk, version, **cols)
    return ChangeEvent(ev.table, Op.INSERT, ev.pk, ev.row, ev.version, ev.source)


def dele(table: str, pk: Any, version: int) -> ChangeEvent:
    pk_t = tuple(pk.items()) if isinstance(pk, dict) else (("id", pk),)
    return ChangeEvent(table, Op.DELETE, pk_t, None, version, Source.TRIGGER)


def rk(table: str, pk: Any) -> str:
    pk_t = tuple(pk.items()) if isinstance(pk, dict) else (("id", pk),)
    return row_key(TABLES[table].key_template, table, pk_t)


async def state(r: Any, ev: ChangeEvent) -> Any:
    """What Redis holds for the event's row: None, bytes (json) or dict (hash)."""
    key = rk(ev.table, dict(ev.pk))
    if TABLES[ev.table].format == "hash":
        got = await r.hgetall(key)
        return got or None
    return await r.get(key)


def expected(ev: ChangeEvent) -> Any:
    if ev.op is Op.DELETE:
        return None
    assert ev.row is not None
    return encode_hash(ev.row) if TABLES[ev.table].format == "hash" else encode_json(ev.row)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def cluster_nodes(redis_cluster: RedisClusterNodes) -> RedisClusterNodes:
    """The session's shared 3-node cluster."""
    return redis_cluster


@pytest.fixture
async def cluster(cluster_nodes: RedisClusterNodes) -> AsyncIterator[RedisCluster]:
    host, port = cluster_nodes.startup_nodes[0]
    rc = RedisCluster(host=host, port=port)
    await rc.initialize()
    await rc.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield rc
    await rc.aclose()


@pytest.fixture(params=["standalone", "cluster"])
def r(request: pytest.FixtureRequest) -> Any:
    """Parametrized: the test runs against standalone Redis and against the cluster."""
    if request.param == "standalone":
        return request.getfixturevalue("aredis")
    return request.getfixturevalue("cluster")


# -- basic semantics (both topologies) --------------------------------------------------------


async def test_json_insert_update_delete(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    e1 = ins("data", 1, 10, volume=3, name="a")
    assert await ap.apply([e1]) == [A]
    assert await r.get("data:1") == encode_json(e1.row)
    assert await r.get("gearsync:v:{data:1}") == b"%020d" % 10
    e2 = up("data", 1, 11, volume=4, name=None)
    assert await ap.apply([e2]) == [A]
    assert await r.get("data:1") == b'{"id":1,"name":null,"volume":4}'
    assert await ap.apply([dele("data", 1, 12)]) == [A]
    assert await r.exists("data:1") == 0
    tomb_ttl = await r.pttl("gearsync:v:{data:1}")
    assert 86_000_000 < tomb_ttl <= 86_400_000
    assert await r.get("gearsync:v:{data:1}") == b"%020d" % 12


async def test_hash_format_binary_null_and_ttl(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    e = ins("hx", 7, 1, name="h\u00e9", blob={"$b64": "//4A"}, gone=None, price=2.5)
    assert await ap.apply([e]) == [A]
    assert await r.hgetall("hx:7") == {b"id": b"7", b"name": "h\u00e9".encode(), b"blob": b"\xff\xfe\x00", b"price": b"2.5"}
    assert 0 < await r.pttl("hx:7") <= 100_000
    # version key outlives the row: max(ttl, tombstone ttl)
    assert await r.pttl(version_key("hx:7")) > 100_000
    # an update replaces the whole hash (no stale fields survive) and renews the TTL
    assert await ap.apply([up("hx", 7, 2, other="x")]) == [A]
    assert await r.hgetall("hx:7") == {b"id": b"7", b"other": b"x"}
    assert 0 < await r.pttl("hx:7") <= 100_000
    # no TTL table: no expiry on row or version
    assert await ap.apply([ins("h", 1, 1, a="b")]) == [A]
    assert await r.pttl("h:1") == -1 and await r.pttl(version_key("h:1")) == -1
    assert await ap.apply([dele("hx", 7, 3)]) == [A]
    assert await r.exists("hx:7") == 0


async def test_json_ttl(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    assert await ap.apply([ins("jx", 1, 1, a=1)]) == [A]
    assert 0 < await r.pttl("jx:1") <= 50_000
    assert await r.pttl(version_key("jx:1")) > 50_000


async def test_composite_keys_and_hash_tag_template(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    a = ins("comp", {"a": "x:y", "b": 1}, 1, v="first")
    b = ins("comp", {"a": "x", "b": "y:1"}, 1, v="second")
    assert await ap.apply([a, b]) == [A, A]
    assert await r.get("{comp}:x\\:y:1") == encode_json(a.row)
    assert await r.get("{comp}:x:y\\:1") == encode_json(b.row)
    assert await r.get("gearsync:v:{comp}:x\\:y:1") == b"%020d" % 1


async def test_equal_and_older_versions_are_stale(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    new = up("data", 1, 100, v="new")
    assert await ap.apply([new]) == [A]
    assert await ap.apply([new]) == [S]  # redelivery
    assert await ap.apply([up("data", 1, 99, v="old"), dele("data", 1, 50)]) == [S, S]
    assert await r.get("data:1") == encode_json(new.row)


async def test_tombstone_blocks_older_upsert_newer_applies(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    assert await ap.apply([ins("data", 1, 5, v=1), dele("data", 1, 7)]) == [A, A]
    assert await ap.apply([up("data", 1, 6, v="late")]) == [S]
    assert await r.exists("data:1") == 0
    newer = ins("data", 1, 8, v="reborn")
    assert await ap.apply([newer]) == [A]
    assert await r.get("data:1") == encode_json(newer.row)
    # the version key is a plain fence again: no expiry
    assert await r.pttl("gearsync:v:{data:1}") == -1


async def test_versions_beyond_2_53_compare_exactly(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    base = 2**63 + 12345
    assert await ap.apply([up("data", 1, base + 1, v="b")]) == [A]
    assert await ap.apply([up("data", 1, base, v="a")]) == [S]  # equal as floats, older as integers
    assert await ap.apply([up("data", 1, base + 2, v="c")]) == [A]
    assert await ap.apply([up("data", 1, 2**64 - 1, v="max")]) == [A]
    assert await ap.apply([up("data", 1, 2**64 - 2, v="no")]) == [S]
    # crossing the 10-digit halves boundary
    assert await ap.apply([up("data", 2, 9_999_999_999, v=1), up("data", 2, 10_000_000_000, v=2)]) == [A, A]
    assert await ap.apply([up("data", 2, 9_999_999_999_9, v=3)]) == [A]
    assert await ap.apply([up("data", 2, 10_000_000_001, v=4)]) == [S]


async def test_many_events_for_one_row_in_one_batch(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    batch = [
        ins("data", 1, 1, v=1),
        up("data", 1, 3, v=3),
        up("data", 1, 2, v=2),  # older than the one just written
        dele("data", 1, 4),
        up("data", 1, 4, v="same"),  # equal to the tombstone
        ins("data", 1, 6, v=6),
        ins("h", 1, 1, a=1),
        up("h", 1, 2, b=2),
        up("data", 1, 6, v="dup"),
    ]
    assert await ap.apply(batch) == [A, A, S, A, S, A, A, A, S]
    assert await r.get("data:1") == b'{"id":1,"v":6}'
    assert await r.hgetall("h:1") == {b"id": b"1", b"b": b"2"}


async def test_classic_set(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    raw = b'{"id": 5, "volume": 3, "x": [1, {"y": "\\u00e9"}]}'
    cs = parse_classic(raw)
    assert await ap.apply([cs, ins("data", 9, 1, v=1), ClassicSet(b"k", b"\xff")]) == [A, A, A]
    assert await r.get("5") == raw
    assert await r.get("k") == b"\xff"
    assert await ap.apply([parse_classic(b'{"id":5,"volume":4}')]) == [A]  # unversioned: last write wins
    assert await r.get("5") == b'{"id":5,"volume":4}'
    assert await r.exists("gearsync:v:{5}") == 0


async def test_stats(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    await ap.apply([ins("data", 1, 1), ins("data", 2, 1), ins("h", 1, 1), up("data", 1, 1)])
    st = await r.hgetall(stats_key("data"))
    assert st[b"applied_total"] == b"2"
    assert int(st[b"last_applied_ms"]) > 1_600_000_000_000
    assert (await r.hgetall(stats_key("h")))[b"applied_total"] == b"1"
    await ap.apply([up("data", 1, 1)])  # stale only: unchanged
    assert (await r.hgetall(stats_key("data")))[b"applied_total"] == b"2"


async def test_unknown_table_rejected_before_writing(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    with pytest.raises(PayloadError, match="'nope' is not configured"):
        await ap.apply([ins("data", 1, 1), ins("nope", 1, 1)])
    assert await r.exists("data:1") == 0
    with pytest.raises(PayloadError):
        ap.check(ins("nope", 1, 1))
    ap.check(ins("data", 1, 1))
    assert await ap.apply([]) == []


async def test_noscript_after_script_flush(r: Any) -> None:
    ap = RedisApplier(r, TABLES)
    assert await ap.apply([ins("data", i, 1) for i in range(50)]) == [A] * 50
    await r.script_flush()  # on a cluster: sent to every node
    assert await r.script_exists(ap._sha) in ([False], False)
    assert await ap.apply([up("data", i, 2) for i in range(50)]) == [A] * 50
    assert await r.get("data:49") == b'{"id":49}'


async def test_large_hash_row(r: Any) -> None:
    """More fields than Lua's unpack() can take at once (HSET is chunked)."""
    ap = RedisApplier(r, TABLES)
    cols = {f"c{i}": i for i in range(6000)}
    assert await ap.apply([ins("h", 1, 1, **cols)]) == [A]
    assert await r.hlen("h:1") == 6001


async def test_concurrent_shuffled_streams_converge(r: Any) -> None:
    """Versions of 300 rows, shuffled and split over 4 concurrent tasks in random batch sizes:
    the end state is exactly the newest change of every row."""
    rng = random.Random(1234)
    ap = RedisApplier(r, TABLES)
    newest: dict[tuple[str, int], ChangeEvent] = {}
    events: list[ChangeEvent] = []
    for table in ("data", "h"):
        for pk in range(150):
            for version in rng.sample(range(1, 10**6), 12):
                kind = rng.random()
                ev = dele(table, pk, version) if kind < 0.25 else up(table, pk, version, n=version, s="x" * rng.randrange(20))
                events.append(ev)
                if (table, pk) not in newest or newest[(table, pk)].version < version:
                    newest[(table, pk)] = ev
    # some redeliveries
    events += rng.sample(events, 300)
    rng.shuffle(events)
    streams = [events[i::4] for i in range(4)]

    async def run(stream: list[ChangeEvent]) -> None:
        i = 0
        while i < len(stream):
            n = rng.randrange(1, 200)
            await ap.apply(stream[i : i + n])
            i += n
            await asyncio.sleep(0)

    await asyncio.gather(*(run(s) for s in streams))
    for ev in newest.values():
        assert await state(r, ev) == expected(ev), ev
        assert await r.get(version_key(rk(ev.table, dict(ev.pk)))) == b"%020d" % ev.version


async def test_outcomes_keep_input_order_across_slots(cluster: RedisCluster) -> None:
    ap = RedisApplier(cluster, TABLES)
    evs = [ins("data", i, 1) for i in range(200)]
    slots = {key_slot(rk("data", i).encode()) for i in range(200)}
    assert len(slots) > 100
    await ap.apply(evs[::2])
    assert await ap.apply(evs) == [S if i % 2 == 0 else A for i in range(200)]


# -- construction --------------------------------------------------------------------------


def test_table_spec_validation() -> None:
    with pytest.raises(ConfigError, match="format"):
        TableSpec("t", format="xml")
    with pytest.raises(ConfigError, match="ttl_s"):
        TableSpec("t", ttl_s=0)
    with pytest.raises(ConfigError, match="key template"):
        TableSpec("t", key_template="{table}")

    with pytest.raises(ConfigError):
        RedisApplier(object(), {"x": TableSpec("t")})
    with pytest.raises(ConfigError):
        RedisApplier(object(), {}, prefix="a{b}")


def test_script_is_plain_text() -> None:
    assert "EVAL" not in APPLY_SCRIPT and "redis.call" not in APPLY_SCRIPT.replace("local call = redis.call", "")


# -- failures ------------------------------------------------------------------------------


async def test_redis_down_raises_then_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    # redis-py retries connection errors with exponential back-off by default (seconds); the
    # worker's client should bound that too. One quick retry keeps this test fast.
    client = aioredis.Redis(
        host=server.host, port=server.port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
    )
    try:
        ap = RedisApplier(client, TABLES)
        assert await ap.apply([ins("data", 1, 1)]) == [A]
        server.kill()
        with pytest.raises(ApplyError, match="failed"):
            await ap.apply([ins("data", 2, 1)])
        with pytest.raises(ApplyError):
            await ap.apply([ins("data", 2, 1)])
        server.start()  # empty again: no persistence, and no scripts cached
        assert await ap.apply([ins("data", 2, 1), ins("data", 1, 1)]) == [A, A]
        assert await client.get("data:2") == b'{"id":2}'
    finally:
        await client.aclose()
        server.stop()


async def test_readonly_replica_raises(tmp_path: Path, redis_server: RedisServer) -> None:
    replica = RedisServer(tmp_path / "replica", extra_args=["--replicaof", redis_server.host, str(redis_server.port)])
    replica.start()
    client = aioredis.Redis(host=replica.host, port=replica.port)
    try:
        ap = RedisApplier(client, TABLES)
        with pytest.raises(ApplyError, match="READONLY|read only|readonly"):
            await ap.apply([ins("data", 1, 1)])
    finally:
        await client.aclose()
        replica.stop()


async def test_corrupt_version_raises(aredis: Any) -> None:
    ap = RedisApplier(aredis, TABLES)
    await aredis.set("gearsync:v:{data:1}", "garbage")
    with pytest.raises(ApplyError, match="bad stored version"):
        await ap.apply([ins("data", 1, 1)])


async def test_restart_between_batches_needs_no_caller_retry(tmp_path: Path) -> None:
    """A pooled connection from before a restart is replaced transparently (once)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = aioredis.Redis(host=server.host, port=server.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        ap = RedisApplier(client, TABLES)
        assert await ap.apply([ins("data", 1, 1)]) == [A]
        server.restart()
        assert await ap.apply([ins("data", 2, 1)]) == [A]
    finally:
        await client.aclose()
        server.stop()


async def test_cancelled_apply_leaves_no_stray_reply(aredis: Any) -> None:
    ap = RedisApplier(aredis, TABLES)
    await ap.load_script()
    big = [ins("h", i, 1, **{f"c{j}": "x" * 50 for j in range(50)}) for i in range(400)]
    for delay in (0, 0.0005, 0.002):
        task = asyncio.create_task(ap.apply(big))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        # every later call gets its own reply, never the cancelled one's
        for n in (1, 3, 7):
            assert len(await ap.apply([ins("data", 10_000 + k, 1) for k in range(n)])) == n
    assert await aredis.get("data:10000") == b'{"id":10000}'


async def test_single_connection_client(redis_server: RedisServer) -> None:
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port, single_connection_client=True)
    try:
        await client.flushall()
        ap = RedisApplier(client, TABLES)
        assert await ap.apply([ins("data", 1, 1), up("data", 1, 1)]) == [A, S]
        await client.script_flush()
        assert await ap.apply([up("data", 1, 2)]) == [A]
    finally:
        await client.aclose()
