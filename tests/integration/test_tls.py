"""TLS to Redis and to MariaDB, live: a throwaway CA made with openssl, a redis-server that speaks
only TLS and wants a client certificate (tls-port, port 0, tls-auth-clients yes), a mariadbd with
ssl_ca/ssl_cert/ssl_key and a user that must log in with a certificate (REQUIRE X509). The commands
run as a user runs them: sync-worker, sync-snapshot, sync-verify, sync-status, sync-binlog."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.keys import stats_key
from sync.settings import resolve_mysql
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer, TLSFiles, make_tls_files
from tests.integration.test_sync_worker import change, submit_sync, wait_drained

pytestmark = pytest.mark.timeout(240)

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
DB = "app"
USER, PASSWORD = "gs_tls", "tls-secret-pw"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"), "gearsync")


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Another CA (and its certificates): the server's certificate was not signed by it."""
    return make_tls_files(tmp_path_factory.mktemp("rogue"), "rogue")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), tls=tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rc(tls_redis: RedisServer) -> Iterator[Any]:
    """A redis-py client of the TLS server (with the client certificate), flushed."""
    client = tls_redis.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def tls_db(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb-tls"), tls=tls)
    server.start()
    server.execute(
        f"CREATE DATABASE {DB}",
        f"CREATE TABLE {DB}.data (id INT PRIMARY KEY, volume INT, name VARCHAR(64))",
        f"INSERT INTO {DB}.data SELECT seq, seq % 100, CONCAT('row-', seq) FROM {DB}.seq_1_to_500",
        f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}' REQUIRE X509",
        # what sync-snapshot, sync-verify and sync-binlog need (docs/security.md)
        f"GRANT SELECT ON {DB}.* TO '{USER}'@'127.0.0.1'",
        f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{USER}'@'127.0.0.1'",
    )
    yield server
    server.stop()


def redis_env(r: RedisServer, files: TLSFiles, *, client_cert: bool = True) -> dict[str, str]:
    env = {"GEARSYNC_REDIS_URL": r.url, "GEARSYNC_REDIS_SSL_CA_CERTS": str(files.ca)}
    if client_cert:
        env |= {"GEARSYNC_REDIS_SSL_CERTFILE": str(files.client_cert),
                "GEARSYNC_REDIS_SSL_KEYFILE": str(files.client_key)}
    return env


def mysql_env(db: MariaDBServer, files: TLSFiles | None) -> dict[str, str]:
    env = {"GEARSYNC_MYSQL_URL": f"mysql://{USER}@127.0.0.1:{db.port}/{DB}", "GEARSYNC_MYSQL_PASSWORD": PASSWORD}
    if files is not None:
        env |= {"GEARSYNC_MYSQL_SSL_CA": str(files.ca), "GEARSYNC_MYSQL_SSL_CERT": str(files.client_cert),
                "GEARSYNC_MYSQL_SSL_KEY": str(files.client_key)}
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any GEARSYNC_/old-style setting of the outer shell, plus `extra`."""
    old = ("MYSQL_", "REDIS_", "GEARMAN_SERVERS")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GEARSYNC_", *old))}
    return base | extra


def run(cmd: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / cmd), *args], env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(p: subprocess.CompletedProcess[str], cmd: str, code: int, *fragments: str) -> str:
    errors = [line for line in p.stderr.splitlines() if line.startswith(f"{cmd}: error:")]
    assert p.returncode == code and len(errors) == 1, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert PASSWORD not in p.stderr
    return errors[0]


def test_sync_worker_applies_a_job_over_tls(gearmand: GearmanServer, tls_redis: RedisServer, tls: TLSFiles,
                                            rc: Any, tmp_path: Path) -> None:
    # the TLS files from the config file this time (the env and the url query are the other tests')
    cfg = tmp_path / "gearsync.toml"
    cfg.write_text(f'[redis]\nurl = "{tls_redis.url}"\nssl_ca_certs = "{tls.ca}"\n'
                   f'ssl_certfile = "{tls.client_cert}"\nssl_keyfile = "{tls.client_key}"\n')
    submit_sync(gearmand, "gearsync.data", [
        change("data", "insert", {"id": 1}, {"id": 1, "volume": 10}, 1),
        change("data", "update", {"id": 1}, {"id": 1, "volume": 11}, 2),
        change("data", "insert", {"id": 2}, {"id": 2, "volume": 20}, 3),
    ])
    proc = subprocess.Popen(
        [str(BIN / "sync-worker"), "--table", "data", "--config", str(cfg), "--stats-interval", "0",
         "--log-format", "json"],
        env=clean_env(GEARSYNC_GEARMAN_SERVERS=gearmand.address), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_drained(gearmand, "gearsync.data")
        deadline = time.monotonic() + 30
        while rc.get("data:2") is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, stderr[-2000:]
    assert orjson.loads(rc.get("data:1")) == {"id": 1, "volume": 11}
    assert orjson.loads(rc.get("data:2")) == {"id": 2, "volume": 20}


def test_mysql_settings_give_an_encrypted_session(tls_db: MariaDBServer, tls: TLSFiles) -> None:
    mysql = resolve_mysql(None, mysql_env(tls_db, tls))
    conn = mysql.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
            name, cipher = cur.fetchone()
            cur.execute("SELECT CURRENT_USER()")
            (user,) = cur.fetchone()
    finally:
        conn.close()
    assert name == "Ssl_cipher" and cipher, "the session is not encrypted"
    assert user == f"{USER}@127.0.0.1"


def test_snapshot_verify_status_over_tls_to_both(tls_db: MariaDBServer, tls_redis: RedisServer, tls: TLSFiles,
                                                 rc: Any) -> None:
    env = clean_env(**mysql_env(tls_db, tls), **redis_env(tls_redis, tls))
    p = run("sync-snapshot", "--table", "data", "--progress", "log", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert orjson.loads(rc.get("data:7")) == {"id": 7, "volume": 7, "name": "row-7"}
    assert len([k for k in rc.scan_iter(match="data:*")]) == 500

    # sync-verify with the TLS files in the url's query instead of GEARSYNC_REDIS_SSL_*
    query = f"?ssl_ca_certs={tls.ca}&ssl_certfile={tls.client_cert}&ssl_keyfile={tls.client_key}"
    env_q = clean_env(**mysql_env(tls_db, tls), GEARSYNC_REDIS_URL=tls_redis.url + query)
    p = run("sync-verify", "--table", "data", "--recheck-delay", "0", env=env_q)
    assert p.returncode == 0 and "equal" in p.stdout, (p.stdout, p.stderr[-2000:])
    rc.delete("data:42")
    p = run("sync-verify", "--table", "data", "--recheck-delay", "0", "--json", env=env_q)
    assert p.returncode == 1 and orjson.loads(p.stdout)["examples"]["missing"] == ["data:42"], p.stderr[-2000:]
    p = run("sync-verify", "--table", "data", "--recheck-delay", "0", "--repair", env=env)
    assert p.returncode == 0 and rc.get("data:42") is not None, p.stderr[-2000:]

    rc.hset(stats_key("data"), "applied_total", 4321)
    p = run("sync-status", "--table", "data", "--no-mysql", "--json", "--servers", "127.0.0.1:1", env=env)
    assert "Traceback" not in p.stderr and p.stdout, p.stderr[-2000:]
    status = orjson.loads(p.stdout)
    assert status["redis"]["up"] is True and status["tables"]["data"]["applied_total"] == 4321, status


def test_sync_binlog_streams_over_tls_to_both(tls_db: MariaDBServer, tls_redis: RedisServer, tls: TLSFiles,
                                              rc: Any, tmp_path: Path) -> None:
    # the user logs in only with a client certificate (REQUIRE X509): streaming at all is the proof
    # that both the control and the binlog dump connection are TLS
    env = clean_env(**mysql_env(tls_db, tls), **redis_env(tls_redis, tls))
    log = (tmp_path / "binlog.log").open("wb")
    proc = subprocess.Popen([str(BIN / "sync-binlog"), "--table", "data", "--start", "current",
                             "--stats-interval", "0", "--log-format", "json"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        marker = 0
        while time.monotonic() < deadline and proc.poll() is None:
            marker += 1
            tls_db.execute(f"REPLACE INTO {DB}.data VALUES (9000, {marker}, 'over tls')")
            time.sleep(0.5)
            value = rc.get("data:9000")
            if value is not None and orjson.loads(value)["name"] == "over tls":
                break
        else:
            raise AssertionError("sync-binlog applied nothing: " + (tmp_path / "binlog.log").read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, (tmp_path / "binlog.log").read_text()[-2000:]


@pytest.mark.parametrize("cmd,args", [
    ("sync-snapshot", ("--table", "data")),
    ("sync-verify", ("--table", "data")),
    ("sync-worker", ("--table", "data", "--startup-wait", "0")),
    ("sync-binlog", ("--table", "data", "--startup-wait", "0")),
])
def test_redis_with_another_ca_fails_in_one_line(cmd: str, args: tuple[str, ...], tls_db: MariaDBServer,
                                                 tls_redis: RedisServer, tls: TLSFiles, rogue: TLSFiles,
                                                 gearmand: GearmanServer) -> None:
    # the server's certificate is not signed by the CA we trust: refused before any command is sent
    env = clean_env(**mysql_env(tls_db, tls), **redis_env(tls_redis, rogue), GEARSYNC_GEARMAN_SERVERS=gearmand.address)
    assert_one_line_error(run(cmd, *args, env=env), cmd, 3, "certificate verify failed")


def test_sync_status_reports_the_refused_certificate(tls_redis: RedisServer, rogue: TLSFiles) -> None:
    # sync-status reports each part it could not read in its output, and exits 3
    p = run("sync-status", "--table", "data", "--no-mysql", "--servers", "127.0.0.1:1",
            env=clean_env(**redis_env(tls_redis, rogue)))
    assert p.returncode == 3 and "certificate verify failed" in p.stdout, (p.stdout, p.stderr[-2000:])
    assert "Traceback" not in p.stdout + p.stderr


def test_redis_without_client_certificate_fails_in_one_line(tls_db: MariaDBServer, tls_redis: RedisServer,
                                                            tls: TLSFiles) -> None:
    env = clean_env(**mysql_env(tls_db, tls), **redis_env(tls_redis, tls, client_cert=False))
    assert_one_line_error(run("sync-verify", "--table", "data", env=env), "sync-verify", 3)


@pytest.mark.parametrize("cmd", ["sync-snapshot", "sync-verify", "sync-binlog"])
def test_mysql_without_ca_or_with_another_fails_in_one_line(cmd: str, tls_db: MariaDBServer, tls_redis: RedisServer,
                                                            tls: TLSFiles, rogue: TLSFiles) -> None:
    args = ("--table", "data", *(("--startup-wait", "0") if cmd == "sync-binlog" else ()))
    # the user may log in only over TLS with a certificate: without the TLS settings, refused
    env = clean_env(**mysql_env(tls_db, None), **redis_env(tls_redis, tls))
    assert_one_line_error(run(cmd, *args, env=env), cmd, 3, "Access denied")
    # the server's certificate is not signed by the CA we trust
    env = clean_env(**mysql_env(tls_db, rogue), **redis_env(tls_redis, tls))
    assert_one_line_error(run(cmd, *args, env=env), cmd, 3, "certificate verify failed")


def test_bad_tls_settings_are_one_line_and_exit_2(tls_redis: RedisServer, tls: TLSFiles, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    cases = [
        ({**redis_env(tls_redis, tls), "GEARSYNC_REDIS_SSL_CA_CERTS": missing}, ("GEARSYNC_REDIS_SSL_CA_CERTS", missing)),
        ({"GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{tls_redis.port}/0", "GEARSYNC_REDIS_SSL_CA_CERTS": str(tls.ca)},
         ("rediss://",)),
        ({"GEARSYNC_REDIS_URL": f"{tls_redis.url}?ssl_certfile={missing}"}, ("ssl_certfile", missing)),
    ]
    for env, fragments in cases:
        p = run("sync-verify", "--table", "data", env=clean_env(**env))
        assert_one_line_error(p, "sync-verify", 2, *fragments)
