"""sync-status against real gearmand, Redis and MariaDB: queues, workers, spool, dead letters, lag, down servers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.capture.spool import spool_ddl
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer, free_port
from tests.integration.test_sync_worker import change, start_worker_process, submit_sync

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
STATUS_BIN = str(REPO / ".venv" / "bin" / "sync-status")


def run_status(*args: str, servers: str, redis_port: int, mysql: str | None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GEARSYNC_GEARMAN_SERVERS": servers, "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    if mysql:
        env["GEARSYNC_MYSQL_URL"] = mysql
    cmd = [STATUS_BIN, *args] + ([] if mysql else ["--no-mysql"])
    return subprocess.run(cmd, env=env, capture_output=True, timeout=60)


def test_status_shows_queues_workers_spool_dead_letters_and_lag(db: Any, mariadb: MariaDBServer, gearmand: GearmanServer,
                                                                redis_server: RedisServer, redis_client: Any) -> None:
    mysql_url = f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}"
    down = f"127.0.0.1:{free_port()}"
    with db.cursor() as cur:
        cur.execute(spool_ddl(db.db_name))
        cur.execute("INSERT INTO gearsync_spool (`function`, payload) VALUES ('gearsync.data', 'x'), ('gearsync.data', 'y')")
    # Applied once by a worker, then the worker stops and 5 jobs (1 of them dead) wait.
    submit_sync(gearmand, "gearsync.data", [change("data", "insert", {"id": 1}, {"id": 1}, 1), b"{bad"])
    worker = start_worker_process(gearmand, redis_server)
    try:
        deadline = time.monotonic() + 20
        while redis_client.llen("gearsync:dead:{data}") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        p = run_status("--json", "--table", "data", servers=f"{gearmand.address},{down}", redis_port=redis_server.port,
                       mysql=mysql_url)
        assert p.returncode == 0, p.stderr
        state = orjson.loads(p.stdout)
        assert state["tables"]["data"]["workers"] == 1
    finally:
        worker.terminate()
        worker.wait(15)
    time.sleep(0.2)
    submit_sync(gearmand, "gearsync.data", [change("data", "update", {"id": 1}, {"id": 1}, v) for v in range(2, 7)])
    time.sleep(0.3)
    p = run_status("--json", "--table", "data", servers=f"{gearmand.address},{down}", redis_port=redis_server.port,
                   mysql=mysql_url)
    assert p.returncode == 0, p.stderr
    state = orjson.loads(p.stdout)
    up, dn = state["gearman"]
    assert up["up"] and up["functions"]["gearsync.data"]["queued"] == 5
    assert dn["up"] is False and dn["server"] == down and dn["error"]
    t = state["tables"]["data"]
    assert t["queued"] == 5 and t["workers"] == 0 and t["dead"] == 1 and t["applied_total"] == 1
    assert t["last_applied_ms"] and t["lag_s"] > 0.2          # jobs waiting since the last apply
    assert state["mysql"]["spool"] == {db.db_name: 2}
    b = state["binlog"]
    assert b["server_file"].startswith("binlog.") and b["server_position"] > 0 and b["server_gtid"]
    assert b["reader_position"] is None
    # The terminal table: down server shown, every section present.
    p = run_status("--table", "data", servers=f"{gearmand.address},{down}", redis_port=redis_server.port, mysql=mysql_url)
    text = p.stdout.decode()
    assert p.returncode == 0 and "DOWN" in text and "gearsync.data" in text and f"{db.db_name}: 2" in text
    assert "reader n/a" in text
    # A binlog stream's saved position (sync.position.PositionStore writes JSON) is shown per stream.
    redis_client.set("gearsync:binlog:pos:{s1}", b'{"gtid":"0-1-5"}')
    p = run_status("--json", "--table", "data", servers=gearmand.address, redis_port=redis_server.port, mysql=mysql_url)
    assert orjson.loads(p.stdout)["binlog"]["reader_position"] == {"s1": {"gtid": "0-1-5"}}


def test_status_without_tables_discovers_them_and_nothing_reachable_is_exit_3(gearmand: GearmanServer,
                                                                              redis_server: RedisServer,
                                                                              redis_client: Any) -> None:
    redis_client.hset("gearsync:stats:orders", mapping={"last_applied_ms": int(time.time() * 1000), "applied_total": 3})
    submit_sync(gearmand, "gearsync.users", [change("users", "insert", {"id": 1}, {"id": 1}, 1)])
    p = run_status("--json", servers=gearmand.address, redis_port=redis_server.port, mysql=None)
    assert p.returncode == 0, p.stderr
    tables = orjson.loads(p.stdout)["tables"]
    assert tables["orders"]["applied_total"] == 3 and tables["orders"]["lag_s"] == 0.0
    assert tables["users"]["queued"] == 1
    p = run_status("--json", servers=f"127.0.0.1:{free_port()}", redis_port=free_port(), mysql="mysql://root@127.0.0.1:1/x")
    assert p.returncode == 3, p.stderr
    state = orjson.loads(p.stdout)
    assert not state["redis"]["up"] and not state["mysql"]["up"] and not state["gearman"][0]["up"]


def test_status_watch_refreshes(gearmand: GearmanServer, redis_server: RedisServer, redis_client: Any) -> None:
    env = {**os.environ, "GEARSYNC_GEARMAN_SERVERS": gearmand.address, "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
    proc = subprocess.Popen([STATUS_BIN, "--json", "--no-mysql", "--watch", "0.2", "--table", "data"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(10)
    times = [orjson.loads(line)["time_ms"] for line in lines]
    assert times == sorted(times) and times[2] > times[0]
