"""Multi-locks: acquire several lock names at once (dask's ``MultiLock``).

Each name has a FIFO of multi-lock ids; a request holds the names where it is
first.  A request is granted once it is first for at least ``num_locks`` of
its names (all of them by default); then it leaves the queues where it is not
first.  Releasing, withdrawing or the client leaving takes it out of every
queue and re-examines the waiting requests.  These names are a separate space
from :mod:`.lock`'s, as in dask.
"""

from __future__ import annotations

from typing import Any

from ...records import Record, record
from ._base import TIMED_OUT, Extension, ExtensionError, Reply, Waiter, deadline

__all__ = ["MultiLockAcquire", "MultiLockExtension", "MultiLockRelease"]


@record(kw_only=True)
class MultiLockAcquire(Record):
    request: int
    client: str
    id: str
    names: tuple[str, ...]
    num_locks: int | None = None
    timeout: float | None = None


@record(kw_only=True)
class MultiLockRelease(Record):
    request: int
    client: str
    id: str


class MultiLockExtension(Extension):
    """Replies: acquire -> True or TIMED_OUT; release -> None."""

    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        self.queues: dict[str, list[str]] = {}
        #: id -> (names, num_locks, client); granted ids are in ``held``.
        self.requests: dict[str, tuple[tuple[str, ...], int, str]] = {}
        self.held: set[str] = set()
        self.request_of: dict[str, int] = {}

    def _on_MultiLockAcquire(self, ev: MultiLockAcquire, now: float, out: list[Any]) -> None:
        names = tuple(dict.fromkeys(ev.names))
        if ev.id in self.requests:
            raise ExtensionError(f"multi-lock {ev.id!r} is already acquired or acquiring")
        n = len(names) if ev.num_locks is None else ev.num_locks
        if not 0 <= n <= len(names):
            raise ExtensionError(f"num_locks must be between 0 and {len(names)}, not {n}")
        when = deadline(now, ev.timeout)
        self.requests[ev.id] = (names, n, ev.client)
        for name in names:
            self.queues.setdefault(name, []).append(ev.id)
        if self._try(ev.id):
            out.append(Reply(ev.request, True))
        elif ev.timeout is not None and ev.timeout <= 0:
            self._drop(ev.id, out)
            out.append(Reply(ev.request, TIMED_OUT))
        else:
            self.waiters.add("", Waiter(ev.request, ev.client, when, ev.id))
            self.request_of[ev.id] = ev.request

    def _try(self, id: str) -> bool:
        names, n, _ = self.requests[id]
        first = [name for name in names if self.queues[name][0] == id]
        if len(first) < n:
            return False
        for name in names:
            if name not in first:
                self._leave(name, id)
        self.requests[id] = (tuple(first), n, self.requests[id][2])
        self.held.add(id)
        return True

    def _leave(self, name: str, id: str) -> None:
        q = self.queues[name]
        q.remove(id)
        if not q:
            del self.queues[name]

    def _drop(self, id: str, out: list[Any], regrant: bool = True) -> None:
        names, _, _ = self.requests.pop(id)
        self.held.discard(id)
        for name in names:
            self._leave(name, id)
        if regrant:
            self._regrant(out)

    def _regrant(self, out: list[Any]) -> None:
        # Anyone waiting may have moved up, and a grant (leaving the queues
        # where it was not first) may move up others: until nothing moves.
        moved = True
        while moved:
            moved = False
            for w in list(self.waiters.queue("")):
                if self._try(w.data):
                    self.waiters.remove(w.request)
                    del self.request_of[w.data]
                    out.append(Reply(w.request, True))
                    moved = True

    def _on_MultiLockRelease(self, ev: MultiLockRelease, now: float, out: list[Any]) -> None:
        if ev.id in self.request_of:  # an acquirer that gave up withdraws its wait
            request = self.request_of[ev.id]
            self._withdraw(request, out)
            out.append(Reply(request, TIMED_OUT))
        elif ev.id in self.held:
            self._drop(ev.id, out)
        else:
            raise ExtensionError(f"multi-lock {ev.id!r} is not held")
        out.append(Reply(ev.request, None))

    def _withdraw(self, request: int, out: list[Any]) -> None:
        found = self.waiters.remove(request)
        if found is not None:
            id = found[1].data
            del self.request_of[id]
            self._drop(id, out)

    def _abandon(self, ev: Any, now: float, out: list[Any]) -> None:
        if type(ev) is MultiLockAcquire and ev.id in self.held:
            self._drop(ev.id, out)

    def remove_client(self, client: str, now: float) -> list[Any]:
        # All of its requests go before anyone moves up: a grant must not go
        # to one of its own waits, withdrawn a moment later.
        out: list[Any] = []
        for request in self.waiters.of_client(client):
            _, w = self.waiters.remove(request)  # type: ignore[misc]
            del self.request_of[w.data]
            self._drop(w.data, out, regrant=False)
        for id in [i for i in self.held if self.requests[i][2] == client]:
            self._drop(id, out, regrant=False)
        self._regrant(out)
        return out

    def validate(self) -> None:
        super().validate()
        waiting = {w.data for w in self.waiters.queue("")}
        assert waiting | self.held == set(self.requests), "requests neither held nor waiting"
        assert not waiting & self.held
        for name, q in self.queues.items():
            assert q and len(set(q)) == len(q), name
            for id in q:
                assert name in self.requests[id][0]
        for id in self.held:
            names, n, _ = self.requests[id]
            assert len(names) >= n and all(self.queues[name][0] == id for name in names), id
        for id in waiting:
            names, n, _ = self.requests[id]
            assert sum(self.queues[name][0] == id for name in names) < n, f"{id} could be granted"
