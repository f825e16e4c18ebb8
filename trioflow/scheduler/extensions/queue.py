"""Queues: FIFO of items per name with an optional ``maxsize`` (dask's
``Queue``).

Getters and putters wait in FIFO order.  ``get`` takes one item, all items
there are (``batch=-1``, never waits) or exactly ``batch`` items, taken
together once that many are there: a timed-out batch takes none (dask takes
them one by one and drops the ones already taken when it times out).

A queue lives while some client uses it (``QueueCreate`` counts users; the
client's ``QueueRelease`` or departure uncounts them); when the last user
leaves, its items are dropped and their futures released.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ...records import Record, record
from ._base import TIMED_OUT, Extension, ExtensionError, Item, Reply, Waiter, deadline

__all__ = ["QueueCreate", "QueueExtension", "QueueGet", "QueuePut", "QueueRelease", "QueueSize"]


@record(kw_only=True)
class QueueCreate(Record):
    request: int
    client: str
    name: str
    maxsize: int = 0


@record(kw_only=True)
class QueueRelease(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class QueuePut(Record):
    request: int
    client: str
    name: str
    item: Item
    timeout: float | None = None


@record(kw_only=True)
class QueueGet(Record):
    request: int
    client: str
    name: str
    timeout: float | None = None
    #: 0: one item (reply: the Item); -1: all there are now; n > 0: n items
    #: (reply: a list of Items).
    batch: int = 0


@record(kw_only=True)
class QueueSize(Record):
    request: int
    client: str
    name: str


class _Queue:
    __slots__ = ("items", "maxsize", "users")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[Item] = deque()
        self.users: dict[str, int] = {}


class QueueExtension(Extension):
    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        self.queues: dict[str, _Queue] = {}
        # Getters wait under ("get", name), putters under ("put", name);
        # a putter's Waiter.data is its Item.

    def _queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            raise ExtensionError(f"no queue named {name!r} (create it first)")
        return q

    def _on_QueueCreate(self, ev: QueueCreate, now: float, out: list[Any]) -> None:
        if ev.maxsize < 0:
            raise ExtensionError(f"maxsize must not be negative, not {ev.maxsize}")
        q = self.queues.get(ev.name)
        if q is None:
            q = self.queues[ev.name] = _Queue(ev.maxsize)
        q.users[ev.client] = q.users.get(ev.client, 0) + 1
        out.append(Reply(ev.request, q.maxsize))

    def _on_QueueRelease(self, ev: QueueRelease, now: float, out: list[Any]) -> None:
        q = self.queues.get(ev.name)
        if q is not None and ev.client in q.users:
            q.users[ev.client] -= 1
            if not q.users[ev.client]:
                del q.users[ev.client]
            self._maybe_drop(ev.name, out)
        out.append(Reply(ev.request, None))

    def _on_QueuePut(self, ev: QueuePut, now: float, out: list[Any]) -> None:
        q = self._queue(ev.name)
        when = deadline(now, ev.timeout)
        self.holds.hold(ev.item.keys, out)
        if q.maxsize and len(q.items) >= q.maxsize:
            if ev.timeout is not None and ev.timeout <= 0:
                self.holds.unhold(ev.item.keys, out)
                out.append(Reply(ev.request, TIMED_OUT))
                return
            self.waiters.add(("put", ev.name), Waiter(ev.request, ev.client, when, ev.item))
            return
        q.items.append(ev.item)
        out.append(Reply(ev.request, True))
        self._serve(ev.name, out)

    def _on_QueueGet(self, ev: QueueGet, now: float, out: list[Any]) -> None:
        q = self._queue(ev.name)
        if ev.batch < -1:
            raise ExtensionError(f"batch must be -1, 0 or positive, not {ev.batch}")
        if ev.batch == -1:
            taken = list(q.items)
            q.items.clear()
            self._release(taken, out)
            out.append(Reply(ev.request, taken))
            self._serve(ev.name, out)
            return
        if q.maxsize and ev.batch > q.maxsize:
            raise ExtensionError(f"a batch of {ev.batch} can never come from queue {ev.name!r} of maxsize {q.maxsize}")
        when = deadline(now, ev.timeout)
        self.waiters.add(("get", ev.name), Waiter(ev.request, ev.client, when, ev.batch))
        self._serve(ev.name, out)
        if ev.request in self.waiters.names and ev.timeout is not None and ev.timeout <= 0:
            self.waiters.remove(ev.request)
            out.append(Reply(ev.request, TIMED_OUT))

    def _on_QueueSize(self, ev: QueueSize, now: float, out: list[Any]) -> None:
        out.append(Reply(ev.request, len(self._queue(ev.name).items)))

    def _release(self, items: list[Item], out: list[Any]) -> None:
        # The taker's shell makes its client want the keys before it carries
        # out this Unhold (instructions run in order), so they stay alive.
        for it in items:
            self.holds.unhold(it.keys, out)

    def _serve(self, name: str, out: list[Any]) -> None:
        """Move waiting putters' items in and hand items to waiting getters,
        FIFO, until neither can proceed."""
        q = self.queues[name]
        gets, puts = ("get", name), ("put", name)
        while True:
            moved = False
            while self.waiters.queue(puts) and not (q.maxsize and len(q.items) >= q.maxsize):
                w = self.waiters.pop_first(puts)
                q.items.append(w.data)
                out.append(Reply(w.request, True))
                moved = True
            while self.waiters.queue(gets):
                first = self.waiters.queue(gets)[0]
                need = max(first.data, 1)
                if len(q.items) < need:
                    break
                self.waiters.pop_first(gets)
                taken = [q.items.popleft() for _ in range(need)]
                self._release(taken, out)
                out.append(Reply(first.request, taken[0] if first.data == 0 else taken))
                moved = True
            if not moved:
                return

    def _withdraw(self, request: int, out: list[Any]) -> None:
        found = self.waiters.remove(request)
        if found is not None and found[0][0] == "put":
            self.holds.unhold(found[1].data.keys, out)

    def _client_gone(self, client: str, now: float, out: list[Any]) -> None:
        for name, q in list(self.queues.items()):
            if q.users.pop(client, None) is not None:
                self._maybe_drop(name, out)

    def _maybe_drop(self, name: str, out: list[Any]) -> None:
        q = self.queues[name]
        if q.users:
            return
        for key in (("get", name), ("put", name)):
            while self.waiters.queue(key):
                w = self.waiters.pop_first(key)
                if key[0] == "put":
                    self.holds.unhold(w.data.keys, out)
                out.append(Reply(w.request, _GONE))
        self._release(list(q.items), out)
        del self.queues[name]

    def validate(self) -> None:
        super().validate()
        for (kind, name), ws in self.waiters.by_name.items():
            q = self.queues.get(name)
            assert q is not None, f"waiters on missing queue {name!r}"
            if kind == "put":
                assert q.maxsize and len(q.items) >= q.maxsize, f"putter waits on a queue with room: {name!r}"
            else:
                need = max(ws[0].data, 1)
                assert len(q.items) < need, f"getter waits on a queue with enough items: {name!r}"
        for name, q in self.queues.items():
            assert q.users, f"queue {name!r} kept with no user"
            assert all(n > 0 for n in q.users.values())
            assert not q.maxsize or len(q.items) <= q.maxsize


class _Gone(ExtensionError):
    pass


#: A wait answered because the queue went away with its last user.
_GONE = _Gone("the queue was deleted")
