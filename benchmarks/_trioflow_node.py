"""Fallback launcher for a trioflow scheduler or worker process.

Used by :mod:`benchmarks.runner` while the ``trioflow-scheduler`` /
``trioflow-worker`` console scripts are not implemented yet.  It accepts the
subset of their flags that the benchmarks use::

    python -m benchmarks._trioflow_node scheduler --port 0 --no-dashboard --scheduler-file F
    python -m benchmarks._trioflow_node worker --scheduler-file F --nthreads 1 --no-dashboard --no-nanny

SIGINT/SIGTERM cancel the Trio run; the process exits 0 after a clean close.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import trio


async def _until_signal(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            cancel_scope.cancel()
            return


async def _read_scheduler_file(path: str, timeout: float = 30) -> str:
    with trio.fail_after(timeout):
        while True:
            try:
                with open(path) as f:
                    return str(json.load(f)["address"])
            except (OSError, ValueError, KeyError):
                await trio.sleep(0.02)


async def _main(args: argparse.Namespace) -> None:
    from trioflow import Scheduler, Worker

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signal, nursery.cancel_scope)
        if args.role == "scheduler":
            node = Scheduler(
                f"tcp://{args.host}:{args.port}",
                scheduler_file=args.scheduler_file,
                dashboard_address=None if args.no_dashboard else ":0",
            )
            await nursery.start(node.serve)
            print(f"Scheduler at: {node.address}", file=sys.stderr, flush=True)
        else:
            address = args.scheduler_address or await _read_scheduler_file(args.scheduler_file)
            worker = Worker(address, nthreads=args.nthreads, name=args.name)
            await nursery.start(worker.serve)
            print(f"Start worker at: {worker.address}", file=sys.stderr, flush=True)
        # serve() returns when the node closes (e.g. scheduler shutdown).
        await (node if args.role == "scheduler" else worker).wait_closed()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks._trioflow_node")
    p.add_argument("role", choices=["scheduler", "worker"])
    p.add_argument("scheduler_address", nargs="?")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", default="0")
    p.add_argument("--scheduler-file")
    p.add_argument("--nthreads", type=int, default=1)
    p.add_argument("--name")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--no-nanny", action="store_true")
    args = p.parse_args(argv)
    if args.role == "worker" and not (args.scheduler_address or args.scheduler_file):
        p.error("worker needs a scheduler address or --scheduler-file")
    trio.run(_main, args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
