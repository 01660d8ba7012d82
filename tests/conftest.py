"""Real-server fixtures: throwaway MariaDB, Redis (single + cluster) and gearmand on free ports.

Nothing is mocked. If a server cannot start, the fixture fails with the server's own log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sync.testing.servers import GearmanServer, MariaDBServer, RedisClusterNodes, RedisServer

REPO = Path(__file__).resolve().parent.parent
UDF_BUILD_DIR = REPO / "udf" / "build"


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def mariadb(servers_dir: Path) -> Iterator[MariaDBServer]:
    """One mariadbd for the session; its plugin_dir is the UDF build dir (udf/build)."""
    UDF_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    server = MariaDBServer(servers_dir / "mariadb", plugin_dir=UDF_BUILD_DIR)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db(mariadb: MariaDBServer) -> Iterator[object]:
    """A pymysql connection (autocommit) on a fresh database, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    mariadb.execute(f"CREATE DATABASE `{name}`")
    conn = mariadb.connect(name)
    conn.db_name = name
    try:
        yield conn
    finally:
        conn.close()
        mariadb.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(servers_dir / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[object]:
    """A synchronous redis-py client on a flushed server."""
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
async def aredis(redis_server: RedisServer):
    """A redis.asyncio client on a flushed server (use from async tests)."""
    import redis.asyncio as aioredis

    if not redis_server.running:
        redis_server.start()
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(servers_dir: Path) -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes(servers_dir / "redis-cluster", n=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def gearmand_factory(tmp_path: Path) -> Iterator[Callable[..., GearmanServer]]:
    """Start more gearmand servers: gearmand_factory(queue='libsqlite3', mysql=mariadb, ...)."""
    started: list[GearmanServer] = []

    def start(**kw: object) -> GearmanServer:
        server = GearmanServer(tmp_path / f"gearmand{len(started)}", **kw)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gearmand(gearmand_factory: Callable[..., GearmanServer]) -> GearmanServer:
    """A fresh gearmand with the in-memory queue, for one test."""
    return gearmand_factory()
