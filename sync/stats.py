"""Counters of a long-running command (sync-worker, sync-relay, sync-binlog) and the loop that logs
their deltas every --stats-interval seconds.

    @dataclass
    class RelayStats(Counters):
        relayed: int = 0

    await report_loop(stats, interval_s, lambda delta, total, seconds: log.info(...), stop_event)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["Counters", "report_loop"]

Report = Callable[[dict[str, float], dict[str, float], float], None]


@dataclass
class Counters:
    """Base of a command's counters since start: subclasses declare int or float fields."""

    def snapshot(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def totals(self) -> dict[str, int]:
        """Every counter as an int, for the final log line."""
        return {k: int(v) for k, v in self.snapshot().items()}


async def report_loop(counters: Counters, interval_s: float, report: Report,
                      stop: asyncio.Event | None = None) -> None:
    """Every `interval_s` (and once more when `stop` is set), call report(delta, total, seconds)
    with the change of each counter since the previous call. Returns at once when interval_s <= 0;
    otherwise runs until `stop` is set or the task is cancelled."""
    if interval_s <= 0:
        return
    last, last_t = counters.snapshot(), time.monotonic()
    while stop is None or not stop.is_set():
        if stop is None:
            await asyncio.sleep(interval_s)
        else:
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
        now, cur = time.monotonic(), counters.snapshot()
        report({k: cur[k] - last[k] for k in cur}, cur, max(now - last_t, 1e-9))
        last, last_t = cur, now
