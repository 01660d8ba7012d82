"""Every Redis key gearsync reads or writes, one function each. No key is built anywhere else.

Row keys come from a per-table template (default "{table}:{pk}"):

    {table}      the table name
    {pk}         all pk values in pk column order, joined with ":"
    {pk.<col>}   one pk value
    {{ and }}    a literal "{" / "}" (to make a Redis Cluster hash tag, e.g. "{{{table}}}:{pk}")

Values (and the table name) are escaped so that two different pks can never share a key, and so
that only the template can create a Cluster hash tag:

    "\\" -> "\\\\"   ":" -> "\\:"   "{" -> "\\("   "}" -> "\\)"   "" -> "\\e"
    {"$b64": ...} (non-UTF-8 bytes) -> "\\x" + lowercase hex of the bytes
    int -> decimal; float -> repr()

An integer and the string of its decimal digits give the same text (5 and "5" -> "5"): the key is
the value's text, as MySQL prints it. A column's type is fixed, so within one table this never
merges two rows.

Other keys, all under a prefix (default "gearsync", no braces allowed in it):

    <prefix>:v:<rowkey>  or  <prefix>:v:{<rowkey>}   applied version of a row (same Cluster slot)
    <prefix>:dead:{<name>}                            dead letters (list of JSON records)
    <prefix>:dead:{<name>}:processing                 dead letters being replayed
    <prefix>:stats:<table>                            hash: last_applied_ms, applied_total
    <prefix>:binlog:pos:{<name>}                      a binlog reader's saved position (JSON)
    <prefix>:snapshot:<table>                         hash: sync-snapshot progress (resume point)
    <prefix>:fk:<child>:<fk>:<v1>:<v2>...             set of the child row keys whose FK <fk> holds
                                                      these (escaped) values (cascade index)
    <prefix>:fkr:<rowkey>  or  <prefix>:fkr:{<rowkey>}  the fk index sets a row is in (same slot), as
                                                      an older gearsync kept them: now after the
                                                      version in the version key (sync/apply/apply.lua)
    <prefix>:fkc:<tag>:<child>:<fk>:<v1>...           the last cascade that ran for these values
    <prefix>:fkcm:<tag>:<child>:<fk>                  exists while such cascade records may exist
    <prefix>:fkcm-ready                               every cascade record has its marker
    <prefix>:ix:<rowkey>  or  <prefix>:ix:{<rowkey>}  the set-index keys a row is in (JSON list; shaping)

Shaping keys (sync.shape; outside the prefix, like row keys; each template overridable by `key`):

    {table}:by:{column}          zset index: member = row key, score = the column's value
    {table}:{column}:{value}     set index: the row keys whose column holds value (escaped)
    {table}:changes              the change stream of a table
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from sync.errors import ConfigError, PayloadError

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TEMPLATE",
    "escape",
    "pk_text",
    "compile_template",
    "check_template",
    "row_key",
    "version_key",
    "dead_letter_key",
    "dead_letter_processing_key",
    "stats_key",
    "snapshot_progress_key",
    "check_prefix",
    "fk_index_key",
    "fk_index_prefix",
    "fk_rows_key",
    "fk_cascade_key",
    "fk_cascade_marker_key",
    "fk_cascade_marker_of",
    "fk_cascade_pattern",
    "fk_markers_ready_key",
    "TableKeyMatch",
    "table_key_match",
    "ZSET_INDEX_TEMPLATE",
    "SET_INDEX_TEMPLATE",
    "STREAM_TEMPLATE",
    "check_shape_template",
    "shape_key",
    "index_rows_key",
    "index_rows_prefix",
]

DEFAULT_PREFIX = "gearsync"
DEFAULT_TEMPLATE = "{table}:{pk}"

_ESCAPES = str.maketrans({"\\": "\\\\", ":": "\\:", "{": "\\(", "}": "\\)"})
_SPECIAL = re.compile(r"[\\:{}]")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def escape(value: Any) -> str:
    """The key text of one pk value (or table name); injective over texts."""
    t = type(value)
    if t is int:
        return str(value)
    if t is str:
        if not value:
            return "\\e"
        if _SPECIAL.search(value) is None:
            return value
        return value.translate(_ESCAPES)
    if t is float:
        return repr(value).translate(_ESCAPES)
    if t is dict and len(value) == 1 and type(value.get("$b64")) is str:
        return "\\x" + binascii.a2b_base64(value["$b64"]).hex()
    if t is bytes:
        try:
            return escape(value.decode("utf-8"))
        except UnicodeDecodeError:
            return "\\x" + value.hex()
    raise PayloadError(f"key value: expected a string, integer, float or $b64 bytes, got {type(value).__name__}")


def pk_text(pk: Sequence[tuple[str, Any]]) -> str:
    """All pk values, escaped, joined with ":" (the "{pk}" placeholder)."""
    if len(pk) == 1:
        return escape(pk[0][1])
    return ":".join([escape(v) for _, v in pk])


KeyBuilder = Callable[[str, Sequence[tuple[str, Any]]], str]


@lru_cache(maxsize=256)
def compile_template(template: str) -> KeyBuilder:
    """Check a row-key template and return a fast (table, pk) -> key function.

    Raises ConfigError when the template is malformed or could map two rows to one key: it must
    use {pk} or {pk.<col>}; neighbouring placeholders must be separated by a literal containing
    ":"; literals must not contain "\\"; literal braces may form at most one hash tag "{...}".
    """
    parts: list[tuple[str, str]] = []  # ("lit", text) | ("table", "") | ("pk", "") | ("col", name)
    pos = 0
    literal: list[str] = []

    def flush() -> None:
        text = "".join(literal)
        literal.clear()
        if text:
            parts.append(("lit", text))

    for m in _PLACEHOLDER.finditer(template):
        literal.append(template[pos : m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok == "{{":
            literal.append("{")
        elif tok == "}}":
            literal.append("}")
        elif tok in ("{", "}"):
            raise ConfigError(
                f"key template {template!r}: single {tok!r} at {m.start()}; expected {{table}}, {{pk}}, "
                f"{{pk.<column>}}, or {{{{ / }}}} for a literal brace"
            )
        else:
            name = m.group(1)
            flush()
            if name == "table":
                parts.append(("table", ""))
            elif name == "pk":
                parts.append(("pk", ""))
            elif name.startswith("pk.") and len(name) > 3:
                parts.append(("col", name[3:]))
            else:
                raise ConfigError(
                    f"key template {template!r}: unknown placeholder {{{name}}}; expected {{table}}, {{pk}} or {{pk.<column>}}"
                )
    literal.append(template[pos:])
    flush()

    kinds = [k for k, _ in parts]
    if "pk" not in kinds and "col" not in kinds:
        raise ConfigError(f"key template {template!r}: expected {{pk}} or {{pk.<column>}} in it")
    lits = "".join(text for k, text in parts if k == "lit")
    if "\\" in lits:
        raise ConfigError(f"key template {template!r}: expected no backslash in the literal text")
    braces = "".join(c for c in lits if c in "{}")
    if braces not in ("", "{}"):
        raise ConfigError(f"key template {template!r}: literal braces must form at most one hash tag {{...}}")
    for (k1, _), (k2, _) in zip(parts, parts[1:]):
        if k1 != "lit" and k2 != "lit":
            raise ConfigError(f"key template {template!r}: expected a literal with ':' between placeholders")
    for i, (k, text) in enumerate(parts):
        if k == "lit" and 0 < i < len(parts) - 1 and ":" not in text:
            raise ConfigError(f"key template {template!r}: the literal {text!r} between placeholders needs a ':'")
    if any(k == "lit" and "{}" in text for k, text in parts):
        raise ConfigError(f"key template {template!r}: the hash tag {{...}} must not be empty")

    if kinds == ["table", "lit", "pk"]:
        sep = parts[1][1]

        def build_default(table: str, pk: Sequence[tuple[str, Any]]) -> str:
            return escape(table) + sep + pk_text(pk)

        return build_default

    frozen = tuple(parts)

    def build(table: str, pk: Sequence[tuple[str, Any]]) -> str:
        return _render(frozen, table, pk)

    return build


def _render(parts: Sequence[tuple[str, str]], table: str, pk: Sequence[tuple[str, Any]]) -> str:
    out = []
    for kind, text in parts:
        if kind == "lit":
            out.append(text)
        elif kind == "table":
            out.append(escape(table))
        elif kind == "pk":
            out.append(pk_text(pk))
        else:
            for col, val in pk:
                if col == text:
                    out.append(escape(val))
                    break
            else:
                raise PayloadError(f"pk: expected column {text!r} (used by the key template), missing")
    return "".join(out)


def check_template(template: str) -> None:
    """Raise ConfigError if `template` is not a valid row-key template."""
    compile_template(template)


def row_key(template: str, table: str, pk: Sequence[tuple[str, Any]]) -> str:
    """The Redis key of one row. With {pk.<col>} placeholders the template should use every pk
    column, or two rows that differ only in an unused column share a key."""
    return compile_template(template)(table, pk)


def check_prefix(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "{}") or _CONTROL.search(prefix):
        raise ConfigError(f"key prefix {prefix!r}: expected a non-empty name without braces or control characters")
    return prefix


_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _has_hash_tag(key: str) -> bool:
    i = key.find("{")
    if i < 0:
        return False
    j = key.find("}", i + 1)
    return j > i + 1


def version_key(row_key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Where the applied version (or delete tombstone) of a row lives; same Cluster slot as the row."""
    if _has_hash_tag(row_key):
        return f"{prefix}:v:{row_key}"
    if "}" in row_key:
        raise ConfigError(f"row key {row_key!r}: has '}}' but no hash tag; cannot co-locate its version key")
    return f"{prefix}:v:{{{row_key}}}"


def dead_letter_key(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """List of dead-letter records of one table or gearman function."""
    return f"{prefix}:dead:{{{escape(name)}}}"


def dead_letter_processing_key(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Dead letters claimed by a replay and not yet acknowledged (same slot as dead_letter_key)."""
    return f"{prefix}:dead:{{{escape(name)}}}:processing"


def stats_key(table: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Hash of per-table apply statistics: last_applied_ms, applied_total."""
    return f"{prefix}:stats:{escape(table)}"


def snapshot_progress_key(table: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Hash of sync-snapshot's progress for one table: the last applied key, rows done, state."""
    return f"{prefix}:snapshot:{escape(table)}"


def binlog_position_key(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The saved position of one binlog stream (name: server + tables, see sync.capture.binlog.service)."""
    return f"{prefix}:binlog:pos:{{{escape(name)}}}"


def fk_index_prefix(child: str, fk: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The common start of every fk_index_key of one foreign key (ends with ":")."""
    return f"{prefix}:fk:{escape(child)}:{escape(fk)}:"


def fk_index_key(child: str, fk: str, values: Sequence[Any], prefix: str = DEFAULT_PREFIX) -> str:
    """Set of the row keys of `child` whose FK `fk` columns hold `values` (the cascade index)."""
    return fk_index_prefix(child, fk, prefix) + ":".join([escape(v) for v in values])


def fk_rows_key(row_key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The fk index sets a row is in, as an older gearsync kept them (read and carried over into
    the version key by the apply script); same Cluster slot as the row (tagged like version_key)."""
    return f"{prefix}:fkr:" + version_key(row_key, prefix)[len(prefix) + 3 :]


# -- shaping (sync.shape): index and stream keys ---------------------------------------------------
ZSET_INDEX_TEMPLATE = "{table}:by:{column}"
SET_INDEX_TEMPLATE = "{table}:{column}:{value}"
STREAM_TEMPLATE = "{table}:changes"
_SHAPE_FIELD = re.compile(r"\{([a-z]*)\}")


def check_shape_template(template: str, fields: Sequence[str]) -> str:
    """An index/stream key template: printable, its placeholders among `fields` ({table},
    {column}, {value}), {value} present when it is one of them; no other braces."""
    if not template or len(template) > 512 or _CONTROL.search(template):
        raise ConfigError(f"{template!r}; expected printable text without spaces, up to 512 characters")
    names = _SHAPE_FIELD.findall(template)
    bad = [n for n in names if n not in fields]
    if bad or "{" in _SHAPE_FIELD.sub("", template) or "}" in _SHAPE_FIELD.sub("", template):
        raise ConfigError(f"{template!r}; expected only the placeholders {', '.join('{' + f + '}' for f in fields)}")
    if "value" in fields and "value" not in names:
        raise ConfigError(f"{template!r} has no {{value}}; expected one (a set per value)")
    return template


def shape_key(template: str, table: str, column: str = "", value: Any = None) -> str:
    """An index or stream key from its template (check_shape_template): {value} is escaped like a pk value."""
    key = template.replace("{table}", escape(table)).replace("{column}", escape(column) if column else "")
    return key.replace("{value}", escape(value)) if value is not None else key


def index_rows_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    """The start of every index_rows_key: the rest is the row's version key after its own prefix."""
    return f"{prefix}:ix:"


def index_rows_key(row_key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The set-index keys a row is in (JSON list); same Cluster slot as the row (tagged like version_key)."""
    return index_rows_prefix(prefix) + version_key(row_key, prefix)[len(prefix) + 3 :]


def stream_truncate_key(stream: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The version (20 digits) of the last TRUNCATE entered in change stream `stream` (shaping,
    sync.apply.truncate): a repeated or older statement does not enter it again."""
    return f"{prefix}:st:{{{stream}}}"


def fk_cascade_key(child: str, fk: str, values: Sequence[Any], template: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The cascade record of `child` rows whose FK `fk` holds `values`: the last cascade that ran
    for them (version, new values) under one key template (its versions are that path's own)."""
    return f"{prefix}:fkc:{_template_tag(template)}:{escape(child)}:{escape(fk)}:" + ":".join([escape(v) for v in values])


def fk_cascade_marker_key(child: str, fk: str, template: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Exists while a cascade record (fk_cascade_key) of `child` rows' FK `fk` under `template` may
    exist: set with each record, with the same TTL. No marker: no record to look up."""
    return f"{prefix}:fkcm:{_template_tag(template)}:{escape(child)}:{escape(fk)}"


def fk_cascade_marker_of(record_key: str, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The fk_cascade_marker_key of a cascade record's key (None: not one of this prefix)."""
    head = f"{prefix}:fkc:"
    m = _RECORD_HEAD.match(record_key, len(head)) if record_key.startswith(head) else None
    return None if m is None else f"{prefix}:fkcm:{m.group(1)}"


def fk_cascade_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """SCAN MATCH pattern of every cascade record key (fk_cascade_key) under `prefix`."""
    return _GLOB_SPECIAL.sub(r"\\\1", prefix) + ":fkc:*"


def fk_markers_ready_key(prefix: str = DEFAULT_PREFIX) -> str:
    """Set once every cascade record under `prefix` has its marker (records written before markers
    existed get theirs from RedisApplier.load_script)."""
    return f"{prefix}:fkcm-ready"


@lru_cache(maxsize=256)
def _template_tag(template: str) -> str:
    return format(binascii.crc32(template.encode()), "08x")
# -- a table's row keys, found by SCAN -----------------------------------------------------------

# One escaped value (escape()): plain characters and \\ \: \( \) escapes, or \e, or \x<hex>.
_VALUE_ALT = r"\\e|\\x[0-9a-f]*|(?:[^\\:{}]|\\[\\:()])+"
KEY_VALUE_RE = f"({_VALUE_ALT})"
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
# A cascade record key after "<prefix>:fkc:": template tag, child, fk (then the values).
_RECORD_HEAD = re.compile(f"([0-9a-f]{{8}}:(?:{_VALUE_ALT}):(?:{_VALUE_ALT})):")


class TableKeyMatch:
    """The row keys of one table under a key template: `glob` for SCAN MATCH, `regex` to tell its
    keys from other keys the glob also matches, with one group per key value (`slots`: the
    column of each group, None for the values of {pk} when the key columns are not given).
    `anchored` is False when the template has no literal text (then the glob is "*": every key)."""

    __slots__ = ("template", "glob", "regex", "slots", "anchored")

    def __init__(self, template: str, table: str, key_columns: Sequence[str] | None = None) -> None:
        glob: list[str] = []
        regex: list[str] = []
        slots: list[str | None] = []
        self.anchored = False

        def literal(text: str) -> None:
            if text:
                self.anchored = True
                glob.append(_GLOB_SPECIAL.sub(r"\\\1", text))
                regex.append(re.escape(text))

        pos = 0
        for m in _TEMPLATE_TOKEN.finditer(template):
            literal(template[pos : m.start()])
            pos = m.end()
            tok, name = m.group(0), m.group(1)
            if tok in ("{{", "}}"):
                literal(tok[0])
            elif name == "table":
                literal(escape(table))
            elif name == "pk":
                glob.append("*")
                if key_columns is None:  # any number of values: one group for all of them
                    regex.append(f"((?:{_VALUE_ALT})(?::(?:{_VALUE_ALT}))*)")
                    slots.append(None)
                else:
                    regex.append(":".join([KEY_VALUE_RE] * len(key_columns)))
                    slots.extend(key_columns)
            else:  # pk.<col>
                glob.append("*")
                regex.append(KEY_VALUE_RE)
                slots.append(name[3:])
        literal(template[pos:])
        self.template = template
        self.glob = "".join(glob)
        self.regex = re.compile("".join(regex), re.DOTALL)
        self.slots = tuple(slots)

    def matches(self, key: str) -> bool:
        return self.regex.fullmatch(key) is not None


def table_key_match(template: str, table: str, key_columns: Sequence[str] | None = None) -> TableKeyMatch:
    """The SCAN glob and the exact pattern of `table`'s row keys under `template` (checked)."""
    compile_template(template)
    return TableKeyMatch(template, table, key_columns)
