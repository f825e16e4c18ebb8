"""The scheduler's state machine alone, with simulated workers: its ceiling.

``python -m benchmarks.simulate [--workers 1000] [--tasks 1000000]``

No sockets, no threads: a loop feeds :class:`SchedulerState` the events a
cluster would (a client submits graphs, workers report every task they were
sent as finished) and measures what the scheduler's own logic costs —
transitions per second and bytes of Python memory per task held.  Graphs are
a map of root tasks plus a pairwise reduction over them, submitted in chunks
of ``--chunk`` tasks like a client's ``map`` would.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import deque

from trioflow.protocol.messages import ComputeTask, TaskSpec
from trioflow.protocol.serialize import dumps
from trioflow.scheduler.state import (
    AddClientEvent,
    AddWorkerEvent,
    ReleaseKeysEvent,
    SchedulerState,
    TaskFinishedEvent,
    ToWorker,
    UpdateGraphEvent,
)


def run(n_workers: int, n_tasks: int, chunk: int, saturation: float) -> dict[str, float]:
    s = SchedulerState(worker_saturation=saturation)
    now = 0.0
    s.handle(AddClientEvent(client="c"), now)
    for i in range(n_workers):
        s.handle(AddWorkerEvent(address=f"tcp://10.0.{i // 250}.{i % 250}:1", name=f"w{i}", nthreads=2, memory_limit=0), now)
    fn = b"fn"
    args = dumps(((), {}))
    pending: deque[tuple[str, str]] = deque()
    transitions_before = s.transition_counter
    submitted = 0
    gc.collect()
    start = time.perf_counter()
    while submitted < n_tasks:
        n = min(chunk, n_tasks - submitted)
        leaves = [f"leaf-{submitted + i}" for i in range(max(n // 2, 1))]
        specs = [TaskSpec(key=k, function=fn, args=args) for k in leaves]
        level = leaves
        depth = 0
        while len(level) > 1 and len(specs) < n:
            nxt = []
            for j in range(0, len(level) - 1, 2):
                k = f"sum-{submitted}-{depth}-{j}"
                specs.append(TaskSpec(key=k, function=fn, args=args, dependencies=[level[j], level[j + 1]]))
                nxt.append(k)
            level = nxt
            depth += 1
        submitted += len(specs)
        out = s.handle(UpdateGraphEvent(client="c", tasks=specs, keys=list(level)), now)
        pending.extend((i.address, i.msg.key) for i in out if type(i) is ToWorker and type(i.msg) is ComputeTask)
        while pending:
            worker, key = pending.popleft()
            now += 1e-6
            out = s.handle(TaskFinishedEvent(worker=worker, key=key, nbytes=8, start=now, stop=now + 1e-5), now)
            pending.extend((i.address, i.msg.key) for i in out if type(i) is ToWorker and type(i.msg) is ComputeTask)
        s.handle(ReleaseKeysEvent(client="c", keys=list(level)), now)
    elapsed = time.perf_counter() - start
    transitions = s.transition_counter - transitions_before
    assert not s.tasks, f"{len(s.tasks)} tasks left"

    # Memory per held task: a graph of held (in-memory, wanted) results.
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held = min(n_tasks, 200_000)
    keys = [f"held-{i}" for i in range(held)]
    out = s.handle(UpdateGraphEvent(client="c", tasks=[TaskSpec(key=k, function=fn, args=args) for k in keys], keys=keys), now)
    pending.extend((i.address, i.msg.key) for i in out if type(i) is ToWorker and type(i.msg) is ComputeTask)
    while pending:
        worker, key = pending.popleft()
        out = s.handle(TaskFinishedEvent(worker=worker, key=key, nbytes=8), now)
        pending.extend((i.address, i.msg.key) for i in out if type(i) is ToWorker and type(i.msg) is ComputeTask)
    gc.collect()
    per_task = (tracemalloc.get_traced_memory()[0] - base) / held
    tracemalloc.stop()
    return {
        "tasks": float(submitted),
        "seconds": elapsed,
        "tasks_per_s": submitted / elapsed,
        "transitions_per_s": transitions / elapsed,
        "bytes_per_held_task": per_task,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--chunk", type=int, default=20_000)
    p.add_argument("--saturation", type=float, default=1.1)
    a = p.parse_args()
    r = run(a.workers, a.tasks, a.chunk, a.saturation)
    print(f"workers={a.workers} tasks={int(r['tasks'])} saturation={a.saturation}")
    print(f"  {r['tasks_per_s']:,.0f} tasks/s, {r['transitions_per_s']:,.0f} transitions/s ({r['seconds']:.1f} s)")
    print(f"  {r['bytes_per_held_task']:,.0f} bytes of Python memory per task held in memory")


if __name__ == "__main__":
    main()
