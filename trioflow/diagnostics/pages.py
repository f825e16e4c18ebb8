"""Server-rendered pages: the plain workers table (no JavaScript needed) and
the profile view (an icicle graph in SVG; a small static script zooms it)."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["call_stacks_page", "format_bytes", "profile_page", "workers_page"]


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _worker_link(row: dict[str, Any]) -> str:
    port = row.get("dashboard")
    if not port:
        return ""
    address = str(row["address"])
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    url = f"http://{host}:{int(port)}/status"
    return f'<a href="{html.escape(url)}">page</a>'


def workers_page(source: Any, prefix: str) -> str:
    """The ``/workers`` page of a scheduler (or a worker's own row)."""
    rows = source.worker_rows()
    title = html.escape(source.title)
    body = []
    for r in rows:
        limit = r["memory_limit"]
        mem = format_bytes(r["memory"]) + (f" / {format_bytes(limit)}" if limit else "")
        body.append(
            "<tr>"
            f"<td>{html.escape(r['name'])}</td>"
            f"<td class=mono>{html.escape(r['address'])}</td>"
            f"<td class=num>{r['nthreads']}</td>"
            f"<td class=num>{mem}</td>"
            f"<td class=num>{format_bytes(r['managed'])}</td>"
            f"<td class=num>{format_bytes(r['spilled'])}</td>"
            f"<td class=num>{r['cpu']:.0f}%</td>"
            f"<td class=num>{r['processing']}</td>"
            f"<td class=num>{r['held']}</td>"
            f"<td class=num>{format_bytes(r['bandwidth'])}/s</td>"
            f"<td>{html.escape(str(r['status']))}</td>"
            f"<td>{_worker_link(r)}</td>"
            "</tr>"
        )
    if not body:
        body.append('<tr><td colspan="12" class="empty">no workers</td></tr>')
    p = html.escape(prefix)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5">
<title>Workers · {title}</title>
<link rel="icon" href="{p}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{p}/static/dashboard.css"></head>
<body class="plain">
<header class="topbar"><div class="brand"><img src="{p}/static/favicon.svg" alt="" width="22" height="22"> trioflow</div>
<div class="address">{title}</div><nav class="links"><a href="{p}/status">live page</a></nav></header>
<main><section class="panel"><div class="panel-head"><h2>Workers <span class="muted">({len(rows)})</span></h2></div>
<table class="table" id="workers-plain"><thead><tr>
<th>Name</th><th>Address</th><th class=num>Threads</th><th class=num>Memory</th><th class=num>Managed</th>
<th class=num>Spilled</th><th class=num>CPU</th><th class=num>Processing</th><th class=num>Held</th>
<th class=num>Bandwidth</th><th>Status</th><th>Dashboard</th></tr></thead>
<tbody>
{"".join(body)}
</tbody></table></section></main></body></html>
"""


#: Time windows the profile page offers (seconds back from now; 0: all).
PROFILE_WINDOWS = (10, 60, 300, 900, 0)


def profile_page(source: Any, prefix: str, tree: dict[str, Any], prefixes: list[str], task_prefix: str | None, last: int) -> str:
    """The ``/profile`` page: the merged profile of ``task_prefix`` over the
    ``last`` seconds (0: since start), reloading itself every 5 seconds."""
    from .report import profile_svg

    title = html.escape(source.title)
    p = html.escape(prefix)
    options = ['<option value="">all tasks</option>'] + [
        f'<option value="{html.escape(x)}"{" selected" if x == task_prefix else ""}>{html.escape(x)}</option>' for x in prefixes
    ]
    windows = [
        f'<option value="{w}"{" selected" if w == last else ""}>{f"last {w} s" if w else "since start"}</option>' for w in PROFILE_WINDOWS
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5">
<title>Profile · {title}</title>
<link rel="icon" href="{p}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{p}/static/dashboard.css"></head>
<body class="plain">
<header class="topbar"><div class="brand"><img src="{p}/static/favicon.svg" alt="" width="22" height="22"> trioflow</div>
<div class="address">{title}</div><nav class="links"><a href="{p}/status">live page</a> <a href="{p}/workers">workers</a></nav></header>
<main><section class="panel"><div class="panel-head"><h2>Profile <span class="muted">({tree["count"]} samples)</span></h2></div>
<form method="get" action="{p}/profile" id="profile-filter">
<label>Tasks <select name="prefix">{"".join(options)}</select></label>
<label>Window <select name="last">{"".join(windows)}</select></label>
<button type="submit">Show</button></form>
<p class="muted">Click a frame to zoom, the top row to zoom out.  Reloads every 5 s.</p>
{profile_svg(tree)}
</section></main><script src="{p}/static/profile.js"></script></body></html>
"""


def call_stacks_page(source: Any, prefix: str, stacks: dict[str, dict[str, list[str]]]) -> str:
    """The ``/call-stacks`` page: what every running task is doing now, by
    worker, reloading itself every 5 seconds."""
    title = html.escape(source.title)
    p = html.escape(prefix)
    sections = []
    for worker, per_key in sorted(stacks.items()):
        tasks = "".join(
            f"<details open><summary class=mono>{html.escape(key)}</summary><pre>{html.escape(''.join(lines)) or '(no Python frames)'}</pre></details>"
            for key, lines in sorted(per_key.items())
        )
        sections.append(
            f"<section class=\"panel worker-stacks\"><div class=\"panel-head\"><h2 class=mono>{html.escape(worker)} "
            f"<span class=\"muted\">({len(per_key)} running)</span></h2></div>{tasks or '<p class=muted>idle</p>'}</section>"
        )
    if not sections:
        sections.append('<section class="panel"><p class="empty">no workers</p></section>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5">
<title>Call stacks · {title}</title>
<link rel="icon" href="{p}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{p}/static/dashboard.css"></head>
<body class="plain">
<header class="topbar"><div class="brand"><img src="{p}/static/favicon.svg" alt="" width="22" height="22"> trioflow</div>
<div class="address">{title}</div><nav class="links"><a href="{p}/status">live page</a> <a href="{p}/profile">profile</a></nav></header>
<main>{"".join(sections)}</main></body></html>
"""
