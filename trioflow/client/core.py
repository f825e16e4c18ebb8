"""The asynchronous (Trio) client.

Theory of operation
-------------------
:class:`AsyncClient` keeps one long-lived stream to the scheduler: the write
side is a :class:`~trioflow.comm.BatchedSend` (graphs, releases,
cancellations), the read side a loop that resolves futures as the scheduler
reports keys in memory, erred or cancelled.  Everything else (who_has,
identity, shutdown) is a request on a pooled connection.

Data never passes through the scheduler: ``gather`` asks the scheduler who
holds each key and fetches from those workers directly; ``scatter`` puts
values on workers directly and then tells the scheduler where they are.

Task arguments are pickled once, with futures replaced by references (their
keys become the task's dependencies, at any depth).  Pure tasks get
deterministic keys: the function name and a hash of the pickled function and
arguments, so the same call twice is computed once.

``open_client`` runs the client in the caller's Trio loop; the blocking
:class:`~trioflow.client.sync.Client` runs it in a portal thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import pickle
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..comm import BatchedSend, CommClosedError, CommError, ConnectionPool, connect
from ..comm.pool import RemoteError
from ..protocol import messages as m
from ..protocol.serialize import (
    SerializationError,
    Serialized,
    dumps,
    dumps_function,
    dumps_with_deps,
    loads,
)
from ..scheduler_file import wait_for_scheduler_file
from .datasets import AsyncDatasetsMixin
from .futures import Future, FutureLostError, FutureState, _flatten_futures

logger = logging.getLogger("trioflow.client")

__all__ = ["AsyncClient", "open_client"]

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
_SUBMIT_OPTIONS = ("key", "workers", "resources", "retries", "priority", "allow_other_workers", "pure")
#: A gather asks each worker for at most about this many bytes at a time.
GATHER_BATCH_BYTES = 64 * 1024 * 1024
_fn_cache: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def funcname(func: Any) -> str:
    while hasattr(func, "func") and hasattr(func, "args"):  # functools.partial
        func = func.func
    name = getattr(func, "__name__", None) or type(func).__name__
    return "lambda" if name == "<lambda>" else name


def _batches(keys: list[str], nbytes: dict[str, int], limit: int) -> list[list[str]]:
    """``keys`` in order, cut into runs of at most ``limit`` bytes (a bigger
    key goes alone; unknown sizes count as nothing)."""
    out: list[list[str]] = []
    batch: list[str] = []
    total = 0
    for k in keys:
        size = max(nbytes.get(k, 0), 0)
        if batch and total + size > limit:
            out.append(batch)
            batch, total = [], 0
        batch.append(k)
        total += size
    if batch:
        out.append(batch)
    return out


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


class AsyncClient(AsyncDatasetsMixin):
    """A client in the current Trio loop; make one with :func:`open_client`."""

    def __init__(self, address: str, *, security: Any = None, name: str | None = None, timeout: float = 10) -> None:
        self.scheduler_address = address
        self.security = security
        self.id = name or f"client-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.status = "init"
        self.scheduler_id = ""
        self._states: dict[str, FutureState] = {}
        self._refcount: dict[str, int] = {}
        self._ref_lock = threading.Lock()
        self._to_release: list[str] = []
        # Scattered keys waiting for the scheduler to acknowledge them.
        self._scatter_acks: dict[str, trio.Event] = {}
        # KeyCancelled replies still to come for our own cancel() calls.
        self._cancel_echoes: dict[str, int] = {}
        self._release_scheduled = False
        self._batched: BatchedSend | None = None
        self._pool: ConnectionPool | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._portal: Any = None  # set by the blocking Client
        self._nursery: trio.Nursery | None = None
        self._comm: Any = None
        self._done = trio.Event()
        self._seq = itertools.count()
        #: After losing the scheduler, keep trying to register again.
        self.reconnect = True
        #: Set by :meth:`shutdown`: the scheduler's going away is then expected.
        self._shutdown_requested = False

    def __repr__(self) -> str:
        return f"<AsyncClient {self.id} scheduler={self.scheduler_address} status={self.status}>"

    # ------------------------------------------------------------ lifecycle

    async def _start(self, nursery: trio.Nursery) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._nursery = nursery
        self._pool = ConnectionPool(security=self.security, role="client", name=self.id, timeout=self.timeout)
        await self._connect_and_register()

    async def _connect_and_register(self) -> None:
        """Open the scheduler stream, register, start its two tasks."""
        assert self._nursery is not None
        nursery = self._nursery
        comm = await connect(self.scheduler_address, security=self.security, role="client", name=self.id, timeout=self.timeout)
        try:
            with trio.fail_after(self.timeout):
                await comm.send(m.RegisterClient(client_id=self.id))
                reply = await comm.recv()
        except BaseException:
            await comm.aclose()
            raise
        if isinstance(reply, m.ErrorReply):
            await comm.aclose()
            raise CommError(f"the scheduler at {self.scheduler_address} refused this client: {reply.message}")
        if not isinstance(reply, m.ClientRegistered):
            await comm.aclose()
            raise CommError(f"unexpected reply {reply.op!r} from {self.scheduler_address}")
        self.scheduler_id = reply.scheduler_id
        old, self._comm = self._comm, comm
        if old is not None:
            await old.aclose()
        self._batched = BatchedSend(comm)
        self.status = "running"
        nursery.start_soon(self._run_batched)
        nursery.start_soon(self._receive_loop)

    async def _run_batched(self) -> None:
        assert self._batched is not None
        try:
            await self._batched.run()
        except CommClosedError:
            pass

    async def aclose(self) -> None:
        """Close the connection; the scheduler releases this client's keys."""
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            if self._batched is not None:
                try:
                    self._batched.send(m.CloseClient())
                except CommClosedError:
                    pass
                await self._batched.aclose(timeout=1)
            if self._comm is not None:
                await self._comm.aclose()
            if self._pool is not None:
                await self._pool.aclose()
        self._lose_all("client closed")
        self.status = "closed"

    async def _receive_loop(self) -> None:
        comm = self._comm
        reason = "connection to the scheduler closed"
        try:
            while True:
                msg = await comm.recv()
                t = type(msg)
                if t is m.KeyInMemory:
                    # Until our cancel's echo is back, news of a cancelled
                    # key predates the cancel: it is not about the future
                    # submitted again since under the same key.
                    st = self._states.get(msg.key) if msg.key not in self._cancel_echoes else None
                    if st is not None:
                        st.who_has = msg.who_has
                        st.nbytes = msg.nbytes
                        st.finish()
                    ack = self._scatter_acks.pop(msg.key, None)
                    if ack is not None:
                        ack.set()
                elif t is m.KeyErred:
                    st = self._states.get(msg.key) if msg.key not in self._cancel_echoes else None
                    if st is not None:
                        st.err(msg.exception, msg.exception_text, msg.traceback_text, msg.type_name)
                elif t is m.KeyCancelled:
                    echoes = self._cancel_echoes.get(msg.key, 0)
                    if echoes:
                        # Our own cancel(), applied when we sent it; a future
                        # submitted since then under the same key must live.
                        if echoes == 1:
                            del self._cancel_echoes[msg.key]
                        else:
                            self._cancel_echoes[msg.key] = echoes - 1
                        continue
                    st = self._states.pop(msg.key, None)
                    if st is not None:
                        st.cancel(msg.reason or "cancelled")
                elif t is m.SchedulerClosing:
                    reason = f"the scheduler closed: {msg.reason}"
                    break
                else:
                    logger.warning("unexpected %r from the scheduler", msg.op)
                del msg  # a KeyErred's traceback is not kept alive while idle
        except CommClosedError as exc:
            reason = f"scheduler lost: {exc}"
        except Exception as exc:  # noqa: BLE001 - protocol errors end the stream
            reason = f"scheduler stream failed: {exc}"
        if self.status == "running":
            # After our own shutdown() the scheduler's going away is news, not a problem.
            logger.log(logging.INFO if self._shutdown_requested else logging.WARNING, "%s", reason)
            self.status = "lost"
        self._lose_all(reason)
        if self.status == "lost" and self._nursery is not None and self.reconnect and not self._shutdown_requested:
            self._nursery.start_soon(self._reconnect_loop)

    async def _reconnect_loop(self) -> None:
        """Register again once a scheduler answers at the same address.

        Futures pending when the scheduler went away have erred already
        ("scheduler lost"); the new scheduler knows nothing of the old keys,
        so only new work runs.  Gives up when the client is closed.
        """
        delay = 0.1
        while self.status == "lost":
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                await self._connect_and_register()
            except (CommError, OSError, trio.TooSlowError) as exc:
                logger.debug("scheduler at %s not back yet: %s", self.scheduler_address, exc)
                continue
            logger.info("reconnected to the scheduler at %s", self.scheduler_address)

    def _lose_all(self, reason: str) -> None:
        for st in self._states.values():
            if st.status == "pending":
                st.lose(reason)
        for ack in self._scatter_acks.values():
            ack.set()
        self._scatter_acks.clear()

    def _send(self, msg: m.Message) -> None:
        if self._batched is None or self.status != "running":
            raise FutureLostError(f"client is {self.status}; cannot talk to the scheduler")
        try:
            self._batched.send(msg)
        except CommClosedError:
            raise FutureLostError("the connection to the scheduler is closed") from None

    # ------------------------------------------------------------ reference counting

    def _acquire(self, key: str, state: FutureState | None = None) -> FutureState:
        """One more Future for ``key``: its shared state (made if new) and
        the count, in one step under the lock, so that a Future made in
        another thread cannot end up with a state a concurrent release has
        just dropped."""
        with self._ref_lock:
            if state is None:
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = FutureState()
            self._refcount[key] = self._refcount.get(key, 0) + 1
            return state

    def _dec_ref(self, key: str) -> None:
        with self._ref_lock:
            n = self._refcount.get(key, 0) - 1
            if n > 0:
                self._refcount[key] = n
                return
            self._refcount.pop(key, None)
            self._to_release.append(key)
            if self._release_scheduled or self._token is None or self.status != "running":
                return
            self._release_scheduled = True
        try:
            self._token.run_sync_soon(self._flush_releases)
        except trio.RunFinishedError:
            pass

    def _flush_releases(self) -> None:
        with self._ref_lock:
            self._release_scheduled = False
            keys = [k for k in self._to_release if k not in self._refcount]
            self._to_release.clear()
            for k in keys:
                self._states.pop(k, None)
        if not keys:
            return
        if self.status == "running":
            try:
                self._send(m.ReleaseKeys(keys=keys))
            except FutureLostError:
                pass

    def _sync_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the client's loop from a blocking thread."""
        return self._portal.call(fn, *args)

    def refcount(self, key: str) -> int:
        with self._ref_lock:
            return self._refcount.get(key, 0)

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
            priority=priority, retries=retries, allow_other_workers=allow_other_workers,
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
    ) -> m.TaskSpec:
        if not callable(func):
            raise TypeError(f"submit() needs a callable, got {type(func).__name__}")
        return self._make_spec(
            func, args, kwargs, key=key, pure=pure, workers=workers, resources=resources,
            priority=priority, retries=retries or 0, allow_other_workers=allow_other_workers,
        )

    def submit_from_thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """:meth:`submit` (same arguments) from a thread other than the
        client's event loop; the blocking :class:`~trioflow.Client` uses it.

        The pickling and hashing happen in the calling thread, and the
        message is handed to the loop without waiting for it: a loop of
        ``submit`` calls costs no thread round trip each.  (Reference counts
        are thread-safe; the loop runs handed-over work in order, so a later
        blocking call sees this task already sent.)
        """
        if self.status != "running" or self._token is None:
            raise RuntimeError(f"client is {self.status}")
        options = {k: kwargs.pop(k) for k in _SUBMIT_OPTIONS if k in kwargs}
        spec = self._submit_spec(func, args, kwargs, **options)
        fut = Future(spec.key, self)
        # The argument futures may be dropped before the loop sends this
        # task, and a release queued earlier would then forget them first:
        # hold them until the task that needs them is on its way.
        holds = [Future(k, self) for k in spec.dependencies]
        try:
            self._token.run_sync_soon(self._send_or_lose, m.UpdateGraph(tasks=[spec], keys=[spec.key]), holds)
        except trio.RunFinishedError:
            raise RuntimeError("client is closed") from None
        return fut

    def _send_or_lose(self, msg: m.UpdateGraph, holds: list[Future] | None = None) -> None:
        """Send from the loop; a message that cannot go errs its futures.
        ``holds`` (futures kept alive until now) go when this returns."""
        try:
            self._send(msg)
        except FutureLostError as exc:
            for k in msg.keys:
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
        futures: list[Future] = []
        chunk: list[m.TaskSpec] = []
        try:
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
                    futures.extend(Future(s.key, self) for s in chunk)
                    # De-duplicate repeated pure keys within one graph.
                    uniq = list({s.key: s for s in chunk}.values())
                    self._send_graph(uniq, [s.key for s in uniq])
                    chunk = []
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

    async def update_graph(self, specs: list[m.TaskSpec], wanted: list[str]) -> list[Future]:
        """Submit prepared task specs (used by the dask integration)."""
        futures = [Future(k, self) for k in wanted]
        self._send_graph(specs, wanted)
        await trio.lowlevel.checkpoint()
        return futures

    # ------------------------------------------------------------ dask graphs and collections

    async def _submit_graph(self, dsk: Any, wanted: list[Any], **options: Any) -> dict[Any, Future]:
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
        )
        spec_keys = {s.key for s in specs}
        str_wanted = [daskgraph.stringify(k) for k in wanted]
        for k in str_wanted:
            if k not in spec_keys and k not in self._states:
                raise ValueError(f"key {k!r} is neither in the graph nor held by this client")
        futures = [Future(k, self) for k in str_wanted]
        self._send_graph(specs, str_wanted)
        await trio.lowlevel.checkpoint()
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
            results = await self._submit_graph(dsk, names, **options)
        out: list[Any] = []
        i = 0
        for c in items:
            if dask.is_dask_collection(c):
                out.append(results[names[i]])
                i += 1
            else:
                out.append(c)
        if sync:
            out = await self.gather(out)
        return out[0] if singleton else out

    async def persist(self, collections: Any, optimize_graph: bool = True, **options: Any) -> Any:
        """Start computing dask collections and return equivalent collections
        backed by the futures of their pieces."""
        from .. import daskgraph

        singleton = not isinstance(collections, (list, tuple))
        items = [collections] if singleton else list(collections)
        dsk, keys = daskgraph.collections_graph(items, optimize_graph=optimize_graph, finalize=False)
        futures = await self._submit_graph(dsk, list(dict.fromkeys(daskgraph.flatten_keys(keys))), **options)
        rebuilt = []
        for c, ks in zip(items, keys, strict=True):
            func, args = c.__dask_postpersist__()
            rebuilt.append(func({k: futures[k] for k in daskgraph.flatten_keys(ks)}, *args))
        return rebuilt[0] if singleton else rebuilt

    # ------------------------------------------------------------ results

    async def _result_async(self, future: Future, timeout: float | None) -> Any:
        st = future._state
        if st.status == "pending":
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    await st.wait()
            except trio.TooSlowError:
                raise TimeoutError(f"future {future.key!r} not done after {timeout}s") from None
        if st.status != "finished":
            raise st.make_exception()
        data = await self._gather_keys([future.key])
        return data[future.key]

    async def gather(self, futures: Any, errors: str = "raise") -> Any:
        """Wait for futures (in any nesting of lists, tuples, sets and dicts)
        and return their results in the same structure.

        ``errors="raise"`` raises the first task exception; ``"skip"``
        leaves out the futures that failed.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        flat = _flatten_futures(futures) if not isinstance(futures, Future) else [futures]
        for f in flat:
            if f.client is not self:
                raise ValueError(f"future {f.key!r} belongs to another client")
            await f._state.wait()
        bad = [f for f in flat if f.status != "finished"]
        if bad and errors == "raise":
            raise bad[0]._state.make_exception()
        keys = list(dict.fromkeys(f.key for f in flat if f.status == "finished"))
        data = await self._gather_keys(keys) if keys else {}
        skip = {f.key for f in bad}
        return _rebuild(futures, data, skip)

    def _announced_holders(self, keys: list[str]) -> m.WhoHasReply | None:
        """Holders from the keys' KeyInMemory, if every key has some."""
        who_has: dict[str, list[str]] = {}
        nbytes: dict[str, int] = {}
        for k in keys:
            st = self._states.get(k)
            if st is None or not st.who_has:
                return None
            who_has[k] = st.who_has
            nbytes[k] = st.nbytes
        return m.WhoHasReply(who_has=who_has, nbytes=nbytes)

    async def _gather_keys(self, keys: list[str]) -> dict[str, Any]:
        """Fetch keys from the workers that hold them, retrying on moves."""
        assert self._pool is not None
        out: dict[str, Any] = {}
        remaining = list(keys)
        for attempt in range(20):
            # First try where the scheduler said the values were when they
            # finished; ask it again only for what has moved since.
            hinted = self._announced_holders(remaining) if attempt == 0 else None
            who = hinted or await self._rpc(m.WhoHas(keys=remaining), m.WhoHasReply)
            by_worker: dict[str, list[str]] = {}
            lost = []
            for k in remaining:
                holders = who.who_has.get(k) or []
                if not holders:
                    lost.append(k)
                else:
                    by_worker.setdefault(holders[attempt % len(holders)], []).append(k)
            results: dict[str, Serialized] = {}
            failed: list[BaseException] = []

            async def fetch(addr: str, ks: list[str], sizes: dict[str, int]) -> None:
                # In batches of about GATHER_BATCH_BYTES: a worker that holds
                # more than its memory (spilled to disk) need not load it all
                # at once to answer.
                for batch in _batches(ks, sizes, GATHER_BATCH_BYTES):
                    try:
                        reply = await self._pool.rpc(addr, m.GetData(keys=batch), m.DataReply, timeout=max(self.timeout, 300))  # type: ignore[union-attr]
                    except RemoteError as exc:
                        # Kept, not raised here: out of the nursery it would be an ExceptionGroup.
                        failed.append(SerializationError(str(exc)))  # noqa: B023 - runs within this iteration
                        return
                    except (CommError, OSError, trio.TooSlowError) as exc:
                        logger.info("gather: %s unreachable: %s", addr, exc)
                        self._pool.drop(addr)  # type: ignore[union-attr]
                        return
                    results.update(reply.data)  # noqa: B023 - runs within this iteration

            async with trio.open_nursery() as n:
                for addr, ks in by_worker.items():
                    n.start_soon(fetch, addr, ks, who.nbytes)
            if failed:
                raise failed[0]
            for k, ser in results.items():
                out[k] = loads(ser)
            remaining = [k for k in remaining if k not in out]
            if not remaining:
                return out
            for k in lost:
                st = self._states.get(k)
                if st is not None and st.status in ("error", "lost", "cancelled"):
                    raise st.make_exception()
            if hinted is None:  # a stale hint is retried at once, with the scheduler's answer
                await trio.sleep(min(0.01 * 2**attempt, 1.0))
        raise FutureLostError(f"could not gather {len(remaining)} keys (first: {remaining[0]!r}): no worker holds them")

    async def _rpc(self, msg: m.Message, reply_type: type[Any], timeout: float | None = None) -> Any:
        assert self._pool is not None
        return await self._pool.rpc(self.scheduler_address, msg, reply_type, timeout=timeout)

    # ------------------------------------------------------------ scatter

    async def scatter(self, data: Any, workers: Any = None, broadcast: bool = False, hash: bool = True) -> Any:
        """Put data on workers; returns Futures in the same shape (one value,
        a list, or a dict whose keys become the keys)."""
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, v) for v in data]  # type: ignore[misc]
        else:
            items = [(None, data)]  # type: ignore[list-item]
        sers: list[tuple[str, Serialized]] = []
        for k, v in items:
            ser = dumps(v)
            if k is None:
                name = type(v).__name__
                k = f"{name}-{_tokenize(*_ser_token(ser))}" if hash else f"{name}-{uuid.uuid4().hex}"
            sers.append((k, ser))
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        targets = list(ident.workers)
        if workers is not None:
            wanted = [workers] if isinstance(workers, str) else list(workers)
            names = {w.name: a for a, w in ident.workers.items()}
            targets = [names.get(w, w) for w in wanted if w in ident.workers or w in names]
        if not targets:
            raise ValueError("no workers to scatter to" + (f" (asked for {workers!r})" if workers is not None else ""))
        placement: dict[str, dict[str, Serialized]] = {}
        who_has: dict[str, list[str]] = {}
        # A repeated value (same hash, same key) is stored once: a second
        # copy on another worker would be unknown to the scheduler, which
        # could then never free it.
        unique = dict(sers)
        for i, (k, ser) in enumerate(unique.items()):
            chosen = targets if broadcast else [targets[i % len(targets)]]
            for a in chosen:
                placement.setdefault(a, {})[k] = ser
            who_has[k] = list(chosen)

        failures: dict[str, BaseException] = {}

        async def put(addr: str, d: dict[str, Serialized]) -> None:
            # Failures are collected, not raised: raised in the nursery they
            # would reach the caller as an ExceptionGroup.
            assert self._pool is not None
            try:
                await self._pool.rpc(addr, m.PutData(data=d), m.Ok, timeout=max(self.timeout, 300))
            except RemoteError as exc:  # the worker could not unpickle it
                failures[addr] = SerializationError(f"{addr}: {exc}")
            except (CommError, OSError, trio.TooSlowError) as exc:
                failures[addr] = CommError(f"could not scatter to {addr}: {exc!r}")

        async with trio.open_nursery() as n:
            for addr, d in placement.items():
                n.start_soon(put, addr, d)
        nbytes = {k: ser.nbytes for k, ser in unique.items()}
        if failures:
            # Copies that did land are registered and then released at once
            # (their futures die here), so no worker keeps data that the
            # scheduler does not know of and so could never free.
            landed = {k: [a for a in addrs if a not in failures] for k, addrs in who_has.items()}
            landed = {k: addrs for k, addrs in landed.items() if addrs}
            if landed:
                doomed = [Future(k, self) for k in landed]
                self._send(m.UpdateData(who_has=landed, nbytes={k: nbytes[k] for k in landed}))
                del doomed
            raise next(iter(failures.values()))
        futures = [Future(k, self) for k, _ in sers]
        # The scheduler answers every scattered key with KeyInMemory on our
        # stream.  Wait for that, so that once scatter returns the scheduler
        # knows the data: who_has, has_what and other clients see it.  (Sent
        # on the stream, not as a request, to stay in order with releases.)
        acks = [self._scatter_acks.setdefault(k, trio.Event()) for k in who_has]
        self._send(m.UpdateData(who_has=who_has, nbytes=nbytes))
        with trio.move_on_after(self.timeout):
            for ack in acks:
                await ack.wait()
        if self.status != "running":
            raise FutureLostError(f"client is {self.status}; scatter did not complete")
        if not all(ack.is_set() for ack in acks):
            raise TimeoutError(f"the scheduler did not acknowledge the scattered data within {self.timeout}s")
        if isinstance(data, dict):
            return dict(zip(data.keys(), futures, strict=True))
        if isinstance(data, (list, tuple, set, frozenset)):
            return type(data)(futures) if not isinstance(data, (set, frozenset)) else list(futures)
        return futures[0]

    # ------------------------------------------------------------ control

    async def _cancel_async(self, futures: Any) -> None:
        flat = _flatten_futures(futures)
        keys = list(dict.fromkeys(f.key for f in flat))
        self._send(m.CancelKeys(keys=keys))
        for k in keys:
            # Forget the state, so that submitting the same key again makes a
            # fresh future instead of one that is already cancelled.  The
            # scheduler will echo KeyCancelled for each key we still held.
            if self._states.pop(k, None) is not None:
                self._cancel_echoes[k] = self._cancel_echoes.get(k, 0) + 1
        for f in flat:
            # Finished ones too: the scheduler drops their data.
            if f.status != "cancelled":
                f._state.cancel()
        await trio.lowlevel.checkpoint()

    async def cancel(self, futures: Any) -> None:
        await self._cancel_async(futures)

    async def fire_and_forget(self, futures: Any) -> None:
        """Let these tasks run to completion even after the futures are dropped."""
        keys = [f.key for f in _flatten_futures(futures)]
        self._send(m.FireAndForget(keys=keys))
        await trio.lowlevel.checkpoint()

    async def restart(self, timeout: float = 60) -> None:
        """Forget all tasks (futures are cancelled) and restart every worker
        through its nanny; waits until they are back."""
        from ..comm.pool import RemoteError as _RemoteError

        try:
            await self._rpc(m.Restart(timeout=timeout), m.Ok, timeout=timeout + 5)
        except _RemoteError as exc:
            raise RuntimeError(str(exc)) from None

    async def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        keys = None if futures is None else [f.key for f in _flatten_futures(futures)]
        reply = await self._rpc(m.WhoHas(keys=keys), m.WhoHasReply)
        return reply.who_has  # type: ignore[no-any-return]

    async def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        ws = [workers] if isinstance(workers, str) else (list(workers) if workers is not None else None)
        reply = await self._rpc(m.HasWhat(workers=ws), m.HasWhatReply)
        return reply.has_what  # type: ignore[no-any-return]

    async def scheduler_info(self) -> dict[str, Any]:
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        return {
            "type": "Scheduler",
            "id": ident.scheduler_id,
            "address": ident.address,
            "services": dict(ident.services),
            "started": ident.started,
            "n_tasks": ident.n_tasks,
            "n_clients": ident.n_clients,
            "workers": {
                a: {
                    "name": w.name,
                    "nthreads": w.nthreads,
                    "memory_limit": w.memory_limit,
                    "resources": dict(w.resources),
                    "nanny": w.nanny,
                    "pid": w.pid,
                    "local_directory": w.local_directory,
                    "metrics": {"memory": w.memory, "managed": w.managed, "spilled": w.spilled, "cpu": w.cpu, "executing": w.executing, "in_memory": w.in_memory},
                    "status": "paused" if w.paused else "running",
                    "last_seen": w.last_seen,
                    "services": dict(w.services),
                }
                for a, w in ident.workers.items()
            },
        }

    async def nthreads(self) -> dict[str, int]:
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        return {a: w.nthreads for a, w in ident.workers.items()}

    ncores = nthreads

    async def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Wait until at least ``n_workers`` workers are connected."""
        # Asked often at first (a cluster starting up is usually a few
        # milliseconds from ready), then every 0.1 s.
        delay = 0.005
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
                if len(ident.workers) >= n_workers:
                    return
                await trio.sleep(delay)
                delay = min(delay * 1.5, 0.1)

    async def run(self, function: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Run ``function(*args, **kwargs)`` once on each worker (outside the
        task system); returns ``{worker address: result}``."""
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        targets = list(ident.workers)
        if workers is not None:
            wanted = [workers] if isinstance(workers, str) else list(workers)
            names = {w.name: a for a, w in ident.workers.items()}
            unknown = [w for w in wanted if w not in ident.workers and w not in names]
            if unknown:
                raise ValueError(f"run(): no worker with address or name {unknown[0]!r}")
            targets = [names.get(w, w) for w in wanted]
        fbytes = dumps_function(function)
        args_ser = dumps((args, kwargs))
        results: dict[str, Any] = {}
        errors: list[BaseException] = []

        async def one(addr: str) -> None:
            # Errors are collected, not raised: raised in the nursery they
            # would reach the caller as an ExceptionGroup.
            assert self._pool is not None
            try:
                reply = await self._pool.rpc(addr, m.RunFunction(function=fbytes, args=args_ser), m.RunReply)
            except (CommError, OSError, RemoteError, trio.TooSlowError) as exc:
                errors.append(exc)
                return
            if reply.result is not None:
                try:
                    results[addr] = loads(reply.result)
                except SerializationError as exc:
                    errors.append(exc)
            else:
                st = FutureState()
                st.err(reply.exception, reply.exception_text, reply.traceback_text, reply.type_name)
                errors.append(st.make_exception())

        async with trio.open_nursery() as n:
            for a in targets:
                n.start_soon(one, a)
        if errors:
            raise errors[0]
        return {a: results[a] for a in targets if a in results}

    async def retire_workers(self, workers: Any, timeout: float = 60) -> list[str]:
        """Close ``workers`` once the data only they hold has a copy on the
        other workers; returns those retired.  A worker whose data could
        not be copied within ``timeout`` seconds stays (not listed)."""
        ws = [workers] if isinstance(workers, str) else list(workers)
        # The scheduler answers within ``timeout``: wait a little longer.
        reply = await self._rpc(m.RetireWorkers(workers=ws, timeout=timeout), m.RetireWorkersReply, timeout=timeout + 10)
        return list(reply.retired)

    async def shutdown(self) -> None:
        """Close the scheduler (and with it the workers), then this client."""
        self._shutdown_requested = True
        try:
            await self._rpc(m.Shutdown(), m.Ok, timeout=self.timeout)
        except (CommError, RemoteError, trio.TooSlowError) as exc:
            logger.info("shutdown: %s", exc)
        await self.aclose()


def _rekey(spec: m.TaskSpec, key: str) -> m.TaskSpec:
    import attrs

    return attrs.evolve(spec, key=key)


def _rebuild(structure: Any, data: dict[str, Any], skip: set[str]) -> Any:
    if isinstance(structure, Future):
        return data.get(structure.key)
    if isinstance(structure, dict):
        return {k: _rebuild(v, data, skip) for k, v in structure.items() if not (isinstance(v, Future) and v.key in skip)}
    if isinstance(structure, (list, tuple, set, frozenset)):
        items = [_rebuild(v, data, skip) for v in structure if not (isinstance(v, Future) and v.key in skip)]
        if isinstance(structure, list):
            return items
        if isinstance(structure, tuple):
            return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
        return type(structure)(items)
    return structure


@asynccontextmanager
async def open_client(
    address: Any = None,
    *,
    security: Any = None,
    name: str | None = None,
    timeout: float = 10,
    scheduler_file: str | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect a client in the current Trio loop::

        async with open_client("tcp://127.0.0.1:8786") as client:
            future = await client.submit(inc, 1)
            assert await future == 2
    """
    address = await _resolve_address(address, scheduler_file, timeout)
    if security is None and hasattr(address, "security"):
        security = address.security
    if not isinstance(address, str):
        address = address.scheduler_address
    client = AsyncClient(address, security=security, name=name, timeout=timeout)
    # An exception from the caller's block (or a failed connection) must reach
    # the caller as itself: the nursery would wrap it in an ExceptionGroup,
    # and ``except SomeError`` around ``async with open_client`` would miss
    # it.  So hold it while the nursery closes and raise it after.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            await client._start(nursery)
            yield client
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


async def _resolve_address(address: Any, scheduler_file: str | None, timeout: float) -> Any:
    if scheduler_file is not None:
        return await wait_for_scheduler_file(scheduler_file, timeout)
    if address is None:
        env = os.environ.get("TRIOFLOW_SCHEDULER_ADDRESS")
        if env:
            return env
        raise ValueError("no scheduler address given (pass an address, a cluster, or scheduler_file=)")
    return address
