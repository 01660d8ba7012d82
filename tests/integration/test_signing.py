"""Signed jobs through real gearmand, Redis and MariaDB: forged jobs become dead letters and Redis
keeps the real row, rotation, and the Python producers (sync-relay, sync-binlog --sink gearman) sign.

The UDF's side (trigger-signed jobs, its key file) is tests/integration/test_signing_udf.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.apply.worker import SyncWorker
from sync.config import worker_settings
from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient
from sync.keys import dead_letter_key
from sync.signing import REASON_BAD_SIGNATURE, REASON_UNSIGNED, JobKey, JobKeys, Signer, load_keys
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer
from tests.integration.triggers_rig import LoopThread, relay_settings, spool_count

pytestmark = pytest.mark.timeout(180)

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"

KEY = "a3f1" * 16
NEW_KEY = "9c0e" * 16
MAX_VERSION = 18446744073709551615
FN = "gearsync.data"


def change(i: int, volume: int, version: int) -> bytes:
    return encode_change(ChangeEvent("data", Op.UPDATE, (("id", i),), {"id": i, "volume": volume}, version,
                                     Source.TRIGGER))


def submit(g: GearmanServer, payloads: list[bytes], signer: Signer | None) -> None:
    async def go() -> None:
        async with GearmanClient([(g.host, g.port)], signer=signer) as client:
            await client.submit_background_many(FN, payloads)
    asyncio.run(go())


def worker(g: GearmanServer, r: RedisServer, keys: JobKeys) -> LoopThread:
    settings = worker_settings(tables=["data"], servers=g.address, redis_url=f"redis://{r.host}:{r.port}/0", env={})
    return LoopThread(lambda: SyncWorker(settings, idle_timeout_s=0.2, keys=keys))


def dead_letters(client: Any, name: str = "data") -> list[Any]:
    return [orjson.loads(x) for x in client.lrange(dead_letter_key(name), 0, -1)]


def wait_for(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def volume(client: Any, i: int) -> int | None:
    raw = client.get(f"data:{i}")
    return None if raw is None else orjson.loads(raw)["volume"]


def test_forged_jobs_are_dead_letters_and_the_real_row_stays(gearmand: GearmanServer, redis_server: RedisServer,
                                                            redis_client: Any) -> None:
    keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
    submit(gearmand, [change(1, 10, 5), change(2, 20, 5)], keys.signer)
    with worker(gearmand, redis_server, keys):
        assert wait_for(lambda: volume(redis_client, 1) == 10 and volume(redis_client, 2) == 20)
        # the attack: max version, straight to gearmand — unsigned, and signed with a key of its own
        submit(gearmand, [change(1, 666, MAX_VERSION)], None)
        submit(gearmand, [change(2, 666, MAX_VERSION)], Signer(JobKey(b"attacker-key-0123456789")))
        letters = wait_for(lambda: len(dead_letters(redis_client)) == 2 and dead_letters(redis_client))
        assert sorted(x["reason"] for x in letters) == [REASON_BAD_SIGNATURE, REASON_UNSIGNED]
        # a real change after the forgeries still applies: the fence was never poisoned
        submit(gearmand, [change(1, 11, 6), change(2, 21, 6)], keys.signer)
        assert wait_for(lambda: volume(redis_client, 1) == 11 and volume(redis_client, 2) == 21)
    assert volume(redis_client, 1) == 11 and volume(redis_client, 2) == 21


def test_rotation_old_key_accepted_then_refused(gearmand: GearmanServer, redis_server: RedisServer,
                                                redis_client: Any) -> None:
    old_signer = load_keys({"GEARSYNC_JOB_KEY": KEY}).signer
    rotating = load_keys({"GEARSYNC_JOB_KEY": NEW_KEY, "GEARSYNC_JOB_KEY_OLD": KEY})
    with worker(gearmand, redis_server, rotating):
        submit(gearmand, [change(1, 1, 1)], old_signer)        # a producer not yet moved
        submit(gearmand, [change(2, 2, 1)], rotating.signer)   # one that signs with the new key
        assert wait_for(lambda: volume(redis_client, 1) == 1 and volume(redis_client, 2) == 2)
    assert dead_letters(redis_client) == []
    retired = load_keys({"GEARSYNC_JOB_KEY": NEW_KEY})
    with worker(gearmand, redis_server, retired):
        submit(gearmand, [change(1, 100, 2)], old_signer)
        letters = wait_for(lambda: dead_letters(redis_client))
        assert [x["reason"] for x in letters] == [REASON_BAD_SIGNATURE]
    assert volume(redis_client, 1) == 1


def test_worker_without_key_warns_once_and_applies_both(gearmand: GearmanServer, redis_server: RedisServer,
                                                        redis_client: Any, tmp_path: Any) -> None:
    """Today's behaviour without a key (signed jobs too: producers may get the key first), plus one
    warning line at start; a bad key is one line and exit 2, never the key."""
    submit(gearmand, [change(1, 7, 1)], None)
    submit(gearmand, [change(2, 8, 1)], load_keys({"GEARSYNC_JOB_KEY": KEY}).signer)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEARSYNC_", "REDIS_", "GEARMAN_", "MYSQL_"))}
    env.update(GEARSYNC_GEARMAN_SERVERS=gearmand.address,
               GEARSYNC_REDIS_URL=f"redis://{redis_server.host}:{redis_server.port}/0")
    exe = str(BIN / "sync-worker")
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "--table", "data", "--stats-interval", "0", "--log-format", "json"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            assert wait_for(lambda: volume(redis_client, 1) == 7 and volume(redis_client, 2) == 8)
        finally:
            proc.terminate()
            proc.wait(30)
    assert log.read_text().count("job_signing_off") == 1
    bad = subprocess.run([exe, "--table", "data"], env={**env, "GEARSYNC_JOB_KEY": "tooshort-secret"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "GEARSYNC_JOB_KEY" in bad.stderr and "tooshort-secret" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_relay_signs_spooled_jobs(mariadb: MariaDBServer, db: Any, gearmand: GearmanServer,
                                  redis_server: RedisServer, redis_client: Any) -> None:
    """The spool holds unsigned payloads (the INSERT in the trigger needs no key); sync-relay signs them
    with the current key as it sends them, and a worker with the key applies them."""
    keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
    with db.cursor() as cur:
        cur.execute("CREATE TABLE gearsync_spool (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, "
                    "`function` VARCHAR(512) NOT NULL, payload LONGBLOB NOT NULL, "
                    "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))")
        for i in range(20):
            cur.execute("INSERT INTO gearsync_spool (`function`, payload) VALUES (%s, %s)", (FN, change(i, i, 1)))
    from sync.capture.relay import SpoolRelay

    relay = LoopThread(lambda: SpoolRelay(relay_settings(mariadb, db.db_name, gearmand, watch_triggers=False),
                                          keys=keys))
    with relay, worker(gearmand, redis_server, keys):
        assert wait_for(lambda: spool_count(db) == 0)
        assert wait_for(lambda: all(volume(redis_client, i) == i for i in range(20)))
    assert dead_letters(redis_client) == []


def test_binlog_gearman_sink_signs(mariadb: MariaDBServer, db: Any, gearmand: GearmanServer,
                                   redis_server: RedisServer, redis_client: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.binlog_rig import Running, settings

    monkeypatch.setenv("GEARSYNC_JOB_KEY", KEY)
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    st = settings(mariadb, db.db_name, ["data"], redis_server, sink="gearman",
                  servers=((gearmand.host, gearmand.port),))
    with worker(gearmand, redis_server, load_keys()), Running(st), db.cursor() as cur:
        cur.execute("INSERT INTO data SELECT seq, seq * 2 FROM seq_1_to_30")
        cur.execute("UPDATE data SET volume = volume + 1 WHERE id <= 10")
        assert wait_for(lambda: all(volume(redis_client, i) == 2 * i + (i <= 10) for i in range(1, 31)))
    assert dead_letters(redis_client) == []
