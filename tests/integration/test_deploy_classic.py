"""README "Coming from the classic recipe", step by step with the console commands a user runs:
the trigger datatoredis + syncToRedis jobs → sync-worker --classic (old jobs still land as
SET <id> <payload>) → sync-triggers install, DROP TRIGGER datatoredis → sync-snapshot and
sync-verify with --key-template '{pk}' (the old bare keys) → the worker without --classic."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from sync.keys import version_key
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .triggers_rig import classic_setup
from .udf_fixtures import point_at, udf_installed  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

pytestmark = pytest.mark.slow


def _wait(what: str, check, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.05)


def test_move_from_the_classic_recipe(mariadb: MariaDBServer, udf_installed: MariaDBServer,  # noqa: F811
                                      gearmand: GearmanServer, db, redis_server: RedisServer, redis_client,
                                      tmp_path: Path) -> None:
    point_at(db, gearmand)
    classic_setup(mariadb, db, rows=3)   # the trigger datatoredis (AFTER UPDATE → syncToRedis)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "GEARMAN_", "GEARSYNC_"))}
    env.update(GEARSYNC_MYSQL_URL=f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}", GEARSYNC_REDIS_URL=redis_server.url,
               GEARSYNC_GEARMAN_SERVERS=gearmand.address)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=120)

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([str(BIN / "sync-worker"), "--table", "data", "--classic", "--key-template", "{pk}",
                                   "--log-format", "json", "--stats-interval", "0"], env=env, stdout=out, stderr=out)
    try:
        # 3. the worker serves the classic function: SET <id> <payload>, unversioned
        with db.cursor() as cur:
            cur.execute("UPDATE data SET volume = 11 WHERE id = 1")
        _wait("key 1", lambda: redis_client.get("1") is not None)
        assert orjson.loads(redis_client.get("1")) == {"id": 1, "volume": 11}
        assert redis_client.get(version_key("1")) is None   # the classic path keeps no version

        # 4. swap the trigger: gearsync's triggers first (they run after datatoredis), then drop it
        installed = run("sync-triggers", "install", "--table", "data")
        assert installed.returncode == 0, installed.stderr
        with db.cursor() as cur:
            cur.execute("DROP TRIGGER datatoredis")
            cur.execute("UPDATE data SET volume = 21 WHERE id = 2")
            cur.execute("INSERT INTO data VALUES (4, 40)")                 # the classic trigger never sent these
            cur.execute("DELETE FROM data WHERE id = 1")
        _wait("key 4", lambda: redis_client.get("4") is not None)
        _wait("key 1 deleted", lambda: redis_client.get("1") is None)
        assert orjson.loads(redis_client.get("2")) == {"id": 2, "volume": 21}
        assert redis_client.get(version_key("2")) is not None             # versioned now

        # 5. every row once, then verify (bare keys: extra keys cannot be looked for, and it says so)
        snap = run("sync-snapshot", "--table", "data", "--key-template", "{pk}")
        assert snap.returncode == 0, snap.stderr
        assert orjson.loads(redis_client.get("3")) == {"id": 3, "volume": 30}   # never updated: no key before
        verify = run("sync-verify", "--table", "data", "--key-template", "{pk}")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "extra keys not checked" in verify.stdout + verify.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    assert code == 0, log.read_text()[-3000:]

    # 6. retire the classic function: a worker without --classic leaves syncToRedis jobs queued
    retired = subprocess.Popen([str(BIN / "sync-worker"), "--table", "data", "--key-template", "{pk}",
                                "--log-format", "json", "--stats-interval", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with db.cursor() as cur:
            cur.execute("UPDATE data SET volume = 22 WHERE id = 2")
        _wait("key 2 updated", lambda: orjson.loads(redis_client.get("2")) == {"id": 2, "volume": 22})
    finally:
        retired.send_signal(signal.SIGTERM)
        out, _ = retired.communicate(timeout=30)
    assert retired.returncode == 0, out.decode()[-3000:]
    assert b"syncToRedis" not in out
