"""Which columns an ALTER specification removes under their current name (sync-triggers alter)."""

from __future__ import annotations

import pytest

from sync.capture.trigger_admin import dropped_columns
from sync.errors import ConfigError


@pytest.mark.parametrize(("spec", "gone"), [
    ("DROP COLUMN w", {"w"}),
    ("drop w", {"w"}),
    ("DROP COLUMN IF EXISTS `we``ird`", {"we`ird"}),
    ("ADD COLUMN z INT, DROP COLUMN a, DROP INDEX i, DROP PRIMARY KEY, DROP FOREIGN KEY fk", {"a"}),
    ("CHANGE COLUMN a b INT", {"a"}),
    ("CHANGE a a BIGINT", set()),
    ("RENAME COLUMN a TO b", {"a"}),
    ("RENAME INDEX i TO j, MODIFY COLUMN w VARCHAR(40)", set()),
    ("ADD COLUMN c ENUM('x,y', 'DROP COLUMN q') DEFAULT 'x,y', DROP d", {"d"}),
    ("ADD COLUMN z DECIMAL(10,2)", set()),
])
def test_dropped_columns(spec: str, gone: set[str]) -> None:
    assert dropped_columns(spec) == gone


def test_renaming_the_table_is_refused() -> None:
    with pytest.raises(ConfigError, match="renames the table"):
        dropped_columns("ADD COLUMN z INT, RENAME TO other")
