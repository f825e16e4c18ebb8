"""Placement: which workers may run a task, and which one should.

:meth:`PlacementLayer.decide_worker` picks, among the workers allowed to run
a task (running, not paused or retiring; restrictions; free resources), the
one where it would start earliest: its queued work (occupancy / threads)
plus the time to fetch the dependency bytes it does not hold.  In a large
cluster only a rotating sample of :data:`SAMPLE` workers (plus the holders of
the inputs) is looked at, so placement costs O(1) per task.
:meth:`PlacementLayer._send_to_worker` commits the decision.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...protocol.messages import ComputeTask
from .core import DEFAULT_DURATION, StateCore
from .entities import TaskState, WorkerState, unpack_priority
from .events import ToWorker

#: Placement and stealing look at all workers up to this many, and at a
#: rotating window of this many (plus the holders of a task's inputs) above.
SAMPLE = 32


class PlacementLayer(StateCore):
    def _valid_workers_now(self, ts: TaskState, pool: Iterable[WorkerState] | None = None) -> list[WorkerState]:
        """Workers allowed to run ``ts`` and with resources free right now."""
        workers = self.workers.values() if pool is None else pool
        out = []
        restricted = ts.workers and not ts.allow_other_workers
        for ws in workers:
            if ws.status != "running":
                continue
            if restricted and ws.address not in ts.workers and ws.name not in ts.workers:
                continue
            if ts.resources and not self._fits(ts, ws):
                continue
            out.append(ws)
        if ts.workers and ts.allow_other_workers and out:
            preferred = [w for w in out if w.address in ts.workers or w.name in ts.workers]
            if preferred:
                return preferred
        return out

    @staticmethod
    def _fits(ts: TaskState, ws: WorkerState) -> bool:
        for name, need in ts.resources.items():
            total = ws.resources.get(name)
            if total is None or total - ws.used_resources.get(name, 0.0) < need:
                return False
        return True

    def _release_resources(self, ts: TaskState, ws: WorkerState) -> bool:
        if not ts.resources:
            return False
        for name, need in ts.resources.items():
            if name in ws.used_resources:
                ws.used_resources[name] -= need
        return True

    def _sample_workers(self) -> list[WorkerState]:
        """All running workers, or a rotating window of SAMPLE of them in a
        large cluster, so that placement costs O(1) per task, not O(workers)."""
        wl = self._worker_list
        if wl is None:
            wl = self._worker_list = list(self.workers.values())
        n = len(wl)
        if n <= SAMPLE:
            return [w for w in wl if w.status == "running"]
        start = self._cursor % n
        self._cursor = start + SAMPLE
        return [w for w in (wl[(start + i) % n] for i in range(SAMPLE)) if w.status == "running"]

    def decide_worker(self, ts: TaskState) -> WorkerState | None:
        """The worker where ``ts`` would start earliest, or None."""
        candidates: list[WorkerState]
        if ts.workers or ts.resources:
            candidates = self._valid_workers_now(ts)
        else:
            candidates = self._sample_workers()
            if ts.dependencies and len(self.workers) > SAMPLE:
                # A large cluster: the workers holding the inputs, plus a
                # rotating sample of the others (exact below SAMPLE workers).
                seen = set(candidates)
                holders = {ws for dts in ts.dependencies for ws in dts.who_has if ws.status == "running" and ws not in seen}
                candidates += sorted(holders, key=lambda w: w.address)
        if not candidates:
            return None
        bandwidth = self.bandwidth
        best = None
        best_cost = 0.0
        for ws in candidates:
            cost = ws.occupancy / ws.nthreads
            if ts.dependencies:
                missing = 0
                for dts in ts.dependencies:
                    if ws not in dts.who_has:
                        missing += max(dts.nbytes, 0)
                cost += missing / bandwidth
            if best is None or cost < best_cost or (cost == best_cost and len(ws.processing) < len(best.processing)):
                best, best_cost = ws, cost
        return best

    def _send_to_worker(self, ts: TaskState, ws: WorkerState) -> None:
        duration = self.prefix_durations.get(ts.prefix, DEFAULT_DURATION)
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing[ts] = duration
        ws.occupancy += duration
        if ts.resources:
            for name, need in ts.resources.items():
                ws.used_resources[name] = ws.used_resources.get(name, 0.0) + need
        who_has = {dts.key: [w.address for w in dts.who_has] for dts in ts.dependencies}
        nbytes = {dts.key: dts.nbytes for dts in ts.dependencies}
        assert ts.function is not None and ts.args is not None
        self._out.append(
            ToWorker(
                ws.address,
                ComputeTask(
                    key=ts.key,
                    function=ts.function,
                    args=ts.args,
                    who_has=who_has,
                    nbytes=nbytes,
                    priority=unpack_priority(ts.priority),
                    resources=dict(ts.resources),  # never the shared NO_RESOURCES
                    duration=duration,
                ),
            )
        )
