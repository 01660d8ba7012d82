"""sync-worker, sync-binlog and sync-relay started before their servers (a boot where gearsync comes
up first): they wait with back-off (--startup-wait), logging each wait in one line, then run; a server
still unreachable when the wait is over ends the command with one line and exit 3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer, free_port

from .unit_rig import submit_insert

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
SECRET = "startup-Secret-9"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "GEARMAN_", "GEARSYNC_"))}
    return {**env, "GEARSYNC_MYSQL_PASSWORD": SECRET}


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=fh, stderr=subprocess.STDOUT, env=env or _env())


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _wait_for(what: str, check, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def _waited(log: Path) -> list[dict[str, object]]:
    return [e for e in _events(log) if e.get("event") == "server_unreachable_at_start"]


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)



@pytest.mark.slow
def test_worker_started_before_redis_and_gearmand_waits_then_applies(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")       # ports chosen now, servers started later
    gearmand = GearmanServer(tmp_path / "gearmand")
    log = tmp_path / "worker.log"
    proc = _start(["sync-worker", "--table", "data", "--servers", gearmand.address, "--redis-url", redis.url,
                   "--startup-wait", "300", "--log-format", "json", "--stats-interval", "0"], log)
    try:
        _wait_for("a wait for redis", lambda: any(e["server"] == "redis" for e in _waited(log)), proc, log)
        redis.start()
        _wait_for("a wait for gearmand", lambda: any(e["server"] == "gearmand" for e in _waited(log)), proc, log)
        gearmand.start()
        row = {"id": 1, "volume": 10}
        submit_insert(gearmand, "data", row)
        client = redis.client()
        _wait_for("data:1 in Redis", lambda: client.get("data:1") is not None, proc, log)
        assert json.loads(client.get("data:1")) == row
        client.close()
        assert _stop(proc) == 0, log.read_text()[-3000:]
    finally:
        _stop(proc)
        redis.stop()
        gearmand.stop()
    waits = _waited(log)
    assert {e["server"] for e in waits} == {"redis", "gearmand"}
    assert all(e["level"] == "warning" and "retry_in_s" in e and "address" in e for e in waits), waits
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_binlog_started_before_redis_waits_then_streams(tmp_path: Path, mariadb: MariaDBServer, db) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    redis = RedisServer(tmp_path / "redis")
    log = tmp_path / "binlog.log"
    env = {**_env(), "GEARSYNC_MYSQL_PASSWORD": ""}
    proc = _start(["sync-binlog", "--table", "data", "--mysql-url", f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}",
                   "--redis-url", redis.url, "--start", "current", "--startup-wait", "300", "--log-format", "json",
                   "--stats-interval", "0"], log, env)
    try:
        _wait_for("a wait for redis", lambda: any(e["server"] == "redis" for e in _waited(log)), proc, log)
        redis.start()
        _wait_for("binlog_started", lambda: any(e.get("event") == "binlog_started" for e in _events(log)), proc, log)
        with db.cursor() as cur:
            cur.execute("INSERT INTO data VALUES (1, 7)")
        client = redis.client()
        _wait_for("data:1 in Redis", lambda: client.get("data:1") is not None, proc, log)
        assert json.loads(client.get("data:1")) == {"id": 1, "volume": 7}
        client.close()
        assert _stop(proc) == 0, log.read_text()[-3000:]
    finally:
        _stop(proc)
        redis.stop()
    assert all(e["server"] == "redis" for e in _waited(log))


def test_still_unreachable_after_the_wait_is_one_line_and_exit_3(tmp_path: Path) -> None:
    closed = free_port()
    mysql_url = f"mysql://sync@127.0.0.1:{closed}/app"
    redis_url = f"redis://127.0.0.1:{closed}/0"
    cases = (
        (["sync-worker", "--table", "data", "--servers", f"127.0.0.1:{closed}", "--redis-url", redis_url], "redis unreachable"),
        (["sync-binlog", "--table", "data", "--mysql-url", mysql_url, "--redis-url", redis_url], "mysql unreachable"),
        (["sync-relay", "--database", "app", "--mysql-url", mysql_url, "--servers", f"127.0.0.1:{closed}"], "mysql unreachable"),
    )
    for args, needle in cases:
        log = tmp_path / f"{args[0]}.log"
        proc = _start([*args, "--startup-wait", "1.5", "--log-format", "json"], log)
        try:
            code = proc.wait(60)
        finally:
            _stop(proc)
        text = log.read_text()
        lines = text.strip().splitlines()
        assert code == 3, text[-2000:]
        assert lines[-1].startswith(f"{args[0]}: error: {needle}: cannot connect to") and "--startup-wait 1.5" in lines[-1], text
        logged = [json.loads(line) for line in lines[:-1] if line.startswith("{")]
        assert logged and all(e["event"] == "server_unreachable_at_start" for e in logged), text   # one line per wait
        assert SECRET not in text and "Traceback" not in text
        # 0: no wait at all, just the error line
        now = subprocess.run([str(BIN / args[0]), *args[1:], "--startup-wait", "0", "--log-format", "json"],
                             capture_output=True, text=True, env=_env(), timeout=60)
        assert now.returncode == 3 and needle in now.stderr.strip().splitlines()[-1], now.stderr
        assert "server_unreachable_at_start" not in now.stderr
    bad = subprocess.run([str(BIN / "sync-worker"), "--table", "data", "--startup-wait", "-1"], capture_output=True, text=True,
                         env=_env(), timeout=60)
    assert bad.returncode == 2 and "--startup-wait: '-1'; expected seconds" in bad.stderr and bad.stderr.count("\n") == 1
