"""The binlog reader's per-table state and the events of tables with cascading foreign keys
(children carry "refs", parents "cascade"; cascade-only parents only op "cascade")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.capture.binlog.decoders import RowPlan
from sync.events import ChangeEvent, JSONValue, Op, Source
from sync.rows.fkgraph import FKGraph
from sync.rows.schema import TableSchema

__all__ = ["TableState", "fk_row_events"]


@dataclass
class TableState:
    """What the reader keeps per chosen table (and per cascade-only parent)."""

    schema: TableSchema
    wanted: frozenset[str] | None
    plans: dict[int, RowPlan] = field(default_factory=dict)   # table id → plan
    cascade_only: bool = False      # a parent of a chosen child, not chosen itself: op "cascade" only
    child: bool = False             # has cascading FKs to a parent: rows carry "refs"
    parent: bool = False            # referenced by cascading FKs: updates/deletes may carry "cascade"
    extra: tuple[str, ...] = ()     # FK/referenced columns read beyond the selection, left out of rows

    def read(self) -> frozenset[str] | None:
        """The columns a row plan reads (None: all)."""
        return self.wanted if self.wanted is None or not self.extra else self.wanted | set(self.extra)


def fk_row_events(graph: FKGraph, st: TableState, table: str, plan: RowPlan, rows: Sequence[Any], kind: str,
              next_version: Callable[[], int], out: Callable[[ChangeEvent, int], None]) -> None:
    """The events of a rows event of a table with cascading FKs (child, parent, or cascade-only
    parent): the same events as for any table, with "refs" and "cascade" (sync.capture.binlog.reader's
    docstring), handed to `out` with versions from `next_version`."""
    key, src = st.schema.key, Source.BINLOG

    def emit(new: dict[str, JSONValue] | None, old: dict[str, JSONValue] | None) -> None:
        # old: the row before (None: an insert); new: the row after (None: a delete)
        cascade = graph.cascade(table, old, new) if st.parent and old is not None else None
        if st.cascade_only:
            if cascade is not None:
                version = next_version()
                out(ChangeEvent(table, Op.CASCADE, (), None, version, src, None, cascade), version)
            return
        version = next_version()
        # a child's delete carries the old row's refs (the applier follows a cascade that moved it)
        gone = graph.refs(table, old) if st.child and old is not None else None
        if new is None:
            assert old is not None
            out(ChangeEvent(table, Op.DELETE, tuple((k, old[k]) for k in key), None, version, src,
                                  gone, cascade), version)
            return
        pk = tuple((k, new[k]) for k in key)
        if old is not None:
            old_pk = tuple((k, old[k]) for k in key)
            if old_pk != pk:  # the key changed: the old key goes, without cascading
                out(ChangeEvent(table, Op.DELETE, old_pk, None, version, src, gone), version)
        refs = graph.refs(table, new) if st.child else None
        for c in st.extra:
            del new[c]
        out(ChangeEvent(table, Op.INSERT if old is None else Op.UPDATE, pk, new, version, src,
                              refs, cascade), version)

    if kind == "WriteRowsEvent":
        if not st.cascade_only:
            for r in rows:
                emit(plan.row(r["values"], r.get("none_sources")), None)
    elif kind == "DeleteRowsEvent":
        for r in rows:
            emit(None, plan.row(r["values"], r.get("none_sources")))
    else:
        names = plan.names if st.wanted is not None else None
        for r in rows:
            before, after = r["before_values"], r["after_values"]
            if names is not None and all(before[n] == after[n] for n in names):
                continue  # none of the chosen (or FK) columns changed
            emit(plan.row(after, r.get("after_none_sources")),
                 plan.row(before, r.get("before_none_sources")))
