"""The demo's display: the Monitor thread (the heartbeat keys in Redis plus sync-status's collect())
filling a View of PathViews, the live table (render_live, rich) or a plain line per second, and
the summary table at the end.

Standard library only at module level; rich, redis and sync.* are imported where they are used.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sync.demo.common import DATABASE, TABLE, say

if TYPE_CHECKING:
    from sync.demo.load import Load
    from sync.demo.processes import Stack

@dataclass
class PathView:
    key: str                        # the heartbeat's Redis key on this path
    beat: int | None = None         # heartbeat number Redis shows (None: key absent)
    synced: int | None = None       # changes committed before that heartbeat
    lag_s: float | None = None      # how long the oldest change Redis lacks has waited (0: none)
    max_lag_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)   # commit -> first seen in Redis, per beat seen
    first_seen_wall: float | None = None   # time.time() when Redis first showed a load change

    def latency(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class View:
    paths: dict[str, PathView]
    state: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    updated: float = 0.0


class Monitor(threading.Thread):
    """Reads the heartbeat keys every `beat_poll_s` and sync-status's collect() every `status_poll_s`
    (its own asyncio loop) into `view`."""

    def __init__(self, stack: Stack, load: Load, paths: dict[str, str], *, function: str,
                 beat_poll_s: float = 0.005, status_poll_s: float = 0.5) -> None:
        super().__init__(name="demo-monitor", daemon=True)
        self.stack = stack
        self.load = load
        self.function = function
        self.beat_poll_s = beat_poll_s
        self.status_poll_s = status_poll_s
        self.view = View({name: PathView(key) for name, key in paths.items()})
        self.stop_event = threading.Event()

    def run(self) -> None:
        import asyncio

        asyncio.run(self._main())

    async def _main(self) -> None:
        import asyncio

        import redis.asyncio as aioredis

        client = aioredis.Redis(host=self.stack.redis.host, port=self.stack.redis.port, socket_timeout=3)
        try:
            await asyncio.gather(self._beats(client), self._status(client))
        finally:
            await client.aclose()

    async def _beats(self, client: Any) -> None:
        import asyncio

        names = list(self.view.paths)
        keys = [self.view.paths[n].key for n in names]
        while not self.stop_event.is_set():
            try:
                raw = await client.mget(keys)
            except Exception as exc:  # shown on the display; the main thread decides
                self.view.error = f"redis: {type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            beats = self.load.beats
            for name, value in zip(names, raw):
                pv = self.view.paths[name]
                k = _heartbeat(value)
                if k is not None and k != pv.beat and 0 < k <= len(beats):
                    pv.latencies_s.append(now - beats[k - 1][1])
                    if pv.first_seen_wall is None:
                        pv.first_seen_wall = time.time()
                pv.beat = k
                pv.synced = None if k is None else (beats[k - 1][0] if 0 < k <= len(beats) else 0)
                if k is not None and self.load.started_at is not None:
                    # beats[k] is the first heartbeat Redis does not show yet
                    pv.lag_s = max(0.0, now - beats[k][1]) if k < len(beats) else 0.0
                    pv.max_lag_s = max(pv.max_lag_s, pv.lag_s)
            await asyncio.sleep(self.beat_poll_s)

    async def _status(self, client: Any) -> None:
        import asyncio

        from sync.mysql import from_url
        from sync.tools.status import collect

        mysql = from_url(self.stack.mysql_url)
        while not self.stop_event.is_set():
            try:
                self.view.state = await collect(servers=[(self.stack.gearmand.host, self.stack.gearmand.port)],
                                                redis=client, mysql=mysql, tables=[TABLE],
                                                functions={TABLE: self.function})
                self.view.error = None
            except Exception as exc:  # shown on the display; the main thread decides
                self.view.error = f"status: {type(exc).__name__}: {exc}"
            self.view.updated = time.monotonic()
            await asyncio.sleep(self.status_poll_s)


def _heartbeat(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(json.loads(raw)["volume"])
    except (ValueError, KeyError, TypeError):
        return None


def _fmt_lag(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def table_row_state(view: View) -> dict[str, Any]:
    return (view.state.get("tables") or {}).get(TABLE) or {}


def render_live(view: View, load: Load, args: argparse.Namespace, path_titles: dict[str, str]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic()
    elapsed = (min(now, load.finished_at or now) - load.started_at) if load.started_at else 0.0
    st = table_row_state(view)
    gm = (view.state.get("gearman") or [{}])[0]
    spool = ((view.state.get("mysql") or {}).get("spool") or {}).get(DATABASE)
    head = Text.assemble(
        ("gearsync demo", "bold"), f"  load {elapsed:4.1f}/{args.seconds:g} s at {args.rate:g} changes/s   ",
        (f"{load.written:,} written", "bold"),
        f"  (insert {load.counts['insert']:,}, update {load.counts['update']:,}, delete {load.counts['delete']:,})"
        f"   rows in MySQL {load.rows:,}",
    )
    t = Table(show_header=True, header_style="bold", expand=False)
    t.add_column("")
    for name in view.paths:
        t.add_column(path_titles[name], justify="right")
    names = list(view.paths)
    paths = [view.paths[n] for n in names]

    def row(label: str, values: Sequence[str]) -> None:
        t.add_row(label, *values)

    def via_gearmand(value: Any) -> list[str]:
        """A gearmand-side figure: shown for the trigger/classic path, '–' for the binlog."""
        text = ("[red]gearmand down[/red]" if not gm.get("up", True) else "–" if value is None else f"{value:,}")
        return [text if n != "binlog" else "–" for n in names]

    row("changes synced", [("–" if p.synced is None else f"{p.synced:,}") for p in paths])
    row("behind", [("–" if p.synced is None else f"{max(0, load.written - p.synced):,}") for p in paths])
    row("lag now / max", [f"{_fmt_lag(p.lag_s)} / {_fmt_lag(p.max_lag_s)}" for p in paths])
    row("commit → Redis p50 / p99", [f"{_fmt_lag(p.latency(0.5))} / {_fmt_lag(p.latency(0.99))}" for p in paths])
    row("gearmand queue", via_gearmand(st.get("queued")))
    row("workers", via_gearmand(st.get("workers")))
    if not args.classic:
        row("spool rows", [("–" if spool is None else f"{spool:,}") if n != "binlog" else "–" for n in names])
        row("dead letters", [("–" if st.get("dead") is None else f"{st['dead']:,}") if n != "binlog" else "–"
                             for n in names])
    applied = st.get("applied_total")
    foot = Text(f"Redis applies (all sources, gearsync:stats:{TABLE}): {applied if applied is not None else '–'}"
                f"    Ctrl-C stops everything", style="dim")
    parts: list[Any] = [head, t, foot]
    if view.error:
        parts.append(Text(f"monitor: {view.error}", style="red"))
    return Group(*parts)


def plain_line(view: View, load: Load) -> str:
    st = table_row_state(view)
    parts = [f"written={load.written}"]
    for name, p in view.paths.items():
        parts.append(f"{name}: synced={p.synced} lag={_fmt_lag(p.lag_s)} p50={_fmt_lag(p.latency(0.5))}")
    parts.append(f"queue={st.get('queued')}")
    if view.error:
        parts.append(f"monitor-error={view.error}")
    return "  ".join(parts)


PATH_TITLES = {
    "trigger": "triggers → gearmand → sync-worker\n(data:<id>)",
    "binlog": "binlog → sync-binlog\n(binlog:data:<id>)",
    "classic": "datatoredis → syncToRedis\n(SET <id> <payload>)",
}


def print_summary(summary: dict[str, Any], ci: bool) -> None:
    rows: list[tuple[str, ...]] = []
    names = list(summary["verify"])
    header = ("", *[PATH_TITLES[n].replace("\n", " ") for n in names])
    lag = summary["lag"]
    rows.append(("changes written", *[f"{summary['load']['written']:,}" for _ in names]))
    rows.append(("changes synced", *[f"{lag[n]['synced']:,}" if lag[n]['synced'] is not None else "–" for n in names]))
    rows.append(("commit → Redis p50 / p99", *[f"{_fmt_lag(lag[n]['latency_p50_s'])} / {_fmt_lag(lag[n]['latency_p99_s'])}"
                                               for n in names]))
    rows.append(("max lag during the load", *[_fmt_lag(lag[n]['max_lag_s']) for n in names]))
    for label, key in (("rows compared", "rows"), ("missing", "missing"), ("different", "different"), ("extra keys", "extra")):
        rows.append((label, *[f"{summary['verify'][n].get(key, 0):,}" for n in names]))
    rows.append(("result", *["EQUAL" if summary["verify"][n]["equal"] else "DIFFERENT" for n in names]))
    try:
        if ci or not sys.stdout.isatty():
            raise ImportError
        from rich.console import Console
        from rich.table import Table

        t = Table(title="gearsync demo: summary", title_justify="left", header_style="bold")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*[(f"[green]{v}[/green]" if v == "EQUAL" else f"[red]{v}[/red]" if v == "DIFFERENT" else v)
                        for v in row])
        Console().print(t)
    except ImportError:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            say("  ".join(str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(r)))
    t = summary["times"]
    say(f"set-up {t['setup_s']:.1f} s (first synced change {t['first_synced_s']:.1f} s after start), "
        f"load {t['load_s']:.1f} s, caught up {t['drain_s']:.1f} s after it, verify {t['verify_s']:.1f} s, "
        f"stop {t.get('stop_s', 0):.1f} s; total {t.get('total_s', 0):.1f} s")
    for n in names:
        for s in summary["verify"][n].get("sample", []):
            say(f"    redis: {s}")
        for kind, ex in (summary["verify"][n].get("examples") or {}).items():
            for e in ex:
                say(f"    {n} {kind}: {e}")
