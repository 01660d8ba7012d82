"""The UDF signs background jobs with gearsync_udf.key beside the library, byte for byte as
sync.signing verifies them; the key file is written by udf_install, refused when others may read
it, and re-read when it changes (no restart). Capture triggers end to end with a signing worker.

Each test has a mariadbd of its own (`own_mariadb`: a copy of the library in its own plugin dir),
so a key file never reaches the session server's UDF tests.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.capture.udf_install import install, uninstall, write_key_file
from sync.keys import dead_letter_key
from sync.rows.schema import TableSchema
from sync.signing import KEY_FILE_NAME, REASON_BAD_SIGNATURE, REASON_UNSIGNED, JobKey, load_keys
from sync.tables import TableSpec
from sync.testing.servers import GearmanServer, MariaDBServer, RedisServer
from tests.integration.test_signing import MAX_VERSION, change, submit, wait_for, worker
from tests.integration.triggers_rig import install as install_triggers
from tests.integration.triggers_rig import mysql_of, spool_count, wait_converged
from tests.integration.udf_fixtures import LIBRARY, grab_all, own_mariadb, point_at, scalar  # noqa: F401

pytestmark = pytest.mark.timeout(180)

KEY = "5be0cd19" * 8


@pytest.fixture
def server(request: pytest.FixtureRequest) -> MariaDBServer:
    """`own_mariadb` (udf_fixtures): a mariadbd of this test's own, a copy of the library in its plugin dir."""
    return request.getfixturevalue("own_mariadb")


def key_file(server: MariaDBServer) -> Path:
    return server.plugin_dir / KEY_FILE_NAME


def put_key(server: MariaDBServer, key: str) -> None:
    write_key_file(server.plugin_dir, key.encode(), None)


def submitted(conn: Any, g: GearmanServer, fn: str, payloads: list[bytes]) -> list[bytes]:
    """Submit with gman_do_background, then take the workloads gearmand holds."""
    for p in payloads:
        assert scalar(conn, "SELECT gman_do_background(%s, %s)", fn, p) is not None, \
            scalar(conn, "SELECT gman_last_error()")
    assert scalar(conn, "SELECT gman_flush()") == 0
    return [j.workload for j in grab_all(g, fn, expect=len(payloads))]


@contextlib.contextmanager
def captured_table(server: MariaDBServer, gearmand: GearmanServer) -> Iterator[tuple[Any, TableSchema]]:
    """A fresh database with table data(id, volume) and the capture triggers (udf + spool), the UDF
    pointed at gearmand: (connection, schema)."""
    name = "t_" + uuid.uuid4().hex[:8]
    server.execute(f"CREATE DATABASE `{name}`")
    conn = server.connect(name)
    conn.db_name = name
    try:
        point_at(conn, gearmand)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE data (id INT PRIMARY KEY, volume INT)")
        yield conn, install_triggers(conn, "data")
    finally:
        conn.close()


@pytest.mark.parametrize("key", [KEY, "k" * 16, "z" * 64, "long-" * 40])
def test_udf_signature_matches_python(server: MariaDBServer, gearmand: GearmanServer, key: str) -> None:
    """Every SHA-256 block boundary of the payload, short and long (hashed) keys."""
    put_key(server, key)
    conn = server.connect()
    try:
        point_at(conn, gearmand)
        payloads = [bytes(range(256))[:n] * (1 + n // 256) for n in (0, 1, 54, 55, 56, 63, 64, 65, 118, 119, 120, 300)]
        got = submitted(conn, gearmand, "gearsync.sig", payloads)
    finally:
        conn.close()
    verifier = load_keys({"GEARSYNC_JOB_KEY": key}).verifier
    assert sorted(verifier.open(b"gearsync.sig", w) for w in got) == sorted(payloads)
    assert all(w.startswith(b"gs1." + JobKey(key.encode()).kid + b".") for w in got)


def test_key_file_refused_then_fixed_then_rotated(server: MariaDBServer, gearmand: GearmanServer) -> None:
    put_key(server, KEY)
    conn = server.connect()
    try:
        point_at(conn, gearmand)
        assert submitted(conn, gearmand, "gearsync.sig", [b"{}"])[0].startswith(b"gs1.")
        os.chmod(key_file(server), 0o644)  # readable by others: no job may go out
        refused = wait_for(lambda: scalar(conn, "SELECT gman_do_background('gearsync.sig', '{}')") is None)
        assert refused
        error = scalar(conn, "SELECT gman_last_error()")
        assert b"mode 0644" in error and KEY.encode() not in error
        os.chmod(key_file(server), 0o600)
        assert wait_for(lambda: scalar(conn, "SELECT gman_do_background('gearsync.sig', '{}')") is not None)
        assert scalar(conn, "SELECT gman_flush()") == 0
        grab_all(gearmand, "gearsync.sig")  # what went out before the refusal, and the last one
        new = "f" * 40
        put_key(server, new)  # rotation: the new key in use without a restart
        new_kid = b"gs1." + JobKey(new.encode()).kid

        def signed_with_new() -> bool:
            return submitted(conn, gearmand, "gearsync.sig", [b"{}"])[0].startswith(new_kid)

        assert wait_for(signed_with_new)
        key_file(server).unlink()  # no key: unsigned, as before signing existed
        assert wait_for(lambda: submitted(conn, gearmand, "gearsync.sig", [b"{}"]) == [b"{}"])
    finally:
        conn.close()
    log = server.log_path.read_text(errors="replace")
    assert "refused" in log and "signing background jobs with key id" in log and KEY not in log


def test_install_writes_the_key_file(server: MariaDBServer) -> None:
    key_file(server).unlink(missing_ok=True)
    message = install(mysql_of(server), LIBRARY, {"GEARSYNC_JOB_KEY": KEY})
    path = key_file(server)
    st = path.stat()
    assert path.read_text() == KEY + "\n" and st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    assert JobKey(KEY.encode()).kid.decode() in message and KEY not in message
    again = install(mysql_of(server), LIBRARY, {})
    assert "left as it is" in again and path.read_text() == KEY + "\n"
    removed = uninstall(mysql_of(server), remove_library=True)
    assert not path.exists() and KEY_FILE_NAME in removed


def test_triggers_sign_and_forged_jobs_are_dead_letters(server: MariaDBServer, gearmand: GearmanServer,
                                                        redis_server: RedisServer, redis_client: Any) -> None:
    """Capture triggers → UDF-signed jobs → a worker with the key applies them; a forged max-version
    job submitted straight to gearmand lands in the dead letters and Redis keeps the real row."""
    put_key(server, KEY)
    with captured_table(server, gearmand) as (conn, schema):
        keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
        with worker(gearmand, redis_server, keys), conn.cursor() as cur:
            cur.execute("INSERT INTO data SELECT seq, seq FROM seq_1_to_50")
            cur.execute("UPDATE data SET volume = volume + 100 WHERE id <= 25")
            cur.execute("DELETE FROM data WHERE id > 45")
            assert wait_converged(server, schema, redis_client) == {}
            submit(gearmand, [change(1, 666, MAX_VERSION)], None)
            forger = load_keys({"GEARSYNC_JOB_KEY": "0" * 32}).signer
            submit(gearmand, [change(2, 666, MAX_VERSION)], forger)
            assert wait_for(lambda: redis_client.llen(dead_letter_key("data")) == 2)
            cur.execute("UPDATE data SET volume = 7 WHERE id IN (1, 2)")  # the fence was not poisoned
            assert wait_converged(server, schema, redis_client) == {}
        assert spool_count(conn) == 0
        reasons = sorted(orjson.loads(x)["reason"] for x in redis_client.lrange(dead_letter_key("data"), 0, -1))
        assert reasons == [REASON_BAD_SIGNATURE, REASON_UNSIGNED]
        assert orjson.loads(redis_client.get("data:1"))["volume"] == 7


def test_refused_key_spools_and_relay_signs(server: MariaDBServer, gearmand: GearmanServer,
                                            redis_server: RedisServer, redis_client: Any) -> None:
    """A key file the UDF refuses makes gman_do_background return NULL: the trigger spools the change
    (the user's write succeeds) and sync-relay, which has the key, sends it signed."""
    from sync.capture.relay import SpoolRelay
    from tests.integration.triggers_rig import LoopThread, relay_settings

    put_key(server, KEY)
    os.chmod(key_file(server), 0o640)
    with captured_table(server, gearmand) as (conn, schema):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO data SELECT seq, seq FROM seq_1_to_20")
        assert spool_count(conn) == 20
        keys = load_keys({"GEARSYNC_JOB_KEY": KEY})
        relay = LoopThread(lambda: SpoolRelay(relay_settings(server, conn.db_name, gearmand, watch_triggers=False),
                                              keys=keys))
        with relay, worker(gearmand, redis_server, keys):
            assert wait_converged(server, schema, redis_client, TableSpec("data")) == {}
        assert spool_count(conn) == 0 and redis_client.llen(dead_letter_key("data")) == 0
