"""Events: a flag per name that clients set, clear and wait for (dask's
``Event``).  A name that is clear and has nobody waiting is forgotten."""

from __future__ import annotations

from typing import Any

from ...records import Record, record
from ._base import Extension, Reply, Waiter, deadline

__all__ = ["EventClear", "EventExtension", "EventIsSet", "EventSet", "EventWait"]


@record(kw_only=True)
class EventSet(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class EventClear(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class EventIsSet(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class EventWait(Record):
    request: int
    client: str
    name: str
    timeout: float | None = None


class EventExtension(Extension):
    """Replies: ``EventWait`` -> True (set) or TIMED_OUT; ``EventIsSet`` ->
    bool; the others -> None."""

    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        self.set_names: set[str] = set()

    def _on_EventSet(self, ev: EventSet, now: float, out: list[Any]) -> None:
        self.set_names.add(ev.name)
        while self.waiters.queue(ev.name):
            out.append(Reply(self.waiters.pop_first(ev.name).request, True))
        out.append(Reply(ev.request, None))

    def _on_EventClear(self, ev: EventClear, now: float, out: list[Any]) -> None:
        self.set_names.discard(ev.name)
        out.append(Reply(ev.request, None))

    def _on_EventIsSet(self, ev: EventIsSet, now: float, out: list[Any]) -> None:
        out.append(Reply(ev.request, ev.name in self.set_names))

    def _on_EventWait(self, ev: EventWait, now: float, out: list[Any]) -> None:
        if ev.name in self.set_names:
            out.append(Reply(ev.request, True))
        elif ev.timeout is not None and ev.timeout <= 0:
            out.append(Reply(ev.request, False))
        else:
            self.waiters.add(ev.name, Waiter(ev.request, ev.client, deadline(now, ev.timeout)))

    def validate(self) -> None:
        super().validate()
        assert not (self.set_names & set(self.waiters.by_name)), "a set event has waiters"
