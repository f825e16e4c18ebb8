"""Scheduler extensions: coordination primitives as sans-IO state machines.

Theory of operation
-------------------
Each primitive (variables, queues, locks, multi-locks, events, semaphores,
pub/sub, datasets) is an :class:`~._base.Extension` in its own module: fed
events with the time passed in, it returns instructions (:class:`Reply` to a
request, :class:`Hold` / :class:`Unhold` of future keys) and never does IO.
:class:`Primitives` bundles them for one scheduler: it routes each event to
the extension that owns its class, remembers which extension a waiting
request is parked in (for ``cancel``), and fans ticks and client/worker
departures out to all of them.  Nothing in this package imports Trio; the
Trio side is :mod:`.serve`, imported only by the scheduler server.
"""

from __future__ import annotations

from typing import Any

from ._base import TIMED_OUT, Extension, ExtensionError, Hold, Item, KeyHolds, Reply, Unhold
from .datasets import DatasetExtension
from .event import EventExtension
from .lock import LockExtension
from .multi_lock import MultiLockExtension
from .pubsub import PubSubExtension
from .queue import QueueExtension
from .semaphore import SemaphoreExtension
from .variable import VariableExtension

__all__ = ["TIMED_OUT", "Extension", "ExtensionError", "Hold", "Item", "KeyHolds", "Primitives", "Reply", "Unhold"]


class Primitives:
    """All primitives of one scheduler, sharing one :class:`KeyHolds`."""

    def __init__(self, *, lease_timeout: float = 30.0) -> None:
        self.holds = KeyHolds()
        self.variables = VariableExtension(self.holds)
        self.queues = QueueExtension(self.holds)
        self.locks = LockExtension(self.holds)
        self.multi_locks = MultiLockExtension(self.holds)
        self.events = EventExtension(self.holds)
        self.semaphores = SemaphoreExtension(self.holds, lease_timeout=lease_timeout)
        self.pubsub = PubSubExtension(self.holds)
        self.datasets = DatasetExtension(self.holds)
        self.all: tuple[Extension, ...] = (
            self.variables,
            self.queues,
            self.locks,
            self.multi_locks,
            self.events,
            self.semaphores,
            self.pubsub,
            self.datasets,
        )
        self._owner: dict[str, Extension] = {}
        for ext in self.all:
            for attr in dir(ext):
                if attr.startswith("_on_"):
                    self._owner[attr[4:]] = ext

    def handle(self, event: Any, now: float) -> list[Any]:
        """Route ``event`` to its extension (see :meth:`Extension.handle`)."""
        ext = self._owner.get(type(event).__name__)
        if ext is None:
            raise ExtensionError(f"no extension handles {type(event).__name__}")
        return ext.handle(event, now)

    def abandon(self, event: Any, now: float) -> list[Any]:
        """Undo what an undelivered answer to ``event`` granted."""
        ext = self._owner.get(type(event).__name__)
        return [] if ext is None else ext.abandon(event, now)

    def cancel(self, request: int) -> list[Any]:
        out: list[Any] = []
        for ext in self.all:
            if request in ext.waiters.names:
                out += ext.cancel(request)
        return out

    def tick(self, now: float) -> list[Any]:
        return [i for ext in self.all for i in ext.tick(now)]

    def next_deadline(self) -> float | None:
        ds = [d for d in (ext.next_deadline() for ext in self.all) if d is not None]
        return min(ds) if ds else None

    def remove_client(self, client: str, now: float) -> list[Any]:
        return [i for ext in self.all for i in ext.remove_client(client, now)]

    def remove_worker(self, worker: str, now: float) -> list[Any]:
        return [i for ext in self.all for i in ext.remove_worker(worker, now)]

    def validate(self) -> None:
        for ext in self.all:
            ext.validate()
        held: dict[str, int] = {}
        for item in self._items():
            for k in item.keys:
                held[k] = held.get(k, 0) + 1
        assert held == self.holds.counts, ("key holds disagree with the items kept", held, self.holds.counts)

    def _items(self) -> list[Item]:
        items = list(self.variables.values.values()) + list(self.datasets.datasets.values())
        for q in self.queues.queues.values():
            items += q.items
        for (kind, _), ws in self.queues.waiters.by_name.items():
            if kind == "put":
                items += [w.data for w in ws]
        return items
