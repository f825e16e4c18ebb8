"""The statistical profiler: what the executor threads spend their time on.

Theory of operation
-------------------
A :class:`Sampler` thread wakes every ``interval`` seconds (10 ms by
default), takes ``sys._current_frames()`` and, for each executor thread that
is running a task (the executor keeps ``running``: thread ident -> key),
walks that thread's stack from the task's function inwards and adds one
count along the path in the call tree of the task's prefix.  Every ``cycle``
seconds the trees of the past cycle are moved into a bounded history
(``history`` cycles, ~16 minutes by default), which is what answers a query
over a time window; a cumulative tree per prefix answers the rest.

Trees are plain dicts in dask's shape, so ``client.profile()`` returns what
dask users already read::

    {"identifier": "root", "count": n, "children": {ident: node, ...},
     "description": {"filename", "name", "line_number", "line"}}

Bounds and cost.  A tree holds at most ``max_nodes`` nodes: past that,
samples still count on the deepest node already in the tree, so the counts
stay right and only the detail is cut.  The frame walk is a few µs per
sample and thread; a no-op stack costs nothing (no task, no walk).  The
frames above the task's function (the executor's own loop and job) are
never recorded: the walk stops at the first frame of :mod:`.jobs`.

Only the sampler thread writes the trees; readers take the lock, which the
sampler holds only while adding one sample (never while sleeping).

Nothing here depends on the worker: a :class:`Sampler` needs only the
``running`` dict, so it can become a worker plugin unchanged.
"""

from __future__ import annotations

import collections
import linecache
import sys
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

from ..keys import key_prefix

__all__ = ["Sampler", "call_stack", "create", "merge", "process"]

#: Frames of this module end the walk up a stack: above them is the executor.
_JOBS_FILE = ""


def _jobs_file() -> str:
    global _JOBS_FILE
    if not _JOBS_FILE:
        from . import jobs

        _JOBS_FILE = jobs.__file__ or "?"
    return _JOBS_FILE


def create() -> dict[str, Any]:
    """An empty tree (dask's root node)."""
    return {"identifier": "root", "count": 0, "children": {}, "description": {"filename": "", "name": "", "line_number": 0, "line": ""}}


def _describe(frame: FrameType) -> dict[str, Any]:
    co = frame.f_code
    line = linecache.getline(co.co_filename, frame.f_lineno or 0, frame.f_globals).strip()
    return {"filename": co.co_filename, "name": co.co_name, "line_number": frame.f_lineno or 0, "line": line}


def _identifier(frame: FrameType) -> str:
    co = frame.f_code
    return f"{co.co_name};{co.co_filename};{co.co_firstlineno}"


def task_frames(frame: FrameType | None, stop_file: str | None = None) -> list[FrameType]:
    """The frames of a task's stack, outermost (the task's function) first:
    ``frame`` and its callers up to, not including, the first frame of
    ``stop_file`` (the executor's job; default :mod:`.jobs`)."""
    stop = _jobs_file() if stop_file is None else stop_file
    out: list[FrameType] = []
    while frame is not None and frame.f_code.co_filename != stop:
        out.append(frame)
        frame = frame.f_back
    out.reverse()
    return out


def process(tree: dict[str, Any], frames: Iterable[FrameType], budget: list[int]) -> None:
    """Count one sample of ``frames`` (outermost first) into ``tree``.

    ``budget`` is a one-item list: the nodes the tree may still add.  With
    none left, the sample counts on the deepest node already there.
    """
    node = tree
    node["count"] += 1
    for frame in frames:
        ident = _identifier(frame)
        child = node["children"].get(ident)
        if child is None:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            child = node["children"][ident] = {"identifier": ident, "count": 0, "children": {}, "description": _describe(frame)}
        child["count"] += 1
        node = child


def merge(*trees: dict[str, Any]) -> dict[str, Any]:
    """One tree counting every sample of ``trees`` (new dicts; inputs untouched)."""
    out = create()
    for t in trees:
        _add_into(out, t)
    return out


def _add_into(into: dict[str, Any], tree: dict[str, Any]) -> None:
    into["count"] += tree["count"]
    for ident, child in tree["children"].items():
        mine = into["children"].get(ident)
        if mine is None:
            mine = into["children"][ident] = {"identifier": ident, "count": 0, "children": {}, "description": dict(child["description"])}
        _add_into(mine, child)


def _size(tree: dict[str, Any]) -> int:
    return 1 + sum(_size(c) for c in tree["children"].values())


def call_stack(frame: FrameType | None) -> list[str]:
    """A task's stack as text lines, outermost first (dask's call_stack shape)."""
    lines = []
    for f in task_frames(frame):
        d = _describe(f)
        lines.append(f'  File "{d["filename"]}", line {d["line_number"]}, in {d["name"]}\n    {d["line"]}\n')
    return lines


class Sampler:
    """Samples the threads named in ``running`` (ident -> task key).

    Args:
        running: the executor's live map of thread ident to the key it runs.
        interval: seconds between samples.
        cycle: seconds of samples gathered into one history entry.
        history: cycles kept for time-window queries.
        max_nodes: nodes each prefix's tree may hold (cumulative and per cycle).
    """

    def __init__(
        self, running: dict[int, str], *, interval: float = 0.01, cycle: float = 1.0, history: int = 1000, max_nodes: int = 5000
    ) -> None:
        self.running = running
        self.interval = interval
        self.cycle = cycle
        self.max_nodes = max_nodes
        self._lock = threading.Lock()
        #: prefix -> cumulative tree since start, and its remaining node budget.
        self.totals: dict[str, tuple[dict[str, Any], list[int]]] = {}
        self._current: dict[str, tuple[dict[str, Any], list[int]]] = {}
        self._current_start = time.time()
        #: (cycle start, cycle stop, {prefix: tree}), oldest first.
        self.history: collections.deque[tuple[float, float, dict[str, dict[str, Any]]]] = collections.deque(maxlen=history)
        self.samples = 0
        self.sampling_seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="trioflow-profile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; returns once the thread has ended (within a sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            t0 = time.perf_counter()
            self.sample(exclude=me)
            self.sampling_seconds += time.perf_counter() - t0

    def sample(self, exclude: int | None = None) -> None:
        """Take one sample of every running task now."""
        now = time.time()
        if now - self._current_start >= self.cycle:
            self._close_cycle(now)
        if not self.running:
            return
        frames = sys._current_frames()
        jobs = _jobs_file()
        for ident, key in list(self.running.items()):
            if ident == exclude:
                continue
            frame = frames.get(ident)
            if frame is None:
                continue
            stack = task_frames(frame, jobs)
            prefix = key_prefix(key)
            with self._lock:
                for table in (self.totals, self._current):
                    entry = table.get(prefix)
                    if entry is None:
                        entry = table[prefix] = (create(), [self.max_nodes])
                    process(entry[0], stack, entry[1])
            self.samples += 1
        del frames

    def _close_cycle(self, now: float) -> None:
        with self._lock:
            if self._current:
                self.history.append((self._current_start, now, {p: t for p, (t, _) in self._current.items()}))
            self._current = {}
            self._current_start = now

    def get(self, prefix: str | None = None, start: float | None = None, stop: float | None = None) -> dict[str, Any]:
        """The merged tree of ``prefix`` (None: all) between ``start`` and
        ``stop`` (seconds since the epoch; None: open-ended)."""
        with self._lock:
            if start is None and stop is None:
                trees = [t for p, (t, _) in self.totals.items() if prefix is None or p == prefix]
            else:
                lo = -float("inf") if start is None else start
                hi = float("inf") if stop is None else stop
                trees = [
                    t for (a, b, per) in self.history if b >= lo and a <= hi for p, t in per.items() if prefix is None or p == prefix
                ]
                if self._current_start <= hi:
                    trees += [t for p, (t, _) in self._current.items() if prefix is None or p == prefix]
            return merge(*trees)

    def prefixes(self) -> list[str]:
        with self._lock:
            return sorted(self.totals)
