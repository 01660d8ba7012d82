"""Trigger capture and table statements: no trigger fires for TRUNCATE or DROP TABLE, so their rows
stay in Redis until sync-verify --repair removes them; after DROP + CREATE the triggers are
installed again and sync-snapshot + sync-verify --repair bring Redis back to equal."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.rows.schema import TableSchema
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .triggers_rig import install, relay_thread, wait_converged, worker_thread
from .udf_fixtures import point_at, udf_installed  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def tool(name: str, server: MariaDBServer, db: Any, r: RedisServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{server.port}/{db.db_name}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{r.port}/0"}
    return subprocess.run([str(BIN / name), "--table", "data", *args], env=env, capture_output=True, timeout=120)


@contextlib.contextmanager
def captured(server: MariaDBServer, gearmand: GearmanServer, db: Any, redis_server: RedisServer,
             redis_client: Any) -> Iterator[TableSchema]:
    """Table data with 20 rows captured by outbox triggers (relay + worker running), in Redis."""
    point_at(db, gearmand)
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    schema = install(db, "data", mode="outbox")
    with worker_thread(gearmand, redis_server, "data"), relay_thread(server, db.db_name, gearmand):
        with db.cursor() as cur:
            cur.executemany("INSERT INTO data VALUES (%s, %s)", [(i, i) for i in range(20)])
        assert wait_converged(server, schema, redis_client) == {}
        yield schema


def test_truncate_leaves_stale_keys_that_verify_repair_removes(udf_installed: MariaDBServer, gearmand: GearmanServer,  # noqa: F811
                                                               db, redis_server: RedisServer, redis_client) -> None:
    with captured(udf_installed, gearmand, db, redis_server, redis_client) as schema:
        with db.cursor() as cur:
            cur.execute("TRUNCATE TABLE data")
            cur.execute("INSERT INTO data VALUES (100, 100)")
        left = wait_converged(udf_installed, schema, redis_client, timeout_s=5)
        # Only the 20 truncated rows differ: no trigger removed them; the later insert arrived.
        assert set(left) == {f"data:{i}" for i in range(20)} and redis_client.get("data:100") is not None
        p = tool("sync-verify", udf_installed, db, redis_server, "--recheck-delay", "0", "--repair")
        assert p.returncode == 0 and b"20 extra keys deleted" in p.stdout, (p.stdout, p.stderr)
        assert wait_converged(udf_installed, schema, redis_client) == {}


def test_drop_create_reinstall_snapshot_verify(udf_installed: MariaDBServer, gearmand: GearmanServer,  # noqa: F811
                                               db, redis_server: RedisServer, redis_client) -> None:
    with captured(udf_installed, gearmand, db, redis_server, redis_client) as schema:
        with db.cursor() as cur:
            cur.execute("DROP TABLE data")   # its triggers go with it
            cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT, name VARCHAR(10))")
            cur.executemany("INSERT INTO data VALUES (%s, %s, 'old')", [(i, -i) for i in range(10, 30)])
        schema = install(db, "data", mode="outbox")
        with db.cursor() as cur:
            cur.execute("INSERT INTO data VALUES (50, 50, 'new')")
            cur.execute("UPDATE data SET name = 'changed' WHERE id = 12")
        p = tool("sync-snapshot", udf_installed, db, redis_server)
        assert p.returncode == 0, p.stderr
        p = tool("sync-verify", udf_installed, db, redis_server, "--recheck-delay", "0", "--repair")
        assert p.returncode == 0 and b"10 extra keys deleted" in p.stdout, (p.stdout, p.stderr)
        p = tool("sync-verify", udf_installed, db, redis_server, "--recheck-delay", "0")
        assert p.returncode == 0 and b"equal" in p.stdout, (p.stdout, p.stderr)
        assert wait_converged(udf_installed, schema, redis_client) == {}
