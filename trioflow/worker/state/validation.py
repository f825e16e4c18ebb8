"""Validation: every invariant of the worker's state, checked at once.

:func:`check` is what :meth:`WorkerState.validate
<trioflow.worker.state.WorkerState.validate>` runs (after every event when
the machine is made with ``validate=True``, as the tests and the
hypothesis machine do).  It reads, never changes; an ``AssertionError``
names the task at fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .entities import WORKER_STATES

if TYPE_CHECKING:
    from .machine import WorkerState

__all__ = ["check"]


def check(ws: WorkerState) -> None:
    """Assert every invariant of ``ws``."""
    for key, ts in ws.tasks.items():
        assert ts.key == key
        assert ts.state in WORKER_STATES, ts
        if ts.state == "waiting":
            assert ts.waiting_for, ts
            for d in ts.waiting_for:
                assert d.state in ("fetch", "flight", "executing", "waiting", "ready"), (ts, d)
        if ts.state == "ready":
            assert not ts.waiting_for, ts
        if ts.state == "executing":
            assert ts in ws.executing
        else:
            assert not ts.replica, ts
        if ts.state == "flight":
            assert ts.coming_from and ts in ws.in_flight_workers.get(ts.coming_from, ()), ts
    for ts in ws.executing:
        assert ts.state == "executing" and ws.tasks.get(ts.key) is ts, ts
    for key in ws.superseded:
        # Never a second run of a key beside its superseded one.
        t = ws.tasks.get(key)
        assert t is None or t.state not in ("waiting", "ready", "executing"), t
    for key in ws.seceded:
        # A seceded run is still a run: current or superseded.
        t = ws.tasks.get(key)
        assert key in ws.superseded or (t is not None and t in ws.executing), key
    assert set(ws.rejoining) <= ws.seceded, ws.rejoining
    assert ws.n_executing <= ws.slots
    # No thread idles while a ready task could run: every ready task is
    # queued, or set aside because its resources are taken right now.
    # (Only the first in priority order counts: a task measured short
    # waits behind a long one that may not be prefetched.)
    if not ws.paused and ws.n_executing < ws.slots:
        head = min((e for e in ws.ready if e[2].state == "ready"), default=None, key=lambda e: e[:2])
        assert head is None or not ws._may_start(head[2]), "a ready task waits while a slot is free"
    for _, _, t in ws.constrained:
        assert t.state != "ready" or not ws._fits(t), f"{t!r} set aside although its resources are free"
