"""A table's row-key template read backwards, for sync-verify's extra-keys pass: the SCAN glob that
matches its keys (KeyPattern.glob) and the parse of a key back to its key values (KeyPattern.parse,
typed_pk)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sync.events import JSONValue
from sync.keys import TableKeyMatch
from sync.rows.rowcodec import normalize_value
from sync.rows.schema import TableSchema

__all__ = ["KeyPattern", "typed_pk"]


_UNESCAPE = re.compile(r"\\(.)")
_UNESCAPES = {"\\": "\\", ":": ":", "(": "{", ")": "}"}


class KeyPattern:
    """A table's row-key template as a SCAN glob and as a parser back to key values (texts)."""

    def __init__(self, template: str, table: str, key_columns: Sequence[str]) -> None:
        match = TableKeyMatch(template, table, key_columns)
        self.template = template
        self.glob = match.glob
        self.has_anchor = match.anchored
        self._re = match.regex
        self._slots = [s for s in match.slots if s is not None]
        self.key_columns = tuple(key_columns)
        # Every key column must appear, or a key cannot be looked up in MySQL.
        self.complete = set(key_columns) <= set(self._slots)

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
