"""One client for every event loop: asyncio, Trio, or none (blocking).

Theory of operation
-------------------
The client's machinery (:class:`~trioflow.client.core.AsyncClient`: the
scheduler stream, the receive loop, the futures' states) always runs in a
Trio loop, its *host*:

- ``open_client`` and ``Client(asynchronous=True)`` awaited inside Trio host
  it in the caller's own loop (``Client`` uses a Trio *system task*, so no
  nursery is needed and a forgotten ``close()`` ends with the run);
- ``Client(asynchronous=True)`` inside asyncio (Jupyter, IPython's
  autoawait, FastAPI) and the blocking ``Client`` host it in a Trio loop of
  its own, in a thread run by an anyio blocking portal.

Callers reach it through one path, :meth:`AsyncClient._across` (and
:func:`wait_concurrent` here): in the host loop a call is a plain ``await``;
from any other loop the coroutine is started in the host through the portal
and the caller waits on an :class:`anyio.Event`, woken by the host thread
through the caller loop's own thread-safe wake-up.  Cancelling the caller
cancels the call in the host.  Neither side knows which library the other
runs, so asyncio and Trio callers run the very same code.

Why not an anyio transport for the client?  The comm layer (TCP/TLS streams,
framing, the batched sender, the connection pool, ``inproc://``) is shared
with the scheduler, workers and nannies, which stay on Trio and whose hot
paths are tuned there.  A second, anyio-flavoured copy of the transport
would double the code that must agree on every byte and every close
semantic, and ``inproc://`` addresses (a Trio run's memory channels) could
not be served from asyncio at all.  Hosting the unchanged Trio client costs
one thread hop per awaited call from asyncio (tens of microseconds); the
submit path avoids even that: ``submit``, ``map``, ``persist`` and
``compute`` pickle their tasks in the caller's thread, hand them to the host
without waiting and return their futures at once (as dask's asynchronous
client does), so throughput from asyncio is that of the blocking client.
Handed-over work runs in the host in order (one Trio token queue), and a
call made in the host loop itself sends at once, so a later call never
overtakes a submission.

The same idea serves the daemons: :class:`ServerContext` gives
``Scheduler``, ``Worker`` and ``Nanny`` an ``async with`` that works in Trio
(the server runs in the caller's loop) and in asyncio (the server runs in a
Trio loop of its own in a thread; its address and attributes are readable
from the caller, and calls into it must go through :meth:`ServerContext.call`).
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import sniffio
import trio

__all__ = ["AsyncCluster", "ServerContext", "SystemTaskHost", "ThreadHost", "in_trio", "serving", "wait_concurrent"]


def in_trio() -> bool:
    """Whether the calling code runs in a Trio task."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _thread_safe_waker(event: anyio.Event) -> Callable[[], None]:
    """A function any thread may call to set ``event`` in the current loop."""
    lib = sniffio.current_async_library()
    if lib == "trio":
        token = trio.lowlevel.current_trio_token()

        def wake() -> None:
            try:
                token.run_sync_soon(event.set)
            except trio.RunFinishedError:
                pass

        return wake
    if lib == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()

        def wake_asyncio() -> None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        return wake_asyncio
    raise RuntimeError(f"trioflow cannot wait in a {lib!r} event loop")


async def wait_concurrent(cf: concurrent.futures.Future[Any]) -> Any:
    """Await a :class:`concurrent.futures.Future` from asyncio or Trio
    without blocking the loop or holding a worker thread.

    .. warning:: Cancelling the caller cancels ``cf`` (for a portal's task:
       the task itself) and raises the caller's cancellation at once.
    """
    if not cf.done():
        event = anyio.Event()
        wake = _thread_safe_waker(event)
        cf.add_done_callback(lambda _: wake())
        try:
            await event.wait()
        except BaseException:
            cf.cancel()
            raise
    return cf.result()


async def run_in_portal(portal: Any, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``await fn(*args)`` in the portal's loop, from any other loop."""
    return await wait_concurrent(portal.start_task_soon(fn, *args))


# ---------------------------------------------------------------- hosts


class ThreadHost:
    """An async context manager entered in a Trio loop of its own, in a
    thread (an anyio blocking portal); :meth:`start` and :meth:`close` block.

    The blocking ``Client`` and ``Client(asynchronous=True)`` under asyncio
    use it; ``portal`` runs calls in that loop.
    """

    def __init__(self, acm: Any, name: str = "trioflow-client") -> None:
        self._acm = acm
        self._name = name
        self.portal: Any = None
        self._portal_cm: Any = None
        self._cm: Any = None

    def start(self) -> Any:
        self._portal_cm = anyio.from_thread.start_blocking_portal("trio", name=self._name)
        self.portal = self._portal_cm.__enter__()
        try:
            self._cm = self.portal.wrap_async_context_manager(self._acm)
            return self._cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    def close(self) -> None:
        """Exit the context manager, then end the loop and join its thread."""
        cm, self._cm = self._cm, None
        if cm is None:
            return
        try:
            cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)


class SystemTaskHost:
    """An async context manager entered in a Trio *system task* of the
    current run: it lives until :meth:`aclose` or the end of the run, with no
    nursery of the caller's (``await Client(..., asynchronous=True)`` in Trio
    has none to offer).
    """

    def __init__(self, acm: Any) -> None:
        self._acm = acm
        self._stop = trio.Event()
        self._stopped = trio.Event()

    async def start(self) -> Any:
        started = trio.Event()
        result: list[Any] = []
        error: list[BaseException] = []

        async def host() -> None:
            # A system task must not raise: its errors go to the caller.
            try:
                async with self._acm as value:
                    result.append(value)
                    started.set()
                    await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, or the run is ending
                if not started.is_set():
                    error.append(exc)
            finally:
                started.set()
                self._stopped.set()

        trio.lowlevel.spawn_system_task(host, name="trioflow-host")
        await started.wait()
        if error:
            raise error[0]
        return result[0]

    async def aclose(self) -> None:
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._stopped.wait()


# ---------------------------------------------------------------- servers


@asynccontextmanager
async def serving(server: Any) -> AsyncIterator[Any]:
    """Run ``server.serve`` in a nursery while the block runs; close it after."""
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.aclose()
            nursery.cancel_scope.cancel()


class ServerContext:
    """``async with`` for a Trio server (``Scheduler``, ``Worker``, ``Nanny``)
    in asyncio as well as in Trio.

    In Trio the server runs in the caller's loop (a system task, so no
    nursery is needed) and is closed on exit.  In asyncio it runs in a Trio
    loop of its own, in a thread: the server object's attributes
    (``address``, ``state``, ...) are readable from the caller, but anything
    that awaits must go through :meth:`call`.

    Args:
        server: an object with ``serve(task_status=...)`` (ready when
            started) and ``aclose()``.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self._trio_host: SystemTaskHost | None = None
        self._thread_host: ThreadHost | None = None

    async def __aenter__(self) -> Any:
        if sniffio.current_async_library() == "trio":
            self._trio_host = SystemTaskHost(serving(self.server))
            await self._trio_host.start()
        else:
            host = ThreadHost(serving(self.server), name=f"trioflow-{type(self.server).__name__.lower()}")
            await anyio.to_thread.run_sync(host.start)
            self._thread_host = host
        return self.server

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await fn(*args)`` in the server's loop (from the caller's)."""
        if self._thread_host is None:
            return await fn(*args)
        return await run_in_portal(self._thread_host.portal, fn, *args)

    async def aclose(self) -> None:
        """Close the server and, in asyncio, its loop and thread."""
        if self._trio_host is not None:
            host, self._trio_host = self._trio_host, None
            await host.aclose()
        if self._thread_host is not None:
            thost, self._thread_host = self._thread_host, None
            await anyio.to_thread.run_sync(thost.close)


class AsyncCluster:
    """``LocalCluster(..., asynchronous=True)``: a blocking cluster class,
    started and closed in a worker thread so the caller's loop (asyncio or
    Trio) never blocks.

    ``cluster = await LocalCluster(..., asynchronous=True)`` or ``async with``.
    The cluster itself runs in a Trio loop of its own (as a blocking
    ``LocalCluster`` always does); its attributes are read through this
    object once started, and ``Client(cluster, asynchronous=True)`` accepts it.
    """

    def __init__(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._factory = functools.partial(cls, *args, **kwargs)
        self._cluster: Any = None
        self.asynchronous = True

    async def _start(self) -> AsyncCluster:
        if self._cluster is None:
            self._cluster = await anyio.to_thread.run_sync(self._factory)
        return self

    def __await__(self) -> Any:
        return self._start().__await__()

    async def __aenter__(self) -> AsyncCluster:
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await anyio.to_thread.run_sync(cluster.close)

    async def scale(self, n: int) -> None:
        if self._cluster is None:
            raise RuntimeError("cluster not started: await it first")
        await anyio.to_thread.run_sync(self._cluster.scale, n)

    def __getattr__(self, name: str) -> Any:
        cluster = self.__dict__.get("_cluster")
        if cluster is None:
            raise AttributeError(f"{name!r}: the cluster is not started (await it first)")
        return getattr(cluster, name)

    def __repr__(self) -> str:
        return repr(self._cluster) if self._cluster is not None else "<LocalCluster (asynchronous, not started)>"
