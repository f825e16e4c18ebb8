"""Work stealing: idle workers take not-yet-started tasks from busy ones.

The victim is asked with a ``StealRequest`` and answers with a
:class:`~.events.StealResponseEvent`; only a task it had not started moves.
"""

from __future__ import annotations

from ...protocol.messages import StealRequest
from .core import DEFAULT_DURATION
from .entities import WorkerState
from .events import StealResponseEvent, ToWorker
from .transitions import TransitionsLayer


class StealingLayer(TransitionsLayer):
    def _steal_for_idle(self) -> None:
        """Ask busy workers to hand not-yet-started tasks to idle ones.

        A task moves only if it is allowed on the thief (no restrictions) and
        fetching its missing dependencies would take less than twice its
        expected run time.  The victim answers with a StealResponse; only a
        task it had not started moves (see :meth:`_steal_response`).
        """
        thieves, self._idle_candidates = self._idle_candidates, set()
        if self.queued:
            return  # the queue feeds idle workers
        for thief in thieves:
            if self.workers.get(thief.address) is not thief or thief.status != "running":  # see _fill_from_queue
                continue
            room = thief.nthreads + 1 - len(thief.processing) - sum(1 for t in self.stealing.values() if t is thief)
            if room <= 0:
                continue
            victim = max(self._sample_workers(), key=lambda w: len(w.processing) - w.nthreads, default=thief)
            excess = len(victim.processing) - victim.nthreads - 1
            if victim is thief or excess <= 0:
                continue
            take = min(room, (excess + 1) // 2)
            for ts in reversed(list(victim.processing)):
                if take <= 0:
                    break
                if ts in self.stealing or ts.workers or ts.resources:
                    continue
                duration = self.prefix_durations.get(ts.prefix, DEFAULT_DURATION)
                missing = sum(max(d.nbytes, 0) for d in ts.dependencies if thief not in d.who_has)
                if missing / self.bandwidth > 2 * duration:
                    continue
                self.stealing[ts] = thief
                self.steal_count += 1
                self._out.append(ToWorker(victim.address, StealRequest(key=ts.key)))
                take -= 1

    def _steal_response(self, ev: StealResponseEvent) -> None:
        ts = self.tasks.get(ev.key)
        victim = self.workers.get(ev.worker)
        if ts is None or victim is None:
            return
        thief: WorkerState | None = self.stealing.pop(ts, None)
        if not ev.stolen or ts.state != "processing" or ts.processing_on is not victim:
            return
        # The victim dropped it: move it.
        d = victim.processing.pop(ts, 0.0)
        victim.occupancy = max(victim.occupancy - d, 0.0) if victim.processing else 0.0
        ts.processing_on = None
        if thief is None or self.workers.get(thief.address) is not thief or thief.status != "running":
            thief = self.decide_worker(ts)
        if thief is None:
            self._count_move(ts, "processing", "no-worker")
            ts.state = "no-worker"
            self.unrunnable.add(ts)
        else:
            self.transition_counter += 1
            self._send_to_worker(ts, thief)
        if self.queued:  # the victim has room for a queued root task now
            self._to_fill.add(victim)
            self._fill_from_queue()
