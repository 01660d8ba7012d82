"""What a cascade does to rows, apart from Redis I/O (sync.apply.applier runs it): the changes a
cascade derives (`DerivedChange`), a late child change moved the way a cascade moved its rows
(`MovedChange`, `moved_change`), one level of a cascade (`CascadeStep`), and the cascade records'
JSON (`cascade_record`, `rule_from_json`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sync.events import Cascade, ChangeEvent, ClassicSet, FKRule, JSONValue, Op
from sync.keys import escape
from sync.rows.rowcodec import normalize_value

__all__ = ["CascadeStep", "DerivedChange", "MovedCascade", "MovedChange", "cascade_record", "cascade_starts",
           "cascades", "follow_records", "from_field", "moved_change", "rule_from_json", "same_key_text",
           "split_stored_version", "text_row"]


@dataclass(slots=True)
class DerivedChange:
    """A change derived by a cascade, already in script form: op J/H/D (K/L: J/H with the
    tie-breaker `tie`, see apply.lua), the values (json: the row; hash: field, bytes, ...), the
    row's new fkr value and index sets."""

    table: str
    rk: str
    op: str
    version: int
    values: list[bytes]
    fkr: str
    sets: list[str]
    tie: str = ""


@dataclass(slots=True)
class MovedChange:
    """A child change older than a cascade that already ran for its refs (a cascade record), moved
    as the cascade moved the rows it found. `after`: the newest record's version (its refs are
    checked against records newer than that). A change whose key moved (`atleast`) is applied at
    that version with its own (`original`) as the tie-breaker: over the row the cascade derived
    there if that row's content is older, and over another late change moved there if that one is
    older (see apply.lua); one that keeps its key keeps its own version, as the cascade's in-place
    change did (so the row's own delete, older than the cascade, still applies when it comes late)."""

    event: ChangeEvent
    after: int
    atleast: bool
    # A key change of the row's own (its cascade old -> new) to run first, at its own version: an op
    # cascade change (None: none, or already run). The moved change cascades on from the new values.
    hop: ChangeEvent | None = None
    # The cascade records (key, value as read) that moved it: the row is added to their rows.
    via: list[tuple[str, bytes]] = field(default_factory=list)
    # The version the change had before any cascade moved it (the tie-breaker of `atleast`).
    original: int = 0


@dataclass(slots=True)
class CascadeStep:
    """One level of a cascade: the rules to follow from a row of a parent table, its referenced
    values before and after (`new` None: the row was deleted), and the version its changes and
    cascade records take (0: the cascading change's)."""

    rules: Sequence[FKRule]
    old: Mapping[str, Any]
    new: Mapping[str, Any] | None
    version: int = 0


def cascades(ev: ChangeEvent | ClassicSet | MovedChange) -> bool:
    if type(ev) is MovedChange:
        ev = ev.event
    return type(ev) is ChangeEvent and ev.cascade is not None


def cascade_record(rule: FKRule, new: list[Any] | None, rows: Sequence[Mapping[str, Any]] = (),
                   path: Sequence[tuple[Sequence[Any], int]] = ()) -> bytes:
    """A cascade record's JSON (after its 20-digit version): the FK followed (with its own children),
    the values its rows now hold (null: the rows were deleted), the values they held on the way
    there and the version of the cascade that moved them on from each (`path`: newer cascades of
    those ran first) and, when the rows have children of their own,
    the values those reference of each row it found (`rows`, as they were): an older cascade of the
    same values that comes later moves them first (sync.apply.applier)."""
    obj: dict[str, Any] = {"new": None if new is None else [_json_value(v) for v in new], "rule": rule.to_json()}
    if rows:
        obj["rows"] = [{c: _json_value(v) for c, v in row.items()} for row in rows]
    if path:
        obj["path"] = [[[_json_value(v) for v in values], left] for values, left in path]
    return orjson.dumps(obj)


def _json_value(v: Any) -> Any:
    return from_field(v) if type(v) is bytes else v


def rule_from_json(obj: Mapping[str, Any]) -> FKRule:
    """An FKRule from FKRule.to_json() (a cascade record this module wrote)."""
    return FKRule(obj["table"], obj["fk"], tuple(obj["columns"]), tuple(obj["ref"]), obj["on_update"],
                  obj["on_delete"], tuple(rule_from_json(c) for c in obj["children"]))


def follow_records(item: ChangeEvent | MovedChange, records: Sequence[tuple[int, Any]]) -> ChangeEvent | MovedChange:
    """`item` moved by those of the cascade `records` (version, record) of its refs that are newer
    than it (for a change moved before: than the records it followed), or itself."""
    ev = item.event if type(item) is MovedChange else item
    assert type(ev) is ChangeEvent
    since = max(ev.version, item.after) if type(item) is MovedChange else ev.version
    newer = sorted((r for r in records if r[0] > since), key=lambda r: r[0])
    if not newer:
        return item
    moved = moved_change(ev, newer)
    if type(item) is MovedChange:
        moved.hop = item.hop
        moved.via = item.via
        moved.original = item.original
        if item.atleast and not moved.atleast:
            moved.atleast = True  # its key moved before: it stays at that version, applied over an equal one
    return moved


def moved_change(ev: ChangeEvent, records: Sequence[tuple[int, Any]]) -> MovedChange:
    """`ev` (a child change) after the cascades of `records` (version, record; oldest first, each
    newer than ev): its FK columns set as they set them, or deleted. When the row's own children
    reference columns it held other values of since `ev` (or its cascade's old values), it cascades
    from each of them to the values it ends with, or deletes their children (`MovedCascade`)."""
    assert ev.refs is not None
    row = dict(ev.row) if ev.row is not None else dict(ev.pk)
    refs = dict(ev.refs)
    moves: dict[str, tuple[Any, Any]] = {}  # column -> (value before, value after the cascades)
    version, deleted = ev.version, False
    children: tuple[FKRule, ...] = ev.cascade.fks if ev.cascade is not None else ()
    # the row as it was after ev, on the way of each cascade that moved it and after it; each with
    # the version of the cascade that moved it on (0: none did)
    held: list[tuple[dict[str, Any], int]] = [(dict(row), 0)]
    for v, rec in records:
        rule = rec["rule"]
        version = v
        children = children or tuple(rule_from_json(c) for c in rule["children"])
        held[-1] = (held[-1][0], v)
        for values, left in rec.get("path", ()):
            held.append(({**row, **dict(zip(rule["columns"], values))}, left))
        new = rec["new"]
        if new is None:
            deleted = True
            continue
        for col, before, after in zip(rule["columns"], refs.get(rule["fk"], ()), new):
            moves[col] = (moves.get(col, (before,))[0], after)
        row.update(zip(rule["columns"], new))
        held.append((dict(row), 0))
        if None in new:
            refs.pop(rule["fk"], None)
        else:
            refs[rule["fk"]] = tuple(new)
    # A key change of the row's own runs first as it was (its children move to the new values at its
    # version, so their cascade records keep each step); the moved change cascades on from there.
    hop = None
    if ev.cascade is not None and type(ev.cascade) is not MovedCascade and ev.cascade.new is not None:
        hop = ChangeEvent(ev.table, Op.CASCADE, (), None, ev.version, ev.source, None, ev.cascade)
    cascade = _moved_cascade(ev, children, held, None if deleted or ev.op is Op.DELETE else row, hop is None)
    if deleted:
        return MovedChange(ChangeEvent(ev.table, Op.DELETE, ev.pk, None, version, ev.source, {}, cascade),
                           version, True, hop, original=ev.version)
    pk = tuple((c, row[c]) for c, _ in ev.pk)
    moved = pk != ev.pk
    own = version if moved else ev.version
    if ev.op is Op.DELETE:
        return MovedChange(ChangeEvent(ev.table, Op.DELETE, pk, None, own, ev.source, refs, cascade), version, moved,
                           hop, original=ev.version)
    return MovedChange(ChangeEvent(ev.table, ev.op, pk, row, own, ev.source, refs, cascade), version, moved, hop,
                       original=ev.version)


@dataclass(frozen=True, slots=True)
class MovedCascade(Cascade):
    """The cascade of a moved change: from `old` and from each of `also` (other values the row held
    since the change) to `new` (None: the row was deleted). The children in Redis may reference any
    of them: those of an older change not moved yet, those written after the change or after one of
    the cascades that moved it (which did not find the row in Redis, so went no further)."""

    also: tuple[dict[str, JSONValue], ...] = ()
    # per start (old, *also): the version of the cascade that moved the row on from it (its
    # children's changes and records take it; 0: the change's own version)
    left: tuple[int, ...] = ()


def cascade_starts(cascade: Cascade) -> list[tuple[dict[str, JSONValue], int]]:
    """The referenced values a cascade moves children from (a moved change's: several), each with
    the version its changes take (0: the cascading change's)."""
    if type(cascade) is MovedCascade:
        return list(zip((cascade.old, *cascade.also), cascade.left))
    return [(cascade.old, 0)]


def _moved_cascade(ev: ChangeEvent, children: tuple[FKRule, ...], held: Sequence[tuple[Mapping[str, Any], int]],
                   final: Mapping[str, Any] | None, own: bool) -> Cascade | None:
    """The cascade a moved change carries: from every value of the referenced columns the row held
    (the row's after the change and after each cascade; with `own`, its cascade's old values, as they
    were and as the cascades moved them) to the row's last (`final`; None: deleted)."""
    referenced = list(dict.fromkeys(c for r in children for c in r.ref))
    if not referenced:
        return None
    # A delete moves no children by itself (a key change's delete of the old key carries no
    # cascade: its upsert does); one that cascades does so from its cascade's old values.
    starts: list[tuple[Mapping[str, Any], int]] = list(held) if ev.op is not Op.DELETE else []
    if ev.cascade is not None and own:
        first, last = held[0][0], held[-1][0]
        moves = {c: (first.get(c), last.get(c)) for c in referenced}
        for old, left in cascade_starts(ev.cascade):
            starts += [(old, left), ({c: moves[c][1] if c in moves and same_key_text(v, moves[c][0]) else v
                                      for c, v in old.items()}, left)]
    new = None if final is None else {c: final.get(c) for c in referenced}
    seen = {_text(new, referenced)} if new is not None else set()
    olds: list[dict[str, JSONValue]] = []
    lefts: list[int] = []
    for values, left in starts:
        if all(c in values for c in referenced) and _text(values, referenced) not in seen:
            seen.add(_text(values, referenced))
            olds.append({c: values[c] for c in referenced})
            lefts.append(left)
    if not olds:
        return None
    return MovedCascade(olds[0], new, children, tuple(olds[1:]), tuple(lefts))


def _text(values: Mapping[str, Any], columns: Sequence[str]) -> tuple[str | None, ...]:
    return tuple(None if values.get(c) is None else escape(values[c]) for c in columns)


def same_key_text(a: Any, b: Any) -> bool:
    """Two values (JSON values, or a hash's field bytes) are the same key text; NULL is never the
    same as a value."""
    if a is None or b is None:
        return a is None and b is None
    return escape(a) == escape(b)


def text_row(row: Mapping[Any, Any], hashed: bool) -> dict[str, JSONValue]:
    """A child row as the next cascade step reads it: column -> value (hash: field bytes as they are)."""
    if not hashed:
        return dict(row)
    return {f.decode("utf-8", "surrogateescape"): v for f, v in row.items()}


def from_field(v: bytes) -> JSONValue:
    """A hash field's bytes as a json row value (a hash parent cascading into a json child):
    decimal integer text -> int, other UTF-8 -> str, else {"$b64": ...}."""
    text = normalize_value(v)
    if type(text) is str and text.lstrip("-").isdigit() and str(int(text)) == text:
        return int(text)
    return text


def split_stored_version(value: str) -> tuple[str, str, str]:
    """A version key's value (see apply.lua): the row's version (20 digits), its tie-breaker (20
    digits; '' = none) and its fkr value (the JSON of the fk index sets it is in; '' = none, or kept
    in keys.fk_rows_key by an older gearsync)."""
    if value[20:21] == "[":
        return value[:20], "", value[20:]
    return value[:20], value[20:40], value[40:]
