"""Identifier/string quoting, column kinds, canonical values, MySQL settings: pure code."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from sync.errors import ConfigError
from sync.rows.schema import Column, canonical_value, quote_ident, quote_string, trigger_sql
from sync.settings import mysql_settings


def col(name: str, data_type: str, column_type: str | None = None, fsp: int | None = None,
        charset: str | None = None) -> Column:
    return Column(name, data_type, column_type or data_type, True, fsp, charset)


@pytest.mark.parametrize("name", ["a`b", "``", "x; DROP TABLE t; --", "select", "ä 😀", "a'b\"c"])
def test_quote_ident_round_trips_backquotes(name: str) -> None:
    quoted = quote_ident(name)
    assert quoted.startswith("`") and quoted.endswith("`")
    assert quoted[1:-1].replace("``", "`") == name


def test_quote_ident_refuses_nul() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        quote_ident("a\x00b")


def test_quote_string_handles_quotes_and_backslashes() -> None:
    assert quote_string("it's") == "'it''s'"
    assert "CHAR(92 USING utf8mb4)" in quote_string("a\\b")


@pytest.mark.parametrize(
    "column, value, expected",
    [
        (col("a", "bigint", "bigint(20) unsigned"), 18446744073709551615, 18446744073709551615),
        (col("a", "decimal", "decimal(30,10)"), Decimal("0E-10"), "0.0000000000"),
        (col("a", "float"), 0.1, 0.10000000149011612),
        (col("a", "double"), 0.1, 0.1),
        (col("a", "bit", "bit(12)"), b"\x0a\xaa", 2730),
        (col("a", "datetime", fsp=3), dt.datetime(2024, 1, 1, 10, 0, 0, 123000), "2024-01-01 10:00:00.123"),
        (col("a", "timestamp", fsp=0), dt.datetime(2024, 1, 1, 10, 0, 0), "2024-01-01 10:00:00"),
        (col("a", "time", fsp=1), dt.timedelta(hours=-838, minutes=-59, seconds=-59), "-838:59:59.0"),
        (col("a", "date"), dt.date(2024, 2, 29), "2024-02-29"),
        (col("a", "blob"), b"\xff\x00", {"$b64": "/wA="}),
        (col("a", "blob"), b"ok", "ok"),
        (col("a", "varchar", charset="latin1"), "café", "café"),
        (col("a", "set", charset="utf8mb4"), {"b", "a"}, "a,b"),
        (col("a", "int"), None, None),
    ],
)
def test_canonical_values(column: Column, value: object, expected: object) -> None:
    got = canonical_value(column, value)
    assert got == expected and type(got) is type(expected)


def test_trigger_expressions_by_kind() -> None:
    assert trigger_sql(col("a`b", "bigint", "bigint unsigned"), "NEW") == "CAST(NEW.`a``b` AS DECIMAL(20,0))"
    assert trigger_sql(col("d", "decimal", "decimal(5,2)"), "OLD") == "CAST(OLD.`d` AS CHAR)"
    assert "CONVERT_TZ" in trigger_sql(col("t", "timestamp"), "NEW")
    assert trigger_sql(col("l", "varchar", charset="latin1"), "NEW") == "CONVERT(NEW.`l` USING utf8mb4)"
    assert trigger_sql(col("u", "varchar", charset="utf8mb4"), "NEW") == "NEW.`u`"


def test_unsupported_type_names_the_column() -> None:
    with pytest.raises(ConfigError, match="column 'v': type 'vector' is not supported"):
        _ = col("v", "vector").kind


def test_mysql_settings_from_env_and_url() -> None:
    s = mysql_settings(env={"GEARSYNC_MYSQL_HOST": "db", "GEARSYNC_MYSQL_PORT": "3307", "GEARSYNC_MYSQL_USER": "u",
                            "GEARSYNC_MYSQL_PASSWORD": "pw", "GEARSYNC_MYSQL_DATABASE": "app"})
    assert (s.host, s.port, s.user, s.password, s.database) == ("db", 3307, "u", "pw", "app")
    assert "pw" not in repr(s) and "pw" not in s.display
    s = mysql_settings(env={"GEARSYNC_MYSQL_URL": "mysql://u:secret@h:1/d"})
    assert (s.host, s.port, s.password, s.database) == ("h", 1, "secret", "d")
    s = mysql_settings("mysql://u@h:2/d", env={"GEARSYNC_MYSQL_PASSWORD": "x"})
    assert (s.port, s.password) == (2, "x")


@pytest.mark.parametrize(
    "url, env, fragment",
    [
        ("mysql://u:pw@h/d", {}, "GEARSYNC_MYSQL_PASSWORD"),
        ("postgres://h/d", {}, "scheme 'postgres'"),
        ("mysql://h:0/d", {}, "port 0"),
        (None, {"GEARSYNC_MYSQL_PORT": "abc"}, "GEARSYNC_MYSQL_PORT: 'abc'"),
    ],
)
def test_mysql_settings_errors(url: str | None, env: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        mysql_settings(url, env=env)
    assert fragment in str(err.value) and "pw" not in str(err.value)
