"""sync-status: is the pipeline keeping up? One snapshot of every part, each read independently.

    state = await collect(servers=[("127.0.0.1", 4730)], redis=client, mysql=settings, tables=["data"])

- gearmand (admin protocol, each server on its own, with a deadline): per function queued and
  running jobs and connected workers; a server that does not answer is shown as down.
- MySQL: the spool size (`gearsync_spool` in every database that has one), the server's binlog
  position (SHOW MASTER STATUS, @@gtid_binlog_pos).
- Redis: per table the dead-letter list sizes, the time of the last applied change and the
  applied total (the applier's stats hash), the snapshot progress.
- Lag per table: with jobs queued, now − last applied (how long the oldest unapplied change may
  have waited, at least); with an empty queue, 0.
- The binlog readers' saved positions: every `keys.binlog_position_key(name)` in Redis (one per
  sync-binlog stream), otherwise "n/a".

Nothing here raises because one part is down: each part reports {"up": false, "error": …}.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from sync import keys
from sync.errors import short_error
from sync.gearman import admin
from sync.tables import default_function

log = structlog.get_logger(__name__)

__all__ = ["add_trigger_states", "collect", "reachable", "render"]

TIMEOUT_S = 3.0


async def _gearman(host: str, port: int) -> dict[str, Any]:
    out: dict[str, Any] = {"server": f"{host}:{port}", "up": False}
    try:
        rows, conns = await asyncio.gather(admin.status(host, port, timeout_s=TIMEOUT_S),
                                           admin.workers(host, port, timeout_s=TIMEOUT_S))
    except Exception as exc:
        out["error"] = short_error(exc, 200)
        return out
    out["up"] = True
    out["functions"] = {r.name: {"queued": r.queued, "running": r.running, "workers": r.workers} for r in rows}
    out["connections"] = len(conns)
    return out


def _mysql(settings: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"server": settings.display, "up": False}
    try:
        conn = settings.connect(connect_timeout=int(TIMEOUT_S), read_timeout=int(TIMEOUT_S) * 3)
    except Exception as exc:
        out["error"] = short_error(exc, 200)
        return out
    try:
        out["up"] = True
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_SCHEMA FROM information_schema.TABLES WHERE TABLE_NAME='gearsync_spool'")
            spool: dict[str, int] = {}
            for (db,) in cur.fetchall():
                cur.execute(f"SELECT COUNT(*) FROM `{db.replace('`', '``')}`.gearsync_spool")
                spool[db] = int(cur.fetchone()[0])
            out["spool"] = spool
            try:
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
                out["binlog"] = {"file": row[0], "position": int(row[1])} if row else None
            except Exception as exc:  # no privilege / binlog off: shown, not fatal
                out["binlog"] = None
                out["binlog_error"] = short_error(exc, 200)
            try:
                cur.execute("SELECT @@gtid_binlog_pos")
                out["gtid_binlog_pos"] = cur.fetchone()[0]
            except Exception:  # MySQL (not MariaDB) has no such variable
                out["gtid_binlog_pos"] = None
    except Exception as exc:
        out["error"] = short_error(exc, 200)
    finally:
        conn.close()
    return out


async def _redis(client: Any, tables: Sequence[str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"up": False}
    try:
        async with asyncio.timeout(TIMEOUT_S * 2):
            if not tables:
                found = set()
                async for k in client.scan_iter(match=f"{prefix}:stats:*", count=1000):
                    found.add(k.decode() if isinstance(k, bytes) else k)
                tables = sorted(_unescape_table(k[len(prefix) + 7 :]) for k in found)
            pipe = client.pipeline(transaction=False)
            for t in tables:
                pipe.hgetall(keys.stats_key(t, prefix))
                pipe.llen(keys.dead_letter_key(t, prefix))
                pipe.llen(keys.dead_letter_processing_key(t, prefix))
                pipe.hgetall(keys.snapshot_progress_key(t, prefix))
            # Every binlog stream's saved position (sync.position.PositionStore: JSON strings).
            stream_keys = []
            async for k in client.scan_iter(match=f"{prefix}:binlog:pos:*", count=1000):
                stream_keys.append(k)
            for k in stream_keys:
                pipe.get(k)
            replies = await pipe.execute()
            now_ms = int(time.time() * 1000)
    except Exception as exc:
        out["error"] = short_error(exc, 200)
        return out
    out["up"] = True
    per: dict[str, Any] = {}
    for i, t in enumerate(tables):
        stats, dead, processing, snap = replies[4 * i : 4 * i + 4]
        stats = {k.decode(): v.decode() for k, v in (stats or {}).items()}
        last = int(stats["last_applied_ms"]) if stats.get("last_applied_ms", "").isdigit() else None
        snapd = {k.decode(): v.decode() for k, v in (snap or {}).items()}
        per[t] = {
            "last_applied_ms": last,
            "last_applied_age_s": round((now_ms - last) / 1000, 3) if last is not None else None,
            "applied_total": int(stats.get("applied_total", 0) or 0),
            "dead": int(dead),
            "dead_processing": int(processing),
            "snapshot": {"state": snapd.get("state"), "rows": int(snapd.get("rows", 0) or 0)} if snapd else None,
        }
    out["tables"] = per
    streams = {}
    for k, raw in zip(stream_keys, replies[4 * len(tables) :]):
        if raw:
            name = (k.decode() if isinstance(k, bytes) else k)[len(prefix) + 12 :].strip("{}")
            try:
                streams[_unescape_table(name)] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                streams[_unescape_table(name)] = raw.decode("utf-8", "replace")
    out["binlog_reader_position"] = streams or None
    return out


def _unescape_table(text: str) -> str:
    return text.replace("\\:", ":").replace("\\(", "{").replace("\\)", "}").replace("\\\\", "\\")


async def collect(
    *,
    servers: Sequence[tuple[str, int]],
    redis: Any,
    mysql: Any | None,
    tables: Sequence[str] = (),
    functions: dict[str, str] | None = None,
    prefix: str = keys.DEFAULT_PREFIX,
) -> dict[str, Any]:
    """Everything sync-status shows, as plain data (also the --json output)."""
    gtasks = [_gearman(h, p) for h, p in servers]
    mtask = asyncio.to_thread(_mysql, mysql) if mysql is not None else None
    results = await asyncio.gather(*gtasks, _redis(redis, list(tables), prefix),
                                   *([mtask] if mtask is not None else []))
    gearman = list(results[: len(gtasks)])
    rds = results[len(gtasks)]
    my: dict[str, Any] = results[len(gtasks) + 1] if mtask is not None else {"up": None, "error": "not configured"}
    names = list(tables) or sorted(rds.get("tables", {}))
    fn_of = dict(functions or {})
    # Tables seen only as gearsync.<table> functions in gearmand count too.
    for g in gearman:
        for fn in g.get("functions", {}):
            if fn.startswith("gearsync.") and not tables and fn[9:] not in names:
                names.append(fn[9:])
    per_table: dict[str, Any] = {}
    for t in names:
        fn = fn_of.get(t) or default_function(t)
        queued = running = workers = 0
        seen = False
        for g in gearman:
            f = g.get("functions", {}).get(fn)
            if f:
                seen = True
                queued += f["queued"]
                running += f["running"]
                workers += f["workers"]
        r = rds.get("tables", {}).get(t, {})
        age = r.get("last_applied_age_s")
        waiting = queued - running if queued >= running else queued
        per_table[t] = {
            "function": fn,
            "queued": queued if seen or any(g["up"] for g in gearman) else None,
            "running": running,
            "workers": workers,
            "dead": r.get("dead"),
            "dead_processing": r.get("dead_processing"),
            "last_applied_ms": r.get("last_applied_ms"),
            "applied_total": r.get("applied_total"),
            "lag_s": (age if age is not None else None) if waiting > 0 else 0.0,
            "snapshot": r.get("snapshot"),
        }
    binlog = {
        "server_file": (my.get("binlog") or {}).get("file") if my.get("up") else None,
        "server_position": (my.get("binlog") or {}).get("position") if my.get("up") else None,
        "server_gtid": my.get("gtid_binlog_pos") if my.get("up") else None,
        "reader_position": rds.get("binlog_reader_position"),
    }
    return {
        "time_ms": int(time.time() * 1000),
        "gearman": gearman,
        "redis": {"up": rds["up"], **({"error": rds["error"]} if "error" in rds else {})},
        "mysql": my,
        "tables": per_table,
        "binlog": binlog,
    }


def add_trigger_states(state: dict[str, Any], states: dict[str, str]) -> None:
    """Put the capture triggers' check results ("db.table" -> "ok" | "stale: …", or {"error": …})
    into `state`: state["triggers"], and per table (matched by name) tables[t]["triggers"]."""
    state["triggers"] = states
    for qualified, summary in states.items():
        table = qualified.split(".", 1)[1] if "." in qualified else None
        if table in state["tables"]:
            state["tables"][table]["triggers"] = summary


def reachable(state: dict[str, Any]) -> bool:
    """Was anything at all reachable?"""
    return bool(any(g["up"] for g in state["gearman"]) or state["redis"]["up"] or state["mysql"].get("up"))


def _na(v: Any, fmt: str = "{}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render(state: dict[str, Any], console: Any) -> None:
    """Rich tables of `state` on `console`."""
    from rich.table import Table

    t = Table(title="gearmand", title_justify="left")
    for col in ("server", "function", "queued", "running", "workers"):
        t.add_column(col, justify="right" if col in ("queued", "running", "workers") else "left")
    for g in state["gearman"]:
        if not g["up"]:
            t.add_row(g["server"], "[red]DOWN[/red] " + g.get("error", ""), "", "", "")
            continue
        fns = g.get("functions") or {}
        if not fns:
            t.add_row(g["server"], "(no functions)", "", "", "")
        for name, f in sorted(fns.items()):
            t.add_row(g["server"], name, str(f["queued"]), str(f["running"]), str(f["workers"]))
    console.print(t)

    t = Table(title="tables", title_justify="left")
    for col in ("table", "queued", "workers", "last applied", "lag", "applied total", "dead letters", "snapshot"):
        t.add_column(col, justify="left" if col in ("table", "last applied", "snapshot") else "right")
    for name, r in state["tables"].items():
        last = r["last_applied_ms"]
        last_s = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last / 1000)) if last else "never"
        lag = r["lag_s"]
        lag_s = "n/a" if lag is None else f"{lag:.1f}s"
        if lag and lag > 60:
            lag_s = f"[red]{lag_s}[/red]"
        snap = r["snapshot"]
        t.add_row(name, _na(r["queued"]), str(r["workers"]), last_s, lag_s, _na(r["applied_total"]),
                  _na(r["dead"]) + (f" (+{r['dead_processing']} replaying)" if r.get("dead_processing") else ""),
                  f"{snap['state']} ({snap['rows']} rows)" if snap else "-")
    if not state["tables"]:
        t.add_row("(none found)", "", "", "", "", "", "", "")
    console.print(t)

    my = state["mysql"]
    r = state["redis"]
    b = state["binlog"]
    lines = [
        "redis: " + ("up" if r["up"] else f"[red]DOWN[/red] {r.get('error', '')}"),
        "mysql: " + ("up" if my.get("up") else ("not configured" if my.get("up") is None
                                                 else f"[red]DOWN[/red] {my.get('error', '')}")),
    ]
    trig = state.get("triggers")
    if trig is not None:
        if "error" in trig:
            lines.append(f"triggers: [red]check failed[/red] {trig['error']}")
        elif not trig:
            lines.append("triggers: n/a (no gearsync triggers)")
        for name, summary in sorted(trig.items()) if "error" not in trig else ():
            lines.append(f"triggers {name}: " + (summary if summary == "ok" else f"[red]{summary}[/red]"))
    if my.get("up"):
        spool = my.get("spool") or {}
        lines.append("spool: " + (", ".join(f"{db}: {n}" for db, n in spool.items()) if spool else "n/a (no gearsync_spool)"))
    readers = b["reader_position"]
    reader_text = "n/a" if not readers else "; ".join(
        f"{name} {orjson.dumps(pos).decode() if not isinstance(pos, str) else pos}" for name, pos in readers.items())
    lines.append(f"binlog: server {_na(b['server_file'])}:{_na(b['server_position'])} gtid {_na(b['server_gtid'])}; "
                 f"reader {reader_text}")
    for line in lines:
        console.print(line)
