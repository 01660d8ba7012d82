"""Shared by the demo's modules: its constants (repository paths, database and table, key templates,
exit codes), DemoError, and the say()/step() output helpers with the run's clock.

Standard library only: the demo starts under the system python3, before the venv exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
DEFAULT_STATE_DIR = REPO / ".state" / "demo"
MARKER = ".gearsync-demo"          # a state dir holding this file may be wiped by the demo
DATABASE = "demo"
TABLE = "data"
TRIGGER_TEMPLATE = "{table}:{pk}"
BINLOG_TEMPLATE = "binlog:{table}:{pk}"
HEARTBEAT_ID = 0
CLASSIC_FUNCTION = "syncToRedis"
T0_ENV = "GEARSYNC_DEMO_T0"        # wall-clock start, carried over the re-exec into the venv

EXIT_OK, EXIT_DIFF, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class DemoError(Exception):
    """A step failed; the message says which and where its log is."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    print(text, flush=True)


_T0 = time.monotonic()   # moved back to the run's wall-clock start by start_clock() (see T0_ENV)


def step(text: str) -> None:
    say(f"==> [{time.monotonic() - _T0:5.1f} s] {text}")


def start_clock() -> None:
    """Move step()'s clock back to the run's wall-clock start (T0_ENV, carried over the re-exec)."""
    global _T0
    os.environ.setdefault(T0_ENV, repr(time.time()))
    _T0 = time.monotonic() - (time.time() - float(os.environ[T0_ENV]))


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)
