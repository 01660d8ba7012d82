"""What Redis should hold for a MySQL row: the key and the value, from the one canonical mapping.

The applier, the tests, snapshot and verify all go through here (schema.canonical_row →
keys/rowcodec), so they cannot disagree about what "Redis equals MySQL" means.

    schema = load_table(conn, db, "data")
    spec = TableSpec("data", "{table}:{pk}", "json")
    cur.execute(READ_SESSION_SQL); cur.execute(select_sql(schema) + " ORDER BY …")
    for row in cur:                        # DictCursor rows
        key, value = expected_entry(schema, spec, row)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sync.keys import row_key
from sync.rows.rowcodec import encode_hash, encode_json
from sync.rows.schema import READ_SESSION_SQL, TableSchema, read_columns_sql
from sync.tables import TableSpec


def select_sql(schema: TableSchema) -> str:
    """SELECT list + FROM for reading canonical rows (run after schema.READ_SESSION_SQL)."""
    return f"SELECT {read_columns_sql(schema)} FROM {schema.ref}"


def expected_value(spec: TableSpec, canonical_row: Mapping[str, Any]) -> bytes | dict[bytes, bytes]:
    """The Redis value of a canonical row: json → the bytes of SET; hash → the HSET fields."""
    shape = spec.shape
    if shape is not None and shape.reshapes:
        canonical_row = shape.project(canonical_row)  # exclude/rename (sync.shape)
    if spec.format == "hash":
        return encode_hash(canonical_row)
    return encode_json(canonical_row)


def expected_entry(schema: TableSchema, spec: TableSpec, row: Mapping[str, Any]) -> tuple[str, bytes | dict[bytes, bytes]]:
    """(Redis key, Redis value) for a row as pymysql returns it from select_sql()."""
    canonical = schema.canonical_row(row)
    pk = tuple((name, canonical[name]) for name in schema.key)
    return row_key(spec.key_template, schema.name, pk), expected_value(spec, canonical)


def expected_state(conn: Any, schema: TableSchema, spec: TableSpec) -> dict[str, bytes | dict[bytes, bytes]]:
    """Redis key -> value for every row MySQL holds now, read on `conn` (pymysql; its session time
    zone is set for reading, as snapshot and verify do)."""
    import pymysql.cursors

    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(READ_SESSION_SQL)
        cur.execute(select_sql(schema))
        shape = spec.shape
        return dict(expected_entry(schema, spec, row) for row in cur.fetchall()
                    if shape is None or shape.matches(schema.canonical_row(row)))  # the filter keeps it
