"""sync.shape: the filter parser and its semantics, scores, projection, key templates, config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sync.errors import ConfigError, PayloadError
from sync.keys import shape_key
from sync.settings import load_config
from sync.shape import build_shape, parse_filter, score_of
from sync.tables import TableSpec


@pytest.mark.parametrize("text, row, want", [
    ("a = 1", {"a": 1}, True),
    ("a = 1", {"a": "1.00"}, True),              # a DECIMAL column's text compares as a number
    ("a = 1", {"a": 2}, False),
    ("a != 1", {"a": None}, False),              # SQL: a comparison with NULL is false
    ("a <> 1", {"a": 2}, True),
    ("a < 2.5 AND a >= -1", {"a": 2}, True),
    ("a <= 2 and a > 2", {"a": 2}, False),
    ("a IN (1, 3, 'x')", {"a": 3}, True),
    ("a in ('x', 'y')", {"a": "y"}, True),
    ("a IN (1, 2)", {"a": None}, False),
    ("a IS NULL", {"a": None}, True),
    ("a IS NOT NULL", {"a": None}, False),
    ("d >= '2024-01-01'", {"d": "2024-03-01 10:00:00"}, True),   # temporal text orders as text
    ("s = 'it''s'", {"s": "it's"}, True),
    ("`order` = 1", {"order": 1}, True),
    ("a = 1", {"a": "abc"}, False),              # no number: no match
])
def test_filter_semantics(text: str, row: dict[str, Any], want: bool) -> None:
    assert parse_filter(text).matches(row) is want


@pytest.mark.parametrize("text, message", [
    ("", "expected a condition"),
    ("a =", "'a =' ends too early; expected a number or a 'quoted string'"),
    ("a = NULL", "'NULL' at position 5 of 'a = NULL'; expected a number or a 'quoted string' (for NULL: IS NULL)"),
    ("a = 1 OR b = 2", "'OR' at position 7 of 'a = 1 OR b = 2'; expected AND or the end (OR is not supported)"),
    ("a = 1 b = 2", "'b' at position 7 of 'a = 1 b = 2'; expected AND or the end"),
    ("AND a = 1", "'AND' at position 1 of 'AND a = 1'; expected a column name"),
    ("a LIKE 'x'", "'LIKE' at position 3 of \"a LIKE 'x'\"; expected an operator"),
    ("a IN (1", "ends too early; expected , or ) in the IN list"),
    ("a IS 1", "'1' at position 6 of 'a IS 1'; expected NULL after IS (or IS NOT NULL)"),
    ("a = 'open", "\"'open\" at position 5"),
    ("a # 1", "'#' at position 3 of 'a # 1'; expected a column, a number"),
])
def test_filter_errors_name_the_token_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_filter(text, "[tables.t].filter")
    assert str(err.value).startswith("[tables.t].filter: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_scores() -> None:
    assert score_of(5) == "5" and score_of(2.5) == "2.5" and score_of("12.50") == "12.5"
    assert score_of("1970-01-02") == "86400" and score_of("1970-01-01 00:01:00.25") == "60.25"
    assert score_of(None) is None and score_of("soon") is None and score_of("2024-13-01") is None
    assert score_of({"$b64": "AA=="}) is None and score_of("nan") is None


def test_project_excludes_and_renames() -> None:
    shape = build_shape("t", {"exclude": ["secret"], "rename": {"price": "cost"}}, "[tables.t]")
    assert shape is not None and shape.reshapes
    assert shape.project({"id": 1, "price": 5, "secret": "x"}) == {"id": 1, "cost": 5}
    assert build_shape("t", {"columns": ["a"]}, "[tables.t]") is None


def test_default_and_custom_keys() -> None:
    shape = build_shape("items", {"indexes": [{"type": "zset", "column": "price"},
                                              {"type": "set", "column": "store_id"},
                                              {"type": "set", "column": "tag", "key": "tags:{value}"}],
                                  "stream": {}}, "[tables.items]")
    assert shape is not None and shape.stream is not None
    assert shape.indexes[0].zset_key() == "items:by:price"
    assert shape.indexes[1].set_key(2) == "items:store_id:2" and shape.indexes[2].set_key("a:b") == "tags:a\\:b"
    assert shape.stream.key == "items:changes" and shape.stream.maxlen == 100000
    assert shape.set_keys({"store_id": 2, "tag": None}) == ["items:store_id:2"]
    assert shape.owns("items:by:price") and shape.owns("items:store_id:7") and shape.owns("tags:x")
    assert shape.owns("items:changes") and not shape.owns("items:7") and not shape.owns("items:store_id:")
    assert shape_key("{table}:changes", "a:b") == "a\\:b:changes"


@pytest.mark.parametrize("values, message", [
    ({"exclude": "secret"}, "[tables.t].exclude: 'secret'; expected a list of column names"),
    ({"rename": ["a"]}, "[tables.t].rename: ['a']; expected a table"),
    ({"rename": {"a": "x", "b": "x"}}, "names one field twice"),
    ({"exclude": ["a"], "rename": {"a": "x"}}, "[tables.t].rename.a: the column is also in exclude"),
    ({"indexes": {"type": "zset"}}, "expected [[tables.t.indexes]] entries"),
    ({"indexes": [{"type": "zset"}]}, "[tables.t].indexes[0].column: None; expected a column name"),
    ({"indexes": [{"type": "zset", "column": "a", "size": 3}]}, "[tables.t].indexes[0]: unknown key 'size'"),
    ({"indexes": [{"type": "zset", "column": "a", "key": "x:{value}"}]}, "expected only the placeholders {table}, {column}"),
    ({"indexes": [{"type": "set", "column": "a", "key": "x:{value}:{value"}]}, "expected only the placeholders"),
    ({"indexes": [{"type": "zset", "column": "a"}, {"type": "zset", "column": "a"}]}, "share the key 't:by:a'"),
    ({"indexes": [{"type": "set", "column": "a"}, {"type": "set", "column": "b", "key": "t:a:{value}"}]},
     "share the key 't:a:{value}'"),
    ({"stream": {"maxlen": "10"}}, "[tables.t].stream.maxlen: '10'; expected an integer"),
    ({"stream": {"key": "a b"}}, "[tables.t].stream.key: 'a b'; expected printable text without spaces"),
    ({"columns": ["id", "a"], "filter": "b = 1"}, "[tables.t].columns: ['id', 'a'] lacks 'b', which the table's filter"),
])
def test_bad_shaping_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_shape("t", values, "[tables.t]")
    assert message in str(err.value), str(err.value)


def test_a_table_spec_refuses_indexes_with_ttl() -> None:
    shape = build_shape("t", {"indexes": [{"type": "zset", "column": "a"}]}, "[tables.t]")
    with pytest.raises(ConfigError, match=r"indexes with ttl_s 60; expected one of them"):
        TableSpec("t", ttl_s=60, shape=shape)


def test_a_row_without_a_filtered_column_is_a_payload_error() -> None:
    shape = build_shape("t", {"filter": "a = 1"}, "[tables.t]")
    assert shape is not None
    with pytest.raises(PayloadError, match="no column 'a'"):
        shape.check_row({"id": 1})


def test_the_config_file_reads_the_documented_shape(tmp_path: Any) -> None:
    """The example of docs/shaping.md (the config shape of issue 17), read as a config file."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "shaping.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "g.toml"
    path.write_text(example)
    cfg = load_config(path)
    shape = build_shape("items", cfg.tables["items"], "[tables.items]")
    assert shape is not None and [(ix.type, ix.column) for ix in shape.indexes] == [("zset", "price"), ("set", "store_id")]
    assert shape.filter is not None and shape.filter.text == "active = 1 AND price > 0"
    assert shape.stream is not None and shape.stream.maxlen == 100000 and shape.rename == (("price", "cost"),)
    path.write_text('[tables.items]\nfilter = "price >> 1"\n')
    with pytest.raises(ConfigError, match=r"^--config .*g.toml: \[tables.items\].filter: '>' at position 8"):
        load_config(path)
