"""Faults under a steady write load: each case ends with sync-verify reporting 0 differences.

Every case: the `data` table (400 starting rows) with the capture triggers (or the binlog
source), a writer doing single-row UPDATE/INSERT/DELETE at a bounded rate the whole time, the fault
injected while it writes, then: writer stopped, queues and spool drained, sync-verify (the console
script) → exit 0, 0 missing/different/extra. Duplicates are harmless by version: where a case
re-delivers jobs the workers' `stale` count shows the fence absorbing them.

Figures go to $GEARSYNC_FAULT_REPORT (tests/faults/report.py) → docs/faults.md.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_exceptions

from sync.keys import dead_letter_key
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .report import record
from .rig import BIN, TABLE, UDF_OPTIONS, Rig

pytestmark = pytest.mark.faults


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Redis servers of the test's own (the cases kill them)."""
    started: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        r = RedisServer(tmp_path / f"redis{len(started)}", extra_args=list(extra))
        started.append(r)
        r.start()
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def rig_factory(udf_installed: MariaDBServer, db: Any, tmp_path: Path) -> Iterator[Callable[..., Rig]]:  # noqa: F811
    rigs: list[Rig] = []

    def make(gearmand: GearmanServer | None, redis: RedisServer, mariadb: MariaDBServer | None = None,
             database: str | None = None) -> Rig:
        rig = Rig(mariadb or udf_installed, database or db.db_name, gearmand, redis, tmp_path)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
def binlog_db(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A mariadbd of the test's own (the binlog cases restart or kill it) holding the database `app`."""
    server = MariaDBServer(tmp_path / "binlog-db")
    server.start()
    try:
        server.execute("CREATE DATABASE app")
        yield server
    finally:
        server.stop()


def binlog_rig(rig_factory: Callable[..., Rig], server: MariaDBServer, redis: RedisServer) -> tuple[Rig, Any]:
    """The `data` table without triggers, and sync-binlog (--sink redis) streaming it from the start;
    returns once it streams (a server it cannot reach at start is exit 3, not what the cases measure)."""
    rig = rig_factory(None, redis, mariadb=server, database="app")
    rig.make_table(triggers=False)
    binlog = rig.spawn("sync-binlog", "sync-binlog", "--table", "data", "--database", "app", "--start",
                       "earliest", "--log-format", "json", "--stats-interval", "0")
    rig.wait(lambda: not binlog.alive() or any(ev.get("event") == "binlog_connected" for ev in binlog.events()),
             60, "sync-binlog streaming")
    assert binlog.alive(), binlog.log()[-3000:]
    return rig, binlog


def finish(case: str, rig: Rig, writer: Any, report: dict[str, Any], lost_override: int | None = None,
           **details: Any) -> None:
    """Record the run (lost_override: what was lost before a repair, where the case runs one), then
    assert the final verify found nothing and nothing was dead-lettered."""
    totals = rig.worker_totals()
    lost = report["missing"] + report["different"] + report["extra"]
    figures = {"duplicates_fenced": totals.get("stale", 0), "dead_letters": totals.get("dead", 0), **details}
    record(case, written=writer.changes, lost=lost if lost_override is None else lost_override, differences=lost,
           statements=writer.statements, statement_errors=writer.errors, verify=report, **figures)
    assert report["exit_code"] == 0 and lost == 0, report
    assert totals.get("dead", 0) == 0, totals


def stop_all(rig: Rig) -> None:
    """Stop the workers cleanly (so their counters are logged) and the other processes."""
    rig.stop_workers()
    rig.close()


# -- gearmand ------------------------------------------------------------------------------------

@pytest.mark.parametrize("queue", ["libsqlite3", "mysql"])
def test_gearmand_sigkill_with_thousands_queued(queue: str, gearmand_factory, redis_factory, rig_factory,
                                                udf_installed: MariaDBServer) -> None:
    """Workers stopped, thousands of jobs pile up in a persistent queue, gearmand SIGKILLed and
    restarted: every job comes back; changes written meanwhile go to the spool."""
    kw: dict[str, Any] = {"queue": queue}
    if queue == "mysql":
        kw.update(mysql=udf_installed, extra_args=["--mysql-table", "q_" + uuid.uuid4().hex[:10]])
    g = gearmand_factory(**kw)
    rig = rig_factory(g, redis_factory())
    rig.make_table()
    writer = rig.writer(rate_per_s=500).start()
    try:
        deadline = time.monotonic() + 30
        while rig.queued() < 2000 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = rig.queued()
        assert before >= 1000, f"only {before} jobs queued after 30 s (spool: {rig.spool()})"
        g.kill()
        time.sleep(1.0)               # writes meanwhile: the UDF times out, the spool takes them
        g.start()
        after_restart = rig.queued()
        rig.start_relay()
        rig.start_workers(2)
        time.sleep(3.0)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    finish(f"gearmand SIGKILL with queued jobs (-q {queue})", rig, writer, report,
           queued_at_kill=before, queued_after_restart=after_restart)
    assert after_restart >= before, (before, after_restart)


def test_gearmand_down_for_a_while(gearmand_factory, redis_factory, rig_factory) -> None:
    g = gearmand_factory(queue="libsqlite3")
    rig = rig_factory(g, redis_factory())
    rig.make_table()
    rig.start_workers(2)
    rig.start_relay()
    writer = rig.writer(rate_per_s=300).start()
    try:
        time.sleep(2.0)
        g.stop()
        t_down = time.monotonic()
        time.sleep(3.0)
        spooled = rig.spool()
        t_up = time.monotonic()
        g.start()
        time.sleep(2.0)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    finish("gearmand down 3 s during writes (spool, then sync-relay)", rig, writer, report,
           spooled_while_down=spooled, worst_statement_s_while_down=round(writer.worst_latency_s(t_down, t_up), 4))
    assert spooled > 0


def test_gearmand_sigstop(gearmand_factory, redis_factory, rig_factory) -> None:
    """A hung gearmand: statements slow by at most about the UDF timeout (100 ms), then the server
    is skipped for retry_ms and changes go to the spool; after SIGCONT everything drains."""
    g = gearmand_factory()
    rig = rig_factory(g, redis_factory())
    rig.make_table()
    rig.start_workers(2)
    rig.start_relay()
    writer = rig.writer(rate_per_s=300).start()
    try:
        time.sleep(2.0)
        t_stop = time.monotonic()
        g.pause()
        time.sleep(4.0)
        t_cont = time.monotonic()
        g.resume()
        time.sleep(3.0)
    finally:
        g.resume()
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    worst = writer.worst_latency_s(t_stop, t_cont)
    baseline = writer.worst_latency_s(0, t_stop)
    slow = sum(1 for t, d in writer.latencies_s if t_stop <= t <= t_cont and d > 0.05)
    finish("gearmand SIGSTOP 4 s during writes", rig, writer, report, worst_statement_s_while_stopped=round(worst, 4),
           worst_statement_s_before=round(baseline, 4), statements_over_50ms_while_stopped=slow)
    # Not a benchmark: a statement blocked on the hung server (the classic UDF: > 20 s) shows here.
    assert worst < 2.0, worst


# -- Redis ---------------------------------------------------------------------------------------

def test_redis_sigkill_with_appendonly_loses_nothing(gearmand_factory, redis_factory, rig_factory) -> None:
    """Redis with appendonly yes + appendfsync always, SIGKILLed for 3 s: the workers hold their
    batch and retry; no repair is run, so the 0 differences are the pipeline's own."""
    g = gearmand_factory()
    redis = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    rig = rig_factory(g, redis)
    rig.make_table()
    rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    try:
        time.sleep(2.0)
        redis.kill()
        time.sleep(3.0)
        queued_while_down = rig.queued()
        redis.start()
        time.sleep(2.0)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    finish("Redis SIGKILL 3 s (appendonly, fsync always; no repair)", rig, writer, report,
           queued_while_redis_down=queued_while_down, retries=rig.worker_totals().get("retries", 0))
    assert queued_while_down > 0


def test_redis_sigkill_without_persistence_then_repair(gearmand_factory, redis_factory, rig_factory) -> None:
    """Redis without persistence loses its whole dataset on a kill: that is Redis' loss, not the
    pipeline's. sync-verify finds it, sync-verify --repair restores it, the next verify is 0."""
    g = gearmand_factory()
    redis = redis_factory()
    rig = rig_factory(g, redis)
    rig.make_table()
    rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    try:
        time.sleep(2.0)
        redis.kill()
        time.sleep(2.0)
        redis.start()
        time.sleep(2.0)
    finally:
        writer.stop()
    rig.wait(lambda: rig.spool() == 0 and rig.queued() == 0, 60, "queue empty")
    before = rig.verify()
    repaired = rig.verify(repair=True, recheck_delay_s=0)
    report = rig.verify()
    stop_all(rig)
    finish("Redis SIGKILL, no persistence (sync-verify --repair)", rig, writer, report,
           missing_before_repair=before["missing"], repaired=repaired["repaired"] + repaired["deleted"])
    assert before["missing"] > 0  # the restart really emptied Redis


def _redis_oom_under_writes(redis: RedisServer, rig: Rig, seconds: float = 4.0) -> int:
    """After 2 s of writes, Redis' maxmemory set (CONFIG SET) to half of what it uses: with
    noeviction every write is refused with OOM. After `seconds`, memory is freed (maxmemory 0)
    and the writer goes on for 2 s. Returns the jobs gearmand held just before (0 on the binlog path)."""
    time.sleep(2.0)
    client = redis.client()
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used // 2)
        with pytest.raises(redis_exceptions.OutOfMemoryError):
            client.set("oom-probe", "x")
        time.sleep(seconds)
        held = rig.queued()
        client.config_set("maxmemory", 0)
    finally:
        client.close()
    time.sleep(2.0)
    return held


def _events(procs: list[Any], name: str) -> list[dict[str, Any]]:
    return [ev for p in procs for ev in p.events() if ev.get("event") == name]


def test_redis_maxmemory_oom_holds_changes(gearmand_factory, redis_factory, rig_factory) -> None:
    """Redis at maxmemory (noeviction) answers every write with OOM for 4 s: the workers hold their
    batch (no acknowledgement, no dead letter: a dead letter needs Redis too), retry with back-off
    and log one line per episode; once memory is freed everything applies. No repair."""
    g = gearmand_factory()
    redis = redis_factory("--maxmemory-policy", "noeviction")
    rig = rig_factory(g, redis)
    rig.make_table()
    workers = rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    try:
        held = _redis_oom_under_writes(redis, rig)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    lines = [ev for ev in _events(workers, "redis_unavailable") if "maxmemory" in ev.get("error", "")]
    retries = rig.worker_totals().get("retries", 0)
    client = redis.client()
    letters = client.llen(dead_letter_key(TABLE))
    client.close()
    finish("Redis at maxmemory 4 s (noeviction: OOM), then freed", rig, writer, report, held_while_oom=held,
           oom_replies=retries, oom_log_lines=len(lines))
    assert held > 0 and retries > 0 and letters == 0, (held, retries, letters)
    # One warning per episode of a worker (not per attempt, job or batch in flight), each ended by one
    # redis_recovered. Usually one episode per worker; a write that fits under maxmemory for a moment
    # (memory moves as clients come and go) ends an episode early and the next OOM opens another.
    recovered = _events(workers, "redis_recovered")
    assert 0 < len(lines) <= len(recovered) < retries, (lines, recovered, retries)


def test_redis_maxmemory_oom_binlog_sink(binlog_db: MariaDBServer, redis_factory, rig_factory) -> None:
    """The same OOM episode under sync-binlog --sink redis: it holds the batch and its position,
    retries, logs one line per episode, and applies everything once memory is freed."""
    redis = redis_factory("--maxmemory-policy", "noeviction")
    rig, binlog = binlog_rig(rig_factory, binlog_db, redis)
    writer = rig.writer(rate_per_s=300).start()
    try:
        _redis_oom_under_writes(redis, rig)
    finally:
        writer.stop()
    report = _verify_until_equal(rig, 60)
    assert binlog.alive(), binlog.log()[-3000:]
    stop_all(rig)
    lines = [ev for ev in _events([binlog], "sink_unavailable") if "maxmemory" in ev.get("error", "")]
    retries = sum(int(ev.get("retries", 0)) for ev in _events([binlog], "binlog_stopped"))
    finish("Redis at maxmemory 4 s (noeviction: OOM), then freed; sync-binlog --sink redis", rig, writer,
           report, oom_replies=retries, oom_log_lines=len(lines))
    assert retries > 0, retries
    assert 0 < len(lines) <= 2, lines    # one line per episode (the batch; its saved position)


# -- workers -------------------------------------------------------------------------------------

def test_worker_sigkill_mid_batch(gearmand_factory, redis_factory, rig_factory) -> None:
    g = gearmand_factory()
    redis = redis_factory()
    rig = rig_factory(g, redis)
    rig.make_table()
    writer = rig.writer(rate_per_s=300).start()
    kills = 0
    try:
        rig.wait(lambda: rig.queued() >= 1200, 30, "a backlog")
        for _ in range(3):
            rig.wait(lambda: rig.queued() >= 600, 30, "a backlog")
            # Redis hung: the worker's first batch cannot be applied, so it is surely in hand (an
            # unhindered worker drained the whole backlog before a poll could catch it mid-batch).
            redis.pause()
            w = rig.start_worker("--batch", "64")
            rig.wait(lambda: rig.running() > 0, 20, "the worker holding a batch")
            w.kill()                                  # SIGKILL with a batch in hand
            redis.resume()
            rig.workers.remove(w)
            kills += 1
        left = rig.queued()
        rig.start_workers(2)
        time.sleep(2.0)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    finish("sync-worker SIGKILL mid-batch (3 times)", rig, writer, report, kills=kills, queued_after_kills=left)
    assert left > 0


def test_all_workers_stopped_then_restarted(gearmand_factory, redis_factory, rig_factory) -> None:
    g = gearmand_factory()
    rig = rig_factory(g, redis_factory())
    rig.make_table()
    rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    try:
        time.sleep(2.0)
        rig.stop_workers()
        time.sleep(3.0)
        backlog = rig.queued()
        rig.start_workers(2)
        time.sleep(2.0)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    finish("all sync-workers stopped 3 s, then restarted", rig, writer, report, backlog=backlog)
    assert backlog > 0


# -- MariaDB -------------------------------------------------------------------------------------

def test_mariadb_restart_during_binlog_streaming(binlog_db: MariaDBServer, redis_factory, rig_factory) -> None:
    rig, binlog = binlog_rig(rig_factory, binlog_db, redis_factory())
    writer = rig.writer(rate_per_s=300).start()
    try:
        time.sleep(2.0)
        binlog_db.restart()
        time.sleep(3.0)
    finally:
        writer.stop()
    report = _verify_until_equal(rig, 60)
    assert binlog.alive(), binlog.log()[-3000:]
    stop_all(rig)
    finish("MariaDB restart during sync-binlog streaming", rig, writer, report,
           writer_reconnects=writer.reconnects)


def _verify_until_equal(rig: Rig, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        report = rig.verify()
        if report["exit_code"] == 0 or time.monotonic() > deadline:
            return report
        time.sleep(1.0)


def test_mariadb_restart_during_trigger_capture(own_mariadb: MariaDBServer, gearmand_factory, redis_factory,  # noqa: F811
                                                rig_factory) -> None:
    """Two restarts of mysqld under the writer. The UDF's server list (gman_servers_set) lives in
    mysqld's memory; after each restart it must come back on its own: first from mysqld's
    environment (GEARSYNC_GEARMAN_SERVERS), then from gearsync_udf.conf beside the library. No
    relay runs until the end, so a change the UDF could not send would stay in the spool.

    gearmand keeps its queue in memory here: with -q libsqlite3 each JOB_CREATED waits for an
    fsync, and while mysqld restarts (InnoDB's own I/O) those took over 2 s on our VM, so the UDF
    timed out, put the server in back-off and spooled a second of writes: correct behaviour, but
    not what this case measures (persistent queues have their own cases above)."""
    g = gearmand_factory()
    own_mariadb.execute("CREATE DATABASE app")
    rig = rig_factory(g, redis_factory(), mariadb=own_mariadb, database="app")
    rig.make_table()                      # gman_servers_set at runtime
    rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    conf = own_mariadb.plugin_dir / "gearsync_udf.conf"
    spool_after: list[int] = []      # rows the spool gained over each restart + 3 s of writes
    try:
        time.sleep(2.0)
        before = rig.spool()   # a first row that times out on a new connection spools (by design)
        own_mariadb.env["GEARSYNC_GEARMAN_SERVERS"] = g.address
        own_mariadb.restart()
        time.sleep(3.0)
        spool_after.append(rig.spool() - before)
        before = rig.spool()
        del own_mariadb.env["GEARSYNC_GEARMAN_SERVERS"]
        conf.write_text(f"servers = {g.address}\ntimeout_ms = 100\n")
        own_mariadb.restart()
        time.sleep(3.0)
        spool_after.append(rig.spool() - before)
    finally:
        writer.stop()
    rig.start_relay()                     # whatever a restart caught mid-send
    report = rig.settle_and_verify()
    stop_all(rig)
    finish("MariaDB restart during trigger capture (UDF servers from env, then conf)", rig, writer, report,
           spooled_after_restarts=spool_after, writer_reconnects=writer.reconnects)
    # ~900 writes after each restart: had the UDF forgotten the servers (default 127.0.0.1:4730,
    # nothing there), all of them would be in the spool
    assert all(n < 50 for n in spool_after), spool_after


def _kill_mysqld_under_writes(server: MariaDBServer, kills: int = 2) -> list[float]:
    """SIGKILL mysqld `kills` times, 2 s of writes apart, each time started again at once (no
    shutdown, no spill file: InnoDB crash recovery); then 3 s more of writes. The kill instants."""
    at: list[float] = []
    for _ in range(kills):
        time.sleep(2.0)
        at.append(time.monotonic())
        server.kill()
        server.start()
    time.sleep(3.0)
    return at


def _in_flight(rig: Rig, writer: Any) -> tuple[int, int, list[str]]:
    """Statements that failed on the killed connection, read from MySQL after the restart:
    (committed after all, not committed, names of those not committed that Redis shows)."""
    committed = rig.names_in_mysql([name for _, name in writer.failed])
    gone = [(rid, name) for rid, name in writer.failed if name not in committed]
    return len(committed), len(gone), [name for rid, name in gone if rig.name_in_redis(rid) == name]


def _phantom_differences(writer: Any, phantoms: list[str], examples: dict[str, list[str]]) -> tuple[int, list[str]]:
    """The differences of a verify report that are phantoms' rows (a statement in flight at a kill that
    did not commit, whose job had gone out from its AFTER trigger before the COMMIT): (how many, the
    example keys that are not such a row)."""
    rows = {rid for rid, name in writer.failed if name in phantoms}
    keys = [k.split()[0] for kind in ("missing", "different", "extra") for k in examples.get(kind, [])]
    others = [k for k in keys if int(k.rpartition(":")[2]) not in rows]
    return len(keys) - len(others), others


def _journal_jobs_read(server: MariaDBServer) -> int:
    """Jobs the UDF read back from its journal when mysqld started again (its error log)."""
    text = server.log_path.read_text(errors="replace")
    return sum(int(n) for n in re.findall(r"(\d+) background job\(s\) a previous mysqld process left "
                                          r"unacknowledged", text))


@pytest.mark.parametrize("pipeline", ["1", "0"], ids=["pipelined", "confirmed"])
def test_mysqld_sigkill_during_trigger_capture(pipeline: str, own_mariadb: MariaDBServer,  # noqa: F811
                                               gearmand_factory, redis_factory, rig_factory) -> None:
    """mysqld SIGKILLed twice under the writer and started again (crash recovery); the UDF reads its
    servers and options from gearsync_udf.conf, the writer reconnects. Every committed change reaches
    Redis before any repair: with pipeline=1 (the default) the jobs no gearmand had acknowledged at the
    kill are in the UDF's journal (udf/README.md) and go out when mysqld starts again; with pipeline=0
    every submit waited for JOB_CREATED.

    Phantoms: the trigger sends its job before the COMMIT, so a kill between the two can leave a
    change in Redis that MySQL never committed (inherent to trigger capture; the outbox mode is the
    transactional one). They are counted, the repair removes them, and each difference verify finds
    before the repair must be the row of a statement in flight at a kill that did not commit."""
    g = gearmand_factory()
    own_mariadb.execute("CREATE DATABASE app")
    options = f"{UDF_OPTIONS},pipeline={pipeline}"
    (own_mariadb.plugin_dir / "gearsync_udf.conf").write_text(      # the UDF's settings after each crash
        f"servers = {g.address}\n" + "".join(f"{kv.replace('=', ' = ')}\n" for kv in options.split(",")))
    rig = rig_factory(g, redis_factory(), mariadb=own_mariadb, database="app")
    rig.udf_options = options
    rig.make_table()
    rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    try:
        kills = _kill_mysqld_under_writes(own_mariadb)
    finally:
        writer.stop()
    rig.start_relay()                     # a first row on a new connection may time out and spool
    before = rig.settle_and_verify()
    committed, not_committed, phantoms = _in_flight(rig, writer)
    differences_before = before["missing"] + before["different"] + before["extra"]
    of_phantoms, unexplained = _phantom_differences(writer, phantoms, before["examples"])
    report = before
    if differences_before:
        rig.verify(repair=True, recheck_delay_s=0)
        report = rig.verify()
    stop_all(rig)
    name = ("(pipelined, the default, with the UDF journal; 2 kills)" if pipeline == "1"
            else "(pipeline=0: confirmed submits; 2 kills)")
    finish(f"mysqld SIGKILL during trigger capture {name}", rig, writer, report,
           lost_override=differences_before - of_phantoms, differences_before_repair=differences_before,
           before_repair=before["examples"], in_flight_committed=committed, in_flight_failed=not_committed,
           phantoms=len(phantoms), phantom_names=phantoms, journal_jobs_read=_journal_jobs_read(own_mariadb),
           writer_reconnects=writer.reconnects, kills=len(kills))
    # nothing committed is missing before the repair: every difference is a phantom's row
    assert differences_before == of_phantoms and not unexplained, (unexplained, before, phantoms)
    assert writer.reconnects > 0


def test_mysqld_sigkill_during_binlog_streaming(binlog_db: MariaDBServer, redis_factory, rig_factory) -> None:
    """mysqld SIGKILLed twice under the writer: sync-binlog (--sink redis) loses its connection,
    reconnects once the server is back and resumes from its saved position. No repair: what the
    binlog holds after crash recovery is exactly what committed, and all of it reaches Redis; a
    statement the writer saw fail reaches Redis only if MySQL shows it committed."""
    rig, binlog = binlog_rig(rig_factory, binlog_db, redis_factory())
    writer = rig.writer(rate_per_s=300).start()
    try:
        kills = _kill_mysqld_under_writes(binlog_db)
    finally:
        writer.stop()
    report = _verify_until_equal(rig, 60)
    committed, not_committed, phantoms = _in_flight(rig, writer)
    assert binlog.alive(), binlog.log()[-3000:]
    stop_all(rig)
    events = binlog.events()
    connects = sum(1 for ev in events if ev.get("event") == "binlog_connected")
    stale = sum(int(ev.get("stale", 0)) for ev in events if ev.get("event") == "binlog_stopped")
    finish("mysqld SIGKILL during sync-binlog streaming (2 kills, crash recovery)", rig, writer, report,
           in_flight_committed=committed, in_flight_failed=not_committed, phantoms=phantoms,
           writer_reconnects=writer.reconnects, kills=len(kills), binlog_reconnects=connects - 1,
           duplicates_fenced=stale)
    assert not phantoms, phantoms
    assert connects - 1 >= len(kills), connects   # it reconnected after each kill, and stayed up


# -- sync-relay ----------------------------------------------------------------------------------

KILL_AFTER_SUBMIT = (
    "import os, signal, sync.capture.relay as r\n"
    "r.SpoolRelay._finish = lambda self, *a: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from workers.sync_relay import main\n"
    "main()\n"
)


def test_relay_killed_between_submit_and_delete(gearmand_factory, redis_factory, rig_factory) -> None:
    """Outbox triggers: every change goes through the spool. A relay whose DELETE is replaced by
    SIGKILL dies exactly after gearmand accepted a batch and before the rows left the spool; three
    such relays, then a real one. The re-sent batches arrive twice; versions make that harmless."""
    g = gearmand_factory()
    rig = rig_factory(g, redis_factory())
    rig.make_table(mode="outbox")
    rig.start_workers(2)
    writer = rig.writer(rate_per_s=300).start()
    killed = 0
    try:
        time.sleep(1.0)
        for _ in range(3):
            p = rig.spawn("killed-relay", "python", "-c", KILL_AFTER_SUBMIT, "--database", rig.database,
                          "--log-format", "json", "--stats-interval", "0", "--batch", "200")
            rc = p._wait(30)
            assert rc == -9, p.log()[-2000:]
            killed += 1
            time.sleep(0.5)
        rig.start_relay()
        time.sleep(2.0)
    finally:
        writer.stop()
    report = rig.settle_and_verify()
    stop_all(rig)
    totals = rig.worker_totals()
    finish("sync-relay SIGKILL between submit and delete (3 times)", rig, writer, report, relay_kills=killed)
    assert totals.get("stale", 0) > 0, totals   # the re-sent jobs were fenced, not applied twice


assert BIN.is_dir()
