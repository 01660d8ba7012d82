"""The gearman UDFs inside a real mariadbd, against real gearmand servers; nothing mocked.

Jobs are checked byte for byte on the worker side (GRAB_JOB_UNIQ through gearmand).
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest

from sync.testing.servers import GearmanServer, MariaDBServer, free_port
from tests.integration.udf_fixtures import (
    ASAN_MODE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_STATUS,
    WORK_WARNING,
    Worker,
    grab_all,
    own_mariadb,  # noqa: F401  (fixture)
    point_at,
    scalar,
    status,
    udf_installed,  # noqa: F401  (fixture)
    wait_until,
)

if ASAN_MODE:  # the same tests against the sanitizer build (make -C udf test-asan)
    from tests.integration.udf_fixtures import asan_mariadb  # noqa: F401  (overrides `mariadb`)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("udf_installed")]

UNIQUE_RE = re.compile(rb"^[0-9a-f]{40}$")
ALL_BYTES = bytes(range(256))


def test_servers_set_returns_the_canonical_list(db, gearmand: GearmanServer) -> None:
    assert point_at(db, f" {gearmand.host}:{gearmand.port} , [::1]:4731,localhost") == (
        f"{gearmand.address},[::1]:4731,localhost:4730".encode()
    )
    assert point_at(db, gearmand) == gearmand.address.encode()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty entry"),
        ("127.0.0.1:0", "port must be 1..65535"),
        ("127.0.0.1:70000", "port must be 1..65535"),
        ("a b:1", "bad character"),
        ("::1:4730", "[addr]:port"),
        ("h1,,h2", "empty entry"),
        ("[%%]:4730", "brackets are for IPv6"),
        ("[example]", "brackets are for IPv6"),
        (",".join(["h"] * 17), "more than 16"),
    ],
)
def test_servers_set_rejects_bad_syntax_with_a_message(db, spec: str, message: str) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        scalar(db, f"SELECT gman_servers_set('{spec}')")
    assert message in str(err.value)


def test_servers_set_rejects_bad_options(db, gearmand: GearmanServer) -> None:
    for opts, message in [("timeout_ms=0", "1..3600000"), ("pipeline=2", "0 or 1"), ("bogus=1", "unknown option"),
                          ("journal=2", "journal is 0 or 1"),
                          ("timeout_ms", "not key=value"), ("coalesce_us=100001", "coalesce_us is 0..100000"),
                          ("coalesce_us=-1", "coalesce_us is 0..100000")]:
        with pytest.raises(pymysql.err.OperationalError) as err:
            scalar(db, f"SELECT gman_servers_set('{gearmand.address}', '{opts}')")
        assert message in str(err.value)


def test_servers_set_with_a_non_constant_bad_value_is_null(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    scalar(db, "CREATE TABLE specs (s VARCHAR(40))")
    scalar(db, "INSERT INTO specs VALUES ('x:99999')")  # a column: init cannot see the value
    assert scalar(db, "SELECT gman_servers_set(s) FROM specs") is None
    assert b"port must be" in scalar(db, "SELECT gman_last_error()")
    # the previous list is still in force
    assert scalar(db, "SELECT gman_do_background('f', 'x')") is not None


def test_wrong_argument_counts_fail_at_init(db) -> None:
    for sql in ["SELECT gman_do_background('f')", "SELECT gman_do('f', 'w', 'u', 'x')",
                "SELECT gman_sum('f')", "SELECT gman_last_error(1)", "SELECT gman_flush(1)",
                "SELECT gman_servers_set()"]:
        with pytest.raises(pymysql.err.OperationalError) as err:
            scalar(db, sql)
        assert "argument" in str(err.value), sql


def test_background_job_arrives_byte_exact(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    got = scalar(db, "SELECT gman_do_background('f_exact', UNHEX(%s), 'my-unique-1')", ALL_BYTES.hex())
    assert got == b"my-unique-1"  # pipelined: the unique id stands for the job
    fn = "f_\u00e9t\u00e9"  # non-ASCII function name, sent as UTF-8
    got2 = scalar(db, "SELECT gman_do_background(%s, %s)", fn, "caf\u00e9 \U0001F600")
    assert UNIQUE_RE.match(got2)
    assert scalar(db, "SELECT gman_flush()") == 0
    jobs = grab_all(gearmand, "f_exact", fn, expect=2)
    assert sorted((j.function, j.unique, j.workload) for j in jobs) == [
        (b"f_exact", b"my-unique-1", ALL_BYTES),
        (fn.encode(), got2, "caf\u00e9 \U0001F600".encode()),
    ]


@pytest.mark.parametrize("coalesce_us", [0, 1000, 50000])
def test_a_lone_job_goes_out_without_another_call(db, gearmand: GearmanServer, coalesce_us: int) -> None:
    """Coalesced or not, a job a session leaves behind is sent (by the keeper thread when the session
    makes no further call)."""
    point_at(db, gearmand, options=f"timeout_ms=100,retry_ms=1000,pipeline=1,coalesce_us={coalesce_us}")
    assert scalar(db, "SELECT gman_do_background('f_lone', 'warm')") is not None  # proves the connection
    assert scalar(db, "SELECT gman_flush()") == 0
    assert [j.workload for j in grab_all(gearmand, "f_lone", expect=1)] == [b"warm"]
    assert scalar(db, "SELECT gman_do_background('f_lone', 'alone')") is not None
    assert [j.workload for j in grab_all(gearmand, "f_lone", expect=1, timeout_s=10)] == [b"alone"]


def test_empty_workload_is_sent_and_null_arguments_send_nothing(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    assert scalar(db, "SELECT gman_do_background('f_empty', '')") is not None
    assert scalar(db, "SELECT gman_do_background('f_empty', NULL)") is None
    assert b"NULL" in scalar(db, "SELECT gman_last_error()")
    assert scalar(db, "SELECT gman_do_background(NULL, 'x')") is None
    assert scalar(db, "SELECT gman_do_background('', 'x')") is None
    assert scalar(db, "SELECT gman_do_background('f_empty', 'x', REPEAT('u', 65))") is None
    assert b"unique id longer" in scalar(db, "SELECT gman_last_error()")
    assert scalar(db, "SELECT gman_flush()") == 0
    jobs = grab_all(gearmand, "f_empty", expect=1)
    assert [j.workload for j in jobs] == [b""]


def test_generated_unique_ids_differ_per_call(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    with db.cursor() as cur:
        cur.execute("SELECT gman_do_background('f_uq', seq) FROM seq_1_to_500")
        uniques = [row[0] for row in cur.fetchall()]
    assert len(set(uniques)) == 500 and all(UNIQUE_RE.match(u) for u in uniques)
    assert scalar(db, "SELECT gman_flush()") == 0
    jobs = grab_all(gearmand, "f_uq", expect=500)
    assert sorted(int(j.workload) for j in jobs) == list(range(1, 501))
    assert {j.unique for j in jobs} == set(uniques)


def test_priorities_reach_gearmand(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    for sql in ["SELECT gman_do_low_background('f_prio', 'low')", "SELECT gman_do_background('f_prio', 'normal')",
                "SELECT gman_do_high_background('f_prio', 'high')"]:
        assert scalar(db, sql) is not None
    assert scalar(db, "SELECT gman_flush()") == 0
    jobs = grab_all(gearmand, "f_prio", expect=3)
    assert [j.workload for j in jobs] == [b"high", b"normal", b"low"]


def test_pipeline_off_returns_the_job_handle(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand, options="pipeline=0")
    handle = scalar(db, "SELECT gman_do_background('f_handle', 'x')")
    assert handle.startswith(b"H:")
    assert scalar(db, "SELECT gman_do_high_background('f_handle', 'y', 'u-2')").startswith(b"H:")
    assert [j.workload for j in grab_all(gearmand, "f_handle", expect=2)] == [b"y", b"x"]


def test_foreground_jobs_return_the_worker_result(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    handlers: dict[str, Callable[[bytes], object]] = {
        "upper": lambda w: w.upper(),
        "chunks": lambda w: [(WORK_STATUS, b"1\x002"), (WORK_DATA, b"ab"), (WORK_WARNING, b"careful"),
                             (WORK_DATA, b"\x00cd"), (13, b"ef")],
        "fail": lambda w: None,
        "exception": lambda w: [(WORK_EXCEPTION, b"boom")],
        "binary": lambda w: bytes(reversed(w)),
        "empty": lambda w: b"",
    }
    with Worker(gearmand, handlers):
        assert scalar(db, "SELECT gman_do('upper', 'hello')") == b"HELLO"
        assert scalar(db, "SELECT gman_do_high('upper', 'high')") == b"HIGH"
        assert scalar(db, "SELECT gman_do_low('upper', 'low', 'uq-low')") == b"LOW"
        assert scalar(db, "SELECT gman_do('chunks', '')") == b"ab\x00cdef"
        assert scalar(db, "SELECT gman_do('binary', UNHEX(%s))", ALL_BYTES.hex()) == bytes(reversed(ALL_BYTES))
        assert scalar(db, "SELECT gman_do('empty', 'x')") == b""
        assert scalar(db, "SELECT gman_do('fail', 'x')") is None
        assert b"WORK_FAIL" in scalar(db, "SELECT gman_last_error()")
        assert scalar(db, "SELECT gman_do('exception', 'x')") is None
        # a background job pipelined before a foreground one on the same connection
        assert scalar(db, "SELECT gman_do_background('bg_mixed', 'x')") is not None
        assert scalar(db, "SELECT gman_do('upper', 'after')") == b"AFTER"
    assert [j.workload for j in grab_all(gearmand, "bg_mixed", expect=1)] == [b"x"]


def test_foreground_timeout_returns_null_in_bounded_time(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand, options="do_timeout_ms=300")
    release = threading.Event()

    def slow(w: bytes) -> bytes:
        release.wait(5)
        return b"late"

    with Worker(gearmand, {"slow": slow, "upper": lambda w: w.upper()}):
        start = time.monotonic()
        assert scalar(db, "SELECT gman_do('slow', 'x')") is None
        assert 0.25 < time.monotonic() - start < 2.0
        assert b"do_timeout_ms" in scalar(db, "SELECT gman_last_error()")
        release.set()
    # nobody serves `slow` any more: no job server answers, still bounded
    start = time.monotonic()
    assert scalar(db, "SELECT gman_do('nobody_serves_this', 'x')") is None
    assert time.monotonic() - start < 2.0


def test_gman_sum_adds_worker_results(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    with db.cursor() as cur:
        cur.execute("CREATE TABLE words (grp INT, w VARCHAR(20))")
        cur.execute("INSERT INTO words VALUES (1,'a'),(1,'bb'),(1,NULL),(2,'cccc'),(2,'dd'),(3,NULL)")
    with Worker(gearmand, {"len": lambda w: str(len(w)).encode(), "junk": lambda w: b"12x"}):
        with db.cursor() as cur:
            cur.execute("SELECT grp, gman_sum('len', w) FROM words GROUP BY grp ORDER BY grp")
            assert cur.fetchall() == ((1, 3), (2, 6), (3, None))
        assert scalar(db, "SELECT gman_sum('len', w) FROM words") == 9
        assert scalar(db, "SELECT gman_sum('len', w) FROM words WHERE 0") is None
        assert scalar(db, "SELECT gman_sum('junk', w) FROM words") is None


def test_gearmand_down_returns_null_quickly(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    assert scalar(db, "SELECT gman_do_background('f_down', 'x')") is not None
    gearmand.stop()
    start = time.monotonic()
    results, times = [], []
    # Call until the library has noticed (NULL) and then some: how many calls are still accepted
    # depends on how fast this machine runs them, so the count is bounded, not fixed.
    while len(results) < 2000 and results[-20:].count(None) < 20:
        results.append(scalar(db, "SELECT gman_do_background('f_down', %s)", str(len(results))))
        times.append(time.monotonic() - start)
    assert times[-1] < 2.0 and max(b - a for a, b in zip([0.0, *times], times)) < 0.5, times
    # The calls right after the stop may still be accepted: written into the dying connection, or
    # coalesced for up to coalesce_us (1 ms) before the send that finds the server gone. Once one
    # returns NULL every later one does (back-off), and the accepted ones are not lost:
    accepted = [str(i).encode() for i, r in enumerate(results) if r is not None]
    assert None in results, f"{len(results)} calls in {times[-1]:.3f} s after gearmand stopped, none returned NULL"
    first_null = results.index(None)
    assert results[first_null:] == [None] * (len(results) - first_null), results
    assert first_null == 0 or times[first_null - 1] < 0.05, (first_null, times)
    assert b"127.0.0.1" in scalar(db, "SELECT gman_last_error()")
    start = time.monotonic()
    assert scalar(db, "SELECT gman_do('f_down', 'x')") is None
    assert time.monotonic() - start < 1.0
    gearmand.start()  # same port: the library resends what it accepted
    got = [j.workload for j in grab_all(gearmand, "f_down", expect=len(accepted), timeout_s=20)]
    assert sorted(w for w in got if w != b"x") == sorted(accepted)


def test_silent_server_is_bounded_by_timeout_ms(db) -> None:
    # A loopback listener that completes the TCP handshake (kernel backlog) but never answers:
    # only a JOB_CREATED proves a job server, so each call ends at its deadline with NULL.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        point_at(db, f"127.0.0.1:{port}", options="timeout_ms=150,do_timeout_ms=300,retry_ms=0,pipeline=0")
        for sql in ["SELECT gman_do_background('f_unreachable', 'x')", "SELECT gman_do('f_unreachable', 'x')"]:
            start = time.monotonic()
            assert scalar(db, sql) is None
            assert time.monotonic() - start < 1.0


def make_trigger_table(db, rows: int, function: str) -> None:
    """`data` with an AFTER UPDATE trigger queueing each change (function names differ per test: a
    mysqld thread may carry unacknowledged jobs of an earlier test to the next test's servers)."""
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, payload VARCHAR(64))")
        cur.execute(f"INSERT INTO data SELECT seq, seq, CONCAT('p', seq) FROM seq_1_to_{rows}")
        cur.execute(
            "CREATE TRIGGER data_sync AFTER UPDATE ON data FOR EACH ROW "
            f"SET @gs_last = gman_do_background('{function}', gman_json_object("
            "NEW.id AS id, NEW.volume AS volume, NEW.payload AS payload))"
        )


@pytest.mark.parametrize("pipeline", [1, 0])
def test_sigstopped_gearmand_does_not_stall_an_update(db, gearmand: GearmanServer, pipeline: int) -> None:
    make_trigger_table(db, 3000, f"f_stop_{pipeline}")
    point_at(db, gearmand, options=f"timeout_ms=100,retry_ms=1000,pipeline={pipeline}")
    with db.cursor() as cur:
        cur.execute("UPDATE data SET volume = volume + 1 WHERE id = 1")  # warm connection
    gearmand.pause()
    try:
        for n in (10, 3000):  # 3000 rows overflow the pipeline window
            start = time.monotonic()
            with db.cursor() as cur:
                cur.execute(f"UPDATE data SET volume = volume + 1 WHERE id <= {n}")
                assert cur.rowcount == n
            assert time.monotonic() - start < 2.0, n
    finally:
        gearmand.resume()


def test_changes_from_a_trigger_arrive_as_json(db, gearmand: GearmanServer) -> None:
    import json

    make_trigger_table(db, 100, "f_sync_json")
    point_at(db, gearmand)
    with db.cursor() as cur:
        cur.execute("UPDATE data SET volume = volume * 10, payload = CONCAT(payload, '\"\\\\\t') WHERE id <= 50")
    assert scalar(db, "SELECT gman_flush()") == 0
    jobs = grab_all(gearmand, "f_sync_json", expect=50)
    docs = sorted((json.loads(j.workload) for j in jobs), key=lambda d: d["id"])
    assert docs == [{"id": i, "volume": i * 10, "payload": f'p{i}"\\\t'} for i in range(1, 51)]


def test_failover_to_the_second_server(db, gearmand_factory: Callable[..., GearmanServer]) -> None:
    first, second = gearmand_factory(), gearmand_factory()
    point_at(db, first, second)
    assert scalar(db, "SELECT gman_do_background('f_fo', 'one')") is not None
    assert scalar(db, "SELECT gman_flush()") == 0
    first.stop()
    for i in range(5):
        assert scalar(db, "SELECT gman_do_background('f_fo', %s)", f"after-{i}") is not None
    assert scalar(db, "SELECT gman_flush()") == 0
    workloads = [j.workload for j in grab_all(second, "f_fo", expect=5)]
    # the call right after the stop may have gone into the dying connection: it is resent
    assert [w for w in workloads if w.startswith(b"after")] == [f"after-{i}".encode() for i in range(5)]
    # foreground fails over too
    with Worker(second, {"upper": lambda w: w.upper()}):
        assert scalar(db, "SELECT gman_do('upper', 'fo')") == b"FO"


def test_failover_from_a_hung_server(db, gearmand_factory: Callable[..., GearmanServer]) -> None:
    first, second = gearmand_factory(), gearmand_factory()
    point_at(db, first, second, options="timeout_ms=200,pipeline=0")
    first.pause()
    try:
        start = time.monotonic()
        assert scalar(db, "SELECT gman_do_background('f_hung', 'x')").startswith(b"H:")
        assert time.monotonic() - start < 1.0
        assert [j.workload for j in grab_all(second, "f_hung", expect=1)] == [b"x"]
    finally:
        first.resume()


def test_restarted_gearmand_gets_the_jobs(db, gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    assert scalar(db, "SELECT gman_do_background('f_rs', 'before')") is not None
    assert scalar(db, "SELECT gman_flush()") == 0
    assert [j.workload for j in grab_all(gearmand, "f_rs", expect=1)] == [b"before"]
    gearmand.stop()
    gearmand.start()  # same port, our cached connection is now stale
    assert scalar(db, "SELECT gman_do_background('f_rs', 'after')") is not None
    assert scalar(db, "SELECT gman_flush()") == 0
    assert [j.workload for j in grab_all(gearmand, "f_rs", expect=1)] == [b"after"]


def _hold_jobs_in_a_hung_gearmand(conn, gearmand: GearmanServer, function: str, n: int,
                                  options: str = "") -> list[bytes]:
    """Pipelined submits on `conn` while gearmand is SIGSTOPped: each returns its unique id (the
    packet is written), none is acknowledged."""
    point_at(conn, gearmand, options=",".join(filter(None, ("timeout_ms=100,retry_ms=200,pipeline=1", options))))
    assert scalar(conn, "SELECT gman_do_background(%s, 'warm')", function) is not None
    assert scalar(conn, "SELECT gman_flush()") == 0
    assert [j.workload for j in grab_all(gearmand, function, expect=1)] == [b"warm"]
    gearmand.pause()
    sent = [f"held-{i}".encode() for i in range(n)]
    for w in sent:
        assert scalar(conn, "SELECT gman_do_background(%s, %s)", function, w) is not None
    return sent


def _crash_and_restart(gearmand: GearmanServer) -> None:
    gearmand.kill()  # SIGKILL while stopped: the jobs die unread in its socket buffers
    gearmand.start()  # same port


def test_an_idle_connection_s_unacknowledged_jobs_reach_a_restarted_gearmand(db, gearmand: GearmanServer) -> None:
    """No further call on the connection: the library's keeper thread notices the broken
    connection and resends the jobs gearmand never acknowledged."""
    sent = _hold_jobs_in_a_hung_gearmand(db, gearmand, "f_keep_idle", 5)
    _crash_and_restart(gearmand)
    jobs = grab_all(gearmand, "f_keep_idle", expect=len(sent), timeout_s=20)
    assert sorted(j.workload for j in jobs) == sent


def test_an_ended_connection_s_unacknowledged_jobs_reach_a_restarted_gearmand(udf_installed: MariaDBServer,  # noqa: F811  (fixture imported above)
                                                                               gearmand: GearmanServer) -> None:
    """The client disconnects and (thread_cache_size=0) its mysqld thread ends while its jobs are
    unacknowledged: they are handed to the keeper, not dropped."""
    admin = udf_installed.connect()
    cache = int(scalar(admin, "SELECT @@GLOBAL.thread_cache_size"))
    udf_installed.execute("SET GLOBAL thread_cache_size = 0")
    try:
        conn = udf_installed.connect()
        try:
            sent = _hold_jobs_in_a_hung_gearmand(conn, gearmand, "f_keep_ended", 5)
            thread_id = conn.thread_id()
        finally:
            conn.close()
        assert wait_until(lambda: scalar(admin, "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                                "WHERE ID = %s", thread_id) == 0)
        _crash_and_restart(gearmand)
        jobs = grab_all(gearmand, "f_keep_ended", expect=len(sent), timeout_s=20)
        assert sorted(j.workload for j in jobs) == sent
    finally:
        udf_installed.execute(f"SET GLOBAL thread_cache_size = {cache}")
        admin.close()


def test_jobs_unacknowledged_at_shutdown_are_saved_and_sent_after_the_restart(
        own_mariadb: MariaDBServer, gearmand: GearmanServer) -> None:  # noqa: F811  (fixture imported above)
    """mysqld shuts down while gearmand hangs: the library writes the jobs no server acknowledged to
    gearsync_udf.pending in the datadir, reads them back when mysqld starts again, sends them, and
    removes the file."""
    server = own_mariadb
    server.env["GEARSYNC_GEARMAN_SERVERS"] = gearmand.address  # the servers after the restart
    server.restart()
    spill = server.datadir / "gearsync_udf.pending"
    conn = server.connect()
    try:
        sent = _hold_jobs_in_a_hung_gearmand(conn, gearmand, "f_spill", 5)
    finally:
        conn.close()
    server.stop()  # gearmand still hung: nothing acknowledges the 5 jobs
    assert spill.is_file()
    log = server.log_path.read_text(errors="replace")
    assert "5 background job(s) not acknowledged by any job server at unload: saved to" in log
    _crash_and_restart(gearmand)
    server.start()
    jobs = grab_all(gearmand, "f_spill", expect=len(sent), timeout_s=20)
    assert sorted(j.workload for j in jobs) == sent
    assert wait_until(lambda: not spill.exists())
    assert "5 background job(s) saved at the last unload read from" in server.log_path.read_text(errors="replace")


def _jobs_in_journal(datadir: Path) -> int:
    """The jobs the library's journal slot files hold: each file's word (head << 32 | len, native
    byte order) after the 8-byte magic, the SUBMIT_JOB*_BG packets in data[head, len) after the
    64-byte header."""
    jobs = 0
    for slot in datadir.glob("gearsync_udf.journal.*"):
        data = slot.read_bytes()
        if slot.suffix == ".bad" or len(data) < 64:
            continue
        head, end = divmod(int.from_bytes(data[8:16], sys.byteorder), 1 << 32)
        while head < end:
            head += 12 + int.from_bytes(data[64 + head + 8:64 + head + 12], "big")
            jobs += 1
    return jobs


@pytest.mark.parametrize("journal", ["1", "0"])
def test_jobs_unacknowledged_when_mysqld_is_sigkilled_are_sent_after_the_restart(
        journal: str, own_mariadb: MariaDBServer, gearmand: GearmanServer) -> None:  # noqa: F811  (fixture imported above)
    """mysqld SIGKILLed while gearmand hangs: no destructor runs, so no spill file. The pipelined
    jobs no server acknowledged are in the library's journal (a MAP_SHARED slot file per thread,
    <datadir>/gearsync_udf.journal.<pid>.<n>); the next start reads them back and sends them. With journal=0
    they are in mysqld's memory only (the case measured by `sync-bench udf` as the journal's cost)."""
    server = own_mariadb
    server.env["GEARSYNC_GEARMAN_SERVERS"] = gearmand.address  # the servers after the restart
    server.restart()
    conn = server.connect()
    sent = _hold_jobs_in_a_hung_gearmand(conn, gearmand, "f_journal", 5, options=f"journal={journal}")
    assert _jobs_in_journal(server.datadir) == (5 if journal == "1" else 0)
    if journal == "0":
        conn.close()
        return
    with conn.cursor() as cur:  # slot files, not a directory in the datadir (MariaDB lists those as databases)
        cur.execute("SHOW DATABASES")
        assert not [name for (name,) in cur.fetchall() if "journal" in name]
    server.kill()
    with contextlib.suppress(pymysql.err.MySQLError):
        conn.close()
    assert not (server.datadir / "gearsync_udf.pending").exists()
    _crash_and_restart(gearmand)
    server.start()
    jobs = grab_all(gearmand, "f_journal", expect=len(sent), timeout_s=20)
    assert sorted(j.workload for j in jobs) == sent
    assert wait_until(lambda: _jobs_in_journal(server.datadir) == 0)
    assert "5 background job(s) a previous mysqld process left unacknowledged read from" in \
        server.log_path.read_text(errors="replace")


def test_a_damaged_spill_file_is_kept_aside_with_a_message(own_mariadb: MariaDBServer,  # noqa: F811  (fixture imported above)
                                                           gearmand: GearmanServer) -> None:
    server = own_mariadb
    server.env["GEARSYNC_GEARMAN_SERVERS"] = gearmand.address
    server.stop()
    good = b"\0REQ" + (18).to_bytes(4, "big") + (len(b"f_bad\0u1\0ok")).to_bytes(4, "big") + b"f_bad\0u1\0ok"
    (server.datadir / "gearsync_udf.pending").write_bytes(b"GSPEND1\n" + good + b"\0REQ\xff\xff")
    server.start()
    assert [j.workload for j in grab_all(gearmand, "f_bad", expect=1, timeout_s=20)] == [b"ok"]
    assert (server.datadir / "gearsync_udf.pending.bad").is_file()
    log = server.log_path.read_text(errors="replace")
    assert "damaged packet at byte" in log and "1 job(s) before it will be sent" in log


def test_sixteen_connections_at_once_every_job_exactly_once(udf_installed: MariaDBServer, db,  # noqa: F811  (fixture imported above)
                                                            gearmand: GearmanServer) -> None:
    point_at(db, gearmand)
    per_thread, threads = 300, 16
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def client(t: int) -> None:
        try:
            conn = udf_installed.connect()
            try:
                barrier.wait()
                with conn.cursor() as cur:
                    for i in range(per_thread):
                        cur.execute("SELECT gman_do_background(%s, %s)", ("f_par", f"{t}:{i}"))
                        assert cur.fetchone()[0] is not None
                    cur.execute("SELECT gman_flush()")
                    assert cur.fetchone()[0] == 0
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(60)
    assert not errors, errors[:3]
    assert wait_until(lambda: status(gearmand).get("f_par", (0,))[0] == threads * per_thread)
    jobs = grab_all(gearmand, "f_par", expect=threads * per_thread)
    workloads = sorted(j.workload.decode() for j in jobs)
    assert workloads == sorted(f"{t}:{i}" for t in range(threads) for i in range(per_thread))
    assert len({j.unique for j in jobs}) == threads * per_thread


def test_defaults_from_env_and_conf_survive_a_restart(own_mariadb: MariaDBServer,  # noqa: F811  (fixture imported above)
                                                      gearmand_factory: Callable[..., GearmanServer]) -> None:
    by_env, by_conf = gearmand_factory(), gearmand_factory()
    server = own_mariadb

    def submit(tag: str) -> object:
        conn = server.connect()
        try:
            value = scalar(conn, "SELECT gman_do_background('f_def', %s)", tag)
            assert scalar(conn, "SELECT gman_flush()") == 0
            return value
        finally:
            conn.close()

    # 1. the environment of mysqld
    server.env["GEARSYNC_GEARMAN_SERVERS"] = by_env.address
    server.restart()
    assert submit("env") is not None
    assert [j.workload for j in grab_all(by_env, "f_def", expect=1)] == [b"env"]
    # 2. the conf file beside the library, env unset; a bad line is ignored
    del server.env["GEARSYNC_GEARMAN_SERVERS"]
    (server.plugin_dir / "gearsync_udf.conf").write_text(
        f"# gearsync\nservers = 127.0.0.1:{free_port()}, {by_conf.address}\ntimeout_ms=300\nbogus\npipeline=0\n"
    )
    server.restart()
    handle = submit("conf")
    assert isinstance(handle, bytes) and handle.startswith(b"H:")  # pipeline=0 from the file
    assert [j.workload for j in grab_all(by_conf, "f_def", expect=1)] == [b"conf"]
    # 3. env wins over the file
    server.env["GEARSYNC_GEARMAN_SERVERS"] = by_env.address
    server.restart()
    submit("env-again")
    assert [j.workload for j in grab_all(by_env, "f_def", expect=1)] == [b"env-again"]
    log = server.log_path.read_text(errors="replace")
    assert "gearsync_udf: job servers" in log and "line 4 ignored" in log
