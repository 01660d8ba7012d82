"""What every gearsync command shares: named exit codes, a one-line error format, argument parsing.

A command's `main()` builds its parser with `make_parser`, then calls `run(main_fn, argv)`;
bad input ends as `<prog>: error: <what was wrong, naming the value>` on stderr and exit code 2,
never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from enum import IntEnum
from typing import Callable, NoReturn, Sequence

from sync.errors import ConfigError, SyncError


class ExitCode(IntEnum):
    OK = 0
    DIFFERENCES = 1      # verify: MySQL and Redis differ; replay: some records still fail
    USAGE = 2            # bad option, config, URL or identifier
    UNAVAILABLE = 3      # a needed server could not be reached / the action must be done by hand
    INTERRUPTED = 130    # Ctrl-C before the work was done


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (plus a pointer to --help)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(ExitCode.USAGE)


def make_parser(prog: str, description: str, epilog: str | None = None) -> OneLineParser:
    return OneLineParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fail(prog: str, message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(int(code))


def run(prog: str, fn: Callable[[], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Call fn and turn expected errors into one line and a named exit code."""
    try:
        code = fn()
    except ConfigError as exc:
        fail(prog, str(exc), ExitCode.USAGE)
    except SyncError as exc:
        fail(prog, str(exc), ExitCode.UNAVAILABLE)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        raise SystemExit(int(ExitCode.INTERRUPTED))
    raise SystemExit(int(code))
