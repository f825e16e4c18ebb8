"""What the workers' statistical profiler costs: profiler on vs off.

    python -m benchmarks.profiler_overhead [--reps 5] [--tasks 5000] [--systems trioflow,dask]

Two workloads on a local cluster of two 1-thread worker processes:

- ``noop_map``: ``client.map(noop, range(tasks))`` and gather (per-task
  overhead; the sampler finds a task running only now and then);
- ``array``: numpy chunks (4 MiB each) made, squared and summed by tasks,
  then reduced (the sampler always finds a task running, with a shallow
  stack in numpy).

Each runs ``--reps`` times per setting, the median printed, with the
profiler on (every 10 ms, trioflow's and dask's default) and off (trioflow:
``profile_interval=None``; dask: ``distributed.worker.profile.enabled:
False``).  dask runs only when ``distributed`` imports (never installed in
trioflow's own venv).  The same 2-core machine, one system at a time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def noop(x: int) -> int:
    return x


def make_chunk(i: int) -> Any:
    import numpy as np

    return np.random.default_rng(i).random(512 * 1024)


def square_sum(a: Any) -> float:
    return float((a * a).sum())


def total(*xs: float) -> float:
    return sum(xs)


def noop_map(client: Any, tasks: int) -> None:
    client.gather(client.map(noop, range(tasks), pure=False))


def array(client: Any, tasks: int) -> None:
    chunks = client.map(make_chunk, range(max(tasks // 50, 20)), pure=False)
    sums = client.map(square_sum, chunks, pure=False)
    client.submit(total, *sums, pure=False).result()


WORKLOADS: dict[str, Callable[[Any, int], None]] = {"noop_map": noop_map, "array": array}


def _time(client: Any, work: Callable[[Any, int], None], tasks: int, reps: int) -> float:
    work(client, min(tasks, 200))  # warm up (imports, connections)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        work(client, tasks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_trioflow(profile: bool, tasks: int, reps: int) -> dict[str, float]:
    from trioflow import Client, LocalCluster

    interval = 0.01 if profile else None
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, profile_interval=interval) as cluster, Client(cluster) as client:
        return {name: _time(client, work, tasks, reps) for name, work in WORKLOADS.items()}


def run_dask(profile: bool, tasks: int, reps: int) -> dict[str, float]:
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.profile.enabled": profile}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            return {name: _time(client, work, tasks, reps) for name, work in WORKLOADS.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--systems", default="trioflow,dask")
    args = parser.parse_args(argv)
    runners = {"trioflow": run_trioflow, "dask": run_dask}
    print(f"{'system':10} {'workload':10} {'profiler off':>13} {'profiler on':>12} {'overhead':>9}")
    for system in args.systems.split(","):
        try:
            off = runners[system](False, args.tasks, args.reps)
            on = runners[system](True, args.tasks, args.reps)
        except ImportError as exc:
            print(f"{system:10} skipped: {exc}")
            continue
        for name in WORKLOADS:
            print(f"{system:10} {name:10} {off[name]:12.3f}s {on[name]:11.3f}s {100 * (on[name] / off[name] - 1):+8.1f}%")


if __name__ == "__main__":
    main()
