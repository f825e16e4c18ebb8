"""Dask graphs and collections: ``get``, ``compute`` and ``persist``.

The graph is turned into task specs by :mod:`trioflow.daskgraph` (a sans-IO
translation) and sent like any other graph; the collections come back backed
by futures.  Mixed into :class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

from typing import Any

import trio

from ._parts import ClientParts
from .futures import Future
from .submit import _function_bytes

__all__ = ["GraphMixin"]


class GraphMixin(ClientParts):
    """get, compute, persist (see the module docstring)."""

    # ------------------------------------------------------------ dask graphs and collections

    async def _submit_graph(self, dsk: Any, wanted: list[Any], **options: Any) -> dict[Any, Future]:
        futures = self._submit_graph_now(dsk, wanted, **options)
        await trio.lowlevel.checkpoint()
        return futures

    def _submit_graph_now(self, dsk: Any, wanted: list[Any], **options: Any) -> dict[Any, Future]:
        """Send a dask graph from any thread without waiting; ``{wanted key: Future}``."""
        from .. import daskgraph

        fbytes = _function_bytes(daskgraph.execute_node)
        known = set(self._states)
        specs = daskgraph.graph_to_specs(
            dsk,
            Future,
            known_keys=known,
            function_bytes=fbytes,
            priority=int(options.get("priority") or 0),
            workers=[options["workers"]] if isinstance(options.get("workers"), str) else list(options.get("workers") or ()),
            allow_other_workers=bool(options.get("allow_other_workers")),
            resources=options.get("resources"),
            retries=int(options.get("retries") or 0),
            annotations=options["annotations"] if options.get("annotations") is not None else daskgraph.current_annotations(),
        )
        spec_keys = {s.key for s in specs}
        str_wanted = [daskgraph.stringify(k) for k in wanted]
        for k in str_wanted:
            if k not in spec_keys and k not in self._states:
                raise ValueError(f"key {k!r} is neither in the graph nor held by this client")
        futures = [Future(k, self) for k in str_wanted]
        self._send_graph_soon(specs, str_wanted)
        return dict(zip(wanted, futures, strict=True))

    async def get(self, dsk: Any, keys: Any, **options: Any) -> Any:
        """The dask scheduler protocol: compute ``keys`` of graph ``dsk`` and
        return their values in the same nesting (``dask.compute(x,
        scheduler=client.get)``)."""
        from .. import daskgraph

        flat = daskgraph.flatten_keys(keys)
        futures = await self._submit_graph(dsk, list(dict.fromkeys(flat)), **options)
        values = await self.gather(list(futures.values()))
        by_key = dict(zip(futures, values, strict=True))
        return daskgraph.pack_results(keys, by_key)

    async def compute(self, collections: Any, sync: bool = False, optimize_graph: bool = True, **options: Any) -> Any:
        """Start computing dask collections; returns a Future per collection
        (or their values with ``sync=True``)."""
        out = self.compute_from_thread(collections, optimize_graph=optimize_graph, **options)
        await trio.lowlevel.checkpoint()
        if sync:
            single = not isinstance(collections, (list, tuple))
            values = await self.gather([out] if single else out)
            return values[0] if single else values
        return out

    def compute_from_thread(self, collections: Any, optimize_graph: bool = True, **options: Any) -> Any:
        """:meth:`compute` without ``sync``, from any thread, the client's
        loop included: the Futures at once (the graph is built in the
        calling thread and handed to the loop without waiting)."""
        import dask

        from .. import daskgraph

        singleton = not isinstance(collections, (list, tuple))
        items = [collections] if singleton else list(collections)
        variables = [c for c in items if dask.is_dask_collection(c)]
        results: dict[Any, Future] = {}
        names: list[Any] = []
        if variables:
            dsk, keys = daskgraph.collections_graph(variables, optimize_graph=optimize_graph, finalize=True)
            names = daskgraph.flatten_keys(keys)
            results = self._submit_graph_now(dsk, names, **options)
        out: list[Any] = []
        i = 0
        for c in items:
            if dask.is_dask_collection(c):
                out.append(results[names[i]])
                i += 1
            else:
                out.append(c)
        return out[0] if singleton else out

    async def persist(self, collections: Any, optimize_graph: bool = True, **options: Any) -> Any:
        """Start computing dask collections and return equivalent collections
        backed by the futures of their pieces."""
        rebuilt = self.persist_from_thread(collections, optimize_graph=optimize_graph, **options)
        await trio.lowlevel.checkpoint()
        return rebuilt

    def persist_from_thread(self, collections: Any, optimize_graph: bool = True, **options: Any) -> Any:
        """:meth:`persist` from any thread, the client's loop included: the
        collections at once (the graph is handed to the loop without waiting)."""
        from .. import daskgraph

        singleton = not isinstance(collections, (list, tuple))
        items = [collections] if singleton else list(collections)
        dsk, keys = daskgraph.collections_graph(items, optimize_graph=optimize_graph, finalize=False)
        futures = self._submit_graph_now(dsk, list(dict.fromkeys(daskgraph.flatten_keys(keys))), **options)
        rebuilt = []
        for c, ks in zip(items, keys, strict=True):
            func, args = c.__dask_postpersist__()
            rebuilt.append(func({k: futures[k] for k in daskgraph.flatten_keys(ks)}, *args))
        return rebuilt[0] if singleton else rebuilt
