"""What the diagnostics page shows: snapshots, metrics and identity of a server.

Theory of operation
-------------------
A *source* reads a running :class:`~trioflow.Scheduler` or
:class:`~trioflow.Worker` and turns what it sees into plain data:

- :meth:`snapshot` — one JSON-able dict for the live page (summary, worker
  rows, per-prefix progress, the task-stream entries that finished since the
  previous snapshot, bandwidth);
- :meth:`metrics` — Prometheus text;
- :meth:`identity` — ``/json/identity.json``;
- :meth:`worker_rows` — the plain ``/workers`` table.

Sources only read.  They never mutate the server, never await and never
call into the state machines, so a snapshot is a short synchronous function
run on the event loop; the HTTP layer calls :meth:`snapshot` at a bounded
rate and only while someone watches.  Its cost is proportional to the
number of workers and task prefixes plus the (capped) number of tasks that
finished since the last call, never to the number of tasks in the graph
(except on a worker page, whose per-prefix counts walk the worker's own
tasks, capped at ``dashboard.max_worker_tasks_scanned``).

The worker's ``task_log`` / ``transfer_log`` (and the scheduler's
``transfer_stream``) are lists their owners append to and trim from the front.
:class:`_Tail` finds what is new in them by remembering the last item it saw
(by identity) instead of an index, so trimming does not confuse it.  The
scheduler's ``task_stream`` is a :class:`~trioflow.scheduler.taskstream.TaskStream`
ring that counts its appends; :class:`_RingTail` remembers that count.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from .._version import __version__
from ..config import load_config
from ..keys import key_prefix
from ..process.system import ProcessMeter

logger = logging.getLogger("trioflow.diagnostics")

__all__ = ["SchedulerSource", "WorkerSource", "source_for", "MAX_STREAM_PER_SNAPSHOT"]

#: Task-stream entries shipped per snapshot at most; above it, the most recent.
MAX_STREAM_PER_SNAPSHOT = 800
#: Worker rows per snapshot at most (the summary still counts every worker).
MAX_WORKER_ROWS = 1000
#: Task prefixes per snapshot at most.
MAX_PREFIXES = 60
#: On a worker page, tasks walked for per-prefix counts at most.
MAX_WORKER_TASKS_SCANNED = 50_000
MAX_KEY_CHARS = 80

_NOTHING = object()

# Worker-side task states, grouped into the four progress categories.
_WORKER_STATE_GROUP = {
    "waiting": "waiting",
    "fetch": "waiting",
    "flight": "waiting",
    "ready": "waiting",
    "executing": "processing",
    "memory": "memory",
    "erred": "erred",
}


def source_for(server: Any) -> SchedulerSource | WorkerSource:
    """The source for ``server``, told apart by what it has.

    Raises:
        TypeError: ``server`` is neither a scheduler nor a worker.
    """
    if hasattr(server, "task_stream") and hasattr(getattr(server, "state", None), "prefix_counts"):
        return SchedulerSource(server)
    if hasattr(server, "task_log") and hasattr(server, "transfer_log"):
        return WorkerSource(server)
    raise TypeError(f"cannot serve a dashboard for {type(server).__name__}: not a Scheduler or a Worker")


class _Tail:
    """Items appended to someone else's list since the previous :meth:`take`."""

    def __init__(self, get: Callable[[], Sequence[Any]], scan: int = 25_000) -> None:
        self._get = get
        self._last: Any = _NOTHING
        self._scan = scan

    def take(self, limit: int) -> tuple[Sequence[Any], int]:
        """Return ``(newest at most `limit` new items, number of new items)``.

        The first call treats everything in the list as new.
        """
        items = self._get()
        n = len(items)
        if n == 0:
            self._last = _NOTHING
            return (), 0
        last = self._last
        new = n
        if last is not _NOTHING:
            if items[n - 1] is last:
                return (), 0
            for i in range(n - 2, max(-1, n - 1 - self._scan), -1):
                if items[i] is last:
                    new = n - 1 - i
                    break
        self._last = items[n - 1]
        return items[n - min(new, limit) :], new


class _RingTail:
    """Entries appended to a :class:`~trioflow.scheduler.taskstream.TaskStream` since the previous :meth:`take`."""

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self._seen: int | None = None

    def take(self, limit: int) -> tuple[Sequence[Any], int]:
        """Return ``(newest at most `limit` new entries, number of new entries)``.

        The first call treats everything in the ring as new.
        """
        ring = self._ring
        total = ring.total
        new = len(ring) if self._seen is None else total - self._seen
        self._seen = total
        return ring.newest(min(new, limit)), new


class _Rate:
    """An exponentially smoothed events-per-second figure."""

    def __init__(self, halflife: float = 1.0) -> None:
        self.value = 0.0
        self._t: float | None = None
        self._halflife = halflife

    def prime(self, stops: Iterable[float], now: float, window: float = 2.0) -> None:
        """Start from the recent past (finish times) instead of from zero."""
        self.value = sum(1 for t in stops if t > now - window) / window
        self._t = now

    def add(self, count: int, now: float) -> float:
        if self._t is None:
            self._t = now
            return self.value
        dt = now - self._t
        if dt <= 0:
            return self.value
        self._t = now
        alpha = 1 - math.exp(-dt * math.log(2) / self._halflife)
        self.value += alpha * (count / dt - self.value)
        return self.value


def _cut(key: str, limit: int = MAX_KEY_CHARS) -> str:
    return key if len(key) <= limit else key[: limit - 1] + "…"


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _now_loop() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None


class _ProcessProbe:
    """RSS and CPU of this process, with its own ``cpu_percent`` baseline.

    A separate :class:`~trioflow.process.system.ProcessMeter` keeps our readings from
    resetting the interval the worker's heartbeat measures CPU over.
    """

    def __init__(self) -> None:
        self._proc = ProcessMeter()

    def read(self) -> tuple[int, float]:
        return self._proc.rss() or 0, self._proc.cpu_percent()


# ---------------------------------------------------------------- Prometheus


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Prometheus:
    """Build the Prometheus text exposition format, one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]] | float) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        if isinstance(samples, (int, float)):
            samples = [({}, samples)]
        for labels, value in samples:
            lab = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            v = float(value)
            text = repr(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
            self.lines.append(f"{name}{{{lab}}} {text}" if lab else f"{name} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# ---------------------------------------------------------------- scheduler


def _scheduler_worker_row(ws: Any, now_loop: float | None) -> dict[str, Any]:
    met = ws.metrics
    rss = int(met.get("memory", 0) or 0)
    spilled = int(met.get("spilled", 0) or 0)
    managed = max(int(ws.nbytes) - spilled, 0)
    return {
        "address": ws.address,
        "name": str(ws.name),
        "nthreads": ws.nthreads,
        "memory_limit": int(ws.memory_limit or 0),
        "memory": rss,
        "managed": managed,
        "unmanaged": max(rss - managed, 0),
        "spilled": spilled,
        "cpu": _r(met.get("cpu", 0.0) or 0.0, 1),
        "processing": len(ws.processing),
        "executing": int(met.get("executing", 0) or 0),
        "ready": int(met.get("ready", 0) or 0),
        "held": len(ws.has_what),
        "nbytes": int(ws.nbytes),
        "bandwidth": _r(met.get("bandwidth", 0.0) or 0.0, 0),
        "status": ws.status,
        "dashboard": ws.services.get("dashboard"),
        "last_seen": _r(now_loop - ws.last_seen, 2) if now_loop is not None and ws.last_seen else None,
    }


class SchedulerSource:
    """Reads a :class:`~trioflow.Scheduler` for the page and the endpoints."""

    kind = "scheduler"

    def __init__(self, scheduler: Any) -> None:
        self.server = scheduler
        #: The page's caps (dashboard.* of trioflow.config), read once.
        self._caps = load_config(use_dask=False).config.dashboard
        self._stream = _RingTail(scheduler.task_stream)
        # Transfers reach the page only if the scheduler keeps a stream of
        # them: (receiving worker, peer, nbytes, start, stop, nkeys) tuples.
        self._transfers = _Tail(lambda: getattr(scheduler, "transfer_stream", ()))
        self._rate = _Rate()
        self._probe = _ProcessProbe()

    @property
    def title(self) -> str:
        return f"trioflow scheduler {self.server.address}"

    async def call_stacks(self) -> dict[str, dict[str, list[str]]]:
        """Every worker's running tasks' stacks: {worker: {key: lines}}
        (workers that do not answer within 5 s are left out)."""
        from ..comm import ConnectionPool
        from ..protocol import messages as m

        sched = self.server
        out: dict[str, dict[str, list[str]]] = {}
        pool = ConnectionPool(security=sched.security, role="scheduler", name=sched.name)

        async def one(addr: str) -> None:
            try:
                reply = await pool.rpc(addr, m.CallStackRequest(), m.CallStackReply, timeout=5)
            except Exception as exc:  # noqa: BLE001 - a page never fails for one worker
                logger.debug("no call stacks from %s: %s", addr, exc)
                return
            out[addr] = reply.stacks

        try:
            async with trio.open_nursery() as n:
                for addr in list(sched.state.workers):
                    n.start_soon(one, addr)
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
        return out

    async def profile(self, prefix: str | None, start: float | None, stop: float | None) -> tuple[dict[str, Any], list[str]]:
        """The workers' profiles merged, and the prefixes they have (workers
        that do not answer within 5 s are left out)."""
        import json

        from ..comm import ConnectionPool
        from ..protocol import messages as m
        from ..worker.profile import merge

        sched = self.server
        trees: list[dict[str, Any]] = []
        prefixes: set[str] = set()
        pool = ConnectionPool(security=sched.security, role="scheduler", name=sched.name)

        async def one(addr: str) -> None:
            try:
                reply = await pool.rpc(addr, m.ProfileRequest(prefix=prefix, start=start, stop=stop), m.ProfileReply, timeout=5)
            except Exception as exc:  # noqa: BLE001 - a page never fails for one worker
                logger.debug("no profile from %s: %s", addr, exc)
                return
            trees.append(json.loads(reply.tree))
            prefixes.update(reply.prefixes)

        try:
            async with trio.open_nursery() as n:
                for addr in list(sched.state.workers):
                    n.start_soon(one, addr)
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
        return merge(*trees), sorted(prefixes)

    # ------------------------------------------------------------ live page

    def seed(self, limit: int) -> tuple[list[list[Any]], list[list[Any]]]:
        """The recent task stream, for a history that later snapshots extend."""
        items, _ = self._stream.take(limit)
        transfers, _ = self._transfers.take(limit)
        self._rate.prime((e[3] for e in items), time.time())
        return [self._stream_entry(e) for e in items], [list(t)[:6] for t in transfers]

    def _stream_entry(self, e: tuple[str, str, float, float, int]) -> list[Any]:
        key, worker, start, stop, thread = e
        return [_cut(key, self._caps.max_key_chars), key_prefix(key), worker, thread, _r(start), _r(stop)]

    def snapshot(self) -> dict[str, Any]:
        s = self.server
        st = s.state
        now = time.time()
        loop_now = _now_loop()
        items, n_new = self._stream.take(self._caps.max_stream_per_snapshot)
        transfers, _ = self._transfers.take(self._caps.max_stream_per_snapshot)
        rate = self._rate.add(n_new, now)
        rows = [_scheduler_worker_row(ws, loop_now) for ws in itertools.islice(st.workers.values(), self._caps.max_worker_rows)]
        rows.sort(key=lambda r: (r["name"], r["address"]))
        rss, cpu = self._probe.read()
        return {
            "type": "snapshot",
            "kind": self.kind,
            "time": _r(now),
            "summary": {
                "id": s.id,
                "name": s.name,
                "address": s.address,
                "status": s.status,
                "version": __version__,
                "started": _r(s.started),
                "uptime": _r(now - s.started, 1),
                "workers": len(st.workers),
                "threads": sum(ws.nthreads for ws in st.workers.values()),
                "clients": len(st.clients),
                "tasks": len(st.tasks),
                "task_counts": dict(st.task_counts),
                "memory": _memory_totals(st.workers.values()),
                "tasks_per_s": _r(rate, 1),
                "bandwidth": _r(sum(float(ws.metrics.get("bandwidth", 0.0) or 0.0) for ws in st.workers.values()), 0),
                "events": s.events_handled,
                "process": {"memory": rss, "cpu": _r(cpu, 1)},
                "truncated_workers": max(len(st.workers) - self._caps.max_worker_rows, 0),
            },
            "workers": rows,
            "prefixes": self._prefixes(),
            "stream": [self._stream_entry(e) for e in items],
            "transfers": [list(t)[:6] for t in transfers],
        }

    def _prefixes(self) -> list[dict[str, Any]]:
        st = self.server.state
        durations = st.prefix_durations
        out = []
        for prefix, counts in st.prefix_counts.items():
            waiting = counts.get("waiting", 0) + counts.get("no-worker", 0)
            row = {
                "name": prefix,
                "waiting": waiting,
                "processing": counts.get("processing", 0),
                "memory": counts.get("memory", 0),
                "erred": counts.get("erred", 0),
                "released": counts.get("released", 0),
                "no_worker": counts.get("no-worker", 0),
            }
            total = waiting + row["processing"] + row["memory"] + row["erred"] + row["released"]
            if total <= 0:
                continue
            row["total"] = total
            d = durations.get(prefix)
            row["duration"] = _r(d, 4) if d is not None else None
            out.append(row)
        if len(out) > self._caps.max_prefixes:
            # Keep the busiest ones: those with work still to do first.
            out.sort(key=lambda r: (r["waiting"] + r["processing"], r["total"]), reverse=True)
            out = out[:self._caps.max_prefixes]
        return out

    # ------------------------------------------------------------ endpoints

    def worker_rows(self) -> list[dict[str, Any]]:
        loop_now = _now_loop()
        rows = [_scheduler_worker_row(ws, loop_now) for ws in self.server.state.workers.values()]
        rows.sort(key=lambda r: (r["name"], r["address"]))
        return rows

    def identity(self) -> dict[str, Any]:
        s = self.server
        reply = s.identity()
        d = attrs.asdict(reply) if attrs.has(type(reply)) else dict(reply)
        d.pop("op", None)
        out: dict[str, Any] = {"type": "Scheduler", "id": d.pop("scheduler_id", s.id)}
        out.update(d)
        return out

    def metrics(self, viewers: int = 0) -> str:
        s = self.server
        st = s.state
        workers = list(st.workers.values())
        mem = _memory_totals(workers)
        p = _Prometheus()
        p.add("trioflow_workers", "gauge", "Number of workers connected to the scheduler.", len(workers))
        p.add("trioflow_threads", "gauge", "Total worker threads.", sum(w.nthreads for w in workers))
        p.add("trioflow_clients", "gauge", "Number of clients connected.", len(st.clients))
        p.add("trioflow_tasks", "gauge", "Number of tasks known to the scheduler, by state.", [({"state": k}, v) for k, v in st.task_counts.items()])
        prefixes = itertools.islice(((pfx, c) for pfx, c in st.prefix_counts.items() if any(c.values())), 200)
        p.add(
            "trioflow_prefix_tasks",
            "gauge",
            "Number of tasks by key prefix and state.",
            [({"prefix": pfx, "state": state}, n) for pfx, c in prefixes for state, n in c.items() if n],
        )
        p.add(
            "trioflow_memory_bytes",
            "gauge",
            "Worker memory: managed (task results), unmanaged (the rest of the process), spilled (on disk).",
            [({"kind": k}, mem[k]) for k in ("managed", "unmanaged", "spilled")],
        )
        p.add("trioflow_memory_limit_bytes", "gauge", "Sum of the workers' memory limits (0: none set).", mem["limit"])
        transferred = [w.metrics.get("bytes_transferred") for w in workers]
        if any(t is not None for t in transferred) or hasattr(s, "bytes_transferred"):
            total = getattr(s, "bytes_transferred", None)
            if total is None:
                total = sum(int(t or 0) for t in transferred)
            p.add("trioflow_bytes_transferred_total", "counter", "Bytes moved between workers.", total)
        p.add(
            "trioflow_worker_bandwidth_bytes_per_second",
            "gauge",
            "Sum of the workers' recent peer-transfer bandwidth estimates.",
            sum(float(w.metrics.get("bandwidth", 0.0) or 0.0) for w in workers),
        )
        p.add("trioflow_tasks_finished_total", "counter", "Tasks finished since the scheduler started.", self.server.task_stream.total)
        p.add("trioflow_scheduler_events_total", "counter", "Events handled by the scheduler state machine.", s.events_handled)
        rss, cpu = self._probe.read()
        p.add("trioflow_scheduler_memory_bytes", "gauge", "Resident memory of the scheduler process.", rss)
        p.add("trioflow_scheduler_cpu_percent", "gauge", "CPU use of the scheduler process.", cpu)
        p.add("trioflow_uptime_seconds", "gauge", "Seconds since the scheduler started.", _r(time.time() - s.started))
        p.add("trioflow_dashboard_viewers", "gauge", "Live pages connected to this dashboard.", viewers)
        return p.text()

    def poll(self) -> None:
        """Called about once a second; nothing to do: the finished count is the task stream's own total."""


def _memory_totals(workers: Iterable[Any]) -> dict[str, int]:
    tot = {"limit": 0, "memory": 0, "managed": 0, "unmanaged": 0, "spilled": 0}
    for ws in workers:
        met = ws.metrics
        rss = int(met.get("memory", 0) or 0)
        spilled = int(met.get("spilled", 0) or 0)
        managed = max(int(ws.nbytes) - spilled, 0)
        tot["limit"] += int(ws.memory_limit or 0)
        tot["memory"] += rss
        tot["managed"] += managed
        tot["unmanaged"] += max(rss - managed, 0)
        tot["spilled"] += spilled
    return tot


# ---------------------------------------------------------------- worker


class WorkerSource:
    """Reads a :class:`~trioflow.Worker` for its own page and endpoints."""

    kind = "worker"

    def __init__(self, worker: Any) -> None:
        self.server = worker
        #: The page's caps (dashboard.* of trioflow.config), read once.
        self._caps = load_config(use_dask=False).config.dashboard
        self._stream = _Tail(lambda: worker.task_log)
        self._transfers = _Tail(lambda: worker.transfer_log)
        self._count_tail = _Tail(lambda: worker.transfer_log)
        self._transferred = 0
        self._transfers_seen = 0
        self._rate = _Rate()
        self._probe = _ProcessProbe()

    async def call_stacks(self) -> dict[str, dict[str, list[str]]]:
        """This worker's running tasks' stacks: {its address: {key: lines}}."""
        await trio.lowlevel.checkpoint()
        return {self.server.address: self.server.call_stacks()}

    async def profile(self, prefix: str | None, start: float | None, stop: float | None) -> tuple[dict[str, Any], list[str]]:
        """This worker's profile and the prefixes it has samples of."""
        w = self.server
        tree = await trio.to_thread.run_sync(w.profile_tree, prefix, start, stop)  # a merge: not on the loop
        return tree, (w.profiler.prefixes() if w.profiler is not None else [])

    @property
    def title(self) -> str:
        w = self.server
        return f"trioflow worker {w.name or w.address}"

    def _stream_entry(self, e: tuple[str, float, float, int]) -> list[Any]:
        key, start, stop, thread = e
        return [_cut(key, self._caps.max_key_chars), key_prefix(key), self.server.address, thread, _r(start), _r(stop)]

    def _transfer_entry(self, t: dict[str, Any]) -> list[Any]:
        return [self.server.address, t.get("who", ""), int(t.get("bytes", 0)), _r(t.get("start", 0.0)), _r(t.get("stop", 0.0)), len(t.get("keys", ()))]

    def seed(self, limit: int) -> tuple[list[list[Any]], list[list[Any]]]:
        items, _ = self._stream.take(limit)
        transfers, _ = self._transfers.take(limit)
        self._rate.prime((e[2] for e in items), time.time())
        return [self._stream_entry(e) for e in items], [self._transfer_entry(t) for t in transfers]

    def row(self) -> dict[str, Any]:
        w = self.server
        st = w.state
        rss, cpu = self._probe.read()
        spilled = int(getattr(w, "spilled_bytes", 0) or 0)
        managed = max(int(st.nbytes_in_memory) - spilled, 0) if st is not None else 0
        return {
            "address": w.address,
            "name": str(w.name),
            "nthreads": w.nthreads,
            "memory_limit": int(w.memory_limit or 0),
            "memory": rss,
            "managed": managed,
            "unmanaged": max(rss - managed, 0),
            "spilled": spilled,
            "cpu": _r(cpu, 1),
            "processing": (st.n_executing + st.n_ready) if st is not None else 0,
            "executing": st.n_executing if st is not None else 0,
            "ready": st.n_ready if st is not None else 0,
            "held": len(w.data),
            "nbytes": int(st.nbytes_in_memory) if st is not None else 0,
            "bandwidth": _r(w.bandwidth, 0),
            "status": w.status,
            "dashboard": w.services.get("dashboard"),
            "last_seen": None,
        }

    def _task_states(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        st = self.server.state
        states: dict[str, int] = {}
        prefixes: dict[str, dict[str, Any]] = {}
        if st is None:
            return states, []
        for t in itertools.islice(st.tasks.values(), self._caps.max_worker_tasks_scanned):
            states[t.state] = states.get(t.state, 0) + 1
            group = _WORKER_STATE_GROUP.get(t.state)
            if group is None:
                continue
            pfx = key_prefix(t.key)
            row = prefixes.get(pfx)
            if row is None:
                row = prefixes[pfx] = {"name": pfx, "waiting": 0, "processing": 0, "memory": 0, "erred": 0, "released": 0, "no_worker": 0, "total": 0, "duration": None}
            row[group] += 1
            row["total"] += 1
        out = list(prefixes.values())
        if len(out) > self._caps.max_prefixes:
            out.sort(key=lambda r: r["total"], reverse=True)
            out = out[:self._caps.max_prefixes]
        return states, out

    def snapshot(self) -> dict[str, Any]:
        w = self.server
        now = time.time()
        items, n_new = self._stream.take(self._caps.max_stream_per_snapshot)
        transfers, _ = self._transfers.take(self._caps.max_stream_per_snapshot)
        rate = self._rate.add(n_new, now)
        self.poll()
        row = self.row()
        states, prefixes = self._task_states()
        st = w.state
        return {
            "type": "snapshot",
            "kind": self.kind,
            "time": _r(now),
            "summary": {
                "id": w.id,
                "name": str(w.name),
                "address": w.address,
                "scheduler": w.scheduler_address,
                "status": w.status,
                "version": __version__,
                "workers": 1,
                "threads": w.nthreads,
                "tasks": len(st.tasks) if st is not None else 0,
                "task_counts": states,
                "memory": {k: row[k] for k in ("memory", "managed", "unmanaged", "spilled")} | {"limit": row["memory_limit"]},
                "tasks_per_s": _r(rate, 1),
                "bandwidth": row["bandwidth"],
                "bytes_transferred": self._transferred,
                "executed": getattr(st, "executed_count", 0) if st is not None else 0,
                "process": {"memory": row["memory"], "cpu": row["cpu"]},
            },
            "workers": [row],
            "prefixes": prefixes,
            "stream": [self._stream_entry(e) for e in items],
            "transfers": [self._transfer_entry(t) for t in transfers],
        }

    def poll(self) -> None:
        """Count transferred bytes (call about once a second).

        The worker's ``transfer_log`` keeps its last 500 to 1000 transfers;
        polling at least that often keeps the total exact.
        """
        explicit = getattr(self.server, "bytes_transferred", None)
        if explicit is not None:
            self._transferred = int(explicit)
            return
        new, n = self._count_tail.take(100_000)
        self._transferred += sum(int(t.get("bytes", 0)) for t in new)
        self._transfers_seen += n

    def worker_rows(self) -> list[dict[str, Any]]:
        return [self.row()]

    def identity(self) -> dict[str, Any]:
        w = self.server
        return {
            "type": "Worker",
            "id": w.id,
            "address": w.address,
            "name": str(w.name),
            "scheduler": w.scheduler_address,
            "status": w.status,
            "nthreads": w.nthreads,
            "memory_limit": int(w.memory_limit or 0),
            "resources": dict(w.resources),
            "services": dict(w.services),
            "nanny": w.nanny,
            "local_directory": w.local_directory,
            "version": __version__,
        }

    def metrics(self, viewers: int = 0) -> str:
        w = self.server
        self.poll()
        row = self.row()
        states, _ = self._task_states()
        p = _Prometheus()
        p.add("trioflow_threads", "gauge", "Threads of this worker.", w.nthreads)
        p.add("trioflow_worker_tasks", "gauge", "Tasks on this worker, by worker state.", [({"state": k}, states.get(k, 0)) for k in _WORKER_STATE_GROUP])
        p.add(
            "trioflow_memory_bytes",
            "gauge",
            "Memory: managed (task results), unmanaged (the rest of the process), spilled (on disk).",
            [({"kind": k}, row[k]) for k in ("managed", "unmanaged", "spilled")],
        )
        p.add("trioflow_memory_limit_bytes", "gauge", "This worker's memory limit (0: none).", row["memory_limit"])
        p.add("trioflow_bytes_transferred_total", "counter", "Bytes this worker fetched from peers.", self._transferred)
        p.add("trioflow_transfers_total", "counter", "Fetches from peers completed.", self._transfers_seen)
        p.add("trioflow_worker_bandwidth_bytes_per_second", "gauge", "Recent peer-transfer bandwidth estimate.", row["bandwidth"])
        p.add("trioflow_worker_cpu_percent", "gauge", "CPU use of the worker process.", row["cpu"])
        p.add("trioflow_worker_keys_in_memory", "gauge", "Keys held in this worker's store.", row["held"])
        executed = getattr(w.state, "executed_count", 0) if w.state is not None else 0
        p.add("trioflow_tasks_executed_total", "counter", "Tasks executed by this worker.", executed)
        p.add("trioflow_dashboard_viewers", "gauge", "Live pages connected to this dashboard.", viewers)
        return p.text()
