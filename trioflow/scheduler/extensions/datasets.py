"""Published datasets: named items any client can get (dask's
``publish_dataset``).  A dataset keeps its futures alive, also after the
publishing client leaves, until it is unpublished."""

from __future__ import annotations

from typing import Any

from ...records import Record, record
from ._base import Extension, ExtensionError, Item, Reply

__all__ = ["DatasetExtension", "DatasetGet", "DatasetList", "DatasetPublish", "DatasetUnpublish"]


@record(kw_only=True)
class DatasetPublish(Record):
    request: int
    client: str
    name: str
    item: Item
    override: bool = False


@record(kw_only=True)
class DatasetGet(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class DatasetUnpublish(Record):
    request: int
    client: str
    name: str


@record(kw_only=True)
class DatasetList(Record):
    request: int
    client: str


class DatasetExtension(Extension):
    """Replies: publish/unpublish -> None; get -> the Item or None (no such
    dataset); list -> the names, sorted."""

    def __init__(self, holds: Any = None) -> None:
        super().__init__(holds)
        self.datasets: dict[str, Item] = {}

    def _on_DatasetPublish(self, ev: DatasetPublish, now: float, out: list[Any]) -> None:
        old = self.datasets.get(ev.name)
        if old is not None and not ev.override:
            raise ExtensionError(f"Dataset {ev.name!r} already exists")
        self.holds.hold(ev.item.keys, out)
        self.datasets[ev.name] = ev.item
        if old is not None:
            self.holds.unhold(old.keys, out)
        out.append(Reply(ev.request, None))

    def _on_DatasetGet(self, ev: DatasetGet, now: float, out: list[Any]) -> None:
        out.append(Reply(ev.request, self.datasets.get(ev.name)))

    def _on_DatasetUnpublish(self, ev: DatasetUnpublish, now: float, out: list[Any]) -> None:
        old = self.datasets.pop(ev.name, None)
        if old is not None:
            self.holds.unhold(old.keys, out)
        out.append(Reply(ev.request, None))

    def _on_DatasetList(self, ev: DatasetList, now: float, out: list[Any]) -> None:
        out.append(Reply(ev.request, sorted(self.datasets)))
