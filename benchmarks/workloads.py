"""Workloads run against every system with the same blocking-client code.

Task functions live at module level here so that workers import them by
reference (``benchmarks.workloads.inc``) in both trioflow and dask; the
runner puts the repository root on the workers' ``PYTHONPATH``.

A workload is ``fn(ctx, rep) -> float`` (one measurement) or ``None`` when it
does not apply to the system.  ``ctx`` is a :class:`Ctx`: the blocking client,
the two worker addresses, the processes' pids, and ``lib`` (the ``trioflow``
or ``distributed`` module, for ``wait``).  A workload that measures more than
one figure per run (the collections' peak worker RSS) declares the further
rows in ``extra_rows`` and puts their values in ``ctx.extra``.  Every workload
drops its futures before returning; the runner then waits until the scheduler
holds no keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .rss import PeakRSS, rss_mib

TRANSFER_BYTES = 256 * 1024 * 1024  # 256 MiB
TREE_LEAVES = 4096
ROUND_TRIPS = 500
HELD_TASKS = 100_000


# ---------------------------------------------------------------- task functions


def noop(x: Any) -> None:
    return None


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def make_array(nbytes: int, seed: int) -> Any:
    import numpy as np

    # Random floats: incompressible, so no system gets a compression shortcut.
    return np.random.default_rng(seed).random(nbytes // 8)


def consume(x: Any) -> int:
    return int(x.nbytes)


# ---------------------------------------------------------------- context


@dataclass
class Ctx:
    client: Any
    workers: list[str]  # the two worker addresses, sorted
    lib: Any  # trioflow or distributed
    system: str
    quick: bool
    scheduler_pid: int
    worker_pids: list[int]  # the two worker processes (not in address order)
    extra: dict[str, float] = field(default_factory=dict)  # extra_rows' values, by key


class Row(NamedTuple):
    """One row of the table: key in the results, label (with unit), direction."""

    key: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    name: str
    label: str  # row label, with unit
    unit: str
    higher_is_better: bool
    fn: Callable[[Ctx, int], float | None]
    in_quick: bool = True
    timeout: float = 300.0
    collections: bool = False  # needs Client.compute (dask.array / dask.dataframe)
    extra_rows: tuple[Row, ...] = ()  # further figures of each run, from ctx.extra
    max_reps: int | None = None  # at most this many runs per system, whatever --repeat

    def rows(self) -> list[Row]:
        return [Row(self.name, self.label, self.higher_is_better), *self.extra_rows]


# ---------------------------------------------------------------- workloads

_OFFSET = 10_000_000  # keeps the keys of different repetitions distinct


def map_noop(n: int) -> Callable[[Ctx, int], float]:
    def run(ctx: Ctx, rep: int) -> float:
        c = ctx.client
        base = (rep + 1) * _OFFSET + n
        t0 = time.perf_counter()
        futures = c.map(noop, range(base, base + n))
        results = c.gather(futures)
        elapsed = time.perf_counter() - t0
        assert len(results) == n
        del futures, results
        return n / elapsed

    return run


def round_trip(ctx: Ctx, rep: int) -> float:
    c = ctx.client
    base = (rep + 1) * _OFFSET + 7_000_000
    # One untimed call so the first submit's costs (function pickling, connection) are paid.
    assert c.submit(inc, base - 1).result() == base
    t0 = time.perf_counter()
    for i in range(base, base + ROUND_TRIPS):
        assert c.submit(inc, i).result() == i + 1
    elapsed = time.perf_counter() - t0
    return elapsed / ROUND_TRIPS * 1e6


def tree_reduce(ctx: Ctx, rep: int) -> float:
    c = ctx.client
    base = (rep + 1) * _OFFSET + 8_000_000
    t0 = time.perf_counter()
    layer = [c.submit(inc, base + i) for i in range(TREE_LEAVES)]
    n_tasks = len(layer)
    while len(layer) > 1:
        layer = [c.submit(add, layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
        n_tasks += len(layer)
    total = layer[0].result()
    elapsed = time.perf_counter() - t0
    expected = sum(base + i + 1 for i in range(TREE_LEAVES))
    assert total == expected, (total, expected)
    del layer
    return n_tasks / elapsed


def _move(ctx: Ctx, seed: int) -> float:
    """Make the array on worker A, then time a task on worker B that needs it."""
    c = ctx.client
    a_addr, b_addr = ctx.workers
    producer = c.submit(make_array, TRANSFER_BYTES, seed, workers=[a_addr], pure=False)
    ctx.lib.wait([producer])
    if producer.status != "finished":
        producer.result()  # raises the producer's error
    holders = c.who_has([producer])[producer.key]
    assert list(holders) == [a_addr], f"producer landed on {holders}, wanted {a_addr}"
    t0 = time.perf_counter()
    consumer = c.submit(consume, producer, workers=[b_addr], pure=False)
    nbytes = consumer.result()
    elapsed = time.perf_counter() - t0
    assert nbytes == TRANSFER_BYTES // 8 * 8
    where = c.who_has([consumer])[consumer.key]
    assert list(where) == [b_addr], f"consumer ran on {where}, wanted {b_addr}"
    del producer, consumer
    return elapsed


def transfer(ctx: Ctx, rep: int) -> float:
    if rep == 0 and not ctx.quick:
        # Untimed first move: the first big transfer into a fresh worker process
        # pays one-off costs (dask's runs at a fifth of its later speed); a full
        # run reports the steady state.  --quick skips it to stay short.
        _move(ctx, 1_000)
        wait_no_keys(ctx.client)
    return TRANSFER_BYTES / 1e6 / _move(ctx, rep)


def held_tasks(ctx: Ctx, rep: int) -> float:
    """Scheduler RSS growth while the client holds HELD_TASKS finished futures, per 100,000.

    Meaningful once per scheduler process: memory freed when the futures are
    released mostly stays in the process for reuse, so a second run grows the
    RSS less.  Hence ``max_reps=1``, and first in :data:`WORKLOADS`, so that
    it runs on a scheduler that has only seen the warm-up.
    """
    c = ctx.client
    base = (rep + 1) * _OFFSET + 3_000_000
    before = rss_mib(ctx.scheduler_pid)
    futures = c.map(inc, range(base, base + HELD_TASKS))
    ctx.lib.wait(futures)
    failed = [f for f in futures if f.status != "finished"]
    if failed:
        failed[0].result()  # raises its error
    time.sleep(0.5)  # let the scheduler settle, as for idle RSS
    after = rss_mib(ctx.scheduler_pid)
    del futures, failed
    wait_no_keys(c, timeout=60)  # the next repetition's "before" needs them gone
    return (after - before) * 100_000 / HELD_TASKS


def wait_no_keys(client: Any, timeout: float = 15) -> bool:
    """Wait until the scheduler holds no keys (our futures were released)."""
    import gc

    gc.collect()
    deadline = time.monotonic() + timeout
    while client.who_has():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def trioflow_has_collections() -> bool:
    import trioflow

    return hasattr(trioflow.Client, "compute")


def _supports_collections(ctx: Ctx) -> bool:
    return ctx.system != "trioflow" or trioflow_has_collections()


def _compute(ctx: Ctx, collection: Any, peak_key: str) -> tuple[Any, float]:
    """Compute ``collection``; return its value and the seconds it took.

    The workers' RSS is sampled meanwhile; the peak (MiB, the larger of the
    two workers) goes to ``ctx.extra[peak_key]``.
    """
    with PeakRSS(ctx.worker_pids) as peak:
        t0 = time.perf_counter()
        future = ctx.client.compute(collection)
        value = future.result()
        elapsed = time.perf_counter() - t0
    del future
    ctx.extra[peak_key] = peak.peak
    return value, elapsed


def _compute_steady(
    ctx: Ctx, rep: int, expression: Callable[[int], Any], peak_key: str
) -> tuple[Any, float]:
    """:func:`_compute` ``expression(rep)``, in the steady state.

    The first collection a fresh worker process runs imports dask.array or
    dask.dataframe there (about 0.3 s on top of trioflow's 0.5 s array sum;
    dask's workers pay it too).  As for the transfer row, a full run
    computes one other instance (``expression(1000)``) untimed before the
    first repetition on every system; ``--quick`` skips it.
    """
    if rep == 0 and not ctx.quick:
        _compute(ctx, expression(1000), peak_key)
        wait_no_keys(ctx.client)
    return _compute(ctx, expression(rep), peak_key)


def _peak_rss_row(workload: str) -> Row:
    return Row(f"{workload}_peak_rss", f"{workload}: peak worker RSS (MiB)", False)


def array_sum(ctx: Ctx, rep: int) -> float | None:
    if not _supports_collections(ctx):
        return None
    import dask.array as da

    def expression(seed: int) -> Any:
        x = da.random.random((4000, 4000), chunks=(250, 250))  # fresh keys every call
        return (x + x.T).sum()

    value, elapsed = _compute_steady(ctx, rep, expression, _peak_rss_row("array_sum").key)
    assert 0 < float(value) < 2 * 4000 * 4000
    return elapsed


def array_rechunk(ctx: Ctx, rep: int) -> float | None:
    if not _supports_collections(ctx):
        return None
    import dask.array as da

    # 250x250 blocks into full-height 4000x100 columns: every output chunk
    # gathers 16 input pieces, an all-to-some shuffle of the 128 MB array.
    def expression(seed: int) -> Any:
        x = da.random.random((4000, 4000), chunks=(250, 250))  # fresh keys every call
        y = x.rechunk((4000, 100))
        return (y - y.mean(axis=0)).std()

    value, elapsed = _compute_steady(ctx, rep, expression, _peak_rss_row("array_rechunk").key)
    assert 0 < float(value) < 1
    return elapsed


def dataframe_groupby(ctx: Ctx, rep: int) -> float | None:
    if not _supports_collections(ctx):
        return None
    import dask

    def expression(seed: int) -> Any:
        # 20 daily partitions of a row every 173 ms: 10 million rows, generated on the workers.
        df = dask.datasets.timeseries(
            start="2000-01-01", end="2000-01-21", freq="173ms", partition_freq="1D", seed=seed
        )
        return df.groupby("name").x.mean()

    value, elapsed = _compute_steady(ctx, rep, expression, _peak_rss_row("dataframe_groupby").key)
    assert len(value) > 10
    return elapsed


WORKLOADS: list[Workload] = [
    Workload(
        "held_100k",
        "scheduler RSS per 100,000 held tasks (MiB)",
        "MiB",
        False,
        held_tasks,
        in_quick=False,
        timeout=600,
        max_reps=1,
    ),
    Workload(
        "map_20k", "map+gather 20,000 no-op tasks (tasks/s)", "tasks/s", True, map_noop(20_000)
    ),
    Workload(
        "map_100k",
        "map+gather 100,000 no-op tasks (tasks/s)",
        "tasks/s",
        True,
        map_noop(100_000),
        in_quick=False,
        timeout=600,
    ),
    Workload(
        "round_trip", f"submit(inc).result() x{ROUND_TRIPS} (µs each)", "us", False, round_trip
    ),
    Workload(
        "tree_4096",
        f"tree reduction, {TREE_LEAVES} leaves via submit (tasks/s)",
        "tasks/s",
        True,
        tree_reduce,
    ),
    Workload("transfer_256MiB", "256 MiB array worker A -> B (MB/s)", "MB/s", True, transfer),
    Workload(
        "array_sum",
        "(x + x.T).sum() 4000x4000 / 250x250 chunks (s)",
        "s",
        False,
        array_sum,
        collections=True,
        extra_rows=(_peak_rss_row("array_sum"),),
    ),
    Workload(
        "array_rechunk",
        "x.rechunk((4000, 100)) of 4000x4000 / 250x250, then a column reduction (s)",
        "s",
        False,
        array_rechunk,
        collections=True,
        extra_rows=(_peak_rss_row("array_rechunk"),),
    ),
    Workload(
        "dataframe_groupby",
        "10M-row dataframe, 20 partitions, groupby-mean (s)",
        "s",
        False,
        dataframe_groupby,
        collections=True,
        extra_rows=(_peak_rss_row("dataframe_groupby"),),
    ),
]


def warm_up(ctx: Ctx) -> None:
    """Pay the first-call costs (imports on workers, connections) outside the clock."""
    c = ctx.client
    assert c.submit(inc, -1).result() == 0
    futures = c.map(inc, range(-300, -100))
    assert c.gather(futures)[0] == -299
    del futures
    for i, w in enumerate(ctx.workers):
        f = c.submit(make_array, 8 * 1024, 1000 + i, workers=[w], pure=False)
        g = c.submit(consume, f, workers=[ctx.workers[1 - i]], pure=False)
        assert g.result() == 8 * 1024
        del f, g
