"""What the trigger benchmarks (udf, triggers, compare) share: where the UDF library and the
commands are, a run directory with a plugin dir holding the library, and the --json output."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sync.capture.udf_install import LIBRARY_NAME

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "udf" / "build" / LIBRARY_NAME
BIN = Path(sys.executable).parent  # sync-worker, sync-relay, … of this environment

__all__ = ["BIN", "LIBRARY", "REPO", "add_json_option", "add_update_load_options", "run_dir_with_udf", "write_json"]


def run_dir_with_udf(name: str, *, build: bool, library: Path = LIBRARY) -> tuple[Path, Path]:
    """Build the UDF library (`make -C udf`, unless build is False), then make a fresh temp dir for
    one run of benchmark `name` with plugin/ holding the library: (run dir, plugin dir)."""
    if build:
        subprocess.run(["make", "-s", "-C", str(REPO / "udf")], check=True)
    base = Path(tempfile.mkdtemp(prefix=f"gearsync-bench-{name}-"))
    plugin_dir = base / "plugin"
    plugin_dir.mkdir()
    shutil.copy(library, plugin_dir / LIBRARY_NAME)
    return base, plugin_dir


def write_json(path: Path | None, out: Any) -> None:
    """--json FILE: the figures as indented JSON (nothing when no file was given)."""
    if path:
        path.write_text(json.dumps(out, indent=2) + "\n")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")


def add_update_load_options(parser: argparse.ArgumentParser) -> None:
    """--runs, --rows, --single, --multi, --json, --no-build: the UPDATE load of bench udf and triggers."""
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=20_000, help="single-row UPDATEs per run and mode")
    parser.add_argument("--multi", type=int, default=10_000, help="rows in the one multi-row UPDATE")
    add_json_option(parser)
    parser.add_argument("--no-build", action="store_true", help="do not run make -C udf first")
