"""A poisoned version fence and the way back: a forged max-version job, straight to an unsigned gearmand,
blocks every real change of its row and plain `sync-verify --repair`; `--repair --reset-versions` heals it.

Real servers: MariaDB with the gearsync UDFs and capture triggers, gearmand, sync-worker, Redis.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient
from sync.keys import version_key
from sync.rows.schema import load_table
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .test_signing import MAX_VERSION, volume, wait_for
from .triggers_rig import install, wait_converged, worker_thread
from .udf_fixtures import point_at, udf_installed  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(240)

VERIFY_BIN = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sync-verify")


def forge(g: GearmanServer, i: int, volume: int) -> None:
    """What anyone who reaches gearmand's port can do without a signing key: a change at version 2**64-1."""
    payload = encode_change(ChangeEvent("data", Op.UPDATE, (("id", i),), {"id": i, "volume": volume},
                                        MAX_VERSION, Source.TRIGGER))

    async def go() -> None:
        async with GearmanClient([(g.host, g.port)]) as client:
            await client.submit_background_many("gearsync.data", [payload])
    asyncio.run(go())


def verify(mariadb: MariaDBServer, db: Any, r: RedisServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
    env.pop("GEARSYNC_JOB_KEY", None)
    return subprocess.run([VERIFY_BIN, "--table", "data", "--recheck-delay", "0", *args], env=env,
                          capture_output=True, timeout=120)


def test_reset_versions_heals_a_forged_max_version_job(udf_installed: MariaDBServer,  # noqa: F811
                                                       gearmand: GearmanServer, db: Any, redis_server: RedisServer,
                                                       redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEARSYNC_JOB_KEY", raising=False)  # an unsigned deployment
    monkeypatch.delenv("GEARSYNC_JOB_KEY_OLD", raising=False)
    mariadb = udf_installed
    point_at(db, gearmand)
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT) ENGINE=InnoDB")
    install(db, "data")
    schema = load_table(db, db.db_name, "data")
    with worker_thread(gearmand, redis_server, "data"), db.cursor() as cur:
        cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, i * 10) for i in range(1, 6)])
        assert wait_converged(mariadb, schema, redis_client) == {}
        # the attack: row 1 changed and a key of a row that does not exist written, both at max u64
        forge(gearmand, 1, 666)
        forge(gearmand, 99, 666)
        assert wait_for(lambda: volume(redis_client, 1) == 666 and volume(redis_client, 99) == 666)
        assert redis_client.get(version_key("data:1")) == str(MAX_VERSION).encode()

        # real changes of the poisoned row no longer land (row 2's change, after it, shows they were applied)
        cur.execute("UPDATE data SET volume = 11 WHERE id = 1")
        cur.execute("UPDATE data SET volume = 21 WHERE id = 2")
        assert wait_for(lambda: volume(redis_client, 2) == 21)
        assert volume(redis_client, 1) == 666

        # plain --repair never overwrites a "newer" change: the row and the extra key stay wrong
        p = verify(mariadb, db, redis_server, "--repair", "--json")
        assert p.returncode == 1, p.stderr
        report = orjson.loads(p.stdout)
        assert report["different"] == 1 and report["extra"] == 1 and report["versions_reset"] == 0, report
        assert volume(redis_client, 1) == 666 and volume(redis_client, 99) == 666

        # the way back
        fences_of_equal_rows = {i: redis_client.get(version_key(f"data:{i}")) for i in range(2, 6)}
        p = verify(mariadb, db, redis_server, "--repair", "--reset-versions")
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert b"1 rows re-applied, 1 extra keys deleted, 2 version keys reset" in p.stdout, p.stdout
        assert volume(redis_client, 1) == 11 and redis_client.get("data:99") is None
        assert int(redis_client.get(version_key("data:1"))) < MAX_VERSION
        # equal rows were not touched
        assert {i: redis_client.get(version_key(f"data:{i}")) for i in range(2, 6)} == fences_of_equal_rows

        # later real changes land again: an UPDATE of the healed row, an INSERT of the forged key's row
        cur.execute("UPDATE data SET volume = 12 WHERE id = 1")
        cur.execute("INSERT INTO data VALUES (99, 990)")
        assert wait_for(lambda: volume(redis_client, 1) == 12 and volume(redis_client, 99) == 990)
        assert wait_converged(mariadb, schema, redis_client) == {}
    p = verify(mariadb, db, redis_server)
    assert p.returncode == 0 and b"equal" in p.stdout, (p.stdout, p.stderr)


def test_reset_versions_needs_repair(mariadb: MariaDBServer, db: Any, redis_server: RedisServer) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    p = verify(mariadb, db, redis_server, "--reset-versions")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith(b"sync-verify: error: --reset-versions") and b"Traceback" not in p.stderr
