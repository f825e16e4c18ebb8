"""``progress(futures)``: a terminal progress bar (a live widget in Jupyter)."""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import trio

from .client.futures import Future, _flatten_futures

__all__ = ["progress", "progress_async"]


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


def _notebook_progress(flat: list[Future], client: Any, interval: float) -> None:  # pragma: no cover - needs Jupyter
    from IPython.display import HTML, display  # type: ignore[import-not-found]

    handle = display(HTML(""), display_id=True)
    start = time.monotonic()
    while True:
        done = sum(1 for f in flat if f.done())
        pct = 100 * done / len(flat)
        handle.update(
            HTML(
                f"<div style='width:300px;border:1px solid #888'><div style='width:{pct:.0f}%;background:#4c9;height:12px'></div></div>"
                f"{done}/{len(flat)} in {time.monotonic() - start:.1f}s"
            )
        )
        if done == len(flat):
            return
        time.sleep(interval)
