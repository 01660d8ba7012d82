"""Bad input: a clear error each time, nothing lost, nothing crashed.

1. A running sync-worker process fed hostile job payloads (invalid JSON, wrong types, missing keys,
   a change the capture marked too large, NaN, 10k levels of nesting, bytes that are not UTF-8, duplicate keys,
   wrong table): each one becomes a dead letter with its reason, the good jobs around them are
   applied, and the process keeps running until SIGTERM (exit 0).
2. Every console script with a bad URL, an unknown table or a table without a key: one line on
   stderr naming the bad value, exit 2, no traceback.

(Hostile table/column names through sync-triggers: tests/integration/test_triggers.py,
test_hostile_names_end_to_end.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient, admin
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"


def good(i: int, version: int) -> bytes:
    return encode_change(ChangeEvent("data", Op.UPDATE, (("id", i),), {"id": i, "volume": version}, version,
                                     Source.TRIGGER))


def envelope(**over: object) -> bytes:
    base: dict[str, object] = {"v": 1, "table": "data", "op": "update", "pk": {"id": 1}, "row": {"id": 1, "volume": 1},
                               "version": 5, "source": "trigger"}
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def nested(depth: int) -> bytes:
    return b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1,"x":' + b"[" * depth + b"]" * depth \
        + b'},"version":5,"source":"trigger"}'


BAD: dict[str, bytes] = {
    "invalid JSON": b'{"v":1,"table":"data",',
    "not an object": b"[1,2,3]",
    "empty": b"",
    "missing key (version)": envelope(version=...),
    "missing key (pk)": envelope(pk=...),
    "wrong type (version string)": envelope(version="5"),
    "wrong type (version float)": b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1},"version":5.0,'
                                  b'"source":"trigger"}',
    "wrong type (pk list)": envelope(pk=[1]),
    "wrong type (row string)": envelope(row="id=1"),
    "unknown op": envelope(op="upsert"),
    "negative version": envelope(version=-1),
    "version > 2**64-1": b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1},'
                         b'"version":18446744073709551616,"source":"trigger"}',
    "NaN": b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1,"x":NaN},"version":5,"source":"trigger"}',
    "Infinity": b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1,"x":-Infinity},"version":5,'
                b'"source":"trigger"}',
    "nesting 10k levels": nested(10_000),
    "not UTF-8": b'{"v":1,"table":"data","op":"update","pk":{"id":1},"row":{"id":1,"x":"\xff\xfe"},"version":5,'
                 b'"source":"trigger"}',
    "duplicate keys": b'{"v":1,"table":"data","op":"update","pk":{"id":1},"pk":{"id":2},"row":{"id":1},"version":5,'
                      b'"source":"trigger"}',
    "wrong table": envelope(table="users"),
    "pk not in row": envelope(pk={"id": 1}, row={"volume": 3}),
    # what the triggers send when the row's JSON is over the UDF's max_payload (sync.capture.triggers)
    "row over max_payload": envelope(row=..., error="the row's JSON is over the UDF's max_payload; row data: 9 bytes"),
    "20 MiB, not JSON": b'{"v":1,"row":' + b"x" * (20 * 1024 * 1024) + b"}",
}


async def _submit(g: GearmanServer, payloads: list[bytes]) -> None:
    async with GearmanClient([(g.host, g.port)]) as client:
        await client.submit_background_many("gearsync.data", payloads)


def _queued(g: GearmanServer) -> int:
    return sum(s.queued for s in asyncio.run(admin.status(g.host, g.port)) if s.name == "gearsync.data")


def test_worker_dead_letters_every_bad_payload_and_keeps_running(gearmand: GearmanServer, redis_server: RedisServer,
                                                                 redis_client, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = {**os.environ, "GEARSYNC_GEARMAN_SERVERS": gearmand.address, "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(BIN / "sync-worker"), "--table", "data", "--log-format", "json",
                                 "--stats-interval", "0", "--batch", "4"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        # good jobs between the bad ones: versions 100.. for ids 0..N
        payloads: list[bytes] = []
        for i, raw in enumerate(BAD.values()):
            payloads += [good(i, 100 + i), raw]
        asyncio.run(_submit(gearmand, payloads))
        deadline = time.monotonic() + 60
        while _queued(gearmand) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        assert _queued(gearmand) == 0
        time.sleep(0.3)
        assert proc.poll() is None, "the worker must keep running"
        # still serving: one more good job after all that
        asyncio.run(_submit(gearmand, [good(999, 7)]))
        deadline = time.monotonic() + 10
        while redis_client.get("data:999") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orjson.loads(redis_client.get("data:999")) == {"id": 999, "volume": 7}
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    assert rc == 0, log.read_text()[-3000:]
    for i in range(len(BAD)):
        assert orjson.loads(redis_client.get(f"data:{i}")) == {"id": i, "volume": 100 + i}, i
    records = [orjson.loads(r) for r in redis_client.lrange("gearsync:dead:{data}", 0, -1)]
    reasons = [r["reason"] for r in records]
    assert len(records) == len(BAD), "\n".join(reasons)
    assert all(r and len(r) < 500 for r in reasons), reasons
    assert any(r.startswith("capture: ") and "max_payload; row data: 9 bytes" in r for r in reasons), reasons
    text = log.read_text()
    assert "Traceback" not in text
    # a 20 MiB job is logged by size, not by content
    assert "x" * 1000 not in text
    try:
        from tests.faults.report import record
    except ImportError:  # pragma: no cover
        return
    record("worker fed bad payloads (dead letters)", kind="bad input", written=len(payloads) + 1,
           lost=sum(1 for i in range(len(BAD)) if redis_client.get(f"data:{i}") is None), differences=0,
           classes=len(BAD), dead_letters=len(records), worker_exit=rc)


# -- console scripts ----------------------------------------------------------------------------

@pytest.fixture
def nokey_db(db):
    with db.cursor() as cur:
        cur.execute("CREATE TABLE nokey (a INT, b VARCHAR(10))")
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    return db


def _cases(mysql_url: str, redis_url: str, database: str) -> list[tuple[str, list[str], str]]:
    """(script, args, a fragment the one-line error must contain)."""
    out: list[tuple[str, list[str], str]] = []
    bad_redis = ["--redis-url", "http://127.0.0.1:1/0"]
    bad_mysql = ["--mysql-url", "postgres://u@h/db"]
    for script, base in (("sync-worker", ["--table", "data"]),
                         ("sync-binlog", ["--table", "data", "--database", database]),
                         ("sync-snapshot", ["--table", "data", "--database", database]),
                         ("sync-verify", ["--table", "data", "--database", database]),
                         ("sync-status", [])):
        out.append((script, base + bad_redis, "http"))
    for script, base in (("sync-binlog", ["--table", "data", "--database", database]),
                         ("sync-triggers", ["install", "--table", "data", "--database", database]),
                         ("sync-relay", ["--database", database]),
                         ("sync-snapshot", ["--table", "data", "--database", database]),
                         ("sync-verify", ["--table", "data", "--database", database]),
                         ("sync-status", [])):
        out.append((script, base + bad_mysql, "postgres"))
    for table, fragment in (("nosuch", "nosuch"), ("nokey", "nokey")):
        for script, args in (("sync-triggers", ["install", "--table", table, "--database", database, "--mysql-url", mysql_url]),
                             ("sync-snapshot", ["--table", table, "--database", database, "--mysql-url", mysql_url,
                                                "--redis-url", redis_url]),
                             ("sync-verify", ["--table", table, "--database", database, "--mysql-url", mysql_url,
                                              "--redis-url", redis_url]),
                             ("sync-binlog", ["--table", table, "--database", database, "--mysql-url", mysql_url,
                                              "--redis-url", redis_url])):
            out.append((script, args, fragment))
    out.append(("sync-worker", ["--table", "x" * 65], "x" * 65))
    out.append(("sync-triggers", ["install", "--table", "data", "--database", database, "--mysql-url", mysql_url,
                                  "--function", ""], "--function"))
    return out


def test_every_console_script_rejects_bad_input_in_one_line(mariadb: MariaDBServer, redis_server: RedisServer,
                                                           nokey_db) -> None:
    mysql_url = f"mysql://root@127.0.0.1:{mariadb.port}/"
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    failures = []
    cases = _cases(mysql_url, redis_url, nokey_db.db_name)
    for script, args, fragment in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "GEARMAN_", "GEARSYNC_"))}
        try:
            r = subprocess.run([str(BIN / script), *args], capture_output=True, text=True, timeout=30, env=env)
        except subprocess.TimeoutExpired:
            failures.append(f"{script} {' '.join(args)}\n  -> still running after 30 s")
            continue
        lines = r.stderr.strip().splitlines()
        ok = (r.returncode == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.stderr
              and lines[0].startswith(f"{script}: error: "))
        if not ok:
            failures.append(f"{script} {' '.join(args)}\n  -> exit {r.returncode}: {r.stderr.strip()[-600:]}")
    try:
        from tests.faults.report import record

        record("console scripts: bad URL, unknown table, table without key", kind="bad input",
               written=len(cases), lost=0, differences=len(failures))
    except ImportError:  # pragma: no cover
        pass
    assert not failures, "\n".join(failures)
