"""``python -m benchmarks.scheduler_rounds [--rounds 10] [--tasks 10000] [--systems trioflow,dask]``

Scheduler RSS over rounds: a scheduler process and two one-thread worker
processes (as in :mod:`benchmarks.runner`); each round maps ``inc`` over
``--tasks`` new keys, gathers, releases the futures and waits until the
scheduler holds no keys, then reads the scheduler's RSS every 50 ms for
``--settle`` seconds.  Per round it prints the peak while the round ran, the
RSS when the keys were gone, the lowest reading of the settle window and how
long after the release that low came (for trioflow: the liveness loop's
collection and ``malloc_trim``, one to two ticks of 1 s after the release).

This is where the tight bound lives that the test suite used to assert
(every settled round within 10% of the first, the last within 25% of idle;
it flaked on a loaded machine): the script prints both ratios and asserts
nothing.  The test now asserts only that the RSS with a round's futures held
does not grow over rounds.

What a round's RSS is made of on trioflow (measured on the shared 2-core
box, 10 rounds of 10,000 tasks): 30 MiB idle; 45-48 MiB while a round's
futures are held and right after their release (the graph's freed heap,
which glibc keeps until ``malloc_trim``); 34-35.5 MiB settled, 1.0-1.7 s
after the release.  The scheduler trims from its liveness loop (one tick a
second) once a tick has seen the graph and the next one sees the task count
unchanged; a round shorter than a tick may never be seen and then is not
trimmed at all (8 rounds of 5,000: the last, 0.63 s, stayed at 38.7 MiB
against 33-34 for the others; the next graph reuses that memory, so nothing
grows).  A reading in the 40s after a release therefore means "before the
trim", not "something grew": that is the round of 46 MiB which failed the
old test's bound of 1.1 x 35.6 MiB.

With ``--systems trioflow,dask`` the same rounds run on ``dask scheduler``
too (dask trims nothing explicitly; its figure is for comparison only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from .rss import PeakRSS, rss_mib
from .runner import TRIOFLOW_LAUNCHER, Cluster, make_systems
from .workloads import inc, wait_no_keys

_OFFSET = 50_000_000  # keys distinct from everything else a cluster has seen


def settle(pid: int, seconds: float, interval: float = 0.05) -> tuple[float, float, float]:
    """(first reading, lowest reading, seconds until the lowest) over ``seconds``."""
    t0 = time.monotonic()
    first = low = rss_mib(pid)
    low_at = 0.0
    while time.monotonic() - t0 < seconds:
        time.sleep(interval)
        r = rss_mib(pid)
        if r < low - 0.05:
            low, low_at = r, time.monotonic() - t0
    return first, low, low_at


def run_rounds(cluster: Cluster, rounds: int, tasks: int, settle_s: float) -> dict[str, Any]:
    client = cluster.client
    pid = cluster.pid("scheduler")
    time.sleep(1.5)
    idle = rss_mib(pid)
    rows = []
    for r in range(rounds):
        base = _OFFSET + r * tasks
        t0 = time.perf_counter()
        with PeakRSS([pid], interval=0.02) as peak:
            futures = client.map(inc, range(base, base + tasks))
            assert sum(client.gather(futures)) == sum(range(base + 1, base + tasks + 1))
            held = rss_mib(pid)
            del futures
            if not wait_no_keys(client, timeout=60):
                raise RuntimeError(f"round {r}: the scheduler kept keys")
        elapsed = time.perf_counter() - t0
        released, low, low_at = settle(pid, settle_s)
        rows.append(
            {"round": r, "seconds": elapsed, "peak": peak.peak, "held": held, "released": released, "settled": low, "settled_after": low_at}
        )
    return {"idle": idle, "rounds": rows}


def report(name: str, result: dict[str, Any]) -> None:
    idle = result["idle"]
    rows = result["rounds"]
    print(f"\n{name}: idle {idle:.1f} MiB")
    print(f"{'round':>5} {'time s':>7} {'peak':>7} {'held':>7} {'at release':>10} {'settled':>8} {'after s':>8}")
    for row in rows:
        print(
            f"{row['round']:>5} {row['seconds']:>7.2f} {row['peak']:>7.1f} {row['held']:>7.1f} {row['released']:>10.1f}"
            f" {row['settled']:>8.1f} {row['settled_after']:>8.2f}"
        )
    settled = [row["settled"] for row in rows]
    first = settled[0]
    print(f"max settled / first settled (rounds 2..): {max(settled[1:]) / first:.3f}  (the old test's bound: < 1.10)")
    print(f"last settled / idle: {settled[-1] / idle:.3f}  (the old test's bound: < 1.25)")
    print(
        f"median of the last 3 settled - median of the first 3: "
        f"{statistics.median(settled[-3:]) - statistics.median(settled[:3]):+.1f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduler_rounds", description=__doc__.split("\n\n")[1])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--settle", type=float, default=4.0, help="seconds of RSS readings after each release")
    p.add_argument("--systems", default="trioflow", help="trioflow, dask, dask-noqueue (comma-separated)")
    p.add_argument("--trioflow-launcher", default=TRIOFLOW_LAUNCHER, choices=["auto", "cli", "module", "script"])
    args = p.parse_args(argv)
    wanted = args.systems.split(",")
    systems = [s for s in make_systems(args.trioflow_launcher) if s.name in wanted]
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as logdir:
        for system in systems:
            cluster = Cluster(system, logdir)
            try:
                cluster.start()
                result = run_rounds(cluster, args.rounds, args.tasks, args.settle)
            finally:
                cluster.stop()
            env = "PYTHONMALLOC=" + os.environ.get("PYTHONMALLOC", "(launcher's choice)")
            report(f"{system.label} [{env}]", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
