"""The C row decoder (sync/capture/binlog/_rowdecode.c) against the pure-Python path, through a real
MariaDB binlog: for every column type, width and value class the two give identical change events
(and those are the values the rows hold)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.capture.binlog import decoders
from sync.events import Op
from sync.testing.servers import MariaDBServer
from tests.integration.binlog_rig import binlog_pos
from tests.integration.rowdecode_rig import both, read_events

TYPES = """
  id INT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED,
  i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  d1 DECIMAL(5,2), d2 DECIMAL(65,30), d3 DECIMAL(18,0), d4 DECIMAL(10,10), d5 DECIMAL(38,9),
  f FLOAT, db DOUBLE,
  b1 BIT(1), b7 BIT(7), b12 BIT(12), b64 BIT(64),
  e ENUM('a','b','ç'), s SET('x','y','z','ü'),
  y YEAR,
  dt DATE, t0 TIME, t1 TIME(1), t3 TIME(3), t6 TIME(6),
  dt0 DATETIME, dt2 DATETIME(2), dt5 DATETIME(5), dt6 DATETIME(6),
  ts0 TIMESTAMP NULL DEFAULT NULL, ts3 TIMESTAMP(3) NULL DEFAULT NULL, ts6 TIMESTAMP(6) NULL DEFAULT NULL,
  c4 CHAR(4), vc VARCHAR(20), vcl VARCHAR(300), l1 VARCHAR(20) CHARACTER SET latin1, c1 CHAR(3) CHARACTER SET latin1,
  tx TEXT, ttx TINYTEXT, mtx MEDIUMTEXT CHARACTER SET latin1, ltx LONGTEXT,
  bn BINARY(4), vb VARBINARY(20), bl BLOB, tbl TINYBLOB,
  js JSON, g GEOMETRY
"""

ROWS = [
    # extremes
    "(1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, "
    "18446744073709551615, -999.99, -99999999999999999999999999999999999.999999999999999999999999999999, "
    "999999999999999999, 0.9999999999, -12345678901234567890123456789.123456789, -3.4028234e38, -1.7976931348623157e308, "
    "b'1', b'1111111', b'111111111111', b'1111111111111111111111111111111111111111111111111111111111111111', "
    "'ç', 'x,y,z,ü', 2155, '9999-12-31', '-838:59:59', '-838:59:58.9', '-00:00:00.001', '838:59:59.000000', "
    "'9999-12-31 23:59:59', '9999-12-31 23:59:59.99', '1000-01-01 00:00:00.00001', '2024-02-29 12:34:56.789012', "
    "'2038-01-19 03:14:07', '1970-01-01 00:00:01.001', '2001-02-03 04:05:06.000007', "
    "'ab\u00e7d', '', REPEAT('x', 300), 'caf\u00e9 \u00ff', 'a', "
    "'\U0001F600 emoji', '', REPEAT('\u00e9', 1000), REPEAT('z', 70000), "
    "x'00', x'fffe00', x'c328', '', "
    "'{\"a\": [1, 2.5, \"x\"], \"b\": null}', ST_GeomFromText('POINT(1 2)'))",
    # small and zero values; negative TIME with fractions; zero dates
    "(2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.00, 0, 0, 0, 0.000000001, 0.1, 0.1, b'0', b'0', b'0', b'0', "
    "'', '', 0, '0000-00-00', '00:00:00', '-00:00:00.5', '-01:00:00.010', '-12:34:56.000001', "
    "'0000-00-00 00:00:00', '0000-00-00 00:00:00.00', '2024-00-00 00:00:00', '2024-01-00 10:00:00.000001', "
    "'0000-00-00 00:00:00', '0000-00-00 00:00:00.000', '0000-00-00 00:00:00', "
    "'a ', 'trailing  ', 'x', '', 'x  ', 'line\nbreak\ttab', '\\\\', '', '', "
    "x'61', x'', x'', x'ff', '[]', ST_GeomFromText('LINESTRING(0 0, 1 1, 2 5)'))",
    # NULLs everywhere but the key
    "(3" + ", NULL" * 51 + ")",
    # middling values
    "(4, 1, 2, -3, 4, -5, 6, -7, 8, -9, 10, 1.5, 12345.678901234567890123456789012345, -42, 0.5, 1.1, 1.5, -2.25, "
    "b'1', b'1010101', b'100000000001', b'1000000000000000000000000000000000000000000000000000000000000001', "
    "'b', 'y', 1901, '2024-06-15', '23:59:59', '00:00:00.1', '100:00:00.123', '-00:00:01.999999', "
    "'2024-06-15 01:02:03', '2024-06-15 01:02:03.04', '2024-06-15 01:02:03.04005', '2024-06-15 01:02:03.999999', "
    "'2024-06-15 01:02:03', '2024-06-15 01:02:03.456', '2024-06-15 01:02:03.000001', "
    "'abcd', 'ÄÖÜ', 'long', 'Größe', 'xyz', 'text', 'tiny', 'medium é', 'long', "
    "x'01020304', x'00ff00', x'89504e470d0a1a0a', x'00', '{\"k\": \"v\u00e9\"}', ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))'))",
]


def _exec(db, *sql: str) -> None:
    with db.cursor() as cur:
        for s in sql:
            cur.execute(s)


def test_every_type_and_value_class_same_events(mariadb: MariaDBServer, db) -> None:
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'", f"CREATE TABLE types ({TYPES})")
    start = binlog_pos(mariadb)
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'",
          *(f"INSERT INTO types VALUES {r}" for r in ROWS),
          "UPDATE types SET ti = ti + 1, vc = CONCAT(vc, '!'), s = '' WHERE id IN (2, 4)",
          "UPDATE types SET id = 40 WHERE id = 4",       # a key change: DELETE old key + UPDATE new
          "DELETE FROM types WHERE id IN (1, 3)")
    c_events, py_events = both(mariadb, db.db_name, ["types"], start)
    assert len(c_events) == len(ROWS) + 2 + 2 + 2
    assert c_events == py_events
    first = c_events[0].row
    assert first is not None
    assert first["biu"] == 18446744073709551615 and first["bi"] == -9223372036854775808
    assert first["d2"] == "-99999999999999999999999999999999999.999999999999999999999999999999"
    assert first["t1"] == "-838:59:58.9" and first["t3"] == "-00:00:00.001"
    assert first["bn"] == "\x00" * 4 and first["vb"] == {"$b64": "//4A"}   # BINARY(4) keeps its pad bytes
    second = c_events[1].row
    assert second is not None and second["dt"] == "0000-00-00" and second["dt5"] == "2024-00-00 00:00:00.00000"
    assert second["t1"] == "-00:00:00.5" and second["s"] == ""
    assert c_events[2].row is not None and all(v is None for k, v in c_events[2].row.items() if k != "id")
    assert [e.op for e in c_events[-4:]] == [Op.DELETE, Op.UPDATE, Op.DELETE, Op.DELETE]


def test_column_subset_and_minimal_row_image(mariadb: MariaDBServer, db) -> None:
    """Columns not synced are parsed past but not returned; binlog_row_image=MINIMAL rows carry
    only the changed columns (and the key): the columns-present bitmap."""
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'", f"CREATE TABLE types ({TYPES})")
    start = binlog_pos(mariadb)
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'",
          *(f"INSERT INTO types VALUES {r}" for r in ROWS),
          "SET SESSION binlog_row_image = 'MINIMAL'",
          "UPDATE types SET vc = 'minimal', dt6 = '2020-01-01 00:00:00.5' WHERE id IN (1, 2)",
          "DELETE FROM types WHERE id = 4",
          "SET SESSION binlog_row_image = 'NOBLOB'",
          "UPDATE types SET ltx = 'noblob', i = 5 WHERE id = 1")
    c_events, py_events = both(mariadb, db.db_name, ["types"], start, columns={"types": ["vc", "dt6", "d2", "e", "ltx"]})
    assert c_events == py_events
    assert c_events[0].row is not None and set(c_events[0].row) == {"id", "vc", "dt6", "d2", "e", "ltx"}
    minimal = [e for e in c_events if e.op is Op.UPDATE and e.row and e.row["vc"] == "minimal" and e.row["ltx"] != "noblob"]
    assert len(minimal) == 2 and all(e.row is not None and e.row["d2"] is None for e in minimal)
    c_all, py_all = both(mariadb, db.db_name, ["types"], start)
    assert c_all == py_all


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(
    st.integers(-2**63, 2**63 - 1), st.integers(0, 2**64 - 1), st.one_of(st.none(), st.integers(-2**31, 2**31 - 1)),
    st.decimals(min_value=-10**11, max_value=10**11, places=6, allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False, width=32), st.floats(allow_nan=False, allow_infinity=False),
    st.one_of(st.none(), text), st.binary(max_size=20),
    st.datetimes(min_value=__import__("datetime").datetime(1000, 1, 1)), st.timedeltas(
        min_value=__import__("datetime").timedelta(hours=-838), max_value=__import__("datetime").timedelta(hours=838)),
    st.integers(0, 2**20 - 1)), min_size=1, max_size=8))
def test_generated_rows_same_events(mariadb: MariaDBServer, db, rows: list[tuple]) -> None:
    with db.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS gen")
        cur.execute("CREATE TABLE gen (id INT PRIMARY KEY, a BIGINT, b BIGINT UNSIGNED, c INT, d DECIMAL(18,6), "
                    "f FLOAT, g DOUBLE, t VARCHAR(40) CHARACTER SET utf8mb4, l VARCHAR(40) CHARACTER SET latin1, "
                    "v VARBINARY(20), dt DATETIME(6), tm TIME(4), bits BIT(20))")
    start = binlog_pos(mariadb)
    with db.cursor() as cur:
        for i, (a, b, c, d, f, g, t, v, dtv, tm, bits) in enumerate(rows):
            latin = None if t is None else t.encode("cp1252", "replace").decode("cp1252")  # MariaDB latin1 is cp1252
            cur.execute("INSERT INTO gen VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (i, a, b, c, d, f, g, t, latin, v, dtv, tm, bits))
        cur.execute("UPDATE gen SET a = a DIV -2, t = CONCAT(COALESCE(t, ''), 'é'), tm = NULL WHERE id % 2 = 0")
        cur.execute("DELETE FROM gen WHERE id % 3 = 0")
    c_events, py_events = both(mariadb, db.db_name, ["gen"], start)
    assert len(c_events) >= len(rows)
    assert c_events == py_events


def test_table_map_reuse_follows_alter_table(mariadb: MariaDBServer, db) -> None:
    """The C reader reuses the parse of a repeated TABLE_MAP event: a table changed mid-stream
    (new table id, other columns) is decoded with its new layout, as the Python path does."""
    _exec(db, "CREATE TABLE m (id INT PRIMARY KEY, a VARCHAR(10), b INT)")
    start = binlog_pos(mariadb)
    _exec(db, *(f"INSERT INTO m VALUES ({i}, 'x{i}', {i})" for i in range(3)),
          "ALTER TABLE m ADD COLUMN c DATETIME(3) DEFAULT '2020-01-01 00:00:00.123' AFTER a, MODIFY b BIGINT UNSIGNED",
          *(f"UPDATE m SET b = b + 18446744073709551000 WHERE id = {i}" for i in range(3)),
          "ALTER TABLE m DROP COLUMN a",
          *(f"DELETE FROM m WHERE id = {i}" for i in range(3)))
    c_events, py_events = both(mariadb, db.db_name, ["m"], start)
    assert c_events == py_events
    assert [e.row for e in c_events[3:6]] == [
        {"id": i, "a": f"x{i}", "c": "2020-01-01 00:00:00.123", "b": i + 18446744073709551000} for i in range(3)]


def _compressed(mariadb: MariaDBServer, db, *sql: str) -> list[str]:
    """Run `sql` with log_bin_compress=ON (min_len 10); the event types of the last binlog file."""
    mariadb.execute("SET GLOBAL log_bin_compress = ON", "SET GLOBAL log_bin_compress_min_len = 10")
    try:
        conn = mariadb.connect(db.db_name)
        try:
            _exec(conn, *sql)
        finally:
            conn.close()
    finally:
        mariadb.execute("SET GLOBAL log_bin_compress = OFF")
    with db.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        last = cur.fetchall()[-1][0]
        cur.execute(f"SHOW BINLOG EVENTS IN '{last}'")
        return [row[2] for row in cur.fetchall()]


def test_mariadb_compressed_rows_events(mariadb: MariaDBServer, db) -> None:
    """log_bin_compress=ON: MariaDB writes WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT_V1, which
    mysql-replication alone drops unseen; both decoders read them, with the same events."""
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'", f"CREATE TABLE types ({TYPES})")
    start = binlog_pos(mariadb)
    kinds = _compressed(mariadb, db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'",
                        *(f"INSERT INTO types VALUES {r}" for r in ROWS),
                        "UPDATE types SET vcl = REPEAT('y', 299), ltx = CONCAT(ltx, 'more') WHERE id IN (1, 2)",
                        "DELETE FROM types WHERE id = 4")
    assert {"Write_rows_compressed_v1", "Update_rows_compressed_v1", "Delete_rows_compressed_v1"} <= set(kinds), kinds
    c_events, py_events = both(mariadb, db.db_name, ["types"], start)
    assert [e.op for e in c_events] == [Op.INSERT] * len(ROWS) + [Op.UPDATE, Op.UPDATE, Op.DELETE]
    assert c_events == py_events
    assert c_events[len(ROWS)].row is not None and c_events[len(ROWS)].row["vcl"] == "y" * 299


@pytest.mark.parametrize("decoder", ["c", "python"])
def test_mariadb_compressed_statements(mariadb: MariaDBServer, db, decoder: str) -> None:
    """log_bin_compress=ON compresses statements of log_bin_compress_min_len bytes or more into
    QUERY_COMPRESSED_EVENTs, which mysql-replication alone drops unseen: the reader inflates them, so
    a compressed ALTER reloads the table's key and a compressed TRUNCATE empties the table."""
    _exec(db, "CREATE TABLE ct (id INT PRIMARY KEY, v VARCHAR(20))")
    start = binlog_pos(mariadb)
    kinds = _compressed(mariadb, db, "INSERT INTO ct VALUES (1, 'a'), (2, 'b')",
                        "ALTER TABLE ct ADD COLUMN w INT NOT NULL DEFAULT 7", "INSERT INTO ct VALUES (3, 'c', 8)",
                        "TRUNCATE TABLE ct")
    assert kinds.count("Query_compressed") >= 2, kinds
    chunks: list[Any] = []
    events, _ = read_events(mariadb, db.db_name, ["ct"], start, decoder, chunks=chunks)
    assert [e.row for e in events] == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c", "w": 8}]
    truncates = [s for c in chunks for s in c.statements]
    assert [s.table for s in truncates] == ["ct"]
    assert truncates[0].version > events[-1].version


def test_loop_hands_python_decoded_rows_to_the_library(mariadb: MariaDBServer, db, monkeypatch) -> None:
    """The C event loop with tables that have no C decoder: their rows events go back to Python as
    packet bytes, become the library's events and are decoded by it. Same events and position as
    the library's own fetchone path."""
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'", f"CREATE TABLE types ({TYPES})")
    start = binlog_pos(mariadb)
    _exec(db, "SET SESSION sql_mode = ''", "SET SESSION time_zone = '+00:00'",
          *(f"INSERT INTO types VALUES {r}" for r in ROWS),
          "UPDATE types SET ti = ti + 1, vc = CONCAT(vc, '!') WHERE id IN (2, 4)",
          "UPDATE types SET id = 40 WHERE id = 4",
          "DELETE FROM types WHERE id IN (1, 3)")
    seen: list[bool] = []   # per rows event: did the library build it (from the C loop's packet bytes)
    plain_rows = decoders.RowPlan.rows

    def rows(self: decoders.RowPlan, ev: Any) -> Any:
        seen.append(True)
        return plain_rows(self, ev)

    monkeypatch.setattr(decoders.RowPlan, "rows", rows)
    looped, loop_src = read_events(mariadb, db.db_name, ["types"], start, "python", loop=True)
    assert len(seen) >= 7   # one rows event per statement (4 INSERTs, 2 UPDATEs, 1 DELETE; re-read after a reset)
    plain, plain_src = read_events(mariadb, db.db_name, ["types"], start, "python", loop=False)
    assert loop_src.tables["types"].plans and all(p.decoder is None for p in loop_src.tables["types"].plans.values())
    assert [e.op for e in plain] == [Op.INSERT] * 4 + [Op.UPDATE] * 2 + [Op.DELETE, Op.UPDATE] + [Op.DELETE] * 2
    assert looped == plain
    assert loop_src.committed == plain_src.committed
