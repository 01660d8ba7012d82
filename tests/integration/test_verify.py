"""sync-verify against real MariaDB + Redis: corrupted, deleted and added keys are found and repaired."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.events import ChangeEvent, Op, Source
from sync.keys import row_key, version_key
from sync.rows.reader import TableReader
from sync.tables import TableSpec
from sync.testing.servers import MariaDBServer, RedisServer
from sync.tools.keypattern import KeyPattern
from sync.tools.snapshot import open_table
from sync.tools.verify import Verifier
from tests.integration.test_snapshot import expected_state, make_data, redis_state, run_snapshot

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
VERIFY_BIN = str(REPO / ".venv" / "bin" / "sync-verify")


async def verify(mariadb: MariaDBServer, db: Any, r: RedisServer, table: str, *, repair: bool = False,
                 fmt: str = "json", template: str = "{table}:{pk}", **kw: Any):
    target = open_table(table=table, database=db.db_name, mysql_url=f"mysql://root@127.0.0.1:{mariadb.port}/",
                        redis_url=f"redis://127.0.0.1:{r.port}/0", fmt=fmt, key_template=template, env={})
    try:
        v = Verifier(TableReader(target.conn, target.schema), target.redis, target.spec,
                     target.applier() if repair else None, repair=repair, recheck_delay_s=0, **kw)
        return await v.run()
    finally:
        await target.close()


def test_key_pattern_parses_what_row_key_renders() -> None:
    for template in ("{table}:{pk}", "{{{table}}}:{pk}", "x:{pk.b}:y:{pk.a}:z"):
        pat = KeyPattern(template, "t:1", ["a", "b"])
        for a, b in [("a:b", 7), ("", "\\{}"), ("x", "é")]:
            key = row_key(template, "t:1", (("a", a), ("b", b)))
            assert pat.parse(key) == (a, str(b)), (template, key)
    assert KeyPattern("{table}:{pk}", "da*ta", ["id"]).glob == "da\\*ta:*"
    assert KeyPattern("{pk}", "t", ["id"]).has_anchor is False
    assert KeyPattern("{table}:{pk}", "data", ["id"]).parse("data:1:2") is None


@pytest.mark.parametrize("fmt", ["json", "hash"])
async def test_corrupted_deleted_added_keys_found_then_repaired(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                                redis_client: Any, fmt: str) -> None:
    make_data(db, 3000)
    await run_snapshot(mariadb, db, redis_server, "data", fmt=fmt)
    rep = await verify(mariadb, db, redis_server, "data", fmt=fmt)
    assert rep.equal and rep.rows == 3000 and rep.keys_scanned == 3000

    # deleted: 2 keys; corrupted: 3 (one a wrong type); added: 2 rows that do not exist + 1 non-row key
    redis_client.delete("data:10", "data:2999")
    if fmt == "json":
        redis_client.set("data:11", orjson.dumps({"id": 11, "volume": -5, "name": "x", "updated_at": None}))
        redis_client.set("data:12", b"not json")
    else:
        redis_client.hset("data:11", "volume", "-5")
        redis_client.hdel("data:12", "name")
    redis_client.delete("data:13")
    redis_client.rpush("data:13", "wrong type")
    redis_client.set("data:5000", b"{}")
    redis_client.set("data:5001", b"{}")
    redis_client.set("data:007", b"{}")        # no row renders as 007 (id 7 is "data:7")
    redis_client.set("other:1", b"{}")         # another table's key: not ours
    redis_client.set("gearsync:snapshot:x", b"{}")
    rep = await verify(mariadb, db, redis_server, "data", fmt=fmt)
    assert (rep.missing, rep.different, rep.extra) == (2, 3, 3), rep.as_dict()
    assert set(rep.examples["missing"]) == {"data:10", "data:2999"}
    assert {e.split()[0] for e in rep.examples["extra"]} == {"data:5000", "data:5001", "data:007"}
    assert not rep.equal

    rep = await verify(mariadb, db, redis_server, "data", fmt=fmt, repair=True)
    assert rep.repaired == 5 and rep.deleted == 3 and rep.equal, rep.as_dict()
    rep = await verify(mariadb, db, redis_server, "data", fmt=fmt)
    assert rep.equal, rep.as_dict()
    assert redis_client.get("other:1") == b"{}"
    # The fenced delete left a tombstone: a late older change cannot resurrect data:5000.
    assert redis_client.get(version_key("data:5000")) is not None
    assert redis_state(redis_client, "data:*", fmt) == expected_state(db, "data", TableSpec("data", format=fmt))


async def test_composite_key_and_hash_tag_template(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                   redis_client: Any) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE o (tenant VARCHAR(10), id INT, qty INT, PRIMARY KEY (tenant, id))")
        cur.execute("INSERT INTO o VALUES ('a:b', 1, 1), ('a', 2, 2), ('{x}', 3, 3), ('', 4, 4)")
    template = "{{{table}}}:{pk}"
    await run_snapshot(mariadb, db, redis_server, "o", fmt="hash", template=template)
    assert sorted(k.decode() for k in redis_client.keys("{o}:*")) == sorted(
        ["{o}:a\\:b:1", "{o}:a:2", "{o}:\\(x\\):3", "{o}:\\e:4"])
    assert (await verify(mariadb, db, redis_server, "o", fmt="hash", template=template)).equal
    redis_client.delete("{o}:a:2")
    redis_client.hset("{o}:zz:9", "qty", "1")
    redis_client.hset("{o}:\\(x\\):3", "qty", "30")
    rep = await verify(mariadb, db, redis_server, "o", fmt="hash", template=template)
    assert (rep.missing, rep.different, rep.extra) == (1, 1, 1), rep.as_dict()
    rep = await verify(mariadb, db, redis_server, "o", fmt="hash", template=template, repair=True)
    assert rep.equal and rep.repaired == 2 and rep.deleted == 1
    assert (await verify(mariadb, db, redis_server, "o", fmt="hash", template=template)).equal


async def test_repair_does_not_overwrite_a_newer_change(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                                        redis_client: Any) -> None:
    """A stored version newer than any UUID_SHORT the repair can take wins; the row stays reported."""
    make_data(db, 10)
    await run_snapshot(mariadb, db, redis_server, "data")
    import redis.asyncio as aioredis

    from sync.apply.applier import RedisApplier

    client = aioredis.Redis(port=redis_server.port)
    try:
        applier = RedisApplier(client, {"data": TableSpec("data")})
        row = {"id": 3, "volume": 999, "name": "future", "updated_at": None}
        await applier.apply([ChangeEvent("data", Op.UPDATE, (("id", 3),), row, 2**64 - 1, Source.TRIGGER)])
    finally:
        await client.aclose()
    rep = await verify(mariadb, db, redis_server, "data", repair=True)
    assert rep.repaired == 0 and rep.repair_stale == 1 and rep.different == 1 and not rep.equal
    assert orjson.loads(redis_client.get("data:3"))["name"] == "future"


async def test_sample_checks_only_n_rows(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                         redis_client: Any) -> None:
    make_data(db, 2000)
    await run_snapshot(mariadb, db, redis_server, "data")
    rep = await verify(mariadb, db, redis_server, "data", sample=50)
    assert rep.rows == 50 and rep.equal and rep.keys_scanned <= 50
    redis_client.flushall()
    rep = await verify(mariadb, db, redis_server, "data", sample=50)
    assert rep.missing == 50


def run_cli(mariadb: MariaDBServer, db: Any, r: RedisServer, *args: str, redis_port: int | None = None):
    env = {**os.environ, "GEARSYNC_MYSQL_URL": f"mysql://root@127.0.0.1:{mariadb.port}/{db.db_name}",
           "GEARSYNC_REDIS_URL": f"redis://127.0.0.1:{redis_port or r.port}/0"}
    return subprocess.run([VERIFY_BIN, "--table", "data", "--recheck-delay", "0", *args], env=env,
                          capture_output=True, timeout=60)


async def test_cli_exit_codes_and_reports(db: Any, mariadb: MariaDBServer, redis_server: RedisServer,
                                          redis_client: Any) -> None:
    make_data(db, 500)
    await run_snapshot(mariadb, db, redis_server, "data")
    p = run_cli(mariadb, db, redis_server)
    assert p.returncode == 0 and b"equal" in p.stdout, p.stderr
    redis_client.delete("data:42")
    redis_client.set("data:9999", "x")
    p = run_cli(mariadb, db, redis_server, "--json")
    assert p.returncode == 1, p.stderr
    report = orjson.loads(p.stdout)
    assert report["missing"] == 1 and report["extra"] == 1 and report["examples"]["missing"] == ["data:42"]
    p = run_cli(mariadb, db, redis_server)
    assert p.returncode == 1 and b"missing: 1" in p.stdout and b"data:9999" in p.stdout
    p = run_cli(mariadb, db, redis_server, "--repair")
    assert p.returncode == 0 and b"1 rows re-applied, 1 extra keys deleted" in p.stdout, p.stdout
    assert run_cli(mariadb, db, redis_server).returncode == 0
    # errors: exit 2 (bad input) or 3 (Redis unreachable), one line, no traceback
    for args, port, code in ((("--table", "nope"), None, 2), ((), 1, 3), (("--chunk", "0"), None, 2)):
        p = run_cli(mariadb, db, redis_server, *args, redis_port=port)
        assert p.returncode == code, (args, p.stderr)
        assert p.stderr.startswith(b"sync-verify: error:") and b"Traceback" not in p.stderr
