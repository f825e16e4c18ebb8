"""Locks: one holder per name, waiting acquirers served FIFO (dask's ``Lock``).

A holder is a lock instance's id (several instances of one name are distinct
holders).  A lock held by a client that leaves is released, so the next
waiter gets it: a crashed client never keeps a lock.
"""

from __future__ import annotations

from typing import Any

from ...records import Record, record
from ._base import TIMED_OUT, Extension, ExtensionError, Reply, Waiter, deadline

__all__ = ["LockAcquire", "LockExtension", "LockLocked", "LockRelease"]


@record(kw_only=True)
class LockAcquire(Record):
    request: int
    client: str
    name: str
    id: str
    #: None waits forever; 0 does not wait (``blocking=False``).
    timeout: float | None = None


@record(kw_only=True)
class LockRelease(Record):
    request: int
    client: str
    name: str
    id: str


@record(kw_only=True)
class LockLocked(Record):
    request: int
    client: str
    name: str


class LockExtension(Extension):
    """Replies: acquire -> True or TIMED_OUT; release -> None; locked -> bool."""

    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        #: name -> (holder id, its client)
        self.holders: dict[str, tuple[str, str]] = {}

    def _on_LockAcquire(self, ev: LockAcquire, now: float, out: list[Any]) -> None:
        holder = self.holders.get(ev.name)
        if holder is not None and holder[0] == ev.id:
            raise ExtensionError(f"lock {ev.name!r} is already held by this Lock instance")
        if holder is None and not self.waiters.queue(ev.name):
            self.holders[ev.name] = (ev.id, ev.client)
            out.append(Reply(ev.request, True))
        elif ev.timeout is not None and ev.timeout <= 0:
            out.append(Reply(ev.request, TIMED_OUT))
        else:
            self.waiters.add(ev.name, Waiter(ev.request, ev.client, deadline(now, ev.timeout), ev.id))

    def _on_LockRelease(self, ev: LockRelease, now: float, out: list[Any]) -> None:
        holder = self.holders.get(ev.name)
        if holder is not None and holder[0] == ev.id:
            self._release(ev.name, out)
        else:
            # An acquirer that gave up releases to withdraw its wait: its
            # release may overtake the news of its hang-up.
            waiting = [w for w in self.waiters.queue(ev.name) if w.data == ev.id]
            if not waiting:
                raise ExtensionError(f"lock {ev.name!r} is not held by this Lock instance")
            self.waiters.remove(waiting[0].request)
            out.append(Reply(waiting[0].request, TIMED_OUT))
        out.append(Reply(ev.request, None))

    def _on_LockLocked(self, ev: LockLocked, now: float, out: list[Any]) -> None:
        out.append(Reply(ev.request, ev.name in self.holders))

    def _release(self, name: str, out: list[Any]) -> None:
        del self.holders[name]
        if self.waiters.queue(name):
            w = self.waiters.pop_first(name)
            self.holders[name] = (w.data, w.client)
            out.append(Reply(w.request, True))

    def _abandon(self, ev: Any, now: float, out: list[Any]) -> None:
        if type(ev) is LockAcquire and self.holders.get(ev.name, ("",))[0] == ev.id:
            self._release(ev.name, out)

    def _client_gone(self, client: str, now: float, out: list[Any]) -> None:
        for name, (_, c) in list(self.holders.items()):
            if c == client:
                self._release(name, out)

    def validate(self) -> None:
        super().validate()
        for name in self.waiters.by_name:
            assert name in self.holders, f"waiters on free lock {name!r}"
