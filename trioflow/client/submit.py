"""Submitting work: ``submit``, ``map`` and prepared task graphs.

Task arguments are pickled once, with futures replaced by references (their
keys become the task's dependencies, at any depth).  Pure tasks get
deterministic keys: the function name and a hash of the pickled function and
arguments, so the same call twice is computed once.  A graph goes to the
scheduler in pieces that fit the wire's header cap.

Mixed into :class:`~trioflow.client.core.AsyncClient`; runs in the client's
Trio loop except :meth:`SubmitMixin.submit_from_thread`.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio

from ..protocol import messages as m
from ..protocol.serialize import Serialized, dumps_function, dumps_with_deps
from ._parts import ClientParts
from .futures import Future, FutureLostError

__all__ = ["SubmitMixin", "funcname"]

_SIMPLE = (int, float, str, bool, type(None), bytes)
#: A graph goes to the scheduler in pieces of at most this many tasks or
#: bytes of run specs, well under the wire's 16 MiB header cap.
GRAPH_PIECE_TASKS = 10_000
GRAPH_PIECE_BYTES = 4 * 1024 * 1024
#: ``map`` prepares and sends its tasks in graphs of this many (unless given
#: ``batch_size``), so the first ones run while the rest are still being
#: pickled: for 20,000 no-op tasks about 15% less wall time than building
#: the whole graph first.
MAP_CHUNK_TASKS = 1_000
#: Keyword arguments of ``submit`` that are options, not the function's.
_SUBMIT_OPTIONS = ("key", "workers", "resources", "retries", "priority", "allow_other_workers", "pure", "actor")
_fn_cache: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def funcname(func: Any) -> str:
    while hasattr(func, "func") and hasattr(func, "args"):  # functools.partial
        func = func.func
    name = getattr(func, "__name__", None) or type(func).__name__
    return "lambda" if name == "<lambda>" else name


def _tokenize(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(memoryview(p).cast("B") if not isinstance(p, bytes) else p)
    return h.hexdigest()


def _ser_token(s: Serialized) -> list[Any]:
    return [bytes((s.kind,)), s.data, *s.buffers]


def _function_bytes(func: Any) -> bytes:
    try:
        return _fn_cache[func]
    except (KeyError, TypeError):
        pass
    b = dumps_function(func)
    try:
        _fn_cache[func] = b
    except TypeError:
        pass
    return b


def _dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Serialized, list[str]]:
    # Fast path: flat arguments of simple types need no future scan.
    if all(type(a) in _SIMPLE for a in args) and all(type(v) in _SIMPLE for v in kwargs.values()):
        return Serialized(kind=0, data=pickle.dumps((args, kwargs), protocol=5)), []
    return dumps_with_deps((args, kwargs), Future)


def _rekey(spec: m.TaskSpec, key: str) -> m.TaskSpec:
    import attrs

    return attrs.evolve(spec, key=key)


class SubmitMixin(ClientParts):
    """submit, map, update_graph (see the module docstring)."""

    # ------------------------------------------------------------ submitting

    def _make_spec(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        key: str | None,
        pure: bool,
        workers: Any,
        resources: dict[str, float] | None,
        priority: int,
        retries: int,
        allow_other_workers: bool,
        fbytes: bytes | None = None,
    ) -> m.TaskSpec:
        if fbytes is None:
            fbytes = _function_bytes(func)
        ser, deps = _dumps_args(args, kwargs)
        if key is None:
            if pure:
                key = f"{funcname(func)}-{_tokenize(fbytes, *_ser_token(ser))}"
            else:
                key = f"{funcname(func)}-{uuid.uuid4().hex}"
        for d in deps:
            if d not in self._states:
                raise ValueError(f"argument future {d!r} does not belong to this client (or was cancelled or released)")
        if "dask" in sys.modules:
            # dask.annotate(...) around submit/map: for the options not given.
            from ..daskgraph import current_annotations

            ann = current_annotations()
            if ann:
                ann = {k: v(key) if callable(v) else v for k, v in ann.items()}
                priority = priority or ann.get("priority") or 0
                workers = workers or ann.get("workers")
                resources = resources or ann.get("resources")
                retries = retries or ann.get("retries") or 0
                allow_other_workers = allow_other_workers or bool(ann.get("allow_other_workers"))
        if isinstance(workers, str):
            workers = [workers]
        return m.TaskSpec(
            key=key,
            function=fbytes,
            args=ser,
            dependencies=deps,
            priority=int(priority),
            workers=list(workers or ()),
            allow_other_workers=bool(allow_other_workers),
            resources={k: float(v) for k, v in (resources or {}).items()},
            retries=int(retries or 0),
        )

    def _send_graph(self, specs: list[m.TaskSpec], wanted: list[str]) -> None:
        """Send a graph in pieces that fit the wire's header cap.

        ``specs`` are in an order where dependencies come first (submission
        order, or dask's execution order), so each piece only refers to keys
        sent before it; a wanted key is claimed in the piece that defines it.
        """
        if len(specs) <= GRAPH_PIECE_TASKS:
            self._send(m.UpdateGraph(tasks=specs, keys=wanted))
            return
        wanted_set = set(wanted)
        defined: set[str] = set()
        piece: list[m.TaskSpec] = []
        size = 0
        for spec in specs:
            piece.append(spec)
            size += len(spec.args.data) + len(spec.function) + 64
            if len(piece) >= GRAPH_PIECE_TASKS or size >= GRAPH_PIECE_BYTES:
                keys = [sp.key for sp in piece if sp.key in wanted_set]
                self._send(m.UpdateGraph(tasks=piece, keys=keys))
                defined.update(sp.key for sp in piece)
                piece, size = [], 0
        rest = [k for k in wanted if k not in defined]
        self._send(m.UpdateGraph(tasks=piece, keys=rest))

    async def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: str | None = None,
        workers: Any = None,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        pure: bool = True,
        actor: bool = False,
        **kwargs: Any,
    ) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; returns its Future.

        Raises:
            TypeError: ``func`` is not callable.
            SerializationError: the function or an argument cannot be pickled
                (the message names its type).
        """
        spec = self._submit_spec(
            func, args, kwargs, key=key, pure=pure, workers=workers, resources=resources,
            priority=priority, retries=retries, allow_other_workers=allow_other_workers, actor=actor,
        )
        fut = Future(spec.key, self)
        self._send(m.UpdateGraph(tasks=[spec], keys=[spec.key]))
        await trio.lowlevel.checkpoint()
        return fut

    def _submit_spec(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        key: str | None = None,
        workers: Any = None,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        pure: bool = True,
        actor: bool = False,
    ) -> m.TaskSpec:
        if not callable(func):
            raise TypeError(f"submit() needs a callable, got {type(func).__name__}")
        if actor:
            # The task makes the instance on its worker and returns a proxy
            # (trioflow.actor); every submission is a new instance.
            from ..actor import _ActorCreate

            func, pure = _ActorCreate(func), False
        return self._make_spec(
            func, args, kwargs, key=key, pure=pure, workers=workers, resources=resources,
            priority=priority, retries=retries or 0, allow_other_workers=allow_other_workers,
        )

    def submit_from_thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """:meth:`submit` (same arguments) from any thread, the client's
        loop included, returning the Future at once; the blocking
        :class:`~trioflow.Client` and ``Client(asynchronous=True)`` use it.

        The pickling and hashing happen in the calling thread, and the
        message is handed to the loop without waiting for it: a loop of
        ``submit`` calls costs no thread round trip each.  (Reference counts
        are thread-safe; the loop runs handed-over work in order, so a later
        call sees this task already sent.  In the client's own loop it is
        sent at once.)
        """
        options = {k: kwargs.pop(k) for k in _SUBMIT_OPTIONS if k in kwargs}
        if not self._in_own_loop():
            self._check_can_send()
        spec = self._submit_spec(func, args, kwargs, **options)
        fut = Future(spec.key, self)
        self._send_graph_soon([spec], [spec.key])
        return fut

    def _check_can_send(self) -> None:
        if self.status != "running" or self._token is None:
            raise RuntimeError(f"client is {self.status}")

    def _send_graph_soon(self, specs: list[m.TaskSpec], wanted: list[str]) -> None:
        """Send a graph from any thread without waiting: at once in the
        client's own loop (so a later call cannot overtake it; raises
        FutureLostError if it cannot go), else handed to the loop, which runs
        handed-over work in order (a graph that cannot go errs its futures).

        The futures the graph depends on (and does not define) may be
        dropped before the loop sends it, and a release queued earlier would
        then forget them first: they are held until the graph is on its way.
        """
        if self._in_own_loop():
            self._send_graph(specs, wanted)
            return
        self._check_can_send()
        defined = {s.key for s in specs}
        held = {d for s in specs for d in s.dependencies if d not in defined and d in self._states}
        holds = [Future(k, self) for k in held]
        try:
            self._token.run_sync_soon(self._send_graph_or_lose, specs, wanted, holds)  # type: ignore[union-attr]
        except trio.RunFinishedError:
            raise RuntimeError("client is closed") from None

    def _send_graph_or_lose(self, specs: list[m.TaskSpec], wanted: list[str], holds: list[Future] | None = None) -> None:
        """Send from the loop; a graph that cannot go errs its futures.
        ``holds`` (futures kept alive until now) go when this returns."""
        try:
            self._send_graph(specs, wanted)
        except FutureLostError as exc:
            for k in wanted:
                st = self._states.get(k)
                if st is not None and not st.done():
                    st.lose(str(exc))

    async def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[str] | None = None,
        workers: Any = None,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        pure: bool = True,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        """Submit ``func`` over the zipped iterables; returns a list of Futures.

        ``key`` may be a list of keys (one per task) or a prefix.
        The tasks are prepared and sent in graphs of ``batch_size`` (default
        :data:`MAP_CHUNK_TASKS`), so the cluster starts on the first while
        the rest are pickled.  If preparing one fails (say an argument
        cannot be pickled), ``map`` raises and the tasks it had already
        sent are released, though some may have run.  With ``pure=False``
        and no ``batch_size`` everything goes as one graph, so nothing runs
        unless everything could be prepared (dask's default for any map).
        A task submitted while a long map is being sent may run before the
        map's later graphs.
        """
        futures: list[Future] = []
        try:
            for chunk in self._map_chunks(
                func, iterables, key=key, workers=workers, resources=resources, retries=retries, priority=priority,
                allow_other_workers=allow_other_workers, pure=pure, batch_size=batch_size, kwargs=kwargs,
            ):
                futures.extend(self._send_map_chunk(chunk))
                # Let the batched sender write it: the cluster starts on
                # these tasks while the next chunk is being prepared.
                await trio.lowlevel.checkpoint()
        except BaseException:
            # Nothing of a failed map stays submitted: dropping the futures
            # releases the chunks already sent (the traceback would otherwise
            # keep them alive through this frame).
            futures.clear()
            raise
        return futures

    def map_from_thread(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[str] | None = None,
        workers: Any = None,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        pure: bool = True,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        """:meth:`map` (same arguments) from any thread, the client's loop
        included, returning the Futures without waiting (as
        :meth:`submit_from_thread`): the tasks are pickled in the calling
        thread and each graph is handed to the loop as soon as it is ready.
        """
        futures: list[Future] = []
        try:
            for chunk in self._map_chunks(
                func, iterables, key=key, workers=workers, resources=resources, retries=retries, priority=priority,
                allow_other_workers=allow_other_workers, pure=pure, batch_size=batch_size, kwargs=kwargs,
            ):
                futures.extend(self._send_map_chunk(chunk))
        except BaseException:
            futures.clear()  # as in map: release what was sent
            raise
        return futures

    def _send_map_chunk(self, chunk: list[m.TaskSpec]) -> list[Future]:
        futures = [Future(s.key, self) for s in chunk]
        # De-duplicate repeated pure keys within one graph.
        uniq = list({s.key: s for s in chunk}.values())
        self._send_graph_soon(uniq, [s.key for s in uniq])
        return futures

    def _map_chunks(
        self,
        func: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        *,
        key: str | list[str] | None,
        workers: Any,
        resources: dict[str, float] | None,
        retries: int | None,
        priority: int,
        allow_other_workers: bool,
        pure: bool,
        batch_size: int | None,
        kwargs: dict[str, Any],
    ) -> Iterator[list[m.TaskSpec]]:
        """The task specs of a ``map``, in the graphs it sends them in."""
        if not callable(func):
            raise TypeError(f"map() needs a callable, got {type(func).__name__}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        arg_lists = list(zip(*iterables, strict=False))
        keys: list[str | None]
        if isinstance(key, (list, tuple)):
            if len(key) != len(arg_lists):
                raise ValueError(f"map() got {len(key)} keys for {len(arg_lists)} tasks")
            keys = list(key)
        else:
            keys = [None] * len(arg_lists)
        prefix = key if isinstance(key, str) else None
        fbytes = _function_bytes(func)
        fname = prefix or funcname(func)
        # pure=False says the tasks have effects: then all or nothing, as one
        # graph, unless the caller asked for batches.
        step = batch_size or (MAP_CHUNK_TASKS if pure else max(len(arg_lists), 1))
        chunk: list[m.TaskSpec] = []
        for i, args in enumerate(arg_lists):
            k = keys[i]
            spec = self._make_spec(
                func, args, kwargs, key=k, pure=pure, workers=workers, resources=resources,
                priority=priority, retries=retries or 0, allow_other_workers=allow_other_workers, fbytes=fbytes,
            )
            if prefix is not None and k is None:
                spec = _rekey(spec, f"{fname}-{spec.key.rsplit('-', 1)[-1]}")
            chunk.append(spec)
            if len(chunk) >= step or i == len(arg_lists) - 1:
                yield chunk
                chunk = []

    async def update_graph(self, specs: list[m.TaskSpec], wanted: list[str]) -> list[Future]:
        """Submit prepared task specs (used by the dask integration)."""
        futures = [Future(k, self) for k in wanted]
        self._send_graph_soon(specs, wanted)
        await trio.lowlevel.checkpoint()
        return futures
