"""Fault case with signing on: forged max-version jobs submitted straight to gearmand during a
steady write load (the capture triggers signing through the UDF's key file, two sync-workers with
GEARSYNC_JOB_KEY). Every forged job is a dead letter with its reason and sync-verify reports 0
differences: not one row was poisoned. Figures go to the fault report (tests/faults/report.py).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import orjson

from sync.capture.udf_install import write_key_file
from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient
from sync.keys import dead_letter_key
from sync.signing import ENV_KEY, REASON_BAD_SIGNATURE, REASON_UNSIGNED, load_keys
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .report import record
from .rig import FUNCTION, ROWS, TABLE, Rig

KEY = "c0ffee00" * 8
MAX_VERSION = 18446744073709551615


class SignedRig(Rig):
    @property
    def env(self) -> dict[str, str]:
        return {**super().env, ENV_KEY: KEY}


def forge(g: GearmanServer, stop: threading.Event, sent: list[int]) -> None:
    """Until stopped: a forged change of a random row every 10 ms, unsigned or signed with a wrong key."""
    wrong = load_keys({ENV_KEY: "0" * 32}).signer
    rng = random.Random(7)

    async def go() -> None:
        async with GearmanClient([(g.host, g.port)]) as plain, \
                GearmanClient([(g.host, g.port)], signer=wrong) as forger:
            while not stop.is_set():
                i = rng.randint(1, ROWS)
                ev = ChangeEvent(TABLE, Op.UPDATE, (("id", i),), {"id": i, "volume": -666, "name": "forged"},
                                 MAX_VERSION, Source.TRIGGER)
                await (plain if sent[0] % 2 else forger).submit_background(FUNCTION, encode_change(ev))
                sent[0] += 1
                await asyncio.sleep(0.01)
    asyncio.run(go())


def test_forged_jobs_during_writes_with_signing_on(own_mariadb: MariaDBServer, gearmand: GearmanServer,  # noqa: F811
                                                   tmp_path: Path) -> None:
    write_key_file(own_mariadb.plugin_dir, KEY.encode(), None)
    redis = RedisServer(tmp_path / "redis").start()
    own_mariadb.execute("CREATE DATABASE app")
    rig = SignedRig(own_mariadb, "app", gearmand, redis, tmp_path)
    stop, sent = threading.Event(), [0]
    attacker = threading.Thread(target=forge, args=(gearmand, stop, sent), daemon=True)
    try:
        rig.make_table()
        rig.start_workers(2)
        writer = rig.writer(rate_per_s=300).start()
        try:
            attacker.start()
            time.sleep(6.0)
        finally:
            stop.set()
            attacker.join(30)
            writer.stop()
        report = rig.settle_and_verify()
        rig.stop_workers()
        client = redis.client()
        letters = [orjson.loads(x) for x in client.lrange(dead_letter_key(TABLE), 0, -1)]
        client.close()
        totals = rig.worker_totals()
        lost = report["missing"] + report["different"] + report["extra"]
        reasons = sorted({x["reason"] for x in letters})
        record("forged max-version jobs during writes, signing on", written=writer.changes, lost=lost,
               differences=lost, statements=writer.statements, forged=sent[0], dead_letters=len(letters),
               reasons=reasons, duplicates_fenced=totals.get("stale", 0), verify=report)
        assert report["exit_code"] == 0 and lost == 0, report
        assert sent[0] > 100 and len(letters) == sent[0], (sent[0], len(letters))
        assert reasons == [REASON_BAD_SIGNATURE, REASON_UNSIGNED]
        assert rig.spool() == 0
    finally:
        rig.close()
        redis.stop()
