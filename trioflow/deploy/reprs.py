"""How clusters and clients show themselves (``repr`` and Jupyter's
``_repr_html_``)."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["client_html", "html_table", "memory_text"]


def memory_text(nbytes: int) -> str:
    """``"7.81 GiB"``-style total of the workers' memory limits (``"no limit"``
    when none has one)."""
    from ..config import format_bytes

    return format_bytes(nbytes) if nbytes else "no limit"


def html_table(title: str, rows: list[tuple[str, str]], *, raw: frozenset[str] = frozenset()) -> str:
    """A small two-column table; values are escaped except the rows in ``raw``."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{v if k in raw else html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<div><h3>{html.escape(title)}</h3><table>{body}</table></div>"


def link_html(link: str | None) -> str:
    if not link:
        return "none"
    return f"<a href='{html.escape(link)}' target='_blank'>{html.escape(link)}</a>"


def client_html(client: Any) -> str:
    """The blocking Client's HTML: scheduler, dashboard, workers, threads and
    the real total memory limit."""
    rows = [("Scheduler", str(client.scheduler_address)), ("Status", str(client.status))]
    info = None
    if client.status == "running":
        try:
            info = client.scheduler_info()
        except Exception:  # noqa: BLE001 - a display must not raise
            info = None
    if info is not None:
        workers = info["workers"].values()
        rows += [
            ("Dashboard", link_html(client.dashboard_link)),
            ("Workers", str(len(info["workers"]))),
            ("Total threads", str(sum(w["nthreads"] for w in workers))),
            ("Total memory", memory_text(sum(w["memory_limit"] or 0 for w in workers))),
        ]
    cluster = getattr(client, "cluster", None)
    if cluster is not None:
        rows.append(("Cluster", repr(cluster)))
    return html_table("trioflow Client", rows, raw=frozenset({"Dashboard"}))
