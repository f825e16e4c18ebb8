"""``trioflow local``: a whole cluster on this machine in one command."""

from __future__ import annotations

import logging
import time
from typing import Any

import click
import trio

from . import _run, group
from .common import close_on_signals, default_nthreads, memory_limit_option, setup_logging

logger = logging.getLogger("trioflow.cli")


@group.command(name="local")
@click.option("--nworkers", "--n-workers", "n_workers", type=click.IntRange(min=1), default=2, show_default=True, help="Number of nannied worker processes")
@click.option("--nthreads", type=click.IntRange(min=1), default=None, help="Threads per worker")
@click.option("--memory-limit", type=str, default="auto", show_default=True, help="Memory per worker")
@click.option("--port", type=int, default=8786, show_default=True, help="Scheduler port (0 for any)")
@click.option("--dashboard-address", type=str, default="127.0.0.1:8787", show_default=True, help="Address of the diagnostics page")
@click.option("--dashboard/--no-dashboard", "dashboard", default=True, show_default=True, help="Serve the diagnostics page")
@click.option("--demo/--no-demo", default=False, help="Run a short real workload with a progress bar once the cluster is up")
@click.option("--processes/--no-processes", default=True, show_default=True, help="Workers as nanny-supervised processes")
def local_command(
    n_workers: int, nthreads: int | None, memory_limit: str, port: int, dashboard_address: str, dashboard: bool, demo: bool, processes: bool
) -> None:
    """Start a scheduler, workers and the live page here; Ctrl+C stops everything."""
    setup_logging()
    nthreads = nthreads or default_nthreads(n_workers)
    limit = memory_limit_option(memory_limit, nthreads, n_workers)
    from ..client.core import open_client
    from ..deploy.local import open_cluster

    async def main() -> None:
        async with open_cluster(
            n_workers,
            nthreads,
            processes=processes,
            memory_limit=limit,
            host="127.0.0.1",
            scheduler_port=port,
            dashboard_address=dashboard_address if dashboard else None,
        ) as cluster:
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(close_on_signals, done.set)
                logger.info("  Scheduler at: %s", cluster.scheduler_address)
                if cluster.dashboard_link:
                    logger.info("  dashboard at: %s", cluster.dashboard_link)
                if demo:
                    async with open_client(cluster) as client:
                        await run_demo(client)
                print(f"\ntrioflow is running: scheduler {cluster.scheduler_address}", flush=True)
                if cluster.dashboard_link:
                    print(f"live page: {cluster.dashboard_link}", flush=True)
                print("press Ctrl+C to stop", flush=True)
                await done.wait()
                nursery.cancel_scope.cancel()
        print("stopped; everything cleaned up", flush=True)

    _run(main)


def _slow_square(x: int) -> int:
    time.sleep(0.002)
    return x * x


def _add(a: int, b: int) -> int:
    return a + b


async def run_demo(client: Any, n: int = 2000) -> int:
    """A real workload: map, then a tree reduction, with a progress bar."""
    from ..progress import progress_async

    futures = await client.map(_slow_square, range(n), pure=False)
    level = futures
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            nxt.append(await client.submit(_add, level[i], level[i + 1], pure=False))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    await progress_async(futures + [level[0]])
    total = await level[0]
    expected = sum(i * i for i in range(n))
    status = "ok" if total == expected else f"WRONG (expected {expected})"
    print(f"sum of squares of 0..{n - 1} = {total} [{status}]", flush=True)
    return int(total)
