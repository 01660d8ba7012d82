"""The foreign keys of one database that cascade, read from information_schema.

MariaDB and MySQL <= 8.4 run ON UPDATE/ON DELETE CASCADE and SET NULL inside InnoDB: no trigger
fires for the cascaded child rows and no row event for them reaches the binlog. The capture paths
therefore describe, on each change, what cascades (sync.events "refs" and "cascade"), and the
applier performs the cascade in Redis (sync.apply.applier). This module is where those
descriptions come from:

    graph = load_foreign_keys(conn, "shop")
    graph.child_fks("line")              # the cascading FKs of a child table
    graph.rules("orders")                # nested FKRule descriptors of a parent (sync.events)
    graph.refs("line", row)              # a child row's "refs" member
    graph.cascade("orders", old, new)    # a parent change's "cascade" member (or None)

Only FKs with at least one cascading rule (CASCADE or SET NULL, on update or delete) are kept;
RESTRICT and NO ACTION are "none" (SET DEFAULT is not supported by InnoDB). Self-referencing and
composite FKs are included; chains A -> B -> C are the descriptors' "children" (each FK expanded
once per payload: a repeat has no children, the applier follows the first one; depth <= 15 as in
MySQL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sync.events import MAX_CASCADE_DEPTH, Cascade, FKRule, JSONValue

__all__ = ["ForeignKey", "FKGraph", "load_foreign_keys", "EMPTY_GRAPH"]

_RULE = {"CASCADE": "cascade", "SET NULL": "set_null"}


@dataclass(frozen=True)
class ForeignKey:
    name: str
    child: str
    columns: tuple[str, ...]
    parent: str
    ref: tuple[str, ...]
    on_update: str          # cascade | set_null | none
    on_delete: str

    @property
    def cascading(self) -> bool:
        return self.on_update != "none" or self.on_delete != "none"


class FKGraph:
    """The cascading FKs of one database; see the module docstring."""

    def __init__(self, fks: Sequence[ForeignKey]) -> None:
        self.fks = tuple(sorted((f for f in fks if f.cascading), key=lambda f: (f.child, f.name)))
        self._child: dict[str, tuple[ForeignKey, ...]] = {}
        self._parent: dict[str, tuple[ForeignKey, ...]] = {}
        for f in self.fks:
            self._child[f.child] = self._child.get(f.child, ()) + (f,)
            self._parent[f.parent] = self._parent.get(f.parent, ()) + (f,)
        self._rules: dict[str, tuple[FKRule, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.fks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FKGraph) and other.fks == self.fks

    def __hash__(self) -> int:
        return hash(self.fks)

    def child_fks(self, table: str) -> tuple[ForeignKey, ...]:
        """The cascading FKs whose child is `table`."""
        return self._child.get(table, ())

    def parent_fks(self, table: str) -> tuple[ForeignKey, ...]:
        """The cascading FKs whose parent is `table`."""
        return self._parent.get(table, ())

    def referenced_columns(self, table: str) -> tuple[str, ...]:
        """The columns of `table` that cascading FKs reference (first-seen order)."""
        return tuple(dict.fromkeys(c for f in self.parent_fks(table) for c in f.ref))

    def tables(self, table: str) -> set[str]:
        """Every table a change of `table` can cascade into (transitively)."""
        seen: set[str] = set()
        todo = [table]
        while todo:
            for f in self.parent_fks(todo.pop()):
                if f.child not in seen:
                    seen.add(f.child)
                    todo.append(f.child)
        return seen

    def rules(self, parent: str) -> tuple[FKRule, ...]:
        """The nested descriptors of the FKs referencing `parent` (each FK expanded once)."""
        got = self._rules.get(parent)
        if got is None:
            got = self._rules[parent] = self._expand(parent, set(), 0)
        return got

    def _expand(self, parent: str, seen: set[str], depth: int) -> tuple[FKRule, ...]:
        out = []
        for f in self.parent_fks(parent):
            ident = f"{f.child}\x00{f.name}"
            children: tuple[FKRule, ...] = ()
            if ident not in seen and depth < MAX_CASCADE_DEPTH:
                seen.add(ident)
                children = self._expand(f.child, seen, depth + 1)
            out.append(FKRule(f.child, f.name, f.columns, f.ref, f.on_update, f.on_delete, children))
        return tuple(out)

    def refs(self, table: str, row: Mapping[str, JSONValue]) -> dict[str, tuple[JSONValue, ...]] | None:
        """The "refs" member of a row of `table`: None when `table` is no child of a cascading FK."""
        fks = self.child_fks(table)
        if not fks:
            return None
        out: dict[str, tuple[JSONValue, ...]] = {}
        for f in fks:
            values = tuple(row.get(c) for c in f.columns)
            if None not in values:
                out[f.name] = values
        return out

    def cascade(
        self, parent: str, old: Mapping[str, JSONValue], new: Mapping[str, JSONValue] | None
    ) -> Cascade | None:
        """The "cascade" member of a change of `parent` from row `old` to row `new` (None: a delete);
        None when nothing cascades (no referenced column changed, or no rule for the action)."""
        fks = self.parent_fks(parent)
        if not fks:
            return None
        cols = self.referenced_columns(parent)
        if new is None:
            if all(f.on_delete == "none" for f in fks):
                return None
            return Cascade({c: old[c] for c in cols}, None, self.rules(parent))
        if all(f.on_update == "none" for f in fks) or all(_same(old[c], new[c]) for c in cols):
            return None
        return Cascade({c: old[c] for c in cols}, {c: new[c] for c in cols}, self.rules(parent))


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


EMPTY_GRAPH = FKGraph(())


def load_foreign_keys(conn: Any, database: str) -> FKGraph:
    """The cascading FKs of `database` (a pymysql connection); FKs into other databases are left out."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT r.CONSTRAINT_NAME, r.TABLE_NAME, r.REFERENCED_TABLE_NAME, r.UPDATE_RULE, r.DELETE_RULE, "
            "k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME, k.REFERENCED_TABLE_SCHEMA "
            "FROM information_schema.REFERENTIAL_CONSTRAINTS r "
            "JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA "
            "AND k.CONSTRAINT_NAME = r.CONSTRAINT_NAME AND k.TABLE_NAME = r.TABLE_NAME "
            "WHERE r.CONSTRAINT_SCHEMA = %s AND k.REFERENCED_COLUMN_NAME IS NOT NULL "
            "ORDER BY r.TABLE_NAME, r.CONSTRAINT_NAME, k.ORDINAL_POSITION",
            (database,),
        )
        rows = cur.fetchall()
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name, child, parent, upd, dele, col, refcol, refschema in rows:
        if refschema != database:
            continue
        fk = found.setdefault((child, name), {"parent": parent, "upd": upd, "del": dele, "cols": [], "ref": []})
        fk["cols"].append(col)
        fk["ref"].append(refcol)
    return FKGraph([
        ForeignKey(name, child, tuple(d["cols"]), d["parent"], tuple(d["ref"]),
                   _RULE.get(str(d["upd"]).upper(), "none"), _RULE.get(str(d["del"]).upper(), "none"))
        for (child, name), d in found.items()
    ])
