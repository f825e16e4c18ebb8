"""Where data lives, on request: replicate and rebalance.

Every decision is made here; the server asks the workers and waits:

- replicate (:class:`~.events.ReplicateEvent`): each key in memory gets
  copies on ``n`` of the running target workers; the workers without one are
  picked by fewest bytes held, and asked with ``AcquireReplicas``;
- rebalance (:class:`~.events.RebalanceEvent`): keys move from the targets
  holding the most bytes to those holding the least, until each holds about
  the mean (a move that would take the receiver more than half the key's
  size past the mean is not made); the receivers are asked with
  ``AcquireReplicas``, and once they hold the copies the senders' copies
  are dropped (``FreeKeys``).

Either request is over (a :class:`~.events.DataMoveDone`) once every copy
asked for is made, or cannot be made any more (the key left memory, the
receiver left), or at its deadline: the server then feeds a
:class:`~.events.TickEvent`.  Only running workers take part: a paused,
retiring or closing worker is asked for nothing.
"""

from __future__ import annotations

from ...protocol.messages import AcquireReplicas, FreeKeys
from .entities import DataMove, TaskState, WorkerState
from .events import DataMoveDone, RebalanceEvent, ReplicateEvent, ToWorker
from .exceptions import InvalidEvent
from .membership import MembershipLayer


class DataMovementLayer(MembershipLayer):
    """Handlers of replicate and rebalance (see the module docstring)."""

    def _targets(self, workers: list[str] | None) -> list[WorkerState]:
        """The running workers among ``workers`` (addresses or names; all if
        None), each once, in the order given."""
        if workers is None:
            return [w for w in self.workers.values() if w.status == "running"]
        out: list[WorkerState] = []
        for name in workers:
            address = name if name in self.workers else self.names.get(name)
            if address is None:
                continue
            ws = self.workers[address]
            if ws.status == "running" and ws not in out:
                out.append(ws)
        return out

    def _new_data_move(self, request: str, timeout: float) -> DataMove:
        if request in self.retirements or request in self.restarts or request in self.data_moves:
            raise InvalidEvent(f"request {request!r} is already under way")
        dm = DataMove(request, self.now + max(timeout, 0.0))
        self.data_moves[request] = dm
        return dm

    def _ask_for_copies(self, plans: dict[WorkerState, dict[str, TaskState]]) -> None:
        for ws, tasks in plans.items():
            who = {k: [w.address for w in ts.who_has] for k, ts in tasks.items()}
            nbytes = {k: ts.nbytes for k, ts in tasks.items()}
            self._out.append(ToWorker(ws.address, AcquireReplicas(who_has=who, nbytes=nbytes)))

    # ------------------------------------------------------------ replicate

    def _replicate(self, ev: ReplicateEvent) -> None:
        pool = self._targets(ev.workers)
        if not pool:
            raise InvalidEvent("replicate: no workers to copy to")
        n = len(pool) if ev.n is None else ev.n
        if n < 1:
            raise InvalidEvent(f"replicate: n must be at least 1, got {n}")
        dm = self._new_data_move(ev.request, ev.timeout)
        plans: dict[WorkerState, dict[str, TaskState]] = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state != "memory" or ts in dm.wanted:
                continue
            have = sum(1 for w in pool if w in ts.who_has)
            missing = max(0, n - have)
            new = sorted((w for w in pool if w not in ts.who_has), key=lambda w: w.nbytes)[:missing]
            for ws in new:
                plans.setdefault(ws, {})[key] = ts
            if new:
                dm.wanted[ts] = set(new)
        self._ask_for_copies(plans)

    # ------------------------------------------------------------ rebalance

    def _rebalance(self, ev: RebalanceEvent) -> None:
        pool = self._targets(ev.workers)
        dm = self._new_data_move(ev.request, ev.timeout)
        if len(pool) < 2:
            return
        keys = None if ev.keys is None else set(ev.keys)
        load = {w: sum(max(ts.nbytes, 0) for ts in w.has_what if keys is None or ts.key in keys) for w in pool}
        mean = sum(load.values()) / len(pool)
        for sender in sorted(pool, key=load.__getitem__, reverse=True):
            for ts in sorted(sender.has_what, key=lambda t: (-max(t.nbytes, 0), t.key)):
                if load[sender] <= mean:
                    break
                if (keys is not None and ts.key not in keys) or ts.state != "memory":
                    continue
                size = max(ts.nbytes, 0)
                receiver = min(pool, key=load.__getitem__)
                if receiver is sender or receiver in ts.who_has or load[receiver] + size > mean + size / 2 or size == 0:
                    continue
                load[sender] -= size
                load[receiver] += size
                dm.drops.append((ts, sender, receiver))
        plans: dict[WorkerState, dict[str, TaskState]] = {}
        for ts, _, receiver in dm.drops:
            plans.setdefault(receiver, {})[ts.key] = ts
            dm.wanted.setdefault(ts, set()).add(receiver)
        self._ask_for_copies(plans)

    # ------------------------------------------------------------ progress

    def _progress_requests(self) -> None:
        super()._progress_requests()
        for dm in list(self.data_moves.values()):
            for ts in list(dm.wanted):
                targets = dm.wanted[ts]
                # A receiver that left (or came back as another) never gets it.
                targets = {w for w in targets if self.workers.get(w.address) is w and w not in ts.who_has}
                if ts.state != "memory" or not targets:
                    del dm.wanted[ts]
                else:
                    dm.wanted[ts] = targets
            if not dm.wanted or self.now >= dm.deadline:
                self._finish_data_move(dm)

    def _finish_data_move(self, dm: DataMove) -> None:
        del self.data_moves[dm.request]
        drop: dict[WorkerState, list[str]] = {}
        for ts, sender, receiver in dm.drops:
            if ts.state == "memory" and receiver in ts.who_has and sender in ts.who_has:
                self._remove_replica(ts, sender)
                drop.setdefault(sender, []).append(ts.key)
        for ws, keys in drop.items():
            self._out.append(ToWorker(ws.address, FreeKeys(keys=keys)))
        self._out.append(DataMoveDone(dm.request))

    # ------------------------------------------------------------ checks

    def validate(self) -> None:
        super().validate()
        for dm in self.data_moves.values():
            assert dm.request not in self.retirements and dm.request not in self.restarts, dm.request
            for ts, targets in dm.wanted.items():
                assert ts.state == "memory" and self.tasks.get(ts.key) is ts, (dm.request, ts)
                assert targets and all(self.workers.get(w.address) is w and w not in ts.who_has for w in targets), (dm.request, ts)
