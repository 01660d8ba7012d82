"""RESP request packing for the applier's own connection use (redis-py's generic packer costs
~3 us per argument)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["pack_command"]


def pack_command(args: Sequence[Any]) -> bytes:
    """RESP2/3 request for `args` (str, bytes or int)."""
    out = [b"*%d\r\n" % len(args)]
    add = out.append
    for a in args:
        t = type(a)
        if t is bytes:
            pass
        elif t is str:
            a = a.encode()
        elif t is int:
            a = b"%d" % a
        else:
            a = bytes(a)
        add(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)
