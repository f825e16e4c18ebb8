"""``progress(futures)``: a terminal progress bar (a live widget in Jupyter)."""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import trio

from .client.futures import Future, _flatten_futures
from .keys import key_prefix

__all__ = ["html_bars", "progress", "progress_async"]


def _bar(done: int, total: int, errors: int, elapsed: float, width: int = 40) -> str:
    frac = done / total if total else 1.0
    filled = int(width * frac)
    err = f" | {errors} erred" if errors else ""
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% | {done}/{total} | {elapsed:5.1f}s{err}"


async def progress_async(futures: Any, *, interval: float = 0.1, file: Any = None) -> None:
    """Show a progress bar until every future is done (Trio code)."""
    flat: list[Future] = _flatten_futures(futures)
    out = file or sys.stderr
    start = time.monotonic()
    total = len(flat)
    while True:
        done = sum(1 for f in flat if f.done())
        errors = sum(1 for f in flat if f.status == "error")
        out.write("\r" + _bar(done, total, errors, time.monotonic() - start))
        out.flush()
        if done >= total:
            out.write("\n")
            out.flush()
            return
        await trio.sleep(interval)


def progress(futures: Any, *, interval: float = 0.1, file: Any = None) -> Any:
    """Show progress of futures: a live bar in Jupyter, a text bar in a
    terminal.  Blocks until done for blocking clients; for asynchronous ones
    (asyncio or Trio) returns an awaitable."""
    flat: list[Future] = _flatten_futures(futures)
    if not flat:
        return None
    client = flat[0].client
    if not client._blocking():
        return client._awaitable(functools.partial(progress_async, flat, interval=interval, file=file))
    if file is None and _in_notebook():
        return _notebook_progress(flat, client, interval)
    return client._sync_call(lambda: progress_async(flat, interval=interval, file=file))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]

        shell = get_ipython()
        return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
    except Exception:  # noqa: BLE001
        return False


def html_bars(flat: list[Future], elapsed: float) -> str:
    """The notebook view of ``flat``: one bar per task prefix (done in green,
    erred in red), plain inline HTML and CSS (no ipywidgets, no script)."""
    from html import escape

    groups: dict[str, list[int]] = {}
    for f in flat:
        g = groups.setdefault(key_prefix(f.key), [0, 0, 0])
        g[0] += 1
        if f.done():
            g[1 if f.status == "finished" else 2] += 1
    rows = []
    for prefix, (total, ok, bad) in groups.items():
        rows.append(
            "<tr><td style='text-align:left;padding-right:8px'>" + escape(prefix) + "</td><td>"
            "<div style='width:300px;height:12px;border:1px solid #999;display:flex'>"
            f"<div style='width:{100 * ok / total:.1f}%;background:#4c9'></div>"
            f"<div style='width:{100 * bad / total:.1f}%;background:#e45756'></div></div></td>"
            f"<td style='padding-left:8px'>{ok + bad} / {total}{f' ({bad} erred)' if bad else ''}</td></tr>"
        )
    done = sum(1 for f in flat if f.done())
    return f"<div class='trioflow-progress'><table>{''.join(rows)}</table>{done}/{len(flat)} in {elapsed:.1f}s</div>"


def _notebook_progress(flat: list[Future], client: Any, interval: float, display: Any = None, html: Any = None) -> None:
    """Update one output cell with :func:`html_bars` until every future is
    done (``display`` / ``html``: IPython's, or fakes in tests)."""
    if display is None or html is None:
        from IPython.display import HTML, display  # type: ignore[import-not-found]

        html = HTML
    handle = display(html(""), display_id=True)
    start = time.monotonic()
    while True:
        done = all(f.done() for f in flat)
        handle.update(html(html_bars(flat, time.monotonic() - start)))
        if done:
            return
        time.sleep(interval)
