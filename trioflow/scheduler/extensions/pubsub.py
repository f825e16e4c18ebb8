"""Pub/Sub: messages published on a topic reach every subscriber the topic
has at that moment (dask's ``Pub`` / ``Sub``).

The scheduler routes: each subscriber has a buffer here, and its ``get``
takes the oldest message or waits for one.  A message published while a
topic has no subscriber is dropped, as in dask.  A topic is forgotten with
its last subscriber; a subscriber goes with its client.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ...records import Record, record
from ._base import TIMED_OUT, Extension, ExtensionError, Reply, Waiter, deadline

__all__ = ["PubSubExtension", "Publish", "SubscribeAdd", "SubscribeGet", "SubscribeRemove"]


@record(kw_only=True)
class SubscribeAdd(Record):
    request: int
    client: str
    name: str
    id: str


@record(kw_only=True)
class SubscribeRemove(Record):
    request: int
    client: str
    id: str


@record(kw_only=True)
class Publish(Record):
    request: int
    client: str
    name: str
    data: Any


@record(kw_only=True)
class SubscribeGet(Record):
    request: int
    client: str
    id: str
    timeout: float | None = None


class _Subscriber:
    __slots__ = ("buffer", "client", "name")

    def __init__(self, name: str, client: str) -> None:
        self.name = name
        self.client = client
        self.buffer: deque[Any] = deque()


class PubSubExtension(Extension):
    """Replies: publish -> number of subscribers reached; get -> the data or
    TIMED_OUT; add/remove -> None."""

    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        self.topics: dict[str, set[str]] = {}
        self.subscribers: dict[str, _Subscriber] = {}

    def _on_SubscribeAdd(self, ev: SubscribeAdd, now: float, out: list[Any]) -> None:
        if ev.id in self.subscribers:
            raise ExtensionError(f"subscriber {ev.id!r} exists already")
        self.subscribers[ev.id] = _Subscriber(ev.name, ev.client)
        self.topics.setdefault(ev.name, set()).add(ev.id)
        out.append(Reply(ev.request, None))

    def _on_SubscribeRemove(self, ev: SubscribeRemove, now: float, out: list[Any]) -> None:
        if ev.id in self.subscribers:
            self._remove(ev.id, out)
        out.append(Reply(ev.request, None))

    def _remove(self, id: str, out: list[Any]) -> None:
        sub = self.subscribers.pop(id)
        while self.waiters.queue(id):
            out.append(Reply(self.waiters.pop_first(id).request, ExtensionError("the subscriber was closed")))
        ids = self.topics[sub.name]
        ids.discard(id)
        if not ids:
            del self.topics[sub.name]

    def _on_Publish(self, ev: Publish, now: float, out: list[Any]) -> None:
        ids = self.topics.get(ev.name, ())
        for id in ids:
            if self.waiters.queue(id):
                out.append(Reply(self.waiters.pop_first(id).request, ev.data))
            else:
                self.subscribers[id].buffer.append(ev.data)
        out.append(Reply(ev.request, len(ids)))

    def _on_SubscribeGet(self, ev: SubscribeGet, now: float, out: list[Any]) -> None:
        sub = self.subscribers.get(ev.id)
        if sub is None:
            raise ExtensionError(f"no subscriber {ev.id!r}")
        if sub.buffer:
            out.append(Reply(ev.request, sub.buffer.popleft()))
        elif ev.timeout is not None and ev.timeout <= 0:
            out.append(Reply(ev.request, TIMED_OUT))
        else:
            self.waiters.add(ev.id, Waiter(ev.request, ev.client, deadline(now, ev.timeout)))

    def _client_gone(self, client: str, now: float, out: list[Any]) -> None:
        for id in [i for i, s in self.subscribers.items() if s.client == client]:
            self._remove(id, out)

    def validate(self) -> None:
        super().validate()
        ids = {i for s in self.topics.values() for i in s}
        assert ids == set(self.subscribers), "topics and subscribers disagree"
        assert all(self.topics.values()), "empty topic kept"
        for id in self.waiters.by_name:
            assert not self.subscribers[id].buffer, f"subscriber {id!r} waits with messages buffered"
