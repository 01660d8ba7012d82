"""sync.gearman against a real gearmand (fixtures from tests/conftest.py); nothing mocked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from sync.gearman import (
    GearmanClient,
    GearmanConnectionError,
    GearmanJobFailed,
    GearmanJobTimeoutError,
    GearmanProtocolError,
    GearmanServerError,
    GearmanTimeoutError,
    GearmanUnavailableError,
    GearmanWorker,
    GearmanWorkerConnection,
    Job,
    PacketType,
    admin,
    pack_request,
)
from sync.testing.servers import GearmanServer, free_port

FN = "sync_test"
WEIRD = b"\x00caf\xc3\xa9 \xff\xfe\x00\x00 \xe2\x82\xac\x00"  # NULs, UTF-8, invalid UTF-8

pytestmark = pytest.mark.timeout(60)


def addr(server: GearmanServer) -> tuple[str, int]:
    return (server.host, server.port)


async def worker_conn(server: GearmanServer, *functions: str, io_timeout_s: float = 5.0) -> GearmanWorkerConnection:
    conn = GearmanWorkerConnection(server.host, server.port, io_timeout_s=io_timeout_s)
    await conn.connect()
    for fn in functions:
        await conn.can_do(fn)
    return conn


async def drain(conn: GearmanWorkerConnection, batch: int = 128) -> list[Job]:
    """Grab until a round returns nothing; complete every job."""
    jobs: list[Job] = []
    while True:
        got = await conn.grab_jobs(batch)
        if not got:
            return jobs
        assert await conn.complete_many(got) == []
        jobs += got


async def queued(server: GearmanServer, expected: int, fn: str = FN, timeout_s: float = 5.0) -> int:
    """The function's queued count, polled until it equals ``expected`` (gearmand runs the admin connection on
    another thread than the one that processes our WORK_COMPLETEs, so counts lag a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = 0
        for row in await admin.status(server.host, server.port):
            if row.name == fn:
                count = row.queued
        if count == expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.02)


async def test_background_priorities_exact_payloads(gearmand: GearmanServer) -> None:
    async with GearmanClient([addr(gearmand)]) as client:
        h_low = await client.submit_background(FN, b"low" + WEIRD, unique="u-low", priority="low")
        h_norm = await client.submit_background(FN, b"normal" + WEIRD, unique="u-\u00e9t\u00e9", priority="normal")
        h_high = await client.submit_background(FN, b"high" + WEIRD, priority="high")
        h_empty = await client.submit_background(FN, b"", priority="normal")
    assert len({h_low, h_norm, h_high, h_empty}) == 4
    assert await queued(gearmand, 4) == 4

    conn = await worker_conn(gearmand, FN)
    try:
        jobs = await conn.grab_jobs(10)
        assert [j.handle for j in jobs] == [h_high, h_norm, h_empty, h_low]  # gearmand serves high > normal > low
        by_handle = {j.handle: j for j in jobs}
        assert by_handle[h_low].workload == b"low" + WEIRD
        assert by_handle[h_low].unique == "u-low"
        assert by_handle[h_norm].unique == "u-\u00e9t\u00e9"
        assert by_handle[h_norm].workload == b"normal" + WEIRD
        assert by_handle[h_high].workload == b"high" + WEIRD
        assert len(by_handle[h_high].unique) > 20  # generated
        assert by_handle[h_empty].workload == b""
        assert all(j.function == FN and j.connection is conn for j in jobs)
        assert await conn.grab_jobs(5) == []
        assert await conn.complete_many(jobs) == []
        assert await conn.complete(jobs[0]) is True  # a second complete is answered with ERROR, logged, skipped
        assert await conn.grab_jobs(3) == []  # ...and does not confuse the grab answers
    finally:
        conn.close()
    assert await queued(gearmand, 0) == 0


async def test_generated_uniques_never_merge(gearmand: GearmanServer) -> None:
    async with GearmanClient([addr(gearmand)]) as client:
        await client.submit_background(FN, b"a")
        await client.submit_background(FN, b"a")
        # Same explicit unique: gearmand merges the second into the first.
        await client.submit_background(FN, b"b", unique="same")
        await client.submit_background(FN, b"c", unique="same")
        with pytest.raises(ValueError, match="unique id"):
            await client.submit_background(FN, b"x", unique="u" * 65)
        with pytest.raises(ValueError, match="function name"):
            await client.submit_background("", b"x")
    assert await queued(gearmand, 3) == 3


async def test_pipelined_10k_submit_and_grab(gearmand: GearmanServer) -> None:
    n = 10_000
    payloads = [b"%d\0" % i + WEIRD for i in range(n)]
    async with GearmanClient([addr(gearmand)], chunk_size=256) as client:
        handles = await client.submit_background_many(FN, payloads)
        assert len(handles) == n and len(set(handles)) == n
        # Handles are numbered in submit order on one gearmand: the answers were matched in order.
        numbers = [int(h.rsplit(b":", 1)[1]) for h in handles]
        assert numbers == sorted(numbers)
    assert await queued(gearmand, n) == n

    conn = await worker_conn(gearmand, FN)
    try:
        jobs = await drain(conn, 128)
    finally:
        conn.close()
    assert sorted(j.workload for j in jobs) == sorted(payloads)
    assert {j.handle for j in jobs} == set(handles)
    assert await queued(gearmand, 0) == 0


async def test_many_with_explicit_uniques_and_server_error(gearmand: GearmanServer) -> None:
    async with GearmanClient([addr(gearmand)]) as client:
        with pytest.raises(ValueError, match="fewer unique"):
            await client.submit_background_many(FN, [b"1", b"2"], uniques=["a"])
        handles = await client.submit_background_many(FN, [b"1", b"2"], uniques=["a", "b"])
        assert len(handles) == 2
        # gearmand rejects a unique above 64 bytes with ERROR; the client refuses it before sending, so bypass
        # the check to see an ERROR answer in the middle of a pipelined write matched to its own request.
        too_long = pack_request(PacketType.SUBMIT_JOB_BG, FN, "u" * 65, b"x")
        fine = pack_request(PacketType.SUBMIT_JOB_BG, FN, "c", b"x")

        async def op(session):
            return await session.request([fine, too_long, fine], PacketType.JOB_CREATED)

        with pytest.raises(GearmanServerError) as info:
            await client._run(op)
        assert info.value.code == "ARGUMENT_TOO_LARGE"
        # The connection is still usable and in sync after the ERROR answer.
        assert await client.echo(b"still\0here") == b"still\0here"
        assert len(await client.submit_background_many(FN, [b"d", b"e"])) == 2
    assert await queued(gearmand, 5) == 5  # a, b, c (merged twice), d, e


async def test_foreground_data_fail_exception_timeout(gearmand: GearmanServer) -> None:
    async def serve() -> None:
        conn = await worker_conn(gearmand, FN)
        try:
            while True:
                jobs = await conn.grab_jobs(4)
                if not jobs:
                    await conn.wait_for_work(0.5)
                for job in jobs:
                    if job.workload == b"fail":
                        await conn.fail(job)
                    elif job.workload == b"raise":
                        await conn.fail(job, exception=b"boom\0!")
                    elif job.workload == b"slow":
                        pass  # never answered
                    else:
                        await conn.send_data(job, b"part1\0")
                        await conn.complete(job, job.workload[::-1])
        finally:
            conn.close()

    task = asyncio.create_task(serve())
    try:
        async with GearmanClient([addr(gearmand)]) as client:
            assert await client.submit(FN, b"abc" + WEIRD, priority="high") == b"part1\0" + (b"abc" + WEIRD)[::-1]
            results = await asyncio.gather(*(client.submit(FN, b"%d" % i) for i in range(20)))
            assert results == [b"part1\0" + (b"%d" % i)[::-1] for i in range(20)]
            with pytest.raises(GearmanJobFailed) as failed:
                await client.submit(FN, b"fail")
            assert failed.value.exception is None
            with pytest.raises(GearmanJobFailed) as raised:
                await client.submit(FN, b"raise", priority="low")
            assert raised.value.exception == b"boom\0!"
            with pytest.raises(GearmanJobTimeoutError):
                await client.submit(FN, b"slow", timeout_s=0.3)
            assert await client.submit(FN, b"ok") == b"part1\0ko"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_worker_disconnect_mid_job_redelivers(gearmand: GearmanServer) -> None:
    async with GearmanClient([addr(gearmand)]) as client:
        handle = await client.submit_background(FN, WEIRD, unique="redeliver-me")
    first = await worker_conn(gearmand, FN)
    (job,) = await first.grab_jobs(2)
    first.close()  # crash before completing
    assert await first.complete(job) is False  # impossible now; reported, not raised
    assert await first.complete_many([job]) == [job]

    second = await worker_conn(gearmand, FN)
    try:
        deadline = time.monotonic() + 5
        again: list[Job] = []
        while not again and time.monotonic() < deadline:
            again = await second.grab_jobs(2)
            if not again:
                await second.wait_for_work(0.2)
        assert [(j.handle, j.unique, j.workload) for j in again] == [(handle, "redeliver-me", WEIRD)]
        with pytest.raises(ValueError, match="complete it there"):
            await second.complete(job)  # a job must be completed by the connection that assigned it
        assert await second.complete_many(again) == []
    finally:
        second.close()


async def test_wait_for_work_wakes_on_submit(gearmand: GearmanServer) -> None:
    conn = await worker_conn(gearmand, FN)
    try:
        assert await conn.grab_jobs(1) == []
        assert await conn.wait_for_work(0.2) is False
        async with GearmanClient([addr(gearmand)]) as client:
            waiter = asyncio.create_task(conn.wait_for_work(5.0))
            await asyncio.sleep(0.05)
            await client.submit_background(FN, b"wake")
            assert await asyncio.wait_for(waiter, 5) is True
        assert [j.workload for j in await drain(conn)] == [b"wake"]
        # PRE_SLEEP while a job is already queued: woken at once.
        async with GearmanClient([addr(gearmand)]) as client:
            await client.submit_background(FN, b"queued")
        assert await conn.wait_for_work(5.0) is True
    finally:
        conn.close()


async def test_admin_commands(gearmand: GearmanServer) -> None:
    host, port = addr(gearmand)
    assert (await admin.version(host, port)).startswith("1.1.")
    assert await admin.getpid(host, port) > 0
    conn = await worker_conn(gearmand, FN, "other_fn")
    await conn.set_client_id("w-1")
    try:
        async with GearmanClient([addr(gearmand)]) as client:
            handles = await client.submit_background_many(FN, [b"1", b"2"], uniques=["ua", "ub"])
            for _ in range(100):  # CAN_DO has no answer: wait until gearmand shows it
                rows = {r.name: r for r in await admin.status(host, port)}
                if FN in rows and rows[FN].workers == 1:
                    break
                await asyncio.sleep(0.02)
            assert rows[FN].queued == 2 and rows[FN].running == 0 and rows[FN].workers == 1
            assert rows["other_fn"].queued == 0
            (job, *_) = await conn.grab_jobs(1)
            rows = {r.name: r for r in await admin.status(host, port)}
            assert rows[FN].queued == 2 and rows[FN].running == 1
            me = [w for w in await admin.workers(host, port) if w.client_id == "w-1"]
            assert len(me) == 1 and set(me[0].functions) == {FN, "other_fn"}
            jobs = {j.handle.encode(): j for j in await admin.show_jobs(host, port)}
            assert set(jobs) == set(handles)
            assert set(await admin.show_unique_jobs(host, port)) == {"ua", "ub"}
            with pytest.raises(GearmanServerError, match="UNKNOWN_COMMAND"):
                await admin.admin_command(host, port, "bogus", multiline=True)
            await conn.complete(job)
    finally:
        conn.close()
    with pytest.raises(GearmanConnectionError):
        await admin.status("127.0.0.1", free_port(), timeout_s=1)


async def test_client_fails_over_from_dead_first_server(gearmand: GearmanServer) -> None:
    dead = ("127.0.0.1", free_port())
    async with GearmanClient([dead, addr(gearmand)], backoff_initial_s=5, backoff_max_s=5) as client:
        handles = [await client.submit_background(FN, b"x%d" % i) for i in range(3)]
        handles += await client.submit_background_many(FN, [b"m"] * 300)
        assert len(set(handles)) == 303
    assert await queued(gearmand, 303) == 303

    async with GearmanClient([dead, ("127.0.0.1", free_port())], connect_timeout_s=1) as client:
        started = time.monotonic()
        with pytest.raises(GearmanUnavailableError) as info:
            await client.submit_background(FN, b"x")
        assert info.value.retry_after_s > 0
        # Both servers are in back-off now: refused at once, without connecting.
        with pytest.raises(GearmanUnavailableError, match="back-off"):
            await client.submit_background(FN, b"x")
        assert time.monotonic() - started < 3


async def test_client_and_worker_survive_gearmand_restart(gearmand: GearmanServer) -> None:
    fast = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 1.0, "io_timeout_s": 2.0}
    async with GearmanClient([addr(gearmand)], **fast) as client, GearmanWorker(
        [addr(gearmand)], [FN], client_id="restart-test", **fast
    ) as worker:
        await client.submit_background_many(FN, [b"before", b"unacked"])
        jobs = await worker.fetch_batch(10, 0.2)
        assert [j.workload for j in jobs] == [b"before", b"unacked"]
        assert await worker.complete_many(jobs[:1]) == []

        gearmand.stop()
        await asyncio.sleep(0.1)  # let the event loop see the server's FIN
        assert await worker.complete_many(jobs[1:]) == jobs[1:]  # reported lost, not raised
        with pytest.raises(GearmanConnectionError):
            await client.submit_background(FN, b"while down")
        for _ in range(3):
            assert await worker.fetch_batch(10, 0.1) == []  # no exception while the server is down
        assert worker.connected_servers == []

        gearmand.start()  # same port, empty in-memory queue
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.submit_background(FN, b"after")
                break
            except GearmanUnavailableError as exc:
                assert time.monotonic() < deadline
                await asyncio.sleep(exc.retry_after_s)
        got: list[Job] = []
        while not got and time.monotonic() < deadline:
            got = await worker.fetch_batch(10, 0.2)
        assert [j.workload for j in got] == [b"after"]
        assert worker.connected_servers == [addr(gearmand)]
        assert await worker.complete_many(got) == []
    assert await queued(gearmand, 0) == 0


async def test_multi_server_worker(gearmand_factory: Callable[..., GearmanServer]) -> None:
    a, b = gearmand_factory(), gearmand_factory()
    dead = ("127.0.0.1", free_port())
    async with GearmanClient([addr(a)]) as ca, GearmanClient([addr(b)]) as cb:
        await ca.submit_background_many(FN, [b"a%d" % i for i in range(50)])
        await cb.submit_background_many(FN, [b"b%d" % i for i in range(50)])
    async with GearmanWorker([dead, addr(a), addr(b)], [FN], backoff_initial_s=0.05, backoff_max_s=0.2) as worker:
        seen: list[bytes] = []
        jobs: list[Job] = []
        for _ in range(10):
            batch = await worker.fetch_batch(32, 0.2)
            assert len(batch) <= 32
            jobs += batch
            if len(jobs) == 100:
                break
        seen = sorted(j.workload for j in jobs)
        assert seen == sorted([b"a%d" % i for i in range(50)] + [b"b%d" % i for i in range(50)])
        assert {j.connection.port for j in jobs} == {a.port, b.port}
        assert sorted(worker.connected_servers) == sorted([addr(a), addr(b)])
        # Complete a's jobs; then b "dies" before its jobs are acked: they are reported lost, not raised.
        from_b = [j for j in jobs if j.connection.port == b.port]
        from_a = [j for j in jobs if j.connection.port == a.port]
        from_b[0].connection.close("simulated crash")
        lost = await worker.complete_many(jobs)
        assert lost == from_b
        assert await queued(a, 0) == 0
        # ...and gearmand b hands them out again after the reconnect.
        again: list[Job] = []
        for _ in range(20):
            again += await worker.fetch_batch(64, 0.2)
            if len(again) == len(from_b):
                break
        assert sorted(j.workload for j in again) == sorted(j.workload for j in from_b)
        assert await worker.complete_many(again) == []
        assert from_a and await queued(b, 0) == 0


async def test_release_requeues(gearmand: GearmanServer) -> None:
    async with GearmanClient([addr(gearmand)]) as client:
        await client.submit_background_many(FN, [b"1", b"2"])
    async with GearmanWorker([addr(gearmand)], [FN]) as worker:
        jobs = await worker.fetch_batch(10, 0.2)
        assert len(jobs) == 2
        worker.release(jobs)
        again = await worker.fetch_batch(10, 0.5)
        assert sorted(j.workload for j in again) == [b"1", b"2"]
        assert await worker.complete_many(again) == []


async def test_paused_gearmand_fails_within_deadline(gearmand: GearmanServer) -> None:
    conn = await worker_conn(gearmand, FN, io_timeout_s=0.5)
    async with GearmanClient([addr(gearmand)], io_timeout_s=0.5, connect_timeout_s=0.5) as client, GearmanWorker(
        [addr(gearmand)], [FN], io_timeout_s=0.5, connect_timeout_s=0.5
    ) as worker:
        await client.submit_background(FN, b"warm-up")  # connection is up before the pause
        assert len(await worker.fetch_batch(5, 0.1)) == 1
        gearmand.pause()
        try:
            started = time.monotonic()
            with pytest.raises(GearmanConnectionError):
                await client.submit_background(FN, b"x")
            with pytest.raises(GearmanConnectionError):
                await client.submit(FN, b"x", timeout_s=30)
            with pytest.raises(GearmanTimeoutError):
                await conn.grab_jobs(4)
            assert conn.closed
            assert await worker.fetch_batch(5, 0.1) == []  # logged, no exception
            with pytest.raises(GearmanTimeoutError):
                await admin.status(gearmand.host, gearmand.port, timeout_s=0.5)
            # Six calls, each bounded by its ~0.5 s deadline (generous margin for a loaded machine).
            assert time.monotonic() - started < 10
        finally:
            gearmand.resume()
            conn.close()


async def test_garbage_from_server_closes_connection() -> None:
    peers: list[asyncio.StreamWriter] = []

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        while await reader.read(100):  # until our side hangs up
            pass
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = GearmanWorkerConnection("127.0.0.1", port, io_timeout_s=2)
        await conn.connect()
        with pytest.raises(GearmanProtocolError, match="48 54 54 50"):
            await conn.grab_jobs(1)
        assert conn.closed
        async with GearmanClient([("127.0.0.1", port)], io_timeout_s=2) as client:
            with pytest.raises(GearmanUnavailableError, match="bad packet magic"):
                await client.submit_background(FN, b"x")
    finally:
        for peer in peers:
            peer.close()
        server.close()
        await server.wait_closed()


async def test_cancelled_fetch_leaves_worker_usable(gearmand: GearmanServer) -> None:
    async with GearmanWorker([addr(gearmand)], [FN]) as worker, GearmanClient([addr(gearmand)]) as client:
        assert await worker.fetch_batch(8, 0.05) == []  # connected, idle
        fetch = asyncio.create_task(worker.fetch_batch(8, 30.0))
        await asyncio.sleep(0.1)  # now sleeping in PRE_SLEEP / NOOP wait
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        await client.submit_background(FN, b"after cancel")
        jobs = await worker.fetch_batch(8, 1.0)
        assert [j.workload for j in jobs] == [b"after cancel"]
        assert await worker.complete_many(jobs) == []

    # Cancelled in the middle of a grab: the connection is closed, so gearmand requeues what it assigned.
    async with GearmanClient([addr(gearmand)]) as client:
        await client.submit_background(FN, b"in flight")
    conn = await worker_conn(gearmand, FN)
    grab = asyncio.create_task(conn.grab_jobs(64))
    await asyncio.sleep(0)  # the request is written, the answers not read yet
    grab.cancel()
    with pytest.raises(asyncio.CancelledError):
        await grab
    assert conn.closed
    other = await worker_conn(gearmand, FN)
    try:
        jobs = []
        for _ in range(50):
            jobs = await other.grab_jobs(4)
            if jobs:
                break
            await other.wait_for_work(0.1)
        assert [j.workload for j in jobs] == [b"in flight"]
        await other.complete_many(jobs)
    finally:
        other.close()


async def test_hung_server_does_not_stall_the_others(gearmand_factory: Callable[..., GearmanServer]) -> None:
    hung, healthy = gearmand_factory(), gearmand_factory()
    async with GearmanClient([addr(healthy)]) as client:
        await client.submit_background_many(FN, [b"%d" % i for i in range(300)])
    hung.pause()
    try:
        async with GearmanWorker(
            [addr(hung), addr(healthy)], [FN], io_timeout_s=0.5, connect_timeout_s=0.5, backoff_initial_s=0.05
        ) as worker:
            got: list[Job] = []
            started = time.monotonic()
            while len(got) < 300 and time.monotonic() - started < 20:
                jobs = await worker.fetch_batch(64, 0.2)
                assert await worker.complete_many(jobs) == []
                got += jobs
            assert sorted(j.workload for j in got) == sorted(b"%d" % i for i in range(300))
            assert worker.connected_servers == [addr(healthy)]  # the hung one never passed its ECHO check
    finally:
        hung.resume()
