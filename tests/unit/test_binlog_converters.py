"""sync-binlog's fast paths against the general code they stand in for: the DATETIME converter vs
canonical_value, and the applier's packed request for the reader-thread writer vs apply()'s."""

from __future__ import annotations

import datetime as dt
import hashlib
import random

import pytest

from sync.apply.applier import APPLY_SCRIPT, APPLY_SCRIPT_SHA, Outcome, RedisApplier
from sync.apply.resp import pack_command
from sync.capture.binlog.decoders import column_converter
from sync.errors import ApplyError
from sync.events import ChangeEvent, ClassicSet, Op, Source
from sync.rows.schema import Column, canonical_value
from sync.tables import TableSpec


@pytest.mark.parametrize("fsp", range(7))
def test_datetime_converter_is_canonical_value(fsp: int) -> None:
    col = Column(name="x", data_type="datetime", column_type="datetime", nullable=True, fsp=fsp, charset=None)
    conv = column_converter(col, None, "mariadb")
    rnd = random.Random(fsp)
    values = [dt.datetime(1, 1, 1), dt.datetime(999, 12, 31, 23, 59, 59, 999999), dt.datetime(9999, 12, 31, 23, 59, 59, 1000)]
    values += [dt.datetime(rnd.randint(1, 9999), rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 23),
                           rnd.randint(0, 59), rnd.randint(0, 59), rnd.choice([0, 1, 10, 999999, rnd.randint(0, 999999)]))
               for _ in range(2000)]
    for v in values:
        assert conv(v) == canonical_value(col, v), v
    for zero in ("0000-00-00 00:00:00", "2024-00-00 00:00:00.000"):  # zero dates arrive as text
        assert conv(zero) == canonical_value(col, zero)


def test_pack_apply_is_the_evalsha_apply_sends() -> None:
    applier = RedisApplier(object(), {"data": TableSpec("data", "binlog:{table}:{pk}")})
    batch = [
        ChangeEvent("data", Op.UPDATE, (("id", 1),), {"id": 1, "v": "x"}, 5, Source.BINLOG),
        ChangeEvent("data", Op.DELETE, (("id", 2),), None, 6, Source.BINLOG),
        ClassicSet(b"gearsync:binlog:pos:{s}", b'{"gtid":"0-1-6"}'),
    ]
    keys, argv = applier._build_args(batch)
    assert applier.pack_apply(batch) == pack_command(("EVALSHA", APPLY_SCRIPT_SHA, len(keys), *keys, *argv))
    assert APPLY_SCRIPT_SHA == hashlib.sha1(APPLY_SCRIPT.encode()).hexdigest()
    assert RedisApplier.pack_script_load() == pack_command(("SCRIPT", "LOAD", APPLY_SCRIPT))
    assert RedisApplier.parse_reply(b"ASA", 3) == [Outcome.APPLIED, Outcome.STALE, Outcome.APPLIED]
    with pytest.raises(ApplyError):
        RedisApplier.parse_reply(b"AS", 3)
