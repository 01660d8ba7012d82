"""Redis key scheme: escaping, injectivity, templates, Cluster slot co-location."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from sync.errors import ConfigError, PayloadError
from sync.keys import (
    check_prefix,
    check_template,
    dead_letter_key,
    dead_letter_processing_key,
    escape,
    row_key,
    stats_key,
    version_key,
)

T = "{table}:{pk}"


def whole_key_slot(key: str) -> int:
    """The slot Redis would use if the key had no hash tag."""
    return binascii.crc_hqx(key.encode(), 0) % 16384


def test_default_template() -> None:
    assert row_key(T, "data", (("id", 5),)) == "data:5"
    assert row_key(T, "data", (("id", "abc"),)) == "data:abc"
    assert row_key(T, "data", (("a", 1), ("b", "x"))) == "data:1:x"


def test_escaping() -> None:
    assert escape("a:b") == "a\\:b"
    assert escape("a\\b") == "a\\\\b"
    assert escape("{x}") == "\\(x\\)"
    assert escape("") == "\\e"
    assert escape({"$b64": base64.b64encode(b"\xff\x00").decode()}) == "\\xff00"
    assert escape(-3) == "-3"
    assert escape(1.5) == "1.5"
    with pytest.raises(PayloadError):
        escape(None)


def test_int_and_its_text_share_a_key() -> None:
    # documented: the key is the value's text, as MySQL prints it
    assert row_key(T, "t", (("id", 5),)) == row_key(T, "t", (("id", "5"),))


def test_composite_values_cannot_collide() -> None:
    a = row_key(T, "t", (("a", "x:y"), ("b", "z")))
    b = row_key(T, "t", (("a", "x"), ("b", "y:z")))
    assert a != b
    assert row_key(T, "t:x", (("id", "y"),)) != row_key(T, "t", (("a", "x"), ("b", "y")))


def _ident(v: object) -> tuple[str, str]:
    if isinstance(v, dict):
        return ("b", v["$b64"])
    return ("s", str(v))


def _nonutf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


pk_value = st.one_of(
    st.text(max_size=8),
    st.text(alphabet="\\:{}ex", max_size=6),
    st.integers(-(10**20), 10**20),
    st.binary(min_size=1, max_size=4).filter(_nonutf8).map(lambda b: {"$b64": base64.b64encode(b).decode()}),
)
tables = st.one_of(st.text(min_size=1, max_size=6), st.text(alphabet=":\\{}", min_size=1, max_size=4))
templates = st.sampled_from(
    [T, "{{{table}}}:{pk}", "p:{table}:{pk}:s", "{table}:{{{pk}}}", "{pk}:{table}", "x{{{table}:{pk}}}y"]
)


@settings(max_examples=1500, deadline=None)
@given(templates, st.integers(1, 3), st.data())
def test_row_key_is_injective(template: str, n: int, data: st.DataObject) -> None:
    t1, t2 = data.draw(tables), data.draw(tables)
    v1 = data.draw(st.lists(pk_value, min_size=n, max_size=n))
    v2 = data.draw(st.lists(pk_value, min_size=n, max_size=n))
    pk1 = tuple((f"c{i}", v) for i, v in enumerate(v1))
    pk2 = tuple((f"c{i}", v) for i, v in enumerate(v2))
    same_input = t1 == t2 and [_ident(v) for v in v1] == [_ident(v) for v in v2]
    assert (row_key(template, t1, pk1) == row_key(template, t2, pk2)) == same_input


@settings(max_examples=500, deadline=None)
@given(templates, tables, st.lists(pk_value, min_size=1, max_size=3))
def test_version_key_same_slot_and_values_never_make_hash_tags(template: str, table: str, vals: list[object]) -> None:
    pk = tuple((f"c{i}", v) for i, v in enumerate(vals))
    rk = row_key(template, table, pk)
    vk = version_key(rk)
    assert vk != rk
    assert key_slot(vk.encode()) == key_slot(rk.encode())
    if "{{" not in template:
        assert "{" not in rk and "}" not in rk
        assert key_slot(rk.encode()) == whole_key_slot(rk)


def test_hash_tag_template() -> None:
    rk = row_key("{{{table}}}:{pk}", "data", (("id", 5),))
    assert rk == "{data}:5"
    assert version_key(rk) == "gearsync:v:{data}:5"
    assert version_key("data:5") == "gearsync:v:{data:5}"
    assert version_key("data:5", "pfx") == "pfx:v:{data:5}"


def test_pk_column_placeholders() -> None:
    pk = (("a", 1), ("b", "x"))
    assert row_key("{table}:{pk.b}:{pk.a}", "t", pk) == "t:x:1"
    with pytest.raises(PayloadError, match="'c'"):
        row_key("{table}:{pk.c}", "t", pk)


@pytest.mark.parametrize(
    "template, expect",
    [
        ("{table}", "expected {pk}"),
        ("{x}:{pk}", "unknown placeholder {x}"),
        ("{pk}{table}", "literal with ':'"),
        ("{pk.a}-{pk.b}", "needs a ':'"),
        ("a\\:{pk}", "no backslash"),
        ("{{}}:{pk}", "must not be empty"),
        ("{pk}}", "single '}'"),
        ("{ {pk}", "single '{'"),
        ("}}{{{pk}", "at most one hash tag"),
        ("{{a}}{{b}}:{pk}", "at most one hash tag"),
    ],
)
def test_bad_templates(template: str, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_template(template)
    assert expect in str(info.value)


def test_other_keys() -> None:
    assert dead_letter_key("data") == "gearsync:dead:{data}"
    assert dead_letter_processing_key("data") == "gearsync:dead:{data}:processing"
    assert key_slot(dead_letter_key("a:{b}").encode()) == key_slot(dead_letter_processing_key("a:{b}").encode())
    assert stats_key("data") == "gearsync:stats:data"
    assert stats_key("data", "x") == "x:stats:data"


def test_prefix_check() -> None:
    assert check_prefix("gearsync") == "gearsync"
    for bad in ("", "a{b", "a b", "x}"):
        with pytest.raises(ConfigError):
            check_prefix(bad)


def test_fk_index_keys() -> None:
    from sync.keys import fk_index_key, fk_index_prefix, fk_rows_key

    assert fk_index_key("line", "fk_o", [5]) == "gearsync:fk:line:fk_o:5"
    assert fk_index_key("line", "fk_o", ["a:b", 2], "p") == "p:fk:line:fk_o:a\\:b:2"
    assert fk_index_key("line", "fk_o", [5]).startswith(fk_index_prefix("line", "fk_o"))
    assert fk_rows_key("line:5") == "gearsync:fkr:{line:5}"
    assert fk_rows_key("{line}:5") == "gearsync:fkr:{line}:5"
