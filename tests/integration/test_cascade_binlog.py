"""Foreign-key cascades on the binlog path (issue 13): InnoDB writes no row event for the cascaded
child rows, so sync-binlog sends "refs"/"cascade" (and op "cascade" for a parent it does not sync)
and the applier performs the cascade; Redis equals MySQL afterwards without any repair, through
--sink redis and through --sink gearman + sync-worker."""

from __future__ import annotations

from typing import Any

import pytest

from sync.apply.worker import SyncWorker
from sync.config import worker_settings
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

from .binlog_rig import Running, settings
from .test_cascade import SYNCED, make_schema, populate, wait_equal, workload
from .triggers_rig import LoopThread

pytestmark = pytest.mark.timeout(240)


def run_binlog_cascades(mariadb: MariaDBServer, db: Any, redis_server: RedisServer, redis_client: Any,
                        **kw: Any) -> None:
    make_schema(db)
    with Running(settings(mariadb, db.db_name, SYNCED, redis_server, **kw)) as run:
        # tag is not synced: read in cascade-only mode (its key changes cascade into link)
        source = run.service.source
        assert source is not None and source.tables["tag"].cascade_only
        populate(db)
        workload(mariadb, db)
        d = wait_equal(mariadb, db, redis_client)
        assert d == {}, sorted(d.items())[:20]
    assert not any(redis_client.scan_iter(match="tag:*"))  # the cascade-only parent writes nothing


def test_binlog_redis_sink_cascades(mariadb: MariaDBServer, db: Any, redis_server: RedisServer,
                                    redis_client: Any) -> None:
    run_binlog_cascades(mariadb, db, redis_server, redis_client)


def test_binlog_gearman_sink_cascades(mariadb: MariaDBServer, db: Any, gearmand: GearmanServer,
                                      redis_server: RedisServer, redis_client: Any) -> None:
    # One sync-worker serves every FK-related table (the op cascade of tag goes to link's function).
    with LoopThread(lambda: SyncWorker(worker_settings(
            tables=SYNCED, servers=gearmand.address, redis_url=f"redis://{redis_server.host}:{redis_server.port}/0",
            env={}), idle_timeout_s=0.2)):
        run_binlog_cascades(mariadb, db, redis_server, redis_client, sink="gearman",
                            servers=((gearmand.host, gearmand.port),))
    assert int(redis_client.llen("gearsync:dead:{orders}") or 0) == 0
