"""The harness itself: each throwaway server starts, answers, and stops on its own port."""

from __future__ import annotations

import socket

from sync.testing.servers import GearmanServer, MariaDBServer, RedisClusterNodes, RedisServer


def test_mariadb_has_row_binlog_with_full_metadata(mariadb: MariaDBServer) -> None:
    conn = mariadb.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT @@binlog_format, @@binlog_row_metadata, @@log_bin, @@port, @@plugin_dir")
        fmt, meta, log_bin, port, plugin_dir = cur.fetchone()
    conn.close()
    assert (fmt, meta, log_bin, port) == ("ROW", "FULL", 1, mariadb.port)
    assert plugin_dir.rstrip("/") == str(mariadb.plugin_dir)


def test_db_fixture_is_a_fresh_database(db) -> None:
    with db.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert cur.fetchall() == ()


def test_redis_answers_and_is_flushed(redis_client, redis_server: RedisServer) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"
    assert redis_server.port != 6379


def test_gearmand_restarts_on_the_same_port(gearmand: GearmanServer) -> None:
    port = gearmand.port
    gearmand.stop()
    gearmand.start()
    assert gearmand.port == port
    with socket.create_connection((gearmand.host, port), timeout=2) as s:
        s.sendall(b"version\n")
        assert s.recv(64).startswith(b"OK 1.1")


def test_gearmand_with_mysql_queue(gearmand_factory, mariadb: MariaDBServer) -> None:
    server = gearmand_factory(queue="mysql", mysql=mariadb)
    assert server.running


def test_gearmand_with_sqlite_queue(gearmand_factory) -> None:
    server = gearmand_factory(queue="libsqlite3")
    assert (server.base_dir / "queue.sqlite3").exists()


def test_redis_cluster_routes_keys(redis_cluster: RedisClusterNodes) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    client.flushall(target_nodes=RedisCluster.ALL_NODES)  # the cluster is shared by the session
    for i in range(50):
        client.set(f"key:{i}", i)
    assert client.dbsize(target_nodes=RedisCluster.ALL_NODES) == 50
    client.close()
    per_node = [node.client().dbsize() for node in redis_cluster.nodes]
    assert all(n > 0 for n in per_node), per_node
