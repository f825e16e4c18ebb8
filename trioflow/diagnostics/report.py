"""``performance_report`` and ``get_task_stream``: what a block of code did, kept.

Theory of operation
-------------------
``with performance_report(filename="report.html"): ...`` notes the time and
the source of the block when it is entered, and samples the workers' memory
(``scheduler_info``) every ``interval`` seconds from a thread of its own
while the block runs.  On exit it asks the cluster for the task stream and
the profile of that time window (:mod:`trioflow.client.observe`) and writes
ONE HTML file: the styles inline, every chart an inline SVG drawn here in
Python, a few lines of inline script for the profile's zoom.  It names no
URL and needs no server: it opens from disk, mailed, years later.

``with get_task_stream() as ts: ...`` fills ``ts.data`` with the records of
the block (dask's shape, see :meth:`~trioflow.client.observe.ObserveMixin.get_task_stream`).

Both take the blocking :class:`~trioflow.Client` (the default client when
none is given); in async code, ``async with`` works on both with an
asynchronous client or an :class:`~trioflow.AsyncClient`.
"""

from __future__ import annotations

import html
import inspect
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any

from ..keys import key_prefix

__all__ = ["get_task_stream", "performance_report", "profile_html", "profile_svg", "render_report"]


def _default_client() -> Any:
    from ..client.sync import default_client

    return default_client()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# ---------------------------------------------------------------- get_task_stream


class get_task_stream:  # noqa: N801 - dask's name, used as a context manager
    """Collect the task stream of a block: ``with get_task_stream() as ts:``,
    then ``ts.data`` holds its records (dask's shape).

    Args:
        client: the client to ask (default: the default client).
        plot, filename: not supported (no Bokeh); use :class:`performance_report`.
    """

    def __init__(self, client: Any = None, plot: bool = False, filename: str | None = None) -> None:
        if plot or filename:
            raise NotImplementedError("get_task_stream(plot=) needs Bokeh; use performance_report() for a page")
        self.client = client
        self.data: list[dict[str, Any]] = []
        self.start = 0.0

    def __enter__(self) -> get_task_stream:
        self.client = self.client or _default_client()
        self.start = time.time()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.client is not None
        self.data.extend(self.client.get_task_stream(start=self.start))

    async def __aenter__(self) -> get_task_stream:
        self.client = self.client or _default_client()
        self.start = time.time()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.data.extend(await _maybe_await(self.client.get_task_stream(start=self.start)))


# ---------------------------------------------------------------- performance_report


class performance_report:  # noqa: N801 - dask's name, used as a context manager
    """Write one self-contained HTML page about what a block did.

    ``with performance_report(filename="report.html"): ...``: the task
    stream, progress and durations per task prefix, worker memory over
    time, transfers between workers, the profile, and the block's code.

    Args:
        filename: where to write the page.
        client: the client (default: the default client).
        interval: seconds between samples of the workers' memory.
        stacklevel: which caller's code to show (1: the ``with`` statement's).
    """

    def __init__(self, filename: str = "dask-report.html", client: Any = None, interval: float = 0.1, stacklevel: int = 1, mode: Any = None) -> None:
        self.filename = filename
        self.client = client
        self.interval = interval
        self.code = ""
        frame = inspect.currentframe()
        for _ in range(stacklevel):
            frame = frame.f_back if frame is not None else None
        if frame is not None:
            try:
                self.code = inspect.getsource(frame)
            except (OSError, TypeError):
                self.code = ""
        del frame
        #: worker -> samples of (time, process memory, managed, spilled bytes).
        self.memory: dict[str, list[tuple[float, int, int, int]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = 0.0

    # -- memory samples

    def _note_memory(self, info: dict[str, Any]) -> None:
        now = time.time()
        for addr, w in info.get("workers", {}).items():
            metrics = w.get("metrics", {})
            sample = (now, int(metrics.get("memory", 0)), int(metrics.get("managed", 0)), int(metrics.get("spilled", 0)))
            self.memory.setdefault(addr, []).append(sample)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._note_memory(self.client.scheduler_info())
            except Exception:  # noqa: BLE001 - a report never breaks the user's block
                return

    # -- sync

    def __enter__(self) -> performance_report:
        self.client = self.client or _default_client()
        self.start = time.time()
        self._note_memory(self.client.scheduler_info())
        self._thread = threading.Thread(target=self._sample_loop, name="trioflow-report-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        stop = time.time()
        self._note_memory(self.client.scheduler_info())
        stream = self.client.get_task_stream(start=self.start)
        profile = self.client.profile(start=self.start)
        self._write(stream, profile, stop)

    # -- async (memory sampled at the ends only)

    async def __aenter__(self) -> performance_report:
        self.client = self.client or _default_client()
        self.start = time.time()
        self._note_memory(await _maybe_await(self.client.scheduler_info()))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        stop = time.time()
        self._note_memory(await _maybe_await(self.client.scheduler_info()))
        stream = await _maybe_await(self.client.get_task_stream(start=self.start))
        profile = await _maybe_await(self.client.profile(start=self.start))
        self._write(stream, profile, stop)

    def _write(self, stream: list[dict[str, Any]], profile: dict[str, Any], stop: float) -> None:
        page = render_report(stream, profile, self.memory, code=self.code, start=self.start, stop=stop)
        with open(self.filename, "w", encoding="utf-8") as f:
            f.write(page)


# ---------------------------------------------------------------- drawing

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.bar{display:inline-block;height:10px;background:#4c78a8;vertical-align:middle}
.err{background:#e45756}pre{background:#f7f7f7;padding:1em;overflow:auto}
svg text{font:11px sans-serif}.muted{color:#777}
#profile rect{cursor:pointer}
"""

def _profile_js() -> str:
    """The profile's zoom script (``static/profile.js``, shared with the live page)."""
    from importlib import resources

    return resources.files("trioflow.diagnostics").joinpath("static", "profile.js").read_text(encoding="utf-8")


def _color(name: str) -> str:
    """A stable, readable colour per name."""
    h = zlib.crc32(name.encode()) % 360
    return f"hsl({h},55%,60%)"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _task_stream_svg(stream: list[dict[str, Any]], start: float, stop: float, width: int = 1000) -> str:
    rows: dict[tuple[str, Any], int] = {}
    for r in stream:
        rows.setdefault((r["worker"], r["thread"] if r["thread"] is not None else "transfer/disk"), len(rows))
    if not rows:
        return '<p class="muted">No task ran in this block.</p>'
    t0 = min([start] + [ss["start"] for r in stream for ss in r["startstops"]])
    t1 = max([stop] + [ss["stop"] for r in stream for ss in r["startstops"]])
    span = max(t1 - t0, 1e-6)
    rh, label = 16, 220
    height = rh * len(rows) + 20
    parts = [f'<svg id="task-stream" xmlns="http://www.w3.org/2000/svg" width="{width + label}" height="{height}">']
    for (worker, thread), i in sorted(rows.items(), key=lambda kv: kv[1]):
        parts.append(f'<text x="2" y="{i * rh + 12}">{_esc(worker)} [{_esc(thread)}]</text>')
    for r in stream:
        i = rows[(r["worker"], r["thread"] if r["thread"] is not None else "transfer/disk")]
        for ss in r["startstops"]:
            x = label + (ss["start"] - t0) / span * width
            w = max((ss["stop"] - ss["start"]) / span * width, 1.0)
            if ss["action"] == "transfer":
                fill = "#e45756"
            elif ss["action"].startswith("disk"):
                fill = "#f58518" if ss["action"] == "disk-write" else "#eeca3b"
            elif r["status"] != "OK":
                fill = "#000"
            else:
                fill = _color(key_prefix(r["key"]))
            tip = f"{r['key']} ({ss['action']}) {_fmt_seconds(ss['stop'] - ss['start'])}"
            parts.append(f'<rect class="task" x="{x:.1f}" y="{i * rh + 2}" width="{w:.1f}" height="{rh - 3}" fill="{fill}"><title>{_esc(tip)}</title></rect>')
    parts.append(f'<text x="{label}" y="{height - 4}">0 s</text><text x="{label + width - 60}" y="{height - 4}">{_fmt_seconds(span)}</text></svg>')
    return "".join(parts)


def _prefix_table(stream: list[dict[str, Any]]) -> str:
    stats: dict[str, list[float]] = {}
    for r in stream:
        for ss in r["startstops"]:
            if ss["action"] != "compute":
                continue
            s = stats.setdefault(key_prefix(r["key"]), [0, 0, 0.0, 0])
            s[0] += 1
            s[1] += r["status"] != "OK"
            s[2] += ss["stop"] - ss["start"]
            s[3] += r["nbytes"] or 0
    if not stats:
        return '<p class="muted">No task ran in this block.</p>'
    most = max(s[2] for s in stats.values()) or 1
    out = ['<table id="prefixes"><tr><th>prefix</th><th>done</th><th>erred</th><th>total time</th><th>mean</th><th>result bytes</th><th></th></tr>']
    for prefix, (n, err, total, nbytes) in sorted(stats.items(), key=lambda kv: -kv[1][2]):
        ok_w = int(200 * total / most * (n - err) / n)
        err_w = int(200 * total / most * err / n)
        out.append(
            f'<tr class="prefix"><td style="color:{_color(prefix)}">&#9632; <b>{_esc(prefix)}</b></td><td>{int(n)}</td><td>{int(err)}</td>'
            f"<td>{_fmt_seconds(total)}</td><td>{_fmt_seconds(total / n)}</td><td>{_fmt_bytes(nbytes)}</td>"
            f'<td><span class="bar" style="width:{ok_w}px"></span><span class="bar err" style="width:{err_w}px"></span></td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def _memory_svg(memory: dict[str, list[tuple[float, int, int, int]]], width: int = 1000, height: int = 200) -> str:
    """Per worker: process memory (solid), managed (dashed), spilled to disk
    (dotted, when any); then a table of the peaks, unmanaged = process - managed."""
    points = [p for samples in memory.values() for p in samples]
    if not points:
        return '<p class="muted">No memory samples.</p>'
    t0 = min(p[0] for p in points)
    span = max(max(p[0] for p in points) - t0, 1e-6)
    top = max(max(max(p[1], p[2], p[3]) for p in points), 1)
    parts = [f'<svg id="memory" xmlns="http://www.w3.org/2000/svg" width="{width + 120}" height="{height + 30}">']
    rows = []
    for i, (worker, samples) in enumerate(sorted(memory.items())):
        color = _color(worker)
        for column, dash, what in ((1, "", "process"), (2, ' stroke-dasharray="6 3"', "managed"), (3, ' stroke-dasharray="2 3"', "spilled")):
            if column == 3 and not any(p[3] for p in samples):
                continue
            pts = " ".join(f"{(p[0] - t0) / span * width:.1f},{height - p[column] / top * height + 5:.1f}" for p in samples)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{pts}"><title>{_esc(worker)} {what}</title></polyline>')
        parts.append(f'<text x="{width + 5}" y="{14 + 14 * i}" fill="{color}">{_esc(worker.rsplit(":", 1)[-1])}</text>')
        rows.append(
            f"<tr><td style='color:{color}'>{_esc(worker)}</td><td>{_fmt_bytes(max(p[1] for p in samples))}</td>"
            f"<td>{_fmt_bytes(max(p[2] for p in samples))}</td><td>{_fmt_bytes(max(max(p[1] - p[2], 0) for p in samples))}</td>"
            f"<td>{_fmt_bytes(max(p[3] for p in samples))}</td></tr>"
        )
    parts.append(f'<text x="0" y="{height + 25}">solid: process, dashed: managed, dotted: spilled; top {_fmt_bytes(top)}, {_fmt_seconds(span)}</text></svg>')
    table = (
        '<table id="memory-peaks"><tr><th>worker</th><th>peak process</th><th>peak managed</th><th>peak unmanaged</th><th>peak spilled</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    return "".join(parts) + table


def _bandwidth_table(stream: list[dict[str, Any]]) -> str:
    pairs: dict[tuple[str, str], list[float]] = {}
    for r in stream:
        for ss in r["startstops"]:
            if ss["action"] == "transfer":
                p = pairs.setdefault((ss.get("source", "?"), r["worker"]), [0, 0.0, 0.0])
                p[0] += 1
                p[1] += r["nbytes"] or 0
                p[2] += ss["stop"] - ss["start"]
    if not pairs:
        return '<p class="muted">No data moved between workers.</p>'
    out = ['<table id="bandwidth"><tr><th>from</th><th>to</th><th>transfers</th><th>bytes</th><th>time</th><th>rate</th></tr>']
    for (src, dst), (n, nbytes, secs) in sorted(pairs.items()):
        rate = f"{_fmt_bytes(nbytes / secs)}/s" if secs > 0 else "-"
        out.append(f"<tr><td>{_esc(src)}</td><td>{_esc(dst)}</td><td>{int(n)}</td><td>{_fmt_bytes(nbytes)}</td><td>{_fmt_seconds(secs)}</td><td>{rate}</td></tr>")
    out.append("</table>")
    return "".join(out)


def profile_svg(tree: dict[str, Any], width: int = 1200, row: int = 18, max_depth: int = 60) -> str:
    total = tree["count"]
    if not total:
        return '<p class="muted">No profile samples (a short block, or the profiler is off).</p>'
    parts: list[str] = []
    depth_seen = 0

    def draw(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_seen
        w = node["count"] / total * width
        if w < 0.3 or depth > max_depth:
            return
        depth_seen = max(depth_seen, depth)
        d = node["description"]
        name = d["name"] or "all"
        tip = f"{name} ({d['filename']}:{d['line_number']}) {node['count']} samples, {100 * node['count'] / total:.1f}%\n{d['line']}"
        label = f'<text x="{x + 3:.1f}" y="{depth * row + 13}">{_esc(name)}</text>' if w > 40 else ""
        parts.append(
            f'<g data-x="{x:.3f}" data-w="{w:.3f}" data-d="{depth}"><rect x="{x:.1f}" y="{depth * row}" width="{max(w - 0.5, 0.5):.1f}" '
            f'height="{row - 1}" fill="{_color(d["filename"] + name)}"><title>{_esc(tip)}</title></rect>{label}</g>'
        )
        cx = x
        for child in sorted(node["children"].values(), key=lambda c: -c["count"]):
            draw(child, cx, depth + 1)
            cx += child["count"] / total * width

    draw(tree, 0.0, 0)
    height = (depth_seen + 1) * row
    return f'<svg id="profile" xmlns="http://www.w3.org/2000/svg" data-width="{width}" width="{width}" height="{height}">{"".join(parts)}</svg>'


def _page(title: str, body: Iterable[str], script: str = "") -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>{''.join(body)}"
        f"{f'<script>{script}</script>' if script else ''}</body></html>"
    )


def profile_html(tree: dict[str, Any], title: str = "trioflow profile") -> str:
    """A self-contained page with ``tree`` as an icicle graph (click to zoom)."""
    return _page(title, [f"<p>{tree['count']} samples; click a frame to zoom, the top row to zoom out.</p>", profile_svg(tree)], _profile_js())


def render_report(
    stream: list[dict[str, Any]],
    profile: dict[str, Any],
    memory: dict[str, list[tuple[float, int, int, int]]],
    *,
    code: str = "",
    start: float = 0.0,
    stop: float = 0.0,
) -> str:
    """The performance report page (see the module docstring)."""
    computed = sum(1 for r in stream for ss in r["startstops"] if ss["action"] == "compute")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)) if start else ""
    body = [
        f"<p>{_esc(when)}: {_fmt_seconds(max(stop - start, 0))}, {computed} tasks, {len({r['worker'] for r in stream})} workers.</p>",
        "<h2>Task stream</h2>",
        _task_stream_svg(stream, start, stop),
        "<h2>Tasks by prefix</h2>",
        _prefix_table(stream),
        "<h2>Worker memory</h2>",
        _memory_svg(memory),
        "<h2>Transfers between workers</h2>",
        _bandwidth_table(stream),
        "<h2>Profile</h2>",
        f'<p class="muted">{profile["count"]} samples; click a frame to zoom, the top row to zoom out.</p>',
        profile_svg(profile),
        "<h2>Code</h2>",
        f"<pre id='code'>{_esc(code)}</pre>",
    ]
    return _page("trioflow performance report", body, _profile_js())
