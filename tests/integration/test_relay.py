"""sync-relay against real MariaDB + gearmand: order, several relays, gearmand down, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from sync.capture.relay import SpoolRelay
from sync.capture.spool import spool_ddl
from sync.testing.servers import GearmanServer, MariaDBServer

from .triggers_rig import relay_settings, spool_count
from .udf_fixtures import grab_all

REPO = Path(__file__).resolve().parents[2]


def fill_spool(db, n: int, functions: tuple[str, ...] = ("gearsync.a",)) -> list[bytes]:
    payloads = [f'{{"n":{i}}}'.encode() for i in range(n)]
    with db.cursor() as cur:
        cur.execute(spool_ddl(db.db_name))
        cur.executemany("INSERT INTO gearsync_spool (function, payload) VALUES (%s, %s)",
                        [(functions[i % len(functions)], p) for i, p in enumerate(payloads)])
    return payloads


def test_relay_sends_in_id_order_and_deletes(mariadb: MariaDBServer, gearmand: GearmanServer, db) -> None:
    payloads = fill_spool(db, 1200, ("gearsync.a", "gearsync.b"))

    async def go() -> int:
        relay = SpoolRelay(relay_settings(mariadb, db.db_name, gearmand, batch=500))
        try:
            return await relay.drain()
        finally:
            await relay.close()

    assert asyncio.run(go()) == 1200
    assert spool_count(db) == 0
    got_a = [j.workload for j in grab_all(gearmand, "gearsync.a", expect=600)]
    got_b = [j.workload for j in grab_all(gearmand, "gearsync.b", expect=600)]
    assert got_a == payloads[0::2] and got_b == payloads[1::2]  # id order per function


def test_several_relays_share_the_spool(mariadb: MariaDBServer, gearmand: GearmanServer, db) -> None:
    payloads = fill_spool(db, 3000)

    async def go() -> list[int]:
        relays = [SpoolRelay(relay_settings(mariadb, db.db_name, gearmand, batch=100)) for _ in range(3)]
        try:
            return list(await asyncio.gather(*(r.drain() for r in relays)))
        finally:
            for r in relays:
                await r.close()

    counts = asyncio.run(go())
    assert sum(counts) >= 3000, counts  # how the rows split between relays depends on scheduling
    got = Counter(j.workload for j in grab_all(gearmand, "gearsync.a", expect=3000))
    # Each row at least once (SKIP LOCKED, delete after send); a DELETE retried after a deadlock
    # between relays can let a row out twice, which the worker's version fence absorbs.
    assert set(got) == set(payloads)
    assert sum(got.values()) - len(payloads) < len(payloads) // 2, sum(got.values()) - len(payloads)
    assert spool_count(db) == 0


def test_relay_keeps_rows_while_gearmand_is_down_and_exits_on_sigterm(
    mariadb: MariaDBServer, gearmand_factory, db
) -> None:
    g: GearmanServer = gearmand_factory()
    g.stop()
    fill_spool(db, 50)
    env = {**os.environ, "GEARSYNC_MYSQL_PASSWORD": ""}
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "sync-relay"), "--database", db.db_name, "--servers", g.address,
         "--mysql-url", f"mysql://root@127.0.0.1:{mariadb.port}/", "--log-format", "json", "--stats-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        time.sleep(1.0)
        assert spool_count(db) == 50  # nothing deleted without gearmand's acknowledgement
        g.start()
        deadline = time.monotonic() + 20
        while spool_count(db) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool_count(db) == 0
        assert len(grab_all(g, "gearsync.a", expect=50)) == 50
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    text = err.decode()
    assert "relay_unavailable" in text and "relay_stats" in text and "relay_stopped" in text


def test_relay_bad_options(mariadb: MariaDBServer) -> None:
    exe = str(REPO / ".venv" / "bin" / "sync-relay")
    for args, needle in ((["--batch", "0", "--database", "x"], "--batch: 0"),
                         (["--poll-interval", "abc", "--database", "x"], "--poll-interval: 'abc'"),
                         (["--servers", "h:99999", "--database", "x"], "port 99999")):
        r = subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "GEARSYNC_MYSQL_URL": mariadb.url})
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_relay_stops_with_a_message_when_retrying_cannot_help(mariadb: MariaDBServer, db) -> None:
    """A wrong password, an unknown database or a database without gearsync_spool: one line that
    says what to change, exit 2 — not a relay retrying forever. The password never shows."""
    exe = str(REPO / ".venv" / "bin" / "sync-relay")
    mariadb.execute("CREATE USER IF NOT EXISTS 'relay_t'@'127.0.0.1' IDENTIFIED BY 'right-Secret-1'",
                    f"GRANT SELECT, DELETE ON `{db.db_name}`.* TO 'relay_t'@'127.0.0.1'")
    mariadb.execute("CREATE DATABASE IF NOT EXISTS relay_nospool")
    base = f"mysql://relay_t@127.0.0.1:{mariadb.port}/"
    cases = (
        ("wrong-Secret-2", db.db_name, "access denied: check GEARSYNC_MYSQL_USER / GEARSYNC_MYSQL_PASSWORD"),
        ("right-Secret-1", "no_such_db_here", "the relay needs SELECT and DELETE on gearsync_spool"),  # 1142
        ("", "relay_nospool", "no table gearsync_spool"),
    )
    for password, database, needle in cases:
        env = {**os.environ, "GEARSYNC_MYSQL_PASSWORD": password}
        url = base if password else f"mysql://root@127.0.0.1:{mariadb.port}/"
        for args in (["--once"], []):  # also the long-running relay: it must not loop
            r = subprocess.run([exe, "--database", database, "--mysql-url", url, "--servers", "127.0.0.1:1",
                                "--log-format", "console", *args],
                               capture_output=True, text=True, env=env, timeout=60)
            last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
            assert r.returncode == 2 and needle in last, r.stderr[-2000:]
            assert "Secret" not in r.stderr + r.stdout
            assert "Traceback" not in r.stderr
