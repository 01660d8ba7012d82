"""docs/cli.md is generated from the commands' own --help: it must match what they print now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO / "scripts" / "gen_cli_reference.py"


def test_cli_reference_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "cli.md"
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(fresh)], check=True, capture_output=True, timeout=300)
    current = (REPO / "docs" / "cli.md").read_text()
    assert current == fresh.read_text(), (
        "docs/cli.md is stale: an option or help text changed. Run `make docs` "
        "(.venv/bin/python scripts/gen_cli_reference.py) and commit docs/cli.md."
    )


def test_reference_covers_every_console_script() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    text = (REPO / "docs" / "cli.md").read_text()
    for name in scripts:
        if name == "sync-bench":
            continue
        assert f"## `{name}`" in text and f"usage: {name} " in text, name


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# Command reference\n")
    result = subprocess.run([sys.executable, str(SCRIPT), "--check", "--output", str(stale)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "stale" in result.stderr and "make docs" in result.stderr
