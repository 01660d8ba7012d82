"""A table's row-key template read backwards, for sync-verify's extra-keys pass: the SCAN glob that
matches its keys (KeyPattern.glob) and the parse of a key back to its key values (KeyPattern.parse,
typed_pk)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sync.events import JSONValue
from sync.keys import escape
from sync.rows.rowcodec import normalize_value
from sync.rows.schema import TableSchema

__all__ = ["KeyPattern", "typed_pk"]


_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
# One escaped value (keys.escape): plain characters and \\ \: \( \) escapes, or \e, or \x<hex>.
_VALUE = r"(\\e|\\x[0-9a-f]*|(?:[^\\:{}]|\\[\\:()])+)"
_UNESCAPE = re.compile(r"\\(.)")
_UNESCAPES = {"\\": "\\", ":": ":", "(": "{", ")": "}"}
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


class KeyPattern:
    """A table's row-key template as a SCAN glob and as a parser back to key values (texts)."""

    def __init__(self, template: str, table: str, key_columns: Sequence[str]) -> None:
        self.template = template
        glob: list[str] = []
        regex: list[str] = []
        slots: list[str] = []   # per regex group: its column name
        pos = 0
        self.has_anchor = False
        for m in _TOKEN.finditer(template):
            lit = template[pos : m.start()]
            pos = m.end()
            self._literal(lit, glob, regex)
            tok = m.group(0)
            if tok in ("{{", "}}"):
                self._literal(tok[0], glob, regex)
                continue
            name = m.group(1)
            if name == "table":
                self._literal(escape(table), glob, regex)
            elif name == "pk":
                glob.append("*")
                regex.append(":".join([_VALUE] * len(key_columns)))
                slots.extend(key_columns)
            else:  # pk.<col>
                glob.append("*")
                regex.append(_VALUE)
                slots.append(name[3:])
        self._literal(template[pos:], glob, regex)
        self.glob = "".join(glob)
        self._re = re.compile("".join(regex), re.DOTALL)
        self._slots = slots
        self.key_columns = tuple(key_columns)
        # Every key column must appear, or a key cannot be looked up in MySQL.
        self.complete = set(key_columns) <= set(slots)

    def _literal(self, text: str, glob: list[str], regex: list[str]) -> None:
        if text:
            self.has_anchor = True
            glob.append(_glob_escape(text))
            regex.append(re.escape(text))

    def parse(self, key: str) -> tuple[str | bytes, ...] | None:
        """The key values (text, or bytes for \\x…) in key-column order; None if `key` is not of
        this template's form."""
        m = self._re.fullmatch(key)
        if m is None:
            return None
        values: dict[str, str | bytes] = {}
        for col, raw in zip(self._slots, m.groups()):
            v = _unescape(raw)
            if col in values and values[col] != v:
                return None
            values[col] = v
        try:
            return tuple(values[c] for c in self.key_columns)
        except KeyError:
            return None


def _unescape(raw: str) -> str | bytes:
    if raw == "\\e":
        return ""
    if raw.startswith("\\x"):
        try:
            return bytes.fromhex(raw[2:])
        except ValueError:
            return raw
    return _UNESCAPE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), raw)


def typed_pk(schema: TableSchema, texts: Sequence[str | bytes]) -> tuple[tuple[str, JSONValue], ...] | None:
    """Key texts → canonical pk values (what a trigger would send), when the text is the
    canonical rendering of such a value; None otherwise."""
    out = []
    for col, text in zip(schema.key_columns, texts):
        kind = col.kind
        if isinstance(text, bytes):
            if kind != "binary":
                return None
            value: JSONValue = normalize_value(text)
        elif kind in ("int", "uint64", "bit"):
            if not re.fullmatch(r"-?[0-9]+", text):
                return None
            value = int(text)
        elif kind in ("float", "double"):
            try:
                value = float(text)
            except ValueError:
                return None
        else:
            value = text
        out.append((col.name, value))
    return tuple(out)
