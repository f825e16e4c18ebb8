"""Local clusters: a scheduler and workers on this machine.

``open_cluster`` builds them inside the caller's Trio loop (``processes=False``:
workers are tasks in the same process, talking over real comms) or as a
scheduler task plus nanny-supervised worker processes (``processes=True``).
``LocalCluster`` is the blocking wrapper, running ``open_cluster`` in a portal
thread, for use with the blocking ``Client``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.from_thread
import attrs
import trio

from ..comm.inproc import new_inproc_name
from ..config import NannyConfig, SchedulerConfig, WorkerConfig, build_config, parse_memory_limit
from ..scheduler.server import Scheduler
from ..worker.server import Worker

__all__ = ["LocalCluster", "open_cluster", "InProcessCluster"]

#: Options of a worker that are the nanny's (with ``processes=True``).
_NANNY_FIELDS = ("grace", "memory_terminate_fraction", "env")


class InProcessCluster:
    """What ``open_cluster`` yields: the scheduler and the workers (or nannies)."""

    def __init__(
        self,
        scheduler: Scheduler,
        nursery: trio.Nursery,
        worker_config: WorkerConfig,
        security: Any,
        *,
        processes: bool = False,
        nanny_options: dict[str, Any] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.workers: list[Any] = []
        self._nursery = nursery
        #: What every new worker is configured with (its name aside).
        self.worker_config = worker_config
        self._processes = processes
        #: With ``processes=True``: the fields of NannyConfig besides the worker's.
        self._nanny_options = dict(nanny_options or {})
        self.security = security
        self._counter = 0

    @property
    def scheduler_address(self) -> str:
        return self.scheduler.address

    @property
    def dashboard_link(self) -> str | None:
        port = self.scheduler.services.get("dashboard")
        return f"http://127.0.0.1:{port}/status" if port else None

    async def start_worker(self, **options: Any) -> Any:
        """Start one more worker (or nanny, with ``processes=True``);
        ``options`` change fields of :attr:`worker_config` for this one
        (``nthreads=``, ``resources=``, ...).

        Raises:
            TypeError: an option that is not a field of
                :class:`~trioflow.config.WorkerConfig`.
        """
        processes = options.pop("processes", self._processes)
        name = options.pop("name", None) or f"worker-{self._counter}"
        self._counter += 1
        if processes:
            nanny = {**self._nanny_options}
            nanny.update({k: options.pop(k) for k in _NANNY_FIELDS if k in options})
            config = _evolve(self.worker_config, name=name, **options)
            from ..process.nanny import Nanny

            node: Any = Nanny(config=build_config(NannyConfig, "LocalCluster", {"worker": config, **nanny}), security=self.security)
        else:
            config = _evolve(self.worker_config, name=name, **options)
            node = Worker(config=config, security=self.security)
        await self._nursery.start(node.serve)
        self.workers.append(node)
        return node

    async def remove_worker(self, node: Any) -> None:
        await node.aclose()
        if node in self.workers:
            self.workers.remove(node)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for node in list(self.workers):
                await node.aclose(timeout=5)
            await self.scheduler.aclose()

    def __repr__(self) -> str:
        return f"<InProcessCluster {self.scheduler_address} workers={len(self.workers)}>"


@asynccontextmanager
async def open_cluster(
    n_workers: int = 2,
    threads_per_worker: int = 1,
    *,
    processes: bool = False,
    memory_limit: int | str | float = 0,
    protocol: str = "tcp",
    host: str = "127.0.0.1",
    scheduler_port: int = 0,
    dashboard_address: str | None = None,
    security: Any = None,
    resources: dict[str, float] | None = None,
    validate: bool = False,
    worker_options: dict[str, Any] | None = None,
    scheduler_options: dict[str, Any] | None = None,
) -> AsyncIterator[InProcessCluster]:
    """Start a scheduler and ``n_workers`` workers in this Trio loop::

        async with open_cluster(n_workers=2) as cluster:
            async with open_client(cluster) as client:
                ...

    ``protocol="inproc"`` skips sockets entirely (deterministic under
    ``autojump_clock``); ``"tls"`` needs ``security``.
    """
    if n_workers < 0:
        raise ValueError(f"n_workers must not be negative, got {n_workers}")
    if security is not None and protocol == "tcp" and getattr(security, "require_encryption", False):
        protocol = "tls"
    if protocol == "inproc":
        address = f"inproc://{new_inproc_name('scheduler')}"
    else:
        address = f"{protocol}://{host}:{scheduler_port}"
    # Every configuration is built here, once, and passed whole.
    scheduler_config = build_config(
        SchedulerConfig,
        "open_cluster",
        {"address": address, "validate": validate, "dashboard_address": dashboard_address, **(scheduler_options or {})},
    )
    scheduler = Scheduler(config=scheduler_config, security=security)
    wopts: dict[str, Any] = {
        "scheduler_address": "",  # known once the scheduler listens
        "nthreads": threads_per_worker,
        "memory_limit": parse_memory_limit(memory_limit, threads_per_worker, n_workers=max(n_workers, 1)),
        "resources": resources,
        **(worker_options or {}),
    }
    nanny_options = {k: wopts.pop(k) for k in _NANNY_FIELDS if k in wopts}
    if not processes:
        wopts["validate"] = validate
        # In-process workers share this process's memory with everything
        # else in it, so its RSS says nothing about them: spill by managed
        # bytes only, never pause on RSS.
        wopts.setdefault("memory_pause_fraction", None)
    if protocol != "inproc":
        # The worker's listener, or with processes=True the nanny's.
        wopts.setdefault("listen_address", f"{protocol}://{host}:0")
    if processes:
        nanny_options["listen_address"] = wopts.pop("listen_address", None)
    worker_config = build_config(WorkerConfig, "open_cluster", wopts)
    # An exception from the caller's block must reach the caller as itself,
    # not wrapped in an ExceptionGroup by the nursery: hold it while the
    # nursery closes and raise it after.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.serve)
        worker_config = attrs.evolve(worker_config, scheduler_address=scheduler.address)
        cluster = InProcessCluster(
            scheduler, nursery, worker_config, security, processes=processes, nanny_options=nanny_options
        )
        try:
            async with trio.open_nursery() as starters:
                for _ in range(n_workers):
                    starters.start_soon(cluster.start_worker)
            try:
                yield cluster
            except GeneratorExit:
                raise
            except BaseException as exc:
                error = exc
        finally:
            await cluster.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


class LocalCluster:
    """A local cluster for the blocking ``Client`` (dask-compatible arguments).

    ``LocalCluster(n_workers=4, threads_per_worker=1, processes=True,
    memory_limit="2GB", dashboard_address=":8787")``.  With
    ``asynchronous=True`` it is an awaitable, ``async with``-able
    :class:`~trioflow.client.bridge.AsyncCluster` (asyncio or Trio).
    """

    def __new__(cls, *args: Any, asynchronous: bool = False, **kwargs: Any) -> Any:
        if asynchronous:
            from ..client.bridge import AsyncCluster

            return AsyncCluster(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        processes: bool = False,
        memory_limit: int | str | float = 0,
        dashboard_address: str | None = None,
        *,
        security: Any = None,
        protocol: str = "tcp",
        host: str = "127.0.0.1",
        scheduler_port: int = 0,
        resources: dict[str, float] | None = None,
        **worker_options: Any,
    ) -> None:
        worker_options.pop("asynchronous", None)  # handled by __new__
        self.security = security
        self._portal_cm = anyio.from_thread.start_blocking_portal("trio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._cm = self._portal.wrap_async_context_manager(
                open_cluster(
                    n_workers,
                    threads_per_worker,
                    processes=processes,
                    memory_limit=memory_limit,
                    protocol=protocol,
                    host=host,
                    scheduler_port=scheduler_port,
                    dashboard_address=dashboard_address,
                    security=security,
                    resources=resources,
                    worker_options=worker_options or None,
                )
            )
            self._cluster: InProcessCluster = self._cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    @property
    def scheduler_address(self) -> str:
        return self._cluster.scheduler_address

    @property
    def scheduler(self) -> Scheduler:
        return self._cluster.scheduler

    @property
    def workers(self) -> list[Any]:
        return list(self._cluster.workers)

    @property
    def dashboard_link(self) -> str | None:
        return self._cluster.dashboard_link

    def scale(self, n: int) -> None:
        """Add or remove workers until there are ``n``."""
        while len(self._cluster.workers) < n:
            self._portal.call(self._cluster.start_worker)
        while len(self._cluster.workers) > n:
            self._portal.call(self._cluster.remove_worker, self._cluster.workers[-1])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalCluster({self.scheduler_address!r}, workers={len(self._cluster.workers)})"



def _evolve(config: WorkerConfig, **changes: Any) -> WorkerConfig:
    """``attrs.evolve`` with the one-line error of :func:`~trioflow.config.build_config`."""
    return build_config(WorkerConfig, "start_worker", {**attrs.asdict(config, recurse=False), **changes})
