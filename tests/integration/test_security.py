"""Security: Redis AUTH (password, ACL user), least-privilege MySQL users, no secret anywhere visible.

Real redis-server with requirepass and an ACL user, real MariaDB users with only the GRANTs that
docs/security.md lists. Every long-running command runs with a recognizable password in
GEARSYNC_REDIS_PASSWORD / GEARSYNC_MYSQL_PASSWORD, once working and once failing (wrong password); its whole output
and its /proc/<pid>/cmdline must not contain the password. The UDF sources must not print workloads.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import orjson
import pytest

from sync.events import ChangeEvent, Op, Source, encode_change
from sync.gearman import GearmanClient
from sync.redis_client import check_redis_url
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
REDIS_PW = "Rpw-" + uuid.uuid4().hex[:12]
ACL_PW = "Apw-" + uuid.uuid4().hex[:12]
MYSQL_PW = "Mpw-" + uuid.uuid4().hex[:12]
SECRETS = (REDIS_PW, ACL_PW, MYSQL_PW)


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory):
    r = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=REDIS_PW)
    r.start()
    c = r.client()
    # an ACL user limited to gearsync's keys (row keys of table data + gearsync:*) and the commands it uses
    c.execute_command("ACL", "SETUSER", "gsync", "on", f">{ACL_PW}", "resetkeys", "~data:*", "~gearsync:*",
                      "resetchannels", "-@all", "+@read", "+@write", "+@scripting", "+@connection", "+@keyspace",
                      "+info", "-flushall", "-flushdb")
    c.close()
    yield r
    r.stop()


def _env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "GEARMAN_", "GEARSYNC_"))}
    env.update(kw)
    return env


def _no_secret(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"password {s[:4]}… appears in {where}:\n{text[-2000:]}"


def _submit(g: GearmanServer, n: int, base: int) -> None:
    async def go() -> None:
        async with GearmanClient([(g.host, g.port)]) as client:
            await client.submit_background_many("gearsync.data", [
                encode_change(ChangeEvent("data", Op.UPDATE, (("id", i),), {"id": i, "volume": base + i}, base + i,
                                          Source.TRIGGER)) for i in range(n)])
    asyncio.run(go())


def _run_worker(g: GearmanServer, env: dict[str, str], seconds: float) -> tuple[int, str, str]:
    proc = subprocess.Popen([str(BIN / "sync-worker"), "--table", "data", "--log-format", "json",
                             "--stats-interval", "0.5", "--log-level", "debug"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(seconds)
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out.decode() + err.decode(), cmdline


@pytest.mark.parametrize("user", [None, "gsync"])
def test_worker_with_auth_applies_and_never_shows_the_password(auth_redis: RedisServer, gearmand: GearmanServer,
                                                               user: str | None) -> None:
    url = f"redis://{user + '@' if user else ''}127.0.0.1:{auth_redis.port}/0"
    pw = ACL_PW if user else REDIS_PW
    _submit(gearmand, 50, 1000 if user else 0)
    rc, output, cmdline = _run_worker(gearmand, _env(GEARSYNC_REDIS_URL=url, GEARSYNC_REDIS_PASSWORD=pw,
                                                     GEARSYNC_GEARMAN_SERVERS=gearmand.address), 2.0)
    assert rc == 0, output[-2000:]
    client = auth_redis.client()
    try:
        for i in range(50):
            assert orjson.loads(client.get(f"data:{i}"))["volume"] == (1000 if user else 0) + i
    finally:
        client.close()
    _no_secret(output, "sync-worker output")
    _no_secret(cmdline, "/proc/<pid>/cmdline")


@pytest.mark.parametrize("user", [None, "gsync"])
def test_wrong_password_fails_without_showing_it(auth_redis: RedisServer, gearmand: GearmanServer,
                                                 user: str | None) -> None:
    url = f"redis://{user + '@' if user else ''}127.0.0.1:{auth_redis.port}/0"
    _submit(gearmand, 5, 50)
    # the wrong password is one of our recognizable secrets too: it must not leak either
    wrong = MYSQL_PW
    rc, output, cmdline = _run_worker(gearmand, _env(GEARSYNC_REDIS_URL=url, GEARSYNC_REDIS_PASSWORD=wrong,
                                                     GEARSYNC_GEARMAN_SERVERS=gearmand.address), 2.0)
    assert rc == 0 and re.search(r"redis_unavailable|WRONGPASS|invalid username-password|AuthenticationError",
                                 output), output[-2000:]
    _no_secret(output, "sync-worker output (wrong password)")
    _no_secret(cmdline, "/proc/<pid>/cmdline")


def test_tools_authenticate_with_redis(auth_redis: RedisServer, mariadb: MariaDBServer, db) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
        cur.execute("INSERT INTO data SELECT seq, seq FROM seq_1_to_20")
    admin = auth_redis.client()
    admin.flushall()
    admin.close()
    for user, pw in ((None, REDIS_PW), ("gsync", ACL_PW)):
        env = _env(GEARSYNC_REDIS_URL=f"redis://{user + '@' if user else ''}127.0.0.1:{auth_redis.port}/0", GEARSYNC_REDIS_PASSWORD=pw,
                   GEARSYNC_MYSQL_URL=f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}")
        for args, code in ((["sync-snapshot", "--table", "data", "--restart"], 0),
                           (["sync-verify", "--table", "data"], 0),
                           (["sync-status", "--no-mysql", "--json"], None)):
            r = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, env=env)
            assert code is None or r.returncode == code, (args, user, r.stdout[-500:], r.stderr[-1500:])
            assert "Traceback" not in r.stderr
            _no_secret(r.stdout + r.stderr, args[0])
        bad = {**env, "GEARSYNC_REDIS_PASSWORD": MYSQL_PW}
        r = subprocess.run([str(BIN / "sync-verify"), "--table", "data"], capture_output=True, text=True, timeout=60,
                           env=bad)
        assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr  # refused: as unreachable
        _no_secret(r.stdout + r.stderr, "sync-verify with a wrong password")


def test_mysql_password_never_shows(mariadb: MariaDBServer, redis_server: RedisServer, db) -> None:
    """A MySQL user with a password: the wrong one in every tool's error, the right one in the
    binlog reader's output and process title."""
    user = "sec_" + uuid.uuid4().hex[:6]
    mariadb.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{MYSQL_PW}'",
                    f"GRANT SELECT ON `{db.db_name}`.* TO '{user}'@'127.0.0.1'",
                    f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'127.0.0.1'")
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
    try:
        base = _env(GEARSYNC_MYSQL_URL=f"mysql://{user}@127.0.0.1:{mariadb.port}/{db.db_name}",
                    GEARSYNC_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0", GEARSYNC_GEARMAN_SERVERS="127.0.0.1:1")
        for args in (["sync-snapshot", "--table", "data"], ["sync-verify", "--table", "data"],
                     ["sync-relay"], ["sync-triggers", "install", "--table", "data"], ["sync-status"],
                     ["sync-binlog", "--table", "data"]):
            # sync-relay stops by itself on a wrong password (exit 2); anything still running after
            # 3 s gets SIGTERM
            p = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**base, "GEARSYNC_MYSQL_PASSWORD": REDIS_PW})
            try:
                out, err = p.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                out, err = p.communicate(timeout=30)
            text = out.decode() + err.decode()
            assert "Traceback" not in text, (args, text[-1500:])
            assert "access denied" in text.lower() or "cannot connect" in text, (args, text[-1500:])
            _no_secret(text, f"{args[0]} with a wrong MySQL password")
        proc = subprocess.Popen([str(BIN / "sync-binlog"), "--table", "data", "--log-format", "json",
                                 "--stats-interval", "0.5", "--log-level", "debug"],
                                env={**base, "GEARSYNC_MYSQL_PASSWORD": MYSQL_PW}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2.0)
        with db.cursor() as cur:
            cur.execute("INSERT INTO data VALUES (1, 1)")
        time.sleep(1.0)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        text = out.decode() + err.decode()
        assert proc.returncode == 0, text[-2000:]
        _no_secret(text, "sync-binlog output")
        _no_secret(cmdline, "sync-binlog cmdline")
    finally:
        mariadb.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def test_least_privilege_snapshot_verify_and_relay(mariadb: MariaDBServer, redis_server: RedisServer,
                                                   gearmand: GearmanServer, db) -> None:
    """The GRANTs of docs/security.md and nothing more: SELECT for snapshot/verify (--repair too);
    SELECT, DELETE on gearsync_spool for the relay."""
    from sync.capture.spool import spool_ddl

    user = "lp_" + uuid.uuid4().hex[:6]
    with db.cursor() as cur:
        cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
        cur.execute("INSERT INTO data SELECT seq, seq FROM seq_1_to_50")
        cur.execute(spool_ddl(db.db_name))
        cur.executemany("INSERT INTO gearsync_spool (function, payload) VALUES ('gearsync.lp', %s)",
                        [(f'{{"n":{i}}}',) for i in range(30)])
    mariadb.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{MYSQL_PW}'",
                    f"GRANT SELECT ON `{db.db_name}`.`data` TO '{user}'@'127.0.0.1'",
                    f"GRANT SELECT, DELETE ON `{db.db_name}`.`gearsync_spool` TO '{user}'@'127.0.0.1'")
    try:
        env = _env(GEARSYNC_MYSQL_URL=f"mysql://{user}@127.0.0.1:{mariadb.port}/{db.db_name}", GEARSYNC_MYSQL_PASSWORD=MYSQL_PW,
                   GEARSYNC_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0", GEARSYNC_GEARMAN_SERVERS=gearmand.address)
        client = redis_server.client()
        client.flushall()
        client.close()
        for args, code in ((["sync-snapshot", "--table", "data", "--restart"], 0),
                           (["sync-verify", "--table", "data"], 0),
                           (["sync-verify", "--table", "data", "--repair"], 0),
                           (["sync-relay", "--once"], 0)):
            r = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, env=env)
            assert r.returncode == code, (args, r.stdout[-500:], r.stderr[-1500:])
        with db.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM gearsync_spool")
            assert cur.fetchone()[0] == 0
    finally:
        mariadb.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def test_tls_options_are_parsed() -> None:
    """rediss:// is accepted by every command's URL check (TLS against a live server: not tested here,
    see docs/security.md); GEARSYNC_MYSQL_SSL_CA/CERT/KEY reach the connection settings."""
    from sync.settings import mysql_settings

    assert check_redis_url("rediss://127.0.0.1:6380/0") == "rediss://127.0.0.1:6380/0"
    s = mysql_settings(None, env={"GEARSYNC_MYSQL_HOST": "db", "GEARSYNC_MYSQL_SSL_CA": "/ca.pem", "GEARSYNC_MYSQL_SSL_CERT": "/c.pem",
                                  "GEARSYNC_MYSQL_SSL_KEY": "/k.pem", "GEARSYNC_MYSQL_PASSWORD": MYSQL_PW})
    assert (s.ssl_ca, s.ssl_cert, s.ssl_key) == ("/ca.pem", "/c.pem", "/k.pem")
    _no_secret(repr(s) + str(s) + s.display, "MySQLSettings repr")


def test_udf_sources_never_print_workloads() -> None:
    """Every fprintf/syslog in udf/*.c: none may format a workload, a unique id or a JSON value."""
    offenders = []
    for path in sorted((REPO / "udf").glob("*.c")):
        text = path.read_text()
        for m in re.finditer(r"\b(fprintf|printf|syslog|puts|fputs|perror|sql_print_\w+)\s*\((.*?)\);", text, re.S):
            call = m.group(2)
            if re.search(r"\b(wl|workload|payload|unique|args->args|value|json|buf)\b", call) \
                    and "fmt" not in call:
                offenders.append(f"{path.name}: {m.group(0)[:200]}")
    assert not offenders, "\n".join(offenders)
