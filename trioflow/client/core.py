"""The asynchronous (Trio) client: connection, lifecycle, reference counts.

Theory of operation
-------------------
:class:`AsyncClient` keeps one long-lived stream to the scheduler: the write
side is a :class:`~trioflow.comm.BatchedSend` (graphs, releases,
cancellations), the read side a loop that resolves futures as the scheduler
reports keys in memory, erred or cancelled.  Everything else (who_has,
identity, shutdown) is a request on a pooled connection.

The client is split by concern; each part is a mixin of this class:

- :mod:`.submit`: ``submit``, ``map``, prepared graphs;
- :mod:`.graphs`: dask graphs and collections (``get``, ``compute``, ``persist``);
- :mod:`.data`: results, ``gather``, ``scatter``;
- :mod:`.admin`: cluster administration and diagnostics;
- :mod:`.cluster`: more of it (run_on_scheduler, replicate, upload_file, ...);
- :mod:`.logs`: the scheduler's and workers' logs, ``forward_logging``;
- :mod:`.plugins`: ``register_plugin`` and ``unregister_*_plugin``;
- :mod:`.bridge`: running the client for asyncio (and any Trio) callers.

``open_client`` runs the client in the caller's Trio loop; the blocking
:class:`~trioflow.client.sync.Client` and ``Client(asynchronous=True)`` run
it in a Trio loop of its own (see :mod:`.bridge`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..comm import BatchedSend, CommClosedError, CommError, ConnectionPool, connect
from ..protocol import messages as m
from ..scheduler_file import wait_for_scheduler_file
from .admin import AdminMixin
from .bridge import run_in_portal
from .cluster import ClusterMixin
from .data import DataMixin
from .datasets import AsyncDatasetsMixin
from .events import EventsMixin
from .futures import FutureLostError, FutureState
from .graphs import GraphMixin
from .logs import LogsMixin
from .observe import ObserveMixin
from .plugins import PluginsMixin
from .submit import SubmitMixin, funcname
from .tracebacks import is_remote, with_remote_traceback

logger = logging.getLogger("trioflow.client")

__all__ = ["AsyncClient", "funcname", "open_client"]


class AsyncClient(SubmitMixin, GraphMixin, DataMixin, AdminMixin, ClusterMixin, LogsMixin, AsyncDatasetsMixin, EventsMixin, ObserveMixin, PluginsMixin):
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
        #: Set when the client runs in a loop of its own (a portal thread).
        self._portal: Any = None
        #: False for the blocking Client: outside its loop, calls then block
        #: instead of returning awaitables.
        self.asynchronous = True
        self._nursery: trio.Nursery | None = None
        self._comm: Any = None
        self._done = trio.Event()
        self._seq = itertools.count()
        #: After losing the scheduler, keep trying to register again.
        self.reconnect = True
        #: Set by :meth:`shutdown`: the scheduler's going away is then expected.
        self._shutdown_requested = False
        #: (logger name, level) -> the scope of its forward_logging poll.
        self._forwarding: dict[Any, trio.CancelScope] = {}

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
        self._resubscribe()
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
                elif t is m.TopicEvent:
                    self._topic_event(msg)
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
        try:
            return self._portal.call(fn, *args)
        except Exception as exc:
            if is_remote(exc):
                # A task's error: show its frames, not the portal's.
                raise with_remote_traceback(exc) from exc.__cause__
            raise

    # ------------------------------------------------------------ reaching the host loop (see .bridge)

    def _in_own_loop(self) -> bool:
        try:
            return trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            return False

    def _blocking(self) -> bool:
        """Whether a call made here blocks: a blocking client, called from
        outside its loop (otherwise calls return awaitables)."""
        return not self.asynchronous and not self._in_own_loop()

    def _awaitable(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a coroutine function run in the client's loop) as
        an awaitable for the calling loop, asyncio or Trio."""
        if self._in_own_loop():
            return fn(*args)
        return self._across(fn, *args)

    async def _across(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._in_own_loop():
            return await fn(*args)
        if self._portal is None:
            raise RuntimeError("this client runs in another Trio loop; use it from that loop")
        try:
            return await run_in_portal(self._portal, fn, *args)
        except Exception as exc:
            if is_remote(exc):
                raise with_remote_traceback(exc) from exc.__cause__
            raise

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the plain function ``fn(*args)`` in the client's loop: now if
        called there, else soon (in order with other handed-over work)."""
        if self._in_own_loop():
            fn(*args)
            return
        if self._token is None:
            raise RuntimeError(f"client is {self.status}")
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise RuntimeError("client is closed") from None

    def refcount(self, key: str) -> int:
        with self._ref_lock:
            return self._refcount.get(key, 0)

    async def _rpc(self, msg: m.Message, reply_type: type[Any], timeout: float | None = None) -> Any:
        assert self._pool is not None
        return await self._pool.rpc(self.scheduler_address, msg, reply_type, timeout=timeout)


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
        # TRIOFLOW_SCHEDULER_ADDRESS, the configuration file, or dask's
        # scheduler-address (see trioflow.config).
        from ..config import get_config

        configured = get_config().scheduler_address
        if configured:
            return configured
        raise ValueError("no scheduler address given (pass an address, a cluster, or scheduler_file=)")
    return address
