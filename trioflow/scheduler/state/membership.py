"""Who takes part: workers and clients coming and going, liveness,
retirement, restart and fire-and-forget.

Every decision about membership is made here; the server only carries out
the instructions:

- registration: a new worker's held keys are taken in or, unwanted, listed
  in its ``WorkerRegistered`` for it to forget;
- liveness: on a :class:`~.events.TickEvent` workers silent for longer than
  :meth:`~.core.StateCore.worker_ttl_now` are removed, and a
  :class:`~.events.DropWorker` tells the server to close their connections;
- retirement: retiring workers get no new tasks; the data only they hold is
  copied to the others (``AcquireReplicas``), and once it is (or at the
  deadline) the workers are told to close, except those still holding the
  only copy of something, which go back to work;
- restart: every key is cancelled, the workers without a nanny are told to
  close and the nannies asked to restart theirs; the restart is over once
  every nanny answered and that many nannied workers are registered, or at
  the deadline;
- fire-and-forget: keys wanted by :attr:`~.core.StateCore.fire_and_forget`
  until they finish.

A worker told to close (retired, restarted without a nanny) is listed in
``told_to_close``: its removal is a clean one.  It, and a silent worker
about to be removed, have the status 'closing': no new task goes to it (a
tick that removes several workers does not send the first one's tasks to
the next one).
"""

from __future__ import annotations

from ...protocol.messages import (
    AcquireReplicas,
    CloseWorker,
    HeartbeatAck,
    WorkerRegistered,
)
from .entities import ClientState, Recommendations, Restart, Retirement, TaskState, WorkerState
from .events import (
    AddClientEvent,
    AddWorkerEvent,
    DropWorker,
    FireAndForgetEvent,
    HeartbeatEvent,
    NannyRestartedEvent,
    RemoveClientEvent,
    RemoveWorkerEvent,
    RestartDone,
    RestartEvent,
    RestartNanny,
    RetirementDone,
    RetireWorkersEvent,
    TickEvent,
    ToWorker,
)
from .exceptions import InvalidEvent, KilledWorker, LostData
from .validation import ValidationLayer


class MembershipLayer(ValidationLayer):
    """Handlers of the events about who takes part (see the module docstring)."""

    # ------------------------------------------------------------ workers

    def _add_worker(self, ev: AddWorkerEvent) -> None:
        if ev.address in self.workers:
            raise InvalidEvent(f"worker {ev.address} is already registered")
        if ev.name in self.names:
            raise InvalidEvent(f"a worker named {ev.name!r} is already registered ({self.names[ev.name]})")
        if ev.nthreads < 1:
            raise InvalidEvent(f"worker {ev.address}: nthreads must be at least 1, got {ev.nthreads}")
        if ev.memory_limit < 0:
            raise InvalidEvent(f"worker {ev.address}: memory_limit must not be negative")
        for k, v in ev.resources.items():
            if v < 0:
                raise InvalidEvent(f"worker {ev.address}: resource {k!r} must not be negative")
        for k, v in ev.nbytes.items():
            if v < 0:
                raise InvalidEvent(f"worker {ev.address}: negative size for key {k!r}")
        ws = WorkerState(ev.address, ev.name, ev.nthreads, ev.memory_limit, ev.resources)
        ws.nanny = ev.nanny
        ws.pid = ev.pid
        ws.local_directory = ev.local_directory
        ws.services = dict(ev.services)
        ws.last_seen = self.now
        self.workers[ev.address] = ws
        self._worker_list = None
        self.names[ev.name] = ev.address
        recs: Recommendations = {}
        forget: list[str] = []
        for key, nbytes in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state in ("memory", "waiting", "no-worker", "released") and (ts.who_wants or ts.waiters):
                self._add_replica(ts, ws, nbytes)
                if ts.state != "memory":
                    recs[ts] = "memory"
            else:
                forget.append(key)
        # The keys it holds that nobody wants go in the welcome (the worker
        # drops them before it reports anything), not in a FreeKeys after it.
        self._out.append(
            ToWorker(
                ws.address,
                WorkerRegistered(
                    scheduler_id=self.scheduler_id,
                    heartbeat_interval=self.heartbeat_interval(),
                    worker_ttl=self.worker_ttl_now(),
                    forget=forget,
                ),
            )
        )
        # Take in the data first: a task waiting to run may not be needed
        # any more once a dependent's result is in memory.
        self._transitions(recs)
        for ts in sorted(self.unrunnable, key=lambda t: t.priority):
            if ts.state == "no-worker" and self._valid_workers_now(ts, [ws]):
                recs[ts] = "processing"
        self._to_fill.add(ws)
        self._idle_candidates.add(ws)
        self._transitions(recs)

    def _remove_worker(self, ev: RemoveWorkerEvent) -> None:
        ws = self.workers.get(ev.address)
        if ws is None:
            return  # already gone; removal is idempotent
        del self.workers[ws.address]
        self._worker_list = None
        self._to_fill.discard(ws)
        self._idle_candidates.discard(ws)
        if self.names.get(ws.name) == ws.address:
            del self.names[ws.name]
        # A worker we told to close leaves cleanly, whatever its connection says.
        safe = ev.safe
        if ws.address in self.told_to_close:
            self.told_to_close.discard(ws.address)
            safe = True
        recs: Recommendations = {}
        for ts in list(ws.processing):
            if not safe:
                ts.suspicious += 1
                ts.died_on += (ws.address,)
            ts.processing_on = None
            # _leave_processing will not see this task (no processing_on
            # any more): forget its steal here, or a KilledWorker leaves a
            # stale entry for an erred task.
            self.stealing.pop(ts, None)
            self._release_resources(ts, ws)
            if ts.suspicious > self.allowed_failures:
                self._set_exception(
                    ts,
                    KilledWorker(ts.key, list(ts.died_on), self.allowed_failures),
                    worker=ws.address,
                )
                ts.state = "processing-lost"
                recs[ts] = "erred"
            else:
                ts.state = "processing-lost"
                recs[ts] = "released"
        ws.processing.clear()
        ws.occupancy = 0.0
        for ts in list(ws.has_what):
            ts.who_has.discard(ws)
            if not ts.who_has:
                if ts.runnable:
                    recs[ts] = "released"
                else:
                    self._set_exception(
                        ts,
                        LostData(f"scattered data {ts.key!r} was lost with worker {ws.address} and cannot be recomputed"),
                        worker=ws.address,
                    )
                    recs[ts] = "erred"
        ws.has_what.clear()
        ws.nbytes = 0
        self._transitions(recs)

    def _heartbeat(self, ev: HeartbeatEvent) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            raise InvalidEvent(f"heartbeat from unknown worker {ev.worker}")
        ws.metrics = dict(ev.metrics)
        ws.last_seen = self.now
        paused = bool(ev.metrics.get("paused"))
        if paused and ws.status == "running":
            ws.status = "paused"
        elif not paused and ws.status == "paused":
            ws.status = "running"
            recs: Recommendations = {ts: "processing" for ts in self.unrunnable if ts.state == "no-worker"}
            self._to_fill.add(ws)
            self._transitions(recs)
        self._out.append(ToWorker(ws.address, HeartbeatAck(heartbeat_interval=self.heartbeat_interval(), worker_ttl=self.worker_ttl_now())))

    # ------------------------------------------------------------ clients

    def _add_client(self, ev: AddClientEvent) -> None:
        if ev.client in self.clients:
            raise InvalidEvent(f"client {ev.client} is already registered")
        self.clients[ev.client] = ClientState(ev.client)

    def _remove_client(self, ev: RemoveClientEvent) -> None:
        cs = self.clients.pop(ev.client, None)
        if cs is None:
            return
        recs: Recommendations = {}
        for ts in cs.wants_what:
            ts.who_wants.discard(cs)
            self._maybe_release(ts, recs)
        cs.wants_what.clear()
        self._transitions(recs)

    # ------------------------------------------------------------ liveness, fire-and-forget

    def _tick(self, ev: TickEvent) -> None:
        ttl = self.worker_ttl_now()
        now = self.now
        silent = [ws for ws in self.workers.values() if now - ws.last_seen > ttl]
        for ws in silent:
            ws.status = "closing"  # gets none of the tasks of the others
        for ws in silent:
            reason = f"silent for {now - ws.last_seen:.1f}s (ttl {ttl:.1f}s)"
            self._remove_worker(RemoveWorkerEvent(address=ws.address, reason=reason))
            self._out.append(DropWorker(ws.address, reason))
        if len(silent) > 1:
            # Removing one may have sent a message (a FreeKeys) to another
            # that is gone by the end of the tick: nobody to send it to.
            gone = {ws.address for ws in silent}
            self._out = [i for i in self._out if not (type(i) is ToWorker and i.address in gone)]

    def _fire_and_forget_keys(self, ev: FireAndForgetEvent) -> None:
        ff = self.fire_and_forget
        recs: Recommendations = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state in ("memory", "erred", "forgotten") or ff in ts.who_wants:
                continue  # unknown, or already finished: nothing to keep
            ts.who_wants.add(ff)
            ff.wants_what.add(ts)
            if ts.state == "released" and ts.runnable:
                recs[ts] = "waiting"
            elif ts.state == "released":
                self._set_exception(ts, LostData(f"scattered data {ts.key!r} was released and cannot be recomputed"))
                recs[ts] = "erred"
        self._transitions(recs)

    # ------------------------------------------------------------ retirement

    def _retire_workers(self, ev: RetireWorkersEvent) -> None:
        addresses: list[str] = []
        for a in ev.workers:
            address = a if a in self.workers else self.names.get(a)
            if address is not None and address not in addresses:
                addresses.append(address)
        if ev.request in self.retirements or ev.request in self.restarts:
            raise InvalidEvent(f"request {ev.request!r} is already under way")
        r = Retirement(ev.request, addresses, self.now + max(ev.timeout, 0.0))
        leaving = set(addresses)
        staying = [w for a, w in self.workers.items() if a not in leaving and w.status == "running"]
        for a in addresses:
            ws = self.workers[a]
            if ws.status == "closing":
                continue  # on its way out already
            ws.status = "retiring"
            self._to_fill.discard(ws)
            self._idle_candidates.discard(ws)
        if staying:
            plans: dict[str, tuple[dict[str, list[str]], dict[str, int]]] = {}
            load = {w.address: w.nbytes for w in staying}
            for a in addresses:
                for ts in self.workers[a].has_what:
                    if ts in r.pending or not self._only_on(ts, leaving):
                        continue
                    # Once each (even when several retiring workers hold it),
                    # to the staying worker holding the fewest bytes so far.
                    target = min(load, key=load.__getitem__)
                    load[target] += max(ts.nbytes, 0)
                    who, nb = plans.setdefault(target, ({}, {}))
                    who[ts.key] = [w.address for w in ts.who_has]
                    nb[ts.key] = ts.nbytes
                    r.pending[ts] = None
            for target, (who, nb) in plans.items():
                self._out.append(ToWorker(target, AcquireReplicas(who_has=who, nbytes=nb)))
        self.retirements[r.request] = r

    @staticmethod
    def _only_on(ts: TaskState, leaving: set[str]) -> bool:
        return ts.state == "memory" and all(w.address in leaving for w in ts.who_has)

    def _progress_requests(self) -> None:
        """End the retirements and restarts that are over (after every event
        while any is under way)."""
        for r in list(self.retirements.values()):
            leaving = set(r.addresses)
            for ts in [t for t in r.pending if not self._only_on(t, leaving)]:
                del r.pending[ts]
            if not r.pending or self.now >= r.deadline:
                self._finish_retirement(r)
        for rs in list(self.restarts.values()):
            if len(rs.answered) == len(rs.nannies):
                back = sum(1 for w in self.workers.values() if w.nanny)
                if back >= len(rs.nannies) - len(rs.failed):
                    del self.restarts[rs.request]
                    error = "restart failed for " + "; ".join(rs.failed) if rs.failed else ""
                    self._out.append(RestartDone(rs.request, error))
                    continue
            if self.now >= rs.deadline:
                del self.restarts[rs.request]
                self._out.append(RestartDone(rs.request, f"restart: workers did not come back within {rs.timeout}s"))

    def _finish_retirement(self, r: Retirement) -> None:
        del self.retirements[r.request]
        stuck: dict[str, list[str]] = {}
        for ts in r.pending:
            for w in ts.who_has:
                stuck.setdefault(w.address, []).append(ts.key)
        retired: list[str] = []
        wake = False
        for a in r.addresses:
            ws = self.workers.get(a)
            if ws is None:
                continue
            if a in stuck:
                # Closing it would lose data: it stays, and works again.
                if ws.status == "retiring":
                    ws.status = "paused" if ws.metrics.get("paused") else "running"
                    if ws.status == "running":
                        self._to_fill.add(ws)
                        self._idle_candidates.add(ws)
                        wake = True
                continue
            self.told_to_close.add(a)
            ws.status = "closing"
            self._out.append(ToWorker(a, CloseWorker(reason="retired")))
            retired.append(a)
        self._out.append(RetirementDone(r.request, retired, stuck))
        if wake:
            self._transitions({ts: "processing" for ts in self.unrunnable if ts.state == "no-worker"})

    # ------------------------------------------------------------ restart

    def _restart(self, ev: RestartEvent) -> None:
        if ev.request in self.retirements or ev.request in self.restarts:
            raise InvalidEvent(f"request {ev.request!r} is already under way")
        # The workers without a nanny are closing before anything is
        # cancelled, and every key is cancelled in one cascade: cancelling
        # one client's keys after another let a slot freed by the first
        # start a queued task of the next (cancelled right after, in the
        # same batch, on a worker told to close).
        closing = [a for a, ws in self.workers.items() if not ws.nanny]
        for address in closing:
            self.told_to_close.add(address)
            self.workers[address].status = "closing"
            self._to_fill.discard(self.workers[address])
            self._idle_candidates.discard(self.workers[address])
        keys = list(dict.fromkeys(ts.key for cs in [*self.clients.values(), self.fire_and_forget] for ts in cs.wants_what))
        if keys:
            self._cancel(keys)
        for address in closing:
            self._out.append(ToWorker(address, CloseWorker(reason="restart (no nanny to restart it)")))
        nannies = [w.nanny for w in self.workers.values() if w.nanny]
        rs = Restart(ev.request, nannies, self.now + ev.timeout)
        rs.timeout = ev.timeout
        for nanny in nannies:
            self._out.append(RestartNanny(ev.request, nanny))
        self.restarts[rs.request] = rs

    def _nanny_restarted(self, ev: NannyRestartedEvent) -> None:
        rs = self.restarts.get(ev.request)
        if rs is None or ev.nanny not in rs.nannies or ev.nanny in rs.answered:
            return  # late (the restart is over) or not asked
        rs.answered.add(ev.nanny)
        if ev.error:
            rs.failed.append(f"{ev.nanny}: {ev.error}")
