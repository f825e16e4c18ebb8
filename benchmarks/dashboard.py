"""Does the live page cost the scheduler anything?

``python -m benchmarks.dashboard [--tasks 20000] [--viewers 5] [--reps 3]``

One cluster (a scheduler with its page and two single-thread worker
processes, all started from their command lines on loopback) runs a map of
no-op tasks, alternately with no viewer and with ``--viewers`` websocket
viewers reading the page's stream from a separate process.  Prints the median
tasks/s of each and the slowdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

VIEWER = r"""
import sys, trio
from trio_websocket import open_websocket_url
async def viewer(url, counts, i):
    async with open_websocket_url(url) as ws:
        while True:
            await ws.get_message()
            counts[i] += 1
async def main(url, n):
    counts = [0] * n
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(viewer, url, counts, i)
        print("ready", flush=True)
trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def _noop(x: int) -> int:
    return x


def _start(cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--viewers", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import trioflow

    bindir = os.path.dirname(sys.executable)
    tmp = tempfile.mkdtemp(prefix="trioflow-bench-dash-")
    sfile = os.path.join(tmp, "scheduler.json")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_start([os.path.join(bindir, "trioflow-scheduler"), "--host", "127.0.0.1", "--port", "0",
                             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sfile]))
        for _ in range(2):
            procs.append(_start([os.path.join(bindir, "trioflow-worker"), "--scheduler-file", sfile, "--nthreads", "1",
                                 "--no-dashboard", "--no-nanny", "--host", "127.0.0.1"]))
        with trioflow.Client(scheduler_file=sfile, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            with open(sfile) as f:
                port = json.load(f)["services"]["dashboard"]
            url = f"ws://127.0.0.1:{port}/ws"
            client.gather(client.map(_noop, range(2000), pure=False))  # warm up
            rates: dict[str, list[float]] = {"none": [], "viewers": []}
            for _ in range(args.reps):
                for mode in ("none", "viewers"):
                    viewer = None
                    if mode == "viewers":
                        viewer = subprocess.Popen([sys.executable, "-c", VIEWER, url, str(args.viewers)],
                                                  stdout=subprocess.PIPE, start_new_session=True)
                        assert viewer.stdout is not None
                        viewer.stdout.readline()
                        time.sleep(0.5)
                    try:
                        t = time.perf_counter()
                        client.gather(client.map(_noop, range(args.tasks), pure=False))
                        rates[mode].append(args.tasks / (time.perf_counter() - t))
                    finally:
                        if viewer is not None:
                            _stop([viewer])
            client.shutdown()
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    none, viewers = statistics.median(rates["none"]), statistics.median(rates["viewers"])
    print(f"{args.tasks:,} no-op tasks, scheduler + 2 workers, median of {args.reps}")
    print(f"  no viewer:          {none:8,.0f} tasks/s   runs {[round(r) for r in rates['none']]}")
    print(f"  {args.viewers} page viewers:     {viewers:8,.0f} tasks/s   runs {[round(r) for r in rates['viewers']]}")
    print(f"  slowdown with viewers: {100 * (1 - viewers / none):+.1f}%")


if __name__ == "__main__":
    main()
