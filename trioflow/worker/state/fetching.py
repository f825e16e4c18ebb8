"""Dependencies: holding, dropping, fetching and gathering keys.

A dependency not here is fetched from a peer the scheduler names
(``who_has``).  Transfers are grouped per peer, at most
``max_transfer_bytes`` per request and ``max_concurrent_fetches`` peers at
once; a failed transfer tries the next holder, and a key with none left
makes its waiting dependents go back to the scheduler (Reschedule).

A key is dropped when the scheduler says so (:class:`FreeKeysEvent`) and no
local task still needs it.  A copy asked for by the scheduler
(:class:`AcquireReplicasEvent`: its only holder is retiring) is fetched, and
announced once here.  The scheduler has the key in memory elsewhere, so a
compute of it here is stale: one not started yet gives way to the fetch; a
run already going on is let finish and its result reported, and should it
fail, the key is fetched after all.

The helpers that move a task in and out of memory and drop it live here
too, as every other part of the machine uses them.
"""

from __future__ import annotations

import heapq

from ...protocol.messages import MissingData, Reschedule
from .entities import WorkerStateRecord, WorkerTask
from .events import (
    AcquireReplicasEvent,
    FreeKeysEvent,
    GatherDepDoneEvent,
    GatherDepFailedEvent,
    InvalidWorkerEvent,
)
from .instructions import DropData, GatherDep, SendMsg

__all__ = ["Fetching"]


class Fetching(WorkerStateRecord):
    """Dependency handling of :class:`~trioflow.worker.state.WorkerState`."""

    def _free_keys(self, ev: FreeKeysEvent) -> None:
        self._freeing = True
        try:
            for key in ev.keys:
                ts = self.tasks.get(key)
                if ts is None:
                    continue
                ts.wanted = False
                ts.replica = False
                self._maybe_drop(ts)
        finally:
            self._freeing = False


    def _gather_done(self, ev: GatherDepDoneEvent) -> None:
        in_flight = self.in_flight_workers.pop(ev.worker, None)
        if in_flight is None:
            raise InvalidWorkerEvent(f"no transfer from {ev.worker} in flight")
        for dts in in_flight:
            if dts.key in ev.nbytes:
                dts.nbytes = ev.nbytes[dts.key]
                dts.cancelled = False
                self._set_memory(dts)
                # Not "cancelled or not needed": a task sent since the fetch
                # was cancelled may need it again, and lost it with the drop.
                if not self._needed(dts):
                    self._out.append(DropData(dts.key))
                    self._set_gone(dts)
                    continue
                # The scheduler learns of this copy (AddKeys) and frees it
                # with the key: keep it until then, like any other replica.
                dts.wanted = True
                self._pending_add_keys[dts.key] = dts.nbytes
                self._wake_dependents(dts)
            else:
                self._fetch_failed_from(dts, ev.worker)
        # Keys that arrived but were taken off this transfer meanwhile (now
        # computed here, say): the shell stored them all the same.  Unless
        # the key is in memory here anyway, drop the copy, or the store
        # keeps a value the state does not know of.
        asked = {t.key for t in in_flight}
        for key in ev.nbytes:
            if key not in asked:
                t = self.tasks.get(key)
                if t is None or t.state != "memory":
                    self._out.append(DropData(key))

    def _wake_dependents(self, ts: WorkerTask) -> None:
        for t in ts.dependents:
            t.waiting_for.discard(ts)
            if not t.waiting_for and t.state == "waiting":
                self._make_ready(t)

    def _gather_failed(self, ev: GatherDepFailedEvent) -> None:
        in_flight = self.in_flight_workers.pop(ev.worker, None)
        if in_flight is None:
            raise InvalidWorkerEvent(f"no transfer from {ev.worker} in flight")
        for dts in in_flight:
            self._fetch_failed_from(dts, ev.worker)
        # That peer is likely gone: stop trying it for anything else.
        for dts in list(self.fetch_by_worker.pop(ev.worker, {})):
            if ev.worker in dts.who_has:
                dts.who_has.remove(ev.worker)
            if dts.state == "fetch":
                self._queue_fetch(dts)


    def _acquire_replicas(self, ev: AcquireReplicasEvent) -> None:
        """The scheduler wants a copy of keys it has in memory elsewhere
        (their holder retires) and waits until it hears of one here."""
        for key, holders in ev.who_has.items():
            others = [w for w in holders if w != self.address]
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WorkerTask(key)
                ts.state = "fetch"
                ts.wanted = True
                ts.nbytes = max(ev.nbytes.get(key, 0), 0)
                ts.who_has = others
                self._queue_fetch(ts)
                continue
            ts.wanted = True
            # More places to fetch it from, should the ones known fail.
            ts.who_has.extend(w for w in others if w not in ts.who_has)
            if ts.state != "memory" and ev.nbytes.get(key, -1) >= 0:
                ts.nbytes = ev.nbytes[key]
            if ts.state == "memory":
                # Kept here without the scheduler counting it (it would not
                # ask us otherwise, and waits): tell it.
                self._pending_add_keys[key] = ts.nbytes
            elif ts.state == "executing":
                # A stale run (the key is in memory elsewhere): its result
                # will do, reported as usual; should it fail, fetch.
                ts.replica = True
            elif ts.state in ("waiting", "ready", "erred"):
                # A stale compute that has not started, or has failed:
                # fetch the key rather than compute it (what it waits for
                # may never come: it was rescheduled then, not fetched).
                self._release_deps_of(ts)
                ts.waiting_for.clear()
                ts.state = "fetch"  # (a ready task's heap entry goes stale)
                self._queue_fetch(ts)
            # fetch, flight: on its way already.


    def _make_ready(self, ts: WorkerTask) -> None:
        ts.state = "ready"
        self._seq += 1
        heapq.heappush(self.ready, (ts.priority, self._seq, ts))


    def _set_memory(self, ts: WorkerTask) -> None:
        if ts.state != "memory":
            self.nbytes_in_memory += max(ts.nbytes, 0)
        ts.state = "memory"
        ts.coming_from = ""
        ts.replica = False

    def _needed(self, ts: WorkerTask) -> bool:
        return ts.wanted or any(t.state in ("waiting", "ready") for t in ts.dependents)

    def _release_deps_of(self, ts: WorkerTask) -> None:
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            self._maybe_drop(dts)
        ts.dependencies.clear()

    def _maybe_drop(self, ts: WorkerTask) -> None:
        if ts.wanted or any(t.state in ("waiting", "ready", "executing") for t in ts.dependents):
            return
        state = ts.state
        if state == "executing":
            ts.cancelled = True
        elif state == "flight":
            ts.cancelled = True
        elif state == "memory":
            self._out.append(DropData(ts.key))
            # (Before _set_gone, which drops the pending announcement.)
            announced = ts.key not in self._pending_add_keys
            self._set_gone(ts)
            if not self._freeing:
                # Our own decision (a fetched copy nothing here needs any
                # more): the scheduler counted this replica, so tell it.
                if announced:
                    self._pending_release.append(ts.key)
        else:
            self._drop(ts)

    def _drop(self, ts: WorkerTask) -> None:
        if ts.state == "ready":
            ts.state = "dropped"  # lazily removed from the heap
        elif ts.state == "fetch":
            self._forget_fetch(ts)
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            if not dts.wanted:
                self._maybe_drop(dts)
        ts.dependencies.clear()
        ts.waiting_for.clear()
        self._set_gone(ts)

    def _set_gone(self, ts: WorkerTask) -> None:
        if ts.state == "memory":
            self.nbytes_in_memory -= max(ts.nbytes, 0)
            # Dropped in the same event it arrived: do not announce it.
            self._pending_add_keys.pop(ts.key, None)
        if ts.state == "ready":
            ts.state = "dropped"
        if self.tasks.get(ts.key) is ts:
            del self.tasks[ts.key]
        if ts.state != "dropped":
            ts.state = "forgotten"
        for t in list(ts.dependents):
            t.dependencies.discard(ts)
            t.waiting_for.discard(ts)
        ts.dependents.clear()

    def _queue_fetch(self, dts: WorkerTask) -> None:
        if not dts.who_has:
            self._missing(dts)
            return
        # Prefer a peer we are not already fetching from, then the least busy.
        best = min(dts.who_has, key=lambda w: (w in self.in_flight_workers, len(self.fetch_by_worker.get(w, ()))))
        self.fetch_by_worker.setdefault(best, {})[dts] = None

    def _forget_fetch(self, dts: WorkerTask) -> None:
        for w, group in list(self.fetch_by_worker.items()):
            group.pop(dts, None)
            if not group:
                del self.fetch_by_worker[w]
        if dts.state == "flight" and dts.coming_from:
            flight = self.in_flight_workers.get(dts.coming_from)
            if flight is not None:
                flight.discard(dts)
        dts.coming_from = ""

    def _fetch_failed_from(self, dts: WorkerTask, worker: str) -> None:
        if dts.state != "flight":
            return
        dts.coming_from = ""
        if worker in dts.who_has:
            dts.who_has.remove(worker)
        if not self._needed(dts):  # see _gather_done
            self._set_gone(dts)
            return
        dts.cancelled = False
        self._out.append(SendMsg(MissingData(key=dts.key, worker=worker)))
        dts.state = "fetch"
        self._queue_fetch(dts)

    def _missing(self, dts: WorkerTask) -> None:
        """No known holder for a dependency: fail the dependents back to the
        scheduler so that it reschedules them with fresh locations."""
        # Transitively: a rescheduled task that other local tasks wait for
        # would otherwise vanish from under them, leaving them 'waiting' for
        # nothing.  Tasks kept only as dependencies (the scheduler freed
        # them) go without a word.
        stack = [t for t in dts.dependents if t.state == "waiting"]
        while stack:
            t = stack.pop()
            if t.state != "waiting":
                continue
            if t.wanted:
                self._out.append(SendMsg(Reschedule(key=t.key)))
            stack.extend(d for d in t.dependents if d.state == "waiting")
            self._drop(t)
        self._set_gone(dts)


    def _start_transfers(self) -> None:
        """Start transfers: one request per peer, up to max_concurrent_fetches peers."""
        while self.fetch_by_worker and len(self.in_flight_workers) < self.max_concurrent_fetches:
            candidates = [w for w in self.fetch_by_worker if w not in self.in_flight_workers]
            if not candidates:
                break
            worker = candidates[0]
            group = self.fetch_by_worker.pop(worker)
            chosen: list[WorkerTask] = []
            total = 0
            for dts in sorted(group, key=lambda t: min((d.priority for d in t.dependents), default=(0, 0, 0))):
                if dts.state != "fetch":
                    continue
                if chosen and total + dts.nbytes > self.max_transfer_bytes:
                    self.fetch_by_worker.setdefault(worker, {})[dts] = None
                    continue
                chosen.append(dts)
                total += max(dts.nbytes, 0)
            if not chosen:
                continue
            for dts in chosen:
                dts.state = "flight"
                dts.coming_from = worker
            self.in_flight_workers[worker] = set(chosen)
            self._out.append(GatherDep(worker, tuple(d.key for d in chosen), total))
