"""gman_json_object / gman_json_array inside a real mariadbd: the output is strict RFC 8259 JSON for every
input, and it round-trips the row values pymysql reads from the same table.

Binary (not UTF-8) values come out as {"$b64": "<base64>"}; see udf/README.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.udf_fixtures import ASAN_MODE, scalar, udf_installed  # noqa: F401  (fixture)

if ASAN_MODE:  # the same tests against the sanitizer build (make -C udf test-asan)
    from tests.integration.udf_fixtures import asan_mariadb  # noqa: F401  (overrides `mariadb`)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("udf_installed")]

COLUMNS = {
    "i": "BIGINT",
    "u": "BIGINT UNSIGNED",
    "ti": "TINYINT",
    "d": "DECIMAL(38,10)",
    "dz": "DECIMAL(65,30)",
    "f": "DOUBLE",
    "fl": "FLOAT",
    "s": "VARCHAR(200) CHARACTER SET utf8mb4",
    "t": "MEDIUMTEXT CHARACTER SET utf8mb4",
    "b": "BLOB",
    "vb": "VARBINARY(200)",
    "l": "VARCHAR(50) CHARACTER SET latin1",
    "dtm": "DATETIME(6)",
    "da": "DATE",
    "tm": "TIME(6)",
    "j": "JSON",
}
SELECT_JSON = "gman_json_object(id AS id, {}, j AS json_j)".format(
    ", ".join(f"{c} AS {c}" for c in COLUMNS if c != "j")
)


def strict_loads(raw: bytes) -> Any:
    """Python's json with everything lenient switched off: UTF-8 only, no NaN/Infinity, no duplicate keys."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard constant {name}")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), keys
        return dict(pairs)

    text = raw.decode("utf-8", errors="strict")
    return json.loads(text, parse_constant=no_constants, parse_float=Decimal, object_pairs_hook=no_duplicates,
                      strict=True)


@pytest.fixture
def table(db):
    with db.cursor() as cur:
        cols = ", ".join(f"{name} {ddl} NULL" for name, ddl in COLUMNS.items())
        cur.execute(f"CREATE TABLE vals (id INT PRIMARY KEY, {cols})")
    return db


def text_or_binary(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def check_value(col: str, got: Any, want: Any) -> None:
    """`got` from the JSON (floats as Decimal), `want` as pymysql returned the column."""
    if want is None:
        assert got is None, col
    elif col in ("i", "u", "ti"):
        assert got == want and isinstance(got, int), col
    elif col in ("d", "dz"):
        assert Decimal(got) == want, col
    elif col == "f":
        assert float(got) == want, col
    elif col == "fl":
        # FLOAT reaches the UDF as the double of the stored float32, while the server prints it to
        # pymysql with 6 significant digits
        assert math.isclose(float(got), want, rel_tol=1e-5, abs_tol=1e-37), col
    elif col in ("s", "t"):
        assert got == want, col
    elif col in ("b", "vb", "l"):
        # the UDF sees the column's own bytes: latin1 for `l` (pymysql got it converted to UTF-8)
        raw = want if isinstance(want, bytes) else want.encode("latin1")
        try:
            as_text = raw.decode("utf-8")
        except UnicodeDecodeError:
            assert got == {"$b64": base64.b64encode(raw).decode()}, col
        else:
            assert got == as_text, col
    elif col == "dtm":
        assert dt.datetime.fromisoformat(got) == want, col
    elif col == "da":
        assert dt.date.fromisoformat(got) == want, col
    elif col == "tm":
        sign = -1 if got.startswith("-") else 1
        h, m, sec = got.lstrip("-").split(":")
        total = dt.timedelta(hours=int(h), minutes=int(m), seconds=float(sec)) * sign
        assert abs(total - want) < dt.timedelta(microseconds=1), col
    elif col == "j":
        assert got == strict_loads(want.encode()), col
    else:  # pragma: no cover
        raise AssertionError(col)


def roundtrip(conn, row_id: int, values: dict[str, Any]) -> None:
    cols = ["id", *values]
    with conn.cursor() as cur:
        cur.execute(f"REPLACE INTO vals ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                    [row_id, *values.values()])
        cur.execute(f"SELECT {SELECT_JSON}, JSON_VALID({SELECT_JSON}), vals.* FROM vals WHERE id = %s", (row_id,))
        raw, valid, *row = cur.fetchone()
        names = [d[0] for d in cur.description][2:]
    assert valid == 1, raw
    doc = strict_loads(raw)
    assert list(doc) == ["id", *[c for c in COLUMNS if c != "j"], "j"]
    fetched = dict(zip(names, row))
    assert doc["id"] == row_id
    for col in COLUMNS:
        check_value(col, doc[col], fetched[col])


# hypothesis strategies --------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
control_heavy = st.text(alphabet=st.sampled_from([chr(c) for c in range(0x20)] + ['"', "\\", "/", "\u2028", "\x7f",
                                                                                  "\U0001F600", "\u00e9"]),
                        max_size=60)
finite = st.floats(allow_nan=False, allow_infinity=False)
decimals38 = st.decimals(min_value=Decimal("-" + "9" * 28), max_value=Decimal("9" * 28), places=10,
                         allow_nan=False, allow_infinity=False)
decimals65 = st.decimals(min_value=Decimal("-" + "9" * 35), max_value=Decimal("9" * 35), places=30,
                         allow_nan=False, allow_infinity=False)
json_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=10,
).map(lambda v: json.dumps(v, ensure_ascii=False))


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


rows = st.fixed_dictionaries(
    {
        "i": nullable(st.integers(-(2**63), 2**63 - 1)),
        "u": nullable(st.integers(0, 2**63 - 1)),
        "ti": nullable(st.integers(-128, 127)),
        "d": nullable(decimals38),
        "dz": nullable(decimals65),
        "f": nullable(finite),
        "fl": nullable(st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**100), max_value=2.0**100)),
        "s": nullable(text | control_heavy),
        "t": nullable(text | control_heavy),
        "b": nullable(st.binary(max_size=300)),
        "vb": nullable(st.binary(max_size=200) | text.map(lambda s: s.encode()[:200])),
        # MariaDB's latin1 is cp1252: only ASCII and U+00A0..U+00FF map to the same byte
        "l": nullable(st.text(alphabet=st.sampled_from([chr(c) for c in [*range(0x20, 0x7F), *range(0xA0, 0x100)]]),
                              max_size=50)),
        "dtm": nullable(st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31))),
        "da": nullable(st.dates(min_value=dt.date(1000, 1, 1))),
        "tm": nullable(st.timedeltas(min_value=-dt.timedelta(hours=838), max_value=dt.timedelta(hours=838))),
        "j": nullable(json_docs),
    }
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(values=rows)
def test_object_is_strict_json_and_round_trips(table, values: dict[str, Any]) -> None:
    roundtrip(table, 1, values)


@pytest.mark.parametrize(
    "values",
    [
        {"f": 1.7976931348623157e308}, {"f": -1.7976931348623157e308}, {"f": 5e-324}, {"f": -0.0},
        {"f": 2.2250738585072014e-308}, {"f": 0.1}, {"f": 1e21}, {"f": 123456789012345680.0},
        {"i": -(2**63), "u": 2**63 - 1, "ti": -128},
        {"d": Decimal("-" + "9" * 28 + "." + "9" * 10), "dz": Decimal("9" * 35 + "." + "9" * 30)},
        {"dz": Decimal("-0." + "0" * 29 + "1")},
        {"s": "".join(chr(c) for c in range(0x20)) + '"\\/', "t": "\U0001F600\u2028\u2029\ufeff\x7f"},
        {"b": bytes(range(256)), "vb": b"\xc0\x80"},  # overlong NUL
        {"b": b"\xed\xa0\x80", "vb": b"\xf4\x90\x80\x80"},  # surrogate, > U+10FFFF
        {"b": b"\xf0\x9f\x98", "vb": b"\xe2\x82"},  # truncated sequences
        {"b": "\u00e9t\u00e9".encode(), "vb": b""},  # valid UTF-8 in a BLOB is a plain string
        {"l": "caf\u00e9 \u00ff"},  # latin1 bytes are not UTF-8: base64
        {"j": '{"a": [1, 2, {"b": null}], "c": "\\u00e9"}'},
        {"dtm": dt.datetime(9999, 12, 31, 23, 59, 59, 999999), "da": dt.date(1000, 1, 1),
         "tm": -dt.timedelta(hours=838, minutes=59, seconds=59)},
    ],
)
def test_extreme_values(table, values: dict[str, Any]) -> None:
    roundtrip(table, 2, values)


def test_every_single_byte_value(table) -> None:
    for byte in range(256):
        roundtrip(table, 3, {"b": bytes([byte]), "vb": bytes([byte]) * 3,
                             "s": chr(byte) if byte < 0x80 else chr(byte) + "x"})


def test_null_and_empty(db) -> None:
    assert scalar(db, "SELECT gman_json_object(NULL AS a, '' AS b, 0 AS c)") == b'{"a":null,"b":"","c":0}'
    assert scalar(db, "SELECT gman_json_object()") == b"{}"
    assert scalar(db, "SELECT gman_json_array()") == b"[]"
    assert scalar(db, "SELECT gman_json_array(NULL, 1, 'x', 2.50, 1e0)") == b'[null,1,"x",2.50,1.0]'


def test_doubles_use_the_shortest_round_trip_form(db) -> None:
    raw = scalar(db, "SELECT gman_json_array(0.1e0, 0.1e0 + 0.2e0, 1e300 * 10, 5e-324, -0e0, 100e0, 1/3e0)")
    # integral doubles keep a ".0" so that JSON readers keep them floats (3.0 never becomes 3)
    assert raw == b"[0.1,0.30000000000000004,1e+301,5e-324,-0.0,100.0,0.3333333333333333]"
    values = json.loads(raw)
    assert values[1] == 0.1 + 0.2 and values[4] == 0 and all(type(v) is float for v in values)


def test_keys_come_from_aliases_and_are_escaped(db) -> None:
    raw = scalar(db, "SELECT gman_json_object(1 AS `we\"ird\\key\ttab`, 2 AS `\u00e9t\u00e9`, 1+1, 'lit')")
    assert strict_loads(raw) == {'we"ird\\key\ttab': 1, "\u00e9t\u00e9": 2, "1+1": 2, "'lit'": "lit"}
    with db.cursor() as cur:
        cur.execute("CREATE TABLE k (id INT, `select` INT)")
        cur.execute("INSERT INTO k VALUES (7, 8)")
        cur.execute("SELECT gman_json_object(id, `select`) FROM k")
        assert cur.fetchone()[0] == b'{"id":7,"select":8}'


def test_trigger_keys_are_the_expression_unless_aliased(db) -> None:
    with db.cursor() as cur:
        cur.execute("CREATE TABLE tr (id INT PRIMARY KEY, v INT)")
        cur.execute("INSERT INTO tr VALUES (1, 1)")
        cur.execute("CREATE TRIGGER tr_au AFTER UPDATE ON tr FOR EACH ROW "
                    "SET @doc = gman_json_object(NEW.id, NEW.v AS v, OLD.v AS old_v)")
        cur.execute("UPDATE tr SET v = 2")
    assert scalar(db, "SELECT @doc") == b'{"NEW.id":1,"v":2,"old_v":1}'


def test_json_prefixed_alias_nests_only_valid_json(db) -> None:
    raw = scalar(db, "SELECT gman_json_object(gman_json_array(1, 'a') AS json_list, "
                     "' {\"k\": [true, null]} ' AS json_obj, '1,\"admin\":true' AS json_bad, "
                     "'[1,2' AS json_open, NULL AS json_null, '[1]' AS plain, '\"x\"' AS json_)")
    assert raw == (b'{"list":[1,"a"],"obj":{"k": [true, null]},"bad":"1,\\"admin\\":true","open":"[1,2",'
                   b'"null":null,"plain":"[1]","json_":"\\"x\\""}')
    strict_loads(raw)
    deep = "[" * 65 + "]" * 65  # deeper than the validator allows: escaped as a string
    assert strict_loads(scalar(db, "SELECT gman_json_object(%s AS json_deep)", deep)) == {"deep": deep}
    for bad in ['{"a":1,}', "[01]", '"\\ud800"', "nul", '{"a" 1}', "1 2", '"\t"', "[1e]", '"\\x"', "\xff"]:
        got = strict_loads(scalar(db, "SELECT gman_json_array(%s AS json_v)", bad))
        assert got == [bad], bad


def test_unsigned_bigint_above_2_63_needs_a_cast(db) -> None:
    """UDF_ARGS has no unsigned flag: BIGINT UNSIGNED >= 2^63 arrives as a negative integer (README)."""
    with db.cursor() as cur:
        cur.execute("CREATE TABLE big (u BIGINT UNSIGNED)")
        cur.execute("INSERT INTO big VALUES (18446744073709551615)")
        cur.execute("SELECT gman_json_object(u AS raw, CAST(u AS DECIMAL(20,0)) AS exact) FROM big")
        assert cur.fetchone()[0] == b'{"raw":-1,"exact":18446744073709551615}'


def test_large_values_and_the_output_cap(db) -> None:
    mib = 1024 * 1024
    control = f"LENGTH(gman_json_object(REPEAT(CHAR(1), {12 * mib}) AS x))"
    with db.cursor() as cur:
        # 12 MiB of control bytes escape to 72 MiB: under the default max_payload (256 MiB) -> built,
        # even past the server's max_allowed_packet (64M: it does not limit a UDF's result)
        cur.execute(f"SELECT LENGTH(gman_json_object(REPEAT('a', {30 * mib}) AS x)), "
                    f"LENGTH(gman_json_array(REPEAT(UNHEX('FF'), {12 * mib}))), {control}")
        assert cur.fetchone() == (30 * mib + 8, 16 * mib + 13, 72 * mib + 8)
        cur.execute("SELECT gman_servers_set('127.0.0.1:1', 'max_payload=67108864')")
        try:
            cur.execute(f"SELECT {control} IS NULL")    # over a 64 MiB max_payload -> NULL
            assert cur.fetchone() == (1,)
        finally:
            cur.execute("SELECT gman_servers_set('127.0.0.1:1', 'max_payload=268435456')")
        cur.execute(f"SELECT gman_json_object(REPEAT(CHAR(9), {mib}) AS x)")
        assert strict_loads(cur.fetchone()[0]) == {"x": "\t" * mib}


def test_many_arguments(db) -> None:
    args = ", ".join(f"{i} AS k{i}" for i in range(500))
    assert strict_loads(scalar(db, f"SELECT gman_json_object({args})")) == {f"k{i}": i for i in range(500)}
