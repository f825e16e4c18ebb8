"""The state machine's invariants, checked all at once (tests, ``validate=True``)."""

from __future__ import annotations

from .entities import ALL_STATES
from .stealing import StealingLayer


class ValidationLayer(StealingLayer):
    def validate(self) -> None:
        """Check every invariant; raise AssertionError naming the broken one."""
        counts = dict.fromkeys(ALL_STATES[:-1], 0)
        for key, ts in self.tasks.items():
            assert ts.key == key, (key, ts)
            assert ts.state in ALL_STATES[:-1], f"{ts!r} in unknown state"
            counts[ts.state] += 1
            for dts in ts.dependencies:
                assert dts.key in self.tasks, f"{ts!r} depends on forgotten {dts!r}"
                assert ts in dts.dependents, f"{ts!r} not among dependents of {dts!r}"
            for dts in ts.dependents:
                assert dts.key in self.tasks, f"{ts!r} has forgotten dependent {dts!r}"
                assert ts in dts.dependencies
            for cs in ts.who_wants:
                assert ts in cs.wants_what, (ts, cs)
                assert self.clients.get(cs.client_id) is cs or cs is self.fire_and_forget, (ts, cs)
                if cs is self.fire_and_forget:
                    assert ts.state not in ("memory", "erred"), f"{ts!r} finished but still fire-and-forget"
            for ws in ts.who_has:
                assert ts in ws.has_what, (ts, ws)
                assert self.workers.get(ws.address) is ws, f"{ts!r} held by removed {ws!r}"
            if ts.state == "memory":
                assert ts.who_has, f"{ts!r} in memory with no holder"
                assert ts.processing_on is None
                assert not ts.waiting_on
            else:
                assert not ts.who_has, f"{ts!r} has holders but is {ts.state}"
            if ts.state == "processing":
                pws = ts.processing_on
                assert pws is not None and ts in pws.processing, ts
                # The very object: a worker back on the same address is new.
                assert self.workers.get(pws.address) is pws, f"{ts!r} processing on removed {pws!r}"
                for dts in ts.dependencies:
                    assert dts.who_has, f"{ts!r} processing while {dts!r} has no data"
                assert not ts.waiting_on
            else:
                assert ts.processing_on is None, ts
            if ts.state == "waiting":
                assert ts.runnable
                for dts in ts.waiting_on:
                    assert not dts.who_has, (ts, dts)
                    assert ts in dts.waiters, (ts, dts)
                    assert dts.state in ("waiting", "no-worker", "queued", "processing", "released"), (ts, dts)
                for dts in ts.dependencies:
                    if not dts.who_has:
                        assert dts in ts.waiting_on, (ts, dts)
            if ts.state == "no-worker":
                assert ts in self.unrunnable
                for dts in ts.dependencies:
                    assert dts.who_has, (ts, dts)
            else:
                assert ts not in self.unrunnable, ts
            for dts in ts.waiters:
                assert dts.state in ("waiting", "no-worker", "processing"), f"{dts!r} waits on {ts!r}"
                assert ts in dts.dependencies
            if ts.state in ("waiting", "no-worker", "queued", "processing"):
                assert ts.who_wants or ts.waiters, f"{ts!r} is active but nothing wants it"
            if ts.state == "queued":
                assert ts in self.queued and not ts.dependencies, ts
            else:
                assert ts not in self.queued, ts
            if ts.state in ("released", "erred", "memory") and not ts.who_wants and not ts.waiters:
                if ts.state == "memory":
                    raise AssertionError(f"{ts!r} in memory but unwanted")
                if not ts.dependents:
                    raise AssertionError(f"{ts!r} should have been forgotten")
        assert counts == self.task_counts, (counts, self.task_counts)
        assert not self._to_run and not self._maybe_unwanted and not self._pending_unrunnable
        for ts in self.stealing:
            assert ts.state == "processing" and ts.key in self.tasks, ts
        if self.queued:
            # Queued tasks wait only while every running worker is saturated.
            assert not any(w.status == "running" and not self._saturated(w) for w in self.workers.values()), "queued tasks while a worker has room"
        retiring = {a for r in self.retirements.values() for a in r.addresses}
        for address, ws in self.workers.items():
            assert ws.address == address
            # Retiring only while a retirement is under way; told to close
            # means closing (which also a silent worker is, within its tick).
            assert (ws.status == "retiring") <= (address in retiring), ws
            assert (address in self.told_to_close) <= (ws.status == "closing"), ws
            assert ws.status != "closing" or address in self.told_to_close, ws
            for ts in ws.processing:
                assert ts.processing_on is ws and ts.state == "processing", (ws, ts)
            assert ws.long_running <= ws.processing.keys(), (ws, ws.long_running)
            for ts in ws.has_what:
                assert ws in ts.who_has, (ws, ts)
            for name, used in ws.used_resources.items():
                assert used >= -1e-9, (ws, name, used)
                assert used <= ws.resources.get(name, 0) + 1e-9, (ws, name, used)
        assert self.told_to_close <= set(self.workers), self.told_to_close
        for r in self.retirements.values():
            assert r.request not in self.restarts
            for ts in r.pending:
                assert ts.state == "memory" and all(w.address in r.addresses for w in ts.who_has), (r.request, ts)
        assert self.fire_and_forget.client_id not in self.clients or self.clients[self.fire_and_forget.client_id] is not self.fire_and_forget
        for cs in [*self.clients.values(), self.fire_and_forget]:
            for ts in cs.wants_what:
                assert cs in ts.who_wants and ts.key in self.tasks, (cs, ts)
