"""Root-task queuing: hold ready root tasks at the scheduler while every
worker is saturated, and hand them out as slots free up.

A worker is given root tasks (no dependencies, no restrictions) while it
holds fewer than ceil(nthreads * worker_saturation) of them (as in
dask.distributed), or more while what it holds is known to be short (see
:data:`QUEUE_HORIZON`).  The rest wait in 'queued', highest priority first,
so a huge graph does not land on the workers all at once.
"""

from __future__ import annotations

import heapq
import math

from .entities import TaskState, WorkerState
from .placement import PlacementLayer

#: ... unless what a worker holds is known to be short: then it gets more
#: root tasks, up to about this many seconds of expected work per thread, so
#: that the scheduler round trip (milliseconds) does not leave its threads
#: idle between tasks of a few microseconds.  Run-ahead stays bounded by
#: time, which is what root-task queuing is about.
QUEUE_HORIZON = 0.01
#: ... and at most this many root tasks per thread in all.
QUEUE_SHORT_MAX = 100


class QueuingLayer(PlacementLayer):
    def _is_root(self, ts: TaskState) -> bool:
        return self.worker_saturation != float("inf") and not ts.dependencies and not ts.workers and not ts.resources

    def _saturated(self, ws: WorkerState) -> bool:
        n = len(ws.processing) - len(ws.long_running)
        if n < max(math.ceil(ws.nthreads * self.worker_saturation), 1):
            return False
        # Tasks of a prefix not seen finishing yet count DEFAULT_DURATION, so
        # this extends only once the work is measured to be short.
        return ws.occupancy >= QUEUE_HORIZON * ws.nthreads or n >= QUEUE_SHORT_MAX * ws.nthreads

    def _enqueue(self, ts: TaskState) -> None:
        ts.state = "queued"
        self.queued[ts] = None
        self._queue_seq += 1
        heapq.heappush(self._queue_heap, (ts.priority, self._queue_seq, ts))

    def _dequeue(self, ts: TaskState) -> None:
        self.queued.pop(ts, None)  # the heap entry is dropped lazily

    def _fill_from_queue(self) -> None:
        """Give workers with free slots the highest-priority queued tasks."""
        workers, self._to_fill = self._to_fill, set()
        heap = self._queue_heap
        for ws in sorted(workers, key=lambda w: len(w.processing) / w.nthreads):
            # Identity, not address: a worker that left and came back on the
            # same address is a new WorkerState; tasks sent to the old one
            # were 'processing' on a removed worker for ever.
            if self.workers.get(ws.address) is not ws or ws.status != "running":
                continue
            while heap and not self._saturated(ws):
                _, _, ts = heap[0]
                if ts not in self.queued or ts.state != "queued":
                    heapq.heappop(heap)
                    continue
                heapq.heappop(heap)
                self._dequeue(ts)
                self._count_move(ts, "queued", "processing")
                self.transition_counter += 1
                self._send_to_worker(ts, ws)
        if not self.queued:
            heap.clear()
