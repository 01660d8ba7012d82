"""sync-worker end to end against real gearmand + Redis: jobs in, Redis state out, nothing lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.apply.worker import SyncWorker
from sync.config import worker_settings
from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient, admin
from sync.rows.rowcodec import encode_json
from sync.testing.servers import GearmanServer, RedisServer

REPO = Path(__file__).resolve().parents[2]
WORKER_BIN = str(REPO / ".venv" / "bin" / "sync-worker")


def change(table: str, op: str, pk: dict[str, Any], row: dict[str, Any] | None, version: int) -> bytes:
    return encode_change(
        ChangeEvent(table, Op(op), tuple(pk.items()), row, version, Source.TRIGGER)
    )


async def submit(g: GearmanServer, function: str, payloads: Iterable[bytes]) -> None:
    async with GearmanClient([(g.host, g.port)]) as client:
        await client.submit_background_many(function, list(payloads))


def submit_sync(g: GearmanServer, function: str, payloads: Iterable[bytes]) -> None:
    asyncio.run(submit(g, function, payloads))


async def queued(g: GearmanServer, function: str) -> tuple[int, int]:
    for st in await admin.status(g.host, g.port, timeout_s=5):
        if st.name == function:
            return st.queued, st.running
    return 0, 0


async def run_worker_until_drained(worker: SyncWorker, g: GearmanServer, function: str, timeout_s: float = 30) -> None:
    task = asyncio.ensure_future(worker.run())
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if task.done():
                break
            total, _running = await queued(g, function)
            if total == 0:
                break
        else:
            raise AssertionError(f"queue of {function} not drained in {timeout_s}s")
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, 15) == 0


def make_worker(g: GearmanServer, r: RedisServer, tables: list[str], **kw: Any) -> SyncWorker:
    settings = worker_settings(
        tables=tables,
        servers=g.address,
        redis_url=f"redis://{r.host}:{r.port}/0",
        env={},
        **kw,
    )
    return SyncWorker(settings)


async def test_insert_update_delete_json(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    payloads = [
        change("data", "insert", {"id": 1}, {"id": 1, "volume": 10, "name": "ä😀"}, 1),
        change("data", "insert", {"id": 2}, {"id": 2, "volume": 20, "name": None}, 2),
        change("data", "update", {"id": 1}, {"id": 1, "volume": 11, "name": "b"}, 3),
        change("data", "delete", {"id": 2}, None, 4),
        change("data", "insert", {"id": 3}, {"id": 3, "volume": 30, "name": "c"}, 5),
    ]
    await submit(gearmand, "gearsync.data", payloads)
    await run_worker_until_drained(make_worker(gearmand, redis_server, ["data"]), gearmand, "gearsync.data")
    assert orjson.loads(redis_client.get("data:1")) == {"id": 1, "volume": 11, "name": "b"}
    assert redis_client.get("data:2") is None
    assert orjson.loads(redis_client.get("data:3")) == {"id": 3, "volume": 30, "name": "c"}


async def test_hash_format_composite_key_and_ttl(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    pk = {"tenant": "a:b", "id": 7}
    await submit(
        gearmand,
        "gearsync.orders",
        [
            change("orders", "insert", pk, {"tenant": "a:b", "id": 7, "qty": 1, "note": "x"}, 10),
            change("orders", "update", pk, {"tenant": "a:b", "id": 7, "qty": 2, "note": None}, 11),
            change("orders", "insert", {"tenant": "a", "id": "b:7"}, {"tenant": "a", "id": "b:7", "qty": 9}, 12),
        ],
    )
    worker = make_worker(gearmand, redis_server, ["orders"], fmt="hash", ttl_s=100)
    await run_worker_until_drained(worker, gearmand, "gearsync.orders")
    keys = sorted(k.decode() for k in redis_client.keys("orders:*"))
    assert len(keys) == 2, keys  # ('a:b', 7) and ('a', 'b:7') must not collide
    key = worker.applier.row_key(ChangeEvent("orders", Op.UPDATE, tuple(pk.items()), {**pk}, 1, Source.TRIGGER))
    # The update replaced the old fields: the NULL note is gone, not left at "x".
    assert redis_client.hgetall(key) == {b"tenant": b"a:b", b"id": b"7", b"qty": b"2"}
    assert 0 < redis_client.ttl(key) <= 100


async def test_shuffled_versions_from_four_workers_end_newest(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    rng = random.Random(7)
    rows, versions = 200, 15
    payloads = []
    newest: dict[int, tuple[int, str]] = {}
    for rid in range(rows):
        for v in range(1, versions + 1):
            version = rid * 1000 + v
            if v == versions and rid % 5 == 0:
                payloads.append(change("data", "delete", {"id": rid}, None, version))
                newest[rid] = (version, "deleted")
            else:
                payloads.append(change("data", "update", {"id": rid}, {"id": rid, "volume": v}, version))
                newest[rid] = (version, "row")
    rng.shuffle(payloads)
    await submit(gearmand, "gearsync.data", payloads)
    workers = [make_worker(gearmand, redis_server, ["data"], batch=16) for _ in range(4)]
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        deadline = time.monotonic() + 60
        while (await queued(gearmand, "gearsync.data"))[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        for w in workers:
            w.request_stop()
        assert await asyncio.gather(*tasks) == [0, 0, 0, 0]
    assert sum(w.stats.jobs for w in workers) == rows * versions
    assert all(w.stats.jobs > 0 for w in workers), [w.stats.jobs for w in workers]
    for rid in range(rows):
        value = redis_client.get(f"data:{rid}")
        if newest[rid][1] == "deleted":
            assert value is None, rid
        else:
            assert orjson.loads(value) == {"id": rid, "volume": versions}, rid


async def test_dead_letters_then_replay_after_fix(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    good = change("data", "insert", {"id": 1}, {"id": 1, "volume": 1}, 1)
    wrong_table = change("users", "insert", {"id": 1}, {"id": 1}, 1)
    bad = [b"{not json", b'{"v":1,"table":"data"}',
           b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1},"version":1.5,"source":"trigger"}', wrong_table]
    await submit(gearmand, "gearsync.data", [good, *bad])
    worker = make_worker(gearmand, redis_server, ["data"])
    await run_worker_until_drained(worker, gearmand, "gearsync.data")
    assert worker.stats.dead == 4 and worker.stats.applied == 1
    records = [orjson.loads(r) for r in redis_client.lrange("gearsync:dead:{data}", 0, -1)]
    assert [r["raw"].encode() for r in records] == bad
    assert "invalid JSON" in records[0]["reason"]
    assert "version" in records[2]["reason"]
    assert "'users'" in records[3]["reason"] and all(r["time"] and r["function"] == "gearsync.data" for r in records)

    # Nothing fixed yet: replay leaves them all dead, in Redis, not in a log line only.
    ok, failed = await make_worker(gearmand, redis_server, ["data"]).replay_dead()
    assert (ok, failed) == (0, 4)
    assert redis_client.llen("gearsync:dead:{data}") == 4

    # "Fix": a worker that also serves table users no longer rejects the wrong-table letter? No —
    # it arrived on gearsync.data, so it stays dead; repair one payload by hand instead.
    fixed = change("data", "update", {"id": 2}, {"id": 2, "volume": 5}, 9)
    redis_client.lset("gearsync:dead:{data}", 0, orjson.dumps({**records[0], "raw": fixed.decode()}))
    ok, failed = await make_worker(gearmand, redis_server, ["data"]).replay_dead()
    assert (ok, failed) == (1, 3)
    assert orjson.loads(redis_client.get("data:2")) == {"id": 2, "volume": 5}
    assert redis_client.llen("gearsync:dead:{data}") == 3


async def test_classic_bare_payload(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    payloads = [b'{"id": 5, "volume": 3}', b'{"id":"abc","volume":4}', b'{"id": 5, "volume": 9}']
    await submit(gearmand, "syncToRedis", payloads)
    settings = worker_settings(tables=[], classic=True, servers=gearmand.address,
                               redis_url=f"redis://127.0.0.1:{redis_server.port}/0", env={})
    await run_worker_until_drained(SyncWorker(settings), gearmand, "syncToRedis")
    assert redis_client.get("5") == b'{"id": 5, "volume": 9}'
    assert redis_client.get("abc") == b'{"id":"abc","volume":4}'


# -- the real process: signals, crashes, outages ------------------------------------------------

def start_worker_process(g: GearmanServer, r: RedisServer, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GEARSYNC_GEARMAN_SERVERS": g.address, "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
    return subprocess.Popen(
        [WORKER_BIN, "--table", "data", "--stats-interval", "0", "--log-format", "json", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_drained(g: GearmanServer, function: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(queued(g, function))[0] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{function}: queue not drained after {timeout_s}s: {asyncio.run(queued(g, function))}")


def expected_rows(n: int, version_base: int) -> list[bytes]:
    return [change("data", "update", {"id": i}, {"id": i, "volume": version_base + i}, version_base + i) for i in range(n)]


def assert_all_rows(redis_client: Any, n: int, version_base: int) -> None:
    pipe = redis_client.pipeline()
    for i in range(n):
        pipe.get(f"data:{i}")
    values = pipe.execute()
    missing = [i for i, v in enumerate(values) if v != encode_json({"id": i, "volume": version_base + i})]
    assert not missing, f"{len(missing)} rows missing or wrong, e.g. {missing[:5]}"


def test_sigterm_stops_cleanly_with_exit_0(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    proc = start_worker_process(gearmand, redis_server)
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert time.monotonic() - t0 < 12
    assert b"worker_stopped" in proc.stderr.read()


def test_sigkill_mid_load_loses_nothing(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    n = 20000
    submit_sync(gearmand, "gearsync.data", expected_rows(n, 1_000_000))
    kill_mid_load_then_drain(gearmand, redis_server, redis_client, "--batch", "64")
    assert_all_rows(redis_client, n, 1_000_000)


def kill_mid_load_then_drain(gearmand: GearmanServer, redis_server: RedisServer, redis_client: Any, *args: str) -> None:
    """SIGKILL a worker process part-way through the queued jobs, then drain them with another."""
    proc = start_worker_process(gearmand, redis_server, *args)
    # Kill it while it is part-way: some rows in Redis, jobs still queued or in its hands.
    deadline = time.monotonic() + 30
    while redis_client.dbsize() < 2000 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait(10)
    assert asyncio.run(queued(gearmand, "gearsync.data"))[0] > 0, "worker finished before the kill; raise n"
    second = start_worker_process(gearmand, redis_server)
    try:
        wait_drained(gearmand, "gearsync.data")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0


def test_redis_restart_mid_load_converges(gearmand: GearmanServer, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    client = redis.client()
    n = 5000
    try:
        proc = start_worker_process(gearmand, redis, "--batch", "32")
        submit_sync(gearmand, "gearsync.data", expected_rows(n // 2, 0))
        deadline = time.monotonic() + 30
        while client.dbsize() < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        redis.kill()  # the data is gone with it: no persistence on this server
        submit_sync(gearmand, "gearsync.data", expected_rows(n, 0)[n // 2:])
        time.sleep(1.5)  # the worker holds its batch and retries meanwhile
        assert proc.poll() is None, "the worker must not exit while Redis is down"
        assert asyncio.run(queued(gearmand, "gearsync.data"))[0] > 0
        redis.start()
        wait_drained(gearmand, "gearsync.data")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        err = proc.stderr.read()
        assert b"redis_unavailable" in err
        # What was applied before the kill is lost with Redis' memory; every job still queued
        # or held by the worker at the kill is in Redis now.
        for i in range(n // 2, n):
            assert client.get(f"data:{i}") == encode_json({"id": i, "volume": i}), i
    finally:
        client.close()
        redis.stop()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--table", "data", "--batch", "0"], "--batch: 0; expected an integer from 1 to 10000"),
        (["--table", "data", "--servers", "h:99999"], "port 99999"),
        (["--table", "data", "--redis-url", "redis://:pw@h:1/0"], "GEARSYNC_REDIS_PASSWORD"),
        (["--table", "data", "--key-template", "{table}"], "{pk}"),
        (["--table", "data", "--format", "xml"], "invalid choice: 'xml'"),
        (["--table", "data", "--config", "/nonexistent.toml"], "does not exist"),
        ([], "--table: none given"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    proc = subprocess.run([WORKER_BIN, *args], capture_output=True, text=True, timeout=30, env={**os.environ, "GEARSYNC_REDIS_URL": ""})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "pw" not in proc.stderr


def test_help_explains() -> None:
    out = subprocess.run([WORKER_BIN, "--help"], capture_output=True, text=True, timeout=30).stdout
    for word in ("--table", "--classic", "GEARSYNC_REDIS_PASSWORD", "GEARSYNC_GEARMAN_SERVERS", "--replay-dead", "exit codes"):
        assert word in out


def test_servers_down_at_start_then_up(tmp_path: Path, redis_server: RedisServer, redis_client) -> None:
    g = GearmanServer(tmp_path / "g")
    proc = start_worker_process(g, redis_server)  # nothing listens on g.port yet
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "a daemon must not crash because gearmand is down"
        g.start()
        submit_sync(g, "gearsync.data", expected_rows(100, 5))
        wait_drained(g, "gearsync.data", timeout_s=30)
        assert_all_rows(redis_client, 100, 5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        g.stop()


async def test_worker_on_redis_cluster(gearmand: GearmanServer, redis_cluster) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    n = 300
    payloads = [change("data", "update", {"id": i}, {"id": i, "volume": 1}, 10 + i) for i in range(n)]
    payloads += [change("data", "update", {"id": i}, {"id": i, "volume": 0}, 5) for i in range(n)]  # older: stale
    payloads += [change("data", "delete", {"id": i}, None, 10_000) for i in range(0, n, 3)]
    await submit(gearmand, "gearsync.data", payloads)
    settings = worker_settings(tables=["data"], servers=gearmand.address, redis_url=redis_cluster.url,
                               redis_cluster=True, env={})
    worker = SyncWorker(settings)
    await run_worker_until_drained(worker, gearmand, "gearsync.data")
    assert worker.stats.stale == n
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    try:
        for i in range(n):
            value = client.get(f"data:{i}")
            assert value == (None if i % 3 == 0 else encode_json({"id": i, "volume": 1})), i
    finally:
        client.flushall(target_nodes=RedisCluster.ALL_NODES)
        client.close()


async def test_large_rows_are_split_across_script_calls(gearmand: GearmanServer, redis_server: RedisServer, redis_client) -> None:
    big = "x" * (5 * 1024 * 1024)
    payloads = [change("data", "insert", {"id": i}, {"id": i, "blob": big + str(i)}, 1 + i) for i in range(8)]
    await submit(gearmand, "gearsync.data", payloads)
    worker = make_worker(gearmand, redis_server, ["data"])
    await run_worker_until_drained(worker, gearmand, "gearsync.data", timeout_s=60)
    assert worker.stats.applied == 8
    for i in range(8):
        assert orjson.loads(redis_client.get(f"data:{i}"))["blob"] == big + str(i)
