"""FKGraph: which FKs cascade, their nested descriptors, a row's refs, a change's cascade member."""

from __future__ import annotations

from sync.events import FKRule
from sync.rows.fkgraph import FKGraph, ForeignKey

ORDERS_LINE = ForeignKey("fk_line", "line", ("order_id",), "orders", ("id",), "cascade", "cascade")
LINE_NOTE = ForeignKey("fk_note", "note", ("line_a", "line_b"), "line", ("order_id", "n"), "cascade", "set_null")
TREE = ForeignKey("fk_tree", "tree", ("parent_id",), "tree", ("id",), "none", "cascade")
PLAIN = ForeignKey("fk_plain", "other", ("order_id",), "orders", ("id",), "none", "none")

GRAPH = FKGraph([ORDERS_LINE, LINE_NOTE, TREE, PLAIN])


def test_only_cascading_fks_are_kept() -> None:
    assert PLAIN not in GRAPH.fks
    assert GRAPH.parent_fks("orders") == (ORDERS_LINE,)
    assert GRAPH.child_fks("note") == (LINE_NOTE,)
    assert GRAPH.child_fks("orders") == ()
    assert not FKGraph([PLAIN])


def test_rules_nest_chains() -> None:
    (line,) = GRAPH.rules("orders")
    assert line == FKRule("line", "fk_line", ("order_id",), ("id",), "cascade", "cascade",
                          (FKRule("note", "fk_note", ("line_a", "line_b"), ("order_id", "n"), "cascade", "set_null"),))
    assert GRAPH.tables("orders") == {"line", "note"}


def test_self_reference_is_expanded_once() -> None:
    (tree,) = GRAPH.rules("tree")
    (again,) = tree.children
    assert again.fk == "fk_tree" and again.children == ()


def test_refs_leave_out_fks_with_a_null_column() -> None:
    assert GRAPH.refs("note", {"line_a": 1, "line_b": 2}) == {"fk_note": (1, 2)}
    assert GRAPH.refs("note", {"line_a": 1, "line_b": None}) == {}
    assert GRAPH.refs("orders", {"id": 1}) is None


def test_cascade_member_only_when_a_referenced_column_changes() -> None:
    old = {"id": 1, "order_id": 5, "n": 1, "x": "a"}
    assert GRAPH.cascade("line", old, dict(old, x="b")) is None
    c = GRAPH.cascade("line", old, dict(old, n=2))
    assert c is not None and c.old == {"order_id": 5, "n": 1} and c.new == {"order_id": 5, "n": 2}
    d = GRAPH.cascade("line", old, None)
    assert d is not None and d.new is None and d.fks == GRAPH.rules("line")
    # An update rule of none everywhere: an update does not cascade, a delete does.
    assert GRAPH.cascade("tree", {"id": 1}, {"id": 2}) is None
    assert GRAPH.cascade("tree", {"id": 1}, None) is not None
    # 5 and "5" differ: a changed type is a change.
    assert GRAPH.cascade("orders", {"id": 5}, {"id": "5"}) is not None
