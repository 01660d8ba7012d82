"""The terminal progress of sync-snapshot and sync-verify: a rich bar on a terminal, log lines otherwise."""

from __future__ import annotations

import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """A rich progress bar (rate, ETA) on a terminal; otherwise a log line every `interval_s`."""

    def __init__(self, what: str, total: int | None, *, tty: bool | None = None, interval_s: float = 10.0,
                 done: int = 0) -> None:
        import sys

        self.what = what
        self.total = total
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval_s = interval_s
        self._last_log = time.monotonic()
        self._t0 = time.monotonic()
        self._start_done = done
        self._done = done
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            class _Rate(TextColumn):
                def render(self, task: Any) -> Any:  # rows/s over the whole run
                    from rich.text import Text

                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                 MofNCompleteColumn(), _Rate(""), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(what, total=max(total or 0, done) or None, completed=done)

    def update(self, done: int, note: str | None = None) -> None:
        self._done = done
        if self._bar is not None:
            total = self.total
            if total is not None and done > total:
                total = None  # the estimate was low
            self._bar.update(self._task, completed=done, total=total)
            return
        now = time.monotonic()
        if now - self._last_log >= self.interval_s:
            self._last_log = now
            rate = (done - self._start_done) / max(now - self._t0, 1e-9)
            eta = round((self.total - done) / rate) if self.total and rate > 0 and self.total > done else None
            log.info(f"{self.what.replace(' ', '_')}_progress", rows=done, estimated_total=self.total,
                     rows_per_s=round(rate), eta_s=eta, at=note)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
