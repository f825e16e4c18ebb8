"""Semaphores: at most ``max_leases`` leases per name (dask's ``Semaphore``).

A lease belongs to a client (and, for a task's client, a worker).  Holders
renew their leases (``SemaphoreRefresh``) more often than ``lease_timeout``;
a lease not renewed for that long expires, and so do all leases of a client
or worker that leaves: a killed holder never keeps a lease.  Waiting
acquirers are served FIFO whenever a lease frees up.

A semaphore lives while a client that created it is connected (or until
``SemaphoreClose``).
"""

from __future__ import annotations

from typing import Any

from ...records import Record, record
from ._base import TIMED_OUT, Extension, ExtensionError, Reply, Waiter, deadline

__all__ = [
    "SemaphoreAcquire",
    "SemaphoreClose",
    "SemaphoreCreate",
    "SemaphoreExtension",
    "SemaphoreRefresh",
    "SemaphoreRelease",
    "SemaphoreValue",
]


@record(kw_only=True)
class SemaphoreCreate(Record):
    request: int
    client: str
    name: str
    max_leases: int


@record(kw_only=True)
class SemaphoreAcquire(Record):
    request: int
    client: str
    name: str
    lease_id: str
    timeout: float | None = None
    worker: str = ""


@record(kw_only=True)
class SemaphoreRelease(Record):
    request: int
    client: str
    name: str
    lease_id: str


@record(kw_only=True)
class SemaphoreRefresh(Record):
    request: int
    client: str
    name: str
    lease_ids: tuple[str, ...]


@record(kw_only=True)
class SemaphoreValue(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class SemaphoreClose(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class Lease(Record):
    client: str
    worker: str
    renewed: float


class _Semaphore:
    __slots__ = ("leases", "max_leases", "users")

    def __init__(self, max_leases: int) -> None:
        self.max_leases = max_leases
        self.leases: dict[str, Lease] = {}
        self.users: set[str] = set()


class SemaphoreExtension(Extension):
    """Replies: create -> max_leases in force; acquire -> True or TIMED_OUT;
    release -> bool (False: the lease was not held, e.g. it expired);
    refresh/close -> None; value -> number of leases held."""

    def __init__(self, holds: Any = None, *, lease_timeout: float = 30.0) -> None:
        super().__init__(holds)
        self.lease_timeout = lease_timeout
        self.sems: dict[str, _Semaphore] = {}

    def _sem(self, name: str) -> _Semaphore:
        s = self.sems.get(name)
        if s is None:
            raise ExtensionError(f"no semaphore named {name!r} (create it first)")
        return s

    def _on_SemaphoreCreate(self, ev: SemaphoreCreate, now: float, out: list[Any]) -> None:
        if ev.max_leases < 1:
            raise ExtensionError(f"max_leases must be at least 1, not {ev.max_leases}")
        s = self.sems.get(ev.name)
        if s is None:
            s = self.sems[ev.name] = _Semaphore(ev.max_leases)
        s.users.add(ev.client)
        out.append(Reply(ev.request, s.max_leases))

    def _on_SemaphoreAcquire(self, ev: SemaphoreAcquire, now: float, out: list[Any]) -> None:
        s = self._sem(ev.name)
        if ev.lease_id in s.leases or any(w.data[0] == ev.lease_id for w in self.waiters.queue(ev.name)):
            raise ExtensionError(f"lease {ev.lease_id!r} of semaphore {ev.name!r} is already held or waiting")
        if len(s.leases) < s.max_leases and not self.waiters.queue(ev.name):
            s.leases[ev.lease_id] = Lease(client=ev.client, worker=ev.worker, renewed=now)
            out.append(Reply(ev.request, True))
        elif ev.timeout is not None and ev.timeout <= 0:
            out.append(Reply(ev.request, TIMED_OUT))
        else:
            self.waiters.add(ev.name, Waiter(ev.request, ev.client, deadline(now, ev.timeout), (ev.lease_id, ev.worker)))

    def _on_SemaphoreRelease(self, ev: SemaphoreRelease, now: float, out: list[Any]) -> None:
        s = self._sem(ev.name)
        held = s.leases.pop(ev.lease_id, None) is not None
        for w in self.waiters.queue(ev.name):
            if w.data[0] == ev.lease_id:  # an acquirer that gave up withdraws its wait
                self.waiters.remove(w.request)
                out.append(Reply(w.request, TIMED_OUT))
                break
        self._grant(ev.name, now, out)
        out.append(Reply(ev.request, held))

    def _on_SemaphoreRefresh(self, ev: SemaphoreRefresh, now: float, out: list[Any]) -> None:
        s = self.sems.get(ev.name)
        if s is not None:
            for lid in ev.lease_ids:
                lease = s.leases.get(lid)
                if lease is not None:
                    s.leases[lid] = Lease(client=lease.client, worker=lease.worker, renewed=now)
        out.append(Reply(ev.request, None))

    def _on_SemaphoreValue(self, ev: SemaphoreValue, now: float, out: list[Any]) -> None:
        out.append(Reply(ev.request, len(self._sem(ev.name).leases)))

    def _on_SemaphoreClose(self, ev: SemaphoreClose, now: float, out: list[Any]) -> None:
        if ev.name in self.sems:
            self._delete(ev.name, out)
        out.append(Reply(ev.request, None))

    def _delete(self, name: str, out: list[Any]) -> None:
        while self.waiters.queue(name):
            out.append(Reply(self.waiters.pop_first(name).request, ExtensionError(f"semaphore {name!r} was closed")))
        del self.sems[name]

    def _grant(self, name: str, now: float, out: list[Any]) -> None:
        s = self.sems[name]
        while self.waiters.queue(name) and len(s.leases) < s.max_leases:
            w = self.waiters.pop_first(name)
            lease_id, worker = w.data
            s.leases[lease_id] = Lease(client=w.client, worker=worker, renewed=now)
            out.append(Reply(w.request, True))

    def _expire(self, now: float, out: list[Any], doomed: Any) -> None:
        for name, s in list(self.sems.items()):
            gone = [lid for lid, lease in s.leases.items() if doomed(lease)]
            for lid in gone:
                del s.leases[lid]
            if gone:
                self._grant(name, now, out)

    def tick(self, now: float) -> list[Any]:
        out = super().tick(now)
        self._expire(now, out, lambda lease: lease.renewed + self.lease_timeout <= now)
        return out

    def next_deadline(self) -> float | None:
        ds = [lease.renewed + self.lease_timeout for s in self.sems.values() for lease in s.leases.values()]
        w = self.waiters.next_deadline()
        if w is not None:
            ds.append(w)
        return min(ds) if ds else None

    def remove_worker(self, worker: str, now: float) -> list[Any]:
        out: list[Any] = []
        if worker:
            # Its waiting acquirers first: the leases freed must not go to them.
            for name in list(self.waiters.by_name):
                for w in list(self.waiters.queue(name)):
                    if w.data[1] == worker:
                        self.waiters.remove(w.request)
                        out.append(Reply(w.request, ExtensionError(f"worker {worker} left")))
            self._expire(now, out, lambda lease: lease.worker == worker)
        return out

    def _abandon(self, ev: Any, now: float, out: list[Any]) -> None:
        s = self.sems.get(ev.name) if type(ev) is SemaphoreAcquire else None
        if s is not None and s.leases.pop(ev.lease_id, None) is not None:
            self._grant(ev.name, now, out)

    def _client_gone(self, client: str, now: float, out: list[Any]) -> None:
        for name, s in list(self.sems.items()):
            gone = [lid for lid, lease in s.leases.items() if lease.client == client]
            for lid in gone:
                del s.leases[lid]
            if gone:
                self._grant(name, now, out)
            s.users.discard(client)
            if not s.users and not s.leases:
                self._delete(name, out)

    def validate(self) -> None:
        super().validate()
        for name, s in self.sems.items():
            assert len(s.leases) <= s.max_leases, f"semaphore {name!r} over-leased"
            if self.waiters.queue(name):
                assert len(s.leases) == s.max_leases, f"semaphore {name!r} has room and waiters"
        for name in self.waiters.by_name:
            assert name in self.sems
