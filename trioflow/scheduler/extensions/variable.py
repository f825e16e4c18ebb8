"""Variables: one value per name, shared by every client (dask's ``Variable``).

A variable keeps the last value set until it is deleted, also after the
client that set it leaves (its futures stay alive meanwhile).  ``get`` on a
variable that has no value waits until one is set, or its timeout.
"""

from __future__ import annotations

from typing import Any

from ...records import Record, record
from ._base import Extension, Item, Reply, Waiter, deadline

__all__ = ["VariableDelete", "VariableExtension", "VariableGet", "VariableSet"]


@record(kw_only=True)
class VariableSet(Record):
    request: int
    client: str
    name: str
    item: Item


@record(kw_only=True)
class VariableGet(Record):
    request: int
    client: str
    name: str
    timeout: float | None = None


@record(kw_only=True)
class VariableDelete(Record):
    request: int
    client: str
    name: str


class VariableExtension(Extension):
    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        self.values: dict[str, Item] = {}

    def _on_VariableSet(self, ev: VariableSet, now: float, out: list[Any]) -> None:
        self.holds.hold(ev.item.keys, out)
        old = self.values.get(ev.name)
        self.values[ev.name] = ev.item
        if old is not None:
            self.holds.unhold(old.keys, out)
        while self.waiters.queue(ev.name):
            out.append(Reply(self.waiters.pop_first(ev.name).request, ev.item))
        out.append(Reply(ev.request, None))

    def _on_VariableGet(self, ev: VariableGet, now: float, out: list[Any]) -> None:
        item = self.values.get(ev.name)
        if item is not None:
            out.append(Reply(ev.request, item))
            return
        self.waiters.add(ev.name, Waiter(ev.request, ev.client, deadline(now, ev.timeout)))

    def _on_VariableDelete(self, ev: VariableDelete, now: float, out: list[Any]) -> None:
        old = self.values.pop(ev.name, None)
        if old is not None:
            self.holds.unhold(old.keys, out)
        out.append(Reply(ev.request, None))

    def validate(self) -> None:
        super().validate()
        for name in self.waiters.by_name:
            if name in self.values:
                raise AssertionError(f"variable {name!r} has a value and waiting getters")
