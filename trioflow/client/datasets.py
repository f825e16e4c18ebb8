"""Published datasets: named values (futures, persisted collections, plain
values) any client can fetch (dask's ``publish_dataset`` family).

The scheduler keeps a published dataset's futures alive, also after the
publishing client leaves, until it is unpublished.  :class:`AsyncDatasetsMixin`
gives :class:`~trioflow.client.core.AsyncClient` the async methods,
:class:`DatasetsMixin` the blocking ``Client`` its own plus ``datasets`` and
``get_executor``.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from ..errors import RemoteError
from ..protocol import messages as m
from .primitives import _decode, _encode

__all__ = ["AsyncDatasetsMixin", "Datasets", "DatasetsMixin"]

_NO_DEFAULT: Any = object()


def _named(args: tuple[Any, ...], name: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    data = dict(kwargs)
    if name is not None:
        if len(args) != 1:
            raise ValueError("with name=, publish one value: publish_dataset(value, name='x')")
        data[name] = args[0]
    else:
        for arg in args:
            if not isinstance(arg, dict):
                raise TypeError("publish_dataset(...) takes name=value keywords, a name= with one value, or dicts")
            data.update(arg)
    if not data:
        raise ValueError("nothing to publish")
    return data


class AsyncDatasetsMixin:
    """Dataset methods of the async client (``self`` is an AsyncClient)."""

    async def publish_dataset(self, *args: Any, name: Any = None, override: bool = False, **kwargs: Any) -> None:
        """Publish values under names: ``publish_dataset(x=fut)`` or
        ``publish_dataset(fut, name="x")``.

        Raises:
            KeyError: a name is taken (unless ``override``).
        """
        core: Any = self
        for key, value in _named(args, name, kwargs).items():
            data, keys = _encode(value)
            msg = m.DatasetPublish(client=core.id, name=str(key), data=data, keys=keys, override=override)
            try:
                await core._rpc(msg, m.Ok)
            except RemoteError as exc:
                raise KeyError(str(exc)) from None

    async def get_dataset(self, name: Any, default: Any = _NO_DEFAULT) -> Any:
        """The dataset published as ``name`` (``default``, or KeyError, if none)."""
        core: Any = self
        reply = await core._rpc(m.DatasetGet(client=core.id, name=str(name)), m.ItemReply)
        if reply.data is None:
            if default is _NO_DEFAULT:
                raise KeyError(f"Dataset {name!r} not found")
            return default
        return await _decode(core, reply.data, reply.keys)

    async def unpublish_dataset(self, name: Any) -> None:
        core: Any = self
        await core._rpc(m.DatasetUnpublish(client=core.id, name=str(name)), m.Ok)

    async def list_datasets(self) -> list[str]:
        core: Any = self
        reply = await core._rpc(m.DatasetList(client=core.id), m.NamesReply)
        return list(reply.names)


class Datasets(MutableMapping[str, Any]):
    """``client.datasets``: the published datasets as a mapping."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getitem__(self, key: str) -> Any:
        return self._client.get_dataset(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._client.publish_dataset(value, name=key)

    def __delitem__(self, key: str) -> None:
        if key not in self._client.list_datasets():
            raise KeyError(key)
        self._client.unpublish_dataset(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._client.list_datasets())

    def __len__(self) -> int:
        return len(self._client.list_datasets())

    def __contains__(self, key: object) -> bool:
        return key in self._client.list_datasets()


class DatasetsMixin:
    """Dataset methods and ``get_executor`` of the blocking ``Client``."""

    def publish_dataset(self, *args: Any, name: Any = None, override: bool = False, **kwargs: Any) -> None:
        """See :meth:`AsyncDatasetsMixin.publish_dataset`."""
        self._call(self._core.publish_dataset, *args, name=name, override=override, **kwargs)  # type: ignore[attr-defined]

    def get_dataset(self, name: Any, default: Any = _NO_DEFAULT) -> Any:
        return self._call(self._core.get_dataset, name, default)  # type: ignore[attr-defined]

    def unpublish_dataset(self, name: Any) -> None:
        self._call(self._core.unpublish_dataset, name)  # type: ignore[attr-defined]

    def list_datasets(self) -> list[str]:
        return self._call(self._core.list_datasets)  # type: ignore[attr-defined,no-any-return]

    @property
    def datasets(self) -> Datasets:
        return Datasets(self)

    def get_executor(self, **kwargs: Any) -> Any:
        """A ``concurrent.futures.Executor`` running on this client;
        ``kwargs`` are passed to every ``submit`` (``workers=``, ``pure=``...)."""
        from .executor import ClientExecutor

        return ClientExecutor(self, **kwargs)
