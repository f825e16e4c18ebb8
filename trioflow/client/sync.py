"""``Client``: the dask-compatible facade, blocking or asynchronous.

A thin facade over :class:`~trioflow.client.core.AsyncClient`: every method
is one call through :meth:`Client._call`, which either blocks (the default)
or returns an awaitable (``asynchronous=True``), so both modes share every
line below.  As in dask, the methods that only hand work to the scheduler
(``submit``, ``map``, ``persist``, ``compute`` without ``sync``) return
their Futures (or collections) at once in both modes: the tasks are pickled
in the caller's thread and handed to the client's loop without waiting.

Blocking: the :class:`AsyncClient` lives in a Trio loop that anyio's
blocking portal runs in a background thread (:class:`~.bridge.ThreadHost`);
futures made through this client block in ``result()``.  The portal and its
thread end in :meth:`Client.close` (also on ``with`` exit, and at interpreter
exit for a client nobody closed); no task is left behind in the portal.

Asynchronous (``await Client(address, asynchronous=True)`` or ``async with``):
in Trio the client runs in the caller's loop; in asyncio (Jupyter, IPython's
autoawait, FastAPI) in a Trio loop of its own in a thread.  See
:mod:`.bridge` for how one code path serves both.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio
import sniffio

from ..durations import parse_timedelta
from .bridge import SystemTaskHost, ThreadHost
from .core import AsyncClient, open_client
from .datasets import DatasetsMixin
from .futures import Future
from .tracebacks import is_remote, with_remote_traceback

logger = logging.getLogger("trioflow.client")

__all__ = ["Client", "default_client"]

_current: list[Client] = []
#: The client of ``with client.as_current():`` blocks (innermost).
_as_current: contextvars.ContextVar[Client | None] = contextvars.ContextVar("trioflow_current_client", default=None)

_NO_CLIENT = (
    "No clients found\n"
    "Start a client and point it to the scheduler address:\n"
    "    from trioflow import Client\n"
    "    client = Client('tcp://scheduler-address:8786')"
)


def default_client(c: Client | None = None) -> Client:
    """``c`` if given, else the current client (see :meth:`Client.current`).

    Raises:
        ValueError: no client is running.
    """
    if c is not None:
        return c
    return Client.current()



class _SchedulerHandle:
    """``client.scheduler``: where the scheduler is (dask's rpc object has
    ``.address``)."""

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def address(self) -> str:
        return self._client.scheduler_address

    def __repr__(self) -> str:
        return f"<scheduler {self.address}>"


class Client(DatasetsMixin):
    """Connect to a trioflow scheduler (dask-compatible).

    ``Client("tcp://host:8786")``, ``Client(cluster)``, or
    ``Client(scheduler_file="scheduler.json")``: every method blocks.  With
    no address, ``Client()`` or ``Client(n_workers=4, ...)`` starts a
    :class:`~trioflow.LocalCluster` with those arguments and closes it with
    the client.

    With ``asynchronous=True`` (in asyncio or Trio) the client connects when
    awaited and, as in dask, the methods that talk to the cluster (``gather``,
    ``scatter``, ``run``, ``close``, ...) return awaitables instead, while
    ``submit``, ``map``, ``compute`` (without ``sync``) and ``persist`` return
    their Futures (or collections) at once::

        async with Client(address, asynchronous=True) as client:
            future = client.submit(inc, 1)
            assert await future == 2
            assert await client.gather(client.map(inc, range(3))) == [1, 2, 3]

    In asyncio such a client still becomes dask's scheduler (``x.compute()``
    works, but blocks the loop while it runs: prefer ``await
    client.compute(x)``); in Trio it does not (it runs in the caller's own
    loop, which a blocking ``compute`` would stall).
    """

    def __init__(
        self,
        address: Any = None,
        *,
        security: Any = None,
        timeout: Any = 10,
        name: str | None = None,
        scheduler_file: str | None = None,
        set_as_default: bool = True,
        asynchronous: bool = False,
        direct_to_workers: bool | None = None,
        loop: Any = None,
        **cluster_kwargs: Any,
    ) -> None:
        from ..deploy import cluster_for_client

        # None: the default (dask reads it from its configuration).
        timeout = parse_timedelta(10 if timeout is None else timeout)
        #: Accepted for dask compatibility: data always moves between the
        #: client and the workers directly.
        self.direct_to_workers = direct_to_workers
        # ``loop`` (dask's Tornado loop to run on) is accepted and unused: a
        # blocking client runs in a Trio thread of its own, an asynchronous
        # one in the caller's loop (docs/migrating.rst).
        del loop

        if address is None and scheduler_file is None:
            # Inside a task: the worker's scheduler, with the worker's security
            # (the address is resolved here: the client's loop is another thread).
            address, security = _task_scheduler(address, security)

        # No address: start a LocalCluster (cluster_kwargs) and close it with
        # us.  An asynchronous client starts it when awaited, in a thread, so
        # the caller's loop never blocks on it.
        self._own_cluster: Any = None
        self._cluster_request: tuple[dict[str, Any], Any] | None = None
        if asynchronous and address is None and scheduler_file is None:
            self._cluster_request = (cluster_kwargs, security)
        else:
            address, self._own_cluster = cluster_for_client(address, scheduler_file, cluster_kwargs, security=security)
        self.cluster = None if isinstance(address, str) or address is None else address
        if security is None and self.cluster is not None:
            security = getattr(self.cluster, "security", None)
        self._asynchronous = asynchronous
        self._set_as_default = set_as_default
        self._dask_config: Any = None
        self._closed = False
        self._thread_host: ThreadHost | None = None
        self._trio_host: SystemTaskHost | None = None
        self._open = functools.partial(open_client, address, security=security, name=name, timeout=timeout, scheduler_file=scheduler_file)
        if not asynchronous:
            try:
                self._start_in_thread()
            except BaseException:
                if self._own_cluster is not None:
                    self._own_cluster.close()
                raise
            self._started()

    def _start_in_thread(self) -> None:
        host = ThreadHost(self._open())
        self._core: AsyncClient = host.start()
        self._thread_host = host
        self._portal = host.portal
        self._core._portal = self._portal
        self._core.asynchronous = self._asynchronous

    def _started(self) -> None:
        _current.append(self)
        # A client in the caller's own Trio loop cannot serve dask's blocking
        # compute() from that loop: only thread-hosted clients become dask's.
        if self._set_as_default and self._thread_host is not None:
            self._set_dask_default()

    async def _start_async(self) -> Client:
        """Connect (``await Client(..., asynchronous=True)``)."""
        if self._closed:
            raise RuntimeError("client is closed")
        if getattr(self, "_core", None) is not None:
            return self
        if self._cluster_request is not None:
            await self._start_own_cluster(*self._cluster_request)
        if sniffio.current_async_library() == "trio":
            host = SystemTaskHost(self._open())
            self._core = await host.start()
            self._trio_host = host
            self._portal = None
        else:
            await anyio.to_thread.run_sync(self._start_in_thread)
        self._started()
        return self

    async def _start_own_cluster(self, cluster_kwargs: dict[str, Any], security: Any) -> None:
        from ..deploy import cluster_for_client

        self._cluster_request = None
        address, self._own_cluster = await anyio.to_thread.run_sync(
            lambda: cluster_for_client(None, None, cluster_kwargs, security=security)
        )
        self.cluster = None if isinstance(address, str) else address
        if security is None and self.cluster is not None:
            security = getattr(self.cluster, "security", None)
        self._open = functools.partial(self._open.func, address, **{**self._open.keywords, "security": security})

    def __await__(self) -> Any:
        if not self._asynchronous:
            raise TypeError("only Client(..., asynchronous=True) can be awaited")
        return self._start_async().__await__()

    async def __aenter__(self) -> Client:
        return await self._start_async()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the client's loop: its result
        (blocking) or an awaitable of it (asynchronous)."""
        core = self._running_core()
        if self._asynchronous:
            return core._awaitable(functools.partial(fn, *args, **kwargs))
        try:
            return self._portal.call(functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            if is_remote(exc):
                # A task's error: its traceback is the task's frames and
                # this call's, not the portal's machinery.
                raise with_remote_traceback(exc) from exc.__cause__
            raise

    def _running_core(self) -> AsyncClient:
        core: AsyncClient | None = getattr(self, "_core", None)
        if core is None:
            raise RuntimeError("client not started: await Client(..., asynchronous=True) first")
        if core.status != "running":
            raise RuntimeError(f"client is {core.status}")
        return core

    def sync(self, func: Callable[..., Any], *args: Any, asynchronous: bool | None = None, callback_timeout: Any = None, **kwargs: Any) -> Any:
        """Call ``func(*args, **kwargs)`` the way this client is used: for an
        asynchronous client return it as is (an awaitable for the caller's
        loop); for a blocking one run it in the client's loop and return its
        result (awaited if it is a coroutine function)."""
        asyn = self._asynchronous if asynchronous is None else asynchronous
        if asyn:
            return func(*args, **kwargs)
        call = functools.partial(func, *args, **kwargs)
        if callback_timeout is not None:
            return self._portal.call(_with_timeout, call, float(callback_timeout))
        return self._portal.call(call)

    @property
    def status(self) -> str:
        core = getattr(self, "_core", None)
        return "newly-created" if core is None else core.status

    @property
    def id(self) -> str:
        core = getattr(self, "_core", None)
        return "" if core is None else core.id

    @property
    def scheduler_address(self) -> str:
        core = getattr(self, "_core", None)
        if core is not None:
            return core.scheduler_address
        return getattr(self.cluster, "scheduler_address", None) or str(self._open.args[0] or "")

    @property
    def asynchronous(self) -> bool:
        return self._asynchronous

    @property
    def scheduler(self) -> _SchedulerHandle:
        """The scheduler: ``client.scheduler.address``."""
        return _SchedulerHandle(self)

    @classmethod
    def current(cls, allow_global: bool = True) -> Client:
        """The client of the innermost ``with client.as_current():`` block,
        else (``allow_global``) the newest client that is running.

        Raises:
            ValueError: there is none.
        """
        c = _as_current.get()
        if c is not None:
            return c
        if allow_global:
            for c in reversed(_current):
                if c.status == "running":
                    return c
        raise ValueError(_NO_CLIENT)

    @contextlib.contextmanager
    def as_current(self) -> Iterator[Client]:
        """Make this client :meth:`current` inside the ``with`` block (in
        this thread or task only)."""
        token = _as_current.set(self)
        try:
            yield self
        finally:
            _as_current.reset(token)

    def _info_now(self) -> dict[str, Any] | None:
        """scheduler_info() if it can be had without awaiting, else None."""
        if self.status != "running" or self._portal is None:
            return None
        try:
            return self._portal.call(self._core.scheduler_info, -1)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001
            return None

    def __repr__(self) -> str:
        info = self._info_now()
        if info is None:
            return f"<Client: {self.scheduler_address} status={self.status}>"
        n = len(info["workers"])
        threads = sum(w["nthreads"] for w in info["workers"].values())
        mem = sum(w["memory_limit"] for w in info["workers"].values())
        from ..deploy.reprs import memory_text

        return f"<Client: {self.scheduler_address} workers={n} threads={threads} memory={memory_text(mem)}>"

    def _repr_html_(self) -> str:
        from ..deploy.reprs import client_html

        return client_html(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> Any:
        """Disconnect; the scheduler releases everything this client held.
        (An awaitable for an asynchronous client.)"""
        if self._asynchronous:
            return self._close_async()
        self._close_sync()
        return None

    def _close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unset_dask_default()
        try:
            if self._thread_host is not None:
                self._thread_host.close()
        finally:
            if self in _current:
                _current.remove(self)
            if self._own_cluster is not None:
                self._own_cluster.close()

    async def _close_async(self) -> None:
        if self._trio_host is not None:
            if self._closed:
                return
            self._closed = True
            if self in _current:
                _current.remove(self)
            try:
                await self._trio_host.aclose()
            finally:
                if self._own_cluster is not None:
                    await anyio.to_thread.run_sync(self._own_cluster.close)
        else:
            await anyio.to_thread.run_sync(self._close_sync)

    def shutdown(self) -> Any:
        """Close the scheduler and its workers, then this client.
        (An awaitable for an asynchronous client.)"""
        if self._asynchronous:
            return self._shutdown_async()
        if self._core.status == "running":
            self._portal.call(self._core.shutdown)
        if self.cluster is not None and hasattr(self.cluster, "close"):
            self.cluster.close()
        self.close()
        return None

    async def _shutdown_async(self) -> None:
        if self._core.status == "running":
            await self._core._awaitable(self._core.shutdown)
        await self.close()

    # ------------------------------------------------------------ API

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """See :meth:`AsyncClient.submit`: the Future at once, in both modes
        (``await future`` for its value in asynchronous code)."""
        # Pickled here, handed to the client's loop without a round trip.
        return self._running_core().submit_from_thread(func, *args, **kwargs)

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> list[Future]:
        """See :meth:`AsyncClient.map`: a list of Futures at once, in both modes."""
        core = self._running_core()
        iterables = tuple(list(it) for it in iterables)
        if self._asynchronous:
            # Pickled in the caller's thread (as dask does), each graph handed
            # to the client's loop as soon as it is ready.
            return core.map_from_thread(func, *iterables, **kwargs)
        return self._call(core.map, func, *iterables, **_map_annotations(kwargs))  # type: ignore[no-any-return]

    def gather(self, futures: Any, errors: str = "raise", direct: bool | None = None, asynchronous: bool | None = None) -> Any:
        """The futures' values, in the same structure.  ``direct`` is
        accepted for dask compatibility (data always comes straight from the
        workers).

        Raises:
            ValueError: ``errors`` is not ``"raise"`` or ``"skip"``.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        return self._call(self._core.gather, futures, errors=errors)

    def scatter(
        self,
        data: Any,
        workers: Any = None,
        broadcast: bool = False,
        direct: bool | None = None,
        hash: bool = True,
        timeout: Any = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Put ``data`` on the workers; futures in the same structure.
        ``direct`` is accepted for dask compatibility (data always goes
        straight to the workers)."""
        if isinstance(data, Future) or (isinstance(data, (list, tuple, set)) and any(isinstance(x, Future) for x in data)):
            raise TypeError("Trying to scatter a Future: futures are already on the cluster")
        return self._call(self._core.scatter, data, workers=workers, broadcast=broadcast, hash=hash)

    def cancel(self, futures: Any) -> Any:
        return self._call(self._core.cancel, futures)

    def restart(self, timeout: Any = 60, wait_for_workers: bool = True) -> Any:
        """Forget all tasks and restart the workers (through their nannies)."""
        return self._call(self._core.restart, parse_timedelta(timeout))

    def log_event(self, topic: str | list[str], msg: Any) -> Any:
        """See :meth:`AsyncClient.log_event <trioflow.client.events.EventsMixin.log_event>`."""
        return self._call(self._core.log_event, topic, msg)

    def get_events(self, topic: str | None = None) -> Any:
        """See :meth:`AsyncClient.get_events <trioflow.client.events.EventsMixin.get_events>`."""
        return self._call(self._core.get_events, topic)

    def subscribe_topic(self, topic: str, handler: Callable[[Any], Any]) -> Any:
        """See :meth:`AsyncClient.subscribe_topic <trioflow.client.events.EventsMixin.subscribe_topic>`
        (the handler runs in the client's loop thread)."""
        return self._call(self._core.subscribe_topic, topic, handler)

    def unsubscribe_topic(self, topic: str) -> Any:
        return self._call(self._core.unsubscribe_topic, topic)

    def who_has(self, futures: Any = None, workers: Any = None) -> dict[str, list[str]]:
        return self._call(self._core.who_has, futures, workers=workers)  # type: ignore[no-any-return]

    def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        return self._call(self._core.has_what, workers)  # type: ignore[no-any-return]

    def nthreads(self, workers: Any = None) -> dict[str, int]:
        return self._call(self._core.nthreads, workers)  # type: ignore[no-any-return]

    ncores = nthreads

    def scheduler_info(self, n_workers: int = 5, **kwargs: Any) -> dict[str, Any]:
        """The scheduler and (the first ``n_workers``, all with -1 of) its workers."""
        return self._call(self._core.scheduler_info, n_workers)  # type: ignore[no-any-return]

    def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        workers: Any = None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> Any:
        """Run ``function`` on each worker; ``{worker: result}`` (None with ``wait=False``)."""
        _check_callable(function, "run")
        return self._call(self._core.run, function, *args, workers=workers, wait=wait, nanny=nanny, on_error=on_error, **kwargs)

    def register_plugin(self, plugin: Any, name: str | None = None, idempotent: bool | None = None) -> Any:
        """See :meth:`AsyncClient.register_plugin <trioflow.client.plugins.PluginsMixin.register_plugin>`."""
        return self._call(self._core.register_plugin, plugin, name, idempotent)

    def register_worker_plugin(self, plugin: Any = None, name: str | None = None, nanny: bool | None = None) -> Any:
        """Deprecated (as in dask): use :meth:`register_plugin`."""
        import warnings

        warnings.warn("register_worker_plugin is deprecated; use register_plugin", DeprecationWarning, stacklevel=2)
        return self._call(self._core.register_plugin, plugin, name, None)

    def register_scheduler_plugin(self, plugin: Any, name: str | None = None, idempotent: bool | None = None) -> Any:
        """Deprecated (as in dask): use :meth:`register_plugin`."""
        import warnings

        warnings.warn("register_scheduler_plugin is deprecated; use register_plugin", DeprecationWarning, stacklevel=2)
        return self._call(self._core.register_plugin, plugin, name, idempotent)

    def unregister_worker_plugin(self, name: str, nanny: bool | None = None) -> Any:
        return self._call(self._core.unregister_worker_plugin, name, nanny)

    def unregister_scheduler_plugin(self, name: str) -> Any:
        return self._call(self._core.unregister_scheduler_plugin, name)

    def run_on_scheduler(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` in the scheduler's process; its result."""
        _check_callable(function, "run_on_scheduler")
        return self._call(self._core.run_on_scheduler, function, *args, **kwargs)

    # ------------------------------------------------------------ observing (see .observe)

    def profile(self, key: str | None = None, start: Any = None, stop: Any = None, workers: Any = None, filename: str | None = None, merge_workers: bool = True) -> Any:
        """The workers' statistical profile, merged (see :meth:`AsyncClient.profile`)."""
        return self._call(self._core.profile, key, start, stop, workers, filename, merge_workers)

    def call_stack(self, futures: Any = None, keys: Any = None) -> Any:
        """What running tasks are doing now: ``{worker: {key: [lines]}}``."""
        return self._call(self._core.call_stack, futures, keys)

    def get_task_stream(self, start: Any = None, stop: Any = None, count: int | None = None, plot: bool = False, filename: str | None = None) -> Any:
        """Finished runs and transfers in dask's record shape, oldest first."""
        if plot or filename:
            raise NotImplementedError("get_task_stream(plot=) needs Bokeh; use performance_report() for a page")
        return self._call(self._core.get_task_stream, start, stop, count)

    def story(self, *keys_or_futures: Any) -> Any:
        """The transitions of keys across the scheduler and the workers, in time order."""
        return self._call(self._core.story, *keys_or_futures)


    def retire_workers(self, workers: Any, timeout: Any = 60, close_workers: bool = True, remove: bool = True) -> list[str]:
        return self._call(self._core.retire_workers, workers, parse_timedelta(timeout))  # type: ignore[no-any-return]

    def wait_for_workers(self, n_workers: int, timeout: Any = None) -> Any:
        if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        return self._call(self._core.wait_for_workers, n_workers, parse_timedelta(timeout))

    def processing(self, workers: Any = None) -> dict[str, list[str]]:
        """``{worker: keys it is running or has queued}``."""
        return self._call(self._core.processing, workers)  # type: ignore[no-any-return]

    def nbytes(self, keys: Any = None, summary: bool = True) -> dict[str, int]:
        """Bytes of each key in memory (summed per key prefix with ``summary``)."""
        return self._call(self._core.nbytes, keys, summary)  # type: ignore[no-any-return]

    def replicate(self, futures: Any, n: int | None = None, workers: Any = None, branching_factor: int = 2) -> Any:
        """Copy the futures' data to ``n`` workers (all when None)."""
        return self._call(self._core.replicate, futures, n=n, workers=workers, branching_factor=branching_factor)

    def rebalance(self, futures: Any = None, workers: Any = None, **kwargs: Any) -> Any:
        """Even out the memory the workers hold."""
        return self._call(self._core.rebalance, futures, workers)

    def restart_workers(self, workers: Any, timeout: Any = "default", raise_for_error: bool = True) -> Any:
        """Restart these workers through their nannies; ``{worker: "OK" or error}``."""
        if isinstance(workers, str) or not isinstance(workers, (list, tuple, set)):
            raise TypeError(f"workers must be a list of worker addresses or names, got {type(workers).__name__}")
        return self._call(self._core.restart_workers, list(workers), timeout, raise_for_error)

    def upload_file(self, filename: str, load: bool = True) -> Any:
        """Make a local ``.py``, ``.zip`` or ``.egg`` file importable on every
        worker, including those that join later."""
        return self._call(self._core.upload_file, filename, load)

    def get_versions(self, check: bool = False, packages: Any = None) -> Any:
        """``{"scheduler", "workers", "client"}`` versions; ``check=True``
        raises ValueError when required packages differ."""
        return self._call(self._core.get_versions, check, packages)

    def write_scheduler_file(self, scheduler_file: str) -> Any:
        """Write the scheduler's address to ``scheduler_file`` (JSON)."""
        return self._call(self._core.write_scheduler_file, scheduler_file)

    def dump_cluster_state(
        self, filename: str = "dump-cluster-state", write_from_scheduler: bool | None = None, exclude: Any = (), format: str = "msgpack", **storage_options: Any
    ) -> Any:
        """Write the cluster's state to ``filename.msgpack.gz`` or ``filename.yaml``."""
        if format not in ("msgpack", "yaml"):
            raise ValueError(f"Unsupported format {format!r}; expected 'msgpack' or 'yaml'")
        return self._call(self._core.dump_cluster_state, filename, write_from_scheduler, exclude, format)

    def get_scheduler_logs(self, n: int | None = None) -> Any:
        """The scheduler's newest ``n`` log lines, ``(level, line)`` pairs."""
        return self._call(self._core.get_scheduler_logs, n)

    def get_worker_logs(self, n: int | None = None, workers: Any = None, nanny: bool = False) -> Any:
        """``{worker: its newest n log lines}``."""
        return self._call(self._core.get_worker_logs, n, workers, nanny)

    def forward_logging(self, logger_name: str | None = None, level: int = logging.NOTSET) -> Any:
        """Replay here what tasks log on the workers (see :meth:`AsyncClient.forward_logging`)."""
        return self._call(self._core.forward_logging, logger_name, level)

    def unforward_logging(self, logger_name: str | None = None, level: int = logging.NOTSET) -> Any:
        return self._call(self._core.unforward_logging, logger_name, level)

    def retry(self, futures: Any) -> Any:
        """Run failed futures' tasks again."""
        return self._call(self._core.retry, futures)

    def futures_of(self, collections: Any) -> list[Future]:
        from .futures import futures_of

        return futures_of(collections)

    def recreate_task_locally(self, future: Future) -> Any:
        """Run ``future``'s task here, in this thread (dependencies fetched
        from the cluster), and return its result: for debugging."""
        if self._asynchronous:
            return self._recreate_async(future, False)
        func, args, kwargs = self._call(self._core._task_to_recreate, future, False)
        return func(*args, **kwargs)

    def recreate_error_locally(self, future: Future) -> Any:
        """Run the task that made ``future`` fail here, in this thread, so
        the exception is raised where a debugger can reach it.

        Raises:
            ValueError: ``future`` did not fail.
            Exception: what the task raises.
        """
        if self._asynchronous:
            return self._recreate_async(future, True)
        func, args, kwargs = self._call(self._core._task_to_recreate, future, True)
        func(*args, **kwargs)
        return None

    async def _recreate_async(self, future: Future, errored: bool) -> Any:
        func, args, kwargs = await self._call(self._core._task_to_recreate, future, errored)
        result = func(*args, **kwargs)
        return None if errored else result

    @property
    def dashboard_link(self) -> str | None:
        info = self._info_now()
        if info is None:
            return None
        port = info["services"].get("dashboard")
        if not port:
            return None
        host = info["address"].split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        return f"http://{host}:{port}/status"

    # ------------------------------------------------------------ dask

    def get(self, dsk: Any, keys: Any, **options: Any) -> Any:
        """The dask scheduler protocol: ``dask.compute(x, scheduler=client.get)``."""
        return self._call(self._core.get, dsk, keys, **_with_annotations(options))

    def compute(self, collections: Any, sync: bool = False, **options: Any) -> Any:
        """Futures for dask collections (their values with ``sync=True``).
        Asynchronous: the Futures at once (``sync=True``: an awaitable of the
        values)."""
        if self._asynchronous and not sync:
            return self._running_core().compute_from_thread(collections, **_with_annotations(options))
        return self._call(self._core.compute, collections, sync=sync, **_with_annotations(options))

    def persist(self, collections: Any, **options: Any) -> Any:
        """Dask collections of the same kind, backed by futures (at once, in
        both modes)."""
        if self._asynchronous:
            return self._running_core().persist_from_thread(collections, **_with_annotations(options))
        return self._call(self._core.persist, collections, **_with_annotations(options))

    def _set_dask_default(self) -> None:
        """Make this client dask's scheduler while it lives (only if dask is
        installed; importing trioflow alone never imports dask)."""
        import importlib.util

        if importlib.util.find_spec("dask") is None:
            return
        import dask

        self._dask_config = dask.config.set(
            {
                "scheduler": self._dask_get,
                # The single-machine defaults would shuffle through local disk
                # or expect dask.distributed's P2P extension.
                "dataframe.shuffle.method": "tasks",
                "array.rechunk.method": "tasks",
            }
        )

    def _dask_get(self, dsk: Any, keys: Any, **options: Any) -> Any:
        """dask's scheduler while this client is the default.

        The setting is process-wide, so with thread workers in this process
        a task's own ``.compute()`` lands here too; blocking on the cluster
        from the worker's thread could wait for that very thread (with one
        thread, for ever).  A task computes its collection locally instead,
        on dask's synchronous scheduler in the task's own thread (the task
        already holds one of the worker's threads; no pool is started).
        """
        from ..worker.executor import thread_state

        if getattr(thread_state, "worker", None) is not None:
            import dask.local

            return dask.local.get_sync(dsk, keys, **options)
        return self._portal.call(functools.partial(self._core.get, dsk, keys, **_with_annotations(options)))

    def _unset_dask_default(self) -> None:
        cfg, self._dask_config = self._dask_config, None
        if cfg is not None:
            cfg.__exit__(None, None, None)


def _check_callable(function: Any, method: str) -> None:
    if not callable(function):
        raise TypeError(f"{method}() needs a callable, got {type(function).__name__}")


async def _with_timeout(call: Callable[[], Any], timeout: float) -> Any:
    with anyio.fail_after(timeout):
        result = call()
        if hasattr(result, "__await__"):
            result = await result
        return result


def _task_scheduler(address: Any, security: Any) -> tuple[Any, Any]:
    """(address, security) for a client made with no address: the worker's
    scheduler inside a task (unless the environment names one)."""
    import os

    from ..worker.executor import thread_state

    worker = getattr(thread_state, "worker", None)
    if worker is None or os.environ.get("TRIOFLOW_SCHEDULER_ADDRESS"):
        return address, security
    return worker.scheduler_address, security if security is not None else worker.security


def _map_annotations(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``map``'s keyword arguments with the dask annotations in effect in
    the caller's thread as options, where not given (``map`` prepares its
    tasks in the client's loop thread, which does not see them)."""
    if "dask" not in sys.modules:
        return kwargs
    from ..daskgraph import current_annotations

    for name, value in current_annotations().items():
        if name in ("priority", "workers", "resources", "retries", "allow_other_workers") and not callable(value):
            kwargs.setdefault(name, value)
    return kwargs


def _with_annotations(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the dask annotations in effect in the caller's
    thread (a context variable, invisible from the client's loop thread)."""
    if "annotations" not in options:
        from ..daskgraph import current_annotations

        options["annotations"] = current_annotations()
    return options


def _close_clients_at_exit() -> None:
    """Close every client still open when the interpreter exits.

    Without this, a forgotten ``close()`` leaves the client's loop running in
    a daemon thread while the interpreter finalizes: futures collected then
    call into a loop whose thread is being torn down (and may hold a lock it
    will never release), which can hang the exit.  Each close runs in a
    daemon thread with a time limit, so a scheduler that is gone or stuck
    cannot hang the exit either.
    """
    for client in list(reversed(_current)):
        if client._thread_host is None:
            continue  # hosted in a Trio run, which has ended with its loop
        t = threading.Thread(target=client._close_sync, name="trioflow-close-at-exit", daemon=True)
        t.start()
        t.join(5)
        if t.is_alive():
            logger.warning("client %s did not close within 5 s at exit", client.id)
    _current.clear()


atexit.register(_close_clients_at_exit)
