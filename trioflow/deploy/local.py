"""Local clusters: a scheduler and workers on this machine.

``open_cluster`` builds them inside the caller's Trio loop (``processes=False``:
workers are tasks in the same process, talking over real comms) or as a
scheduler task plus nanny-supervised worker processes (``processes=True``).
``LocalCluster`` is the blocking wrapper, running ``open_cluster`` in a portal
thread, for use with the blocking ``Client``.
"""

from __future__ import annotations

import atexit
import collections
import errno
import logging
import socket
import warnings
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.from_thread
import attrs
import trio

from ..comm.inproc import new_inproc_name
from ..config import (
    NannyConfig,
    SchedulerConfig,
    WorkerConfig,
    build_config,
    get_config,
    parse_memory_limit,
)
from ..scheduler.server import Scheduler
from ..worker.server import Worker
from .utils import cpu_count, nprocesses_nthreads

__all__ = ["InProcessCluster", "LocalCluster", "cluster_for_client", "open_cluster"]

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
        if not port:
            return None
        host = self.scheduler_address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        if host in ("", "0.0.0.0", "::") or self.scheduler_address.startswith("inproc"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/status"

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




class _LogRecorder(logging.Handler):
    """Keeps the last lines trioflow logged in this process, by component."""

    def __init__(self, maxlen: int = 10_000) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=maxlen)
        self.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.name, self.format(record)))
        except Exception:  # noqa: BLE001 - a log line must never break the cluster
            self.handleError(record)


class LocalCluster:
    """A scheduler and workers on this machine, for the blocking ``Client``.

    The arguments and defaults are dask's: with none given there is one
    worker *process* per core (each behind a nanny), sized the way dask sizes
    them (:func:`~trioflow.deploy.utils.nprocesses_nthreads`), the memory of
    the machine shared out between them, and the live page on port 8787 (on
    another port, with a warning, when 8787 is taken)::

        with LocalCluster(n_workers=4, threads_per_worker=1) as cluster, Client(cluster) as client:
            ...

    ``processes=False`` runs the workers as tasks in this process (fast to
    start; what tests want).  Arguments not listed go to every worker.
    With ``asynchronous=True`` it is an awaitable, ``async with``-able
    :class:`~trioflow.client.bridge.AsyncCluster` (asyncio or Trio).
    """

    def __new__(cls, *args: Any, asynchronous: bool = False, **kwargs: Any) -> Any:
        if asynchronous:
            from ..client.bridge import AsyncCluster

            return AsyncCluster(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool | None = None,
        memory_limit: int | str | float | None = "auto",
        dashboard_address: str | int | None = ":8787",
        *,
        name: str | None = None,
        host: str | None = None,
        scheduler_port: int = 0,
        silence_logs: int | bool | None = logging.WARNING,
        security: Any = None,
        protocol: str | None = None,
        resources: dict[str, float] | None = None,
        worker_class: type | None = None,
        worker_dashboard_address: str | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        validate: bool = False,
        **worker_kwargs: Any,
    ) -> None:
        worker_kwargs.pop("asynchronous", None)  # handled by __new__
        if isinstance(n_workers, bool) or (n_workers is not None and not isinstance(n_workers, int)):
            raise TypeError(f"n_workers must be an int or None, got {n_workers!r}")
        if worker_class is not None and processes is None:
            from ..process.nanny import Nanny

            processes = issubclass(worker_class, Nanny)
        if processes is None:
            processes = True
        self.processes = bool(processes)
        if security is True:
            from ..security import Security

            security = Security.temporary()
        if protocol is None:
            if host and "://" in host:
                protocol, host = host.split("://", 1)
            elif security is not None and getattr(security, "require_encryption", False):
                protocol = "tls"
            else:
                protocol = "tcp"
        protocol = protocol.removesuffix("://")
        if host is None:
            host = "127.0.0.1"
        cpus = cpu_count()
        if n_workers is None and threads_per_worker is None:
            if self.processes:
                n_workers, threads_per_worker = nprocesses_nthreads(cpus)
            else:
                n_workers, threads_per_worker = 1, cpus
        if n_workers is None:
            assert threads_per_worker is not None
            n_workers = max(1, cpus // threads_per_worker) if self.processes else 1
        if threads_per_worker is None:
            # Rather more threads than cores than fewer, as dask does.
            threads_per_worker = max(1, -(-cpus // max(n_workers, 1)))
        self.name = name
        self.security = security
        self._host = host
        self._records = _LogRecorder()
        self._cluster_log: list[str] = []
        if dashboard_address is not None:
            dashboard_address = self._free_dashboard_address(dashboard_address, host)
        if worker_dashboard_address is not None:
            worker_kwargs["dashboard_address"] = worker_dashboard_address
        self._silence(silence_logs)
        if self.processes and silence_logs and silence_logs is not True:
            # The worker processes log to their standard error at this level.
            env = dict(worker_kwargs.get("env") or {})
            env.setdefault("TRIOFLOW_WORKER_LOG_LEVEL", logging.getLevelName(silence_logs))
            worker_kwargs["env"] = env
        self._portal_cm = anyio.from_thread.start_blocking_portal("trio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._cm = self._portal.wrap_async_context_manager(
                open_cluster(
                    n_workers,
                    threads_per_worker,
                    processes=self.processes,
                    memory_limit=memory_limit if memory_limit is not None else 0,
                    protocol=protocol,
                    host=host,
                    scheduler_port=scheduler_port,
                    dashboard_address=None if dashboard_address is None else str(dashboard_address),
                    security=security,
                    resources=resources,
                    validate=validate,
                    worker_options=worker_kwargs or None,
                    scheduler_options=scheduler_kwargs,
                )
            )
            self._cluster: InProcessCluster = self._cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            self._unsilence()
            raise
        self._closed = False
        # A cluster nobody closed goes at interpreter exit, workers first,
        # rather than leaving its worker processes to find their nanny gone.
        _live_clusters.add(self)
        self._log(f"started with {n_workers} worker{'s' if n_workers != 1 else ''} ({'processes' if self.processes else 'threads'}), {threads_per_worker} thread{'s' if threads_per_worker != 1 else ''} each")

    # ------------------------------------------------------------ set-up

    def _free_dashboard_address(self, address: str | int, host: str) -> str:
        """``address`` with the cluster's host filled in, on a free port:
        dask's default ``:8787`` is often taken by another cluster."""
        from ..diagnostics.server import parse_dashboard_address

        bind_host, port = parse_dashboard_address(address)
        if bind_host is None:
            bind_host = host
        shown = f"[{bind_host}]" if ":" in bind_host else bind_host
        if port and not _port_free(bind_host, port):
            warnings.warn(
                f"Port {port} is already in use (another cluster?); the dashboard is on another port "
                f"instead (see LocalCluster.dashboard_link)",
                UserWarning,
                stacklevel=3,
            )
            self._log(f"dashboard port {port} in use; picking another")
            port = 0
        return f"{shown}:{port}"

    def _silence(self, level: int | bool | None) -> None:
        logger = logging.getLogger("trioflow")
        self._old_level: int | None = None
        if level and level is not True:
            self._old_level = logger.level
            logger.setLevel(level)
        logger.addHandler(self._records)

    def _unsilence(self) -> None:
        logger = logging.getLogger("trioflow")
        logger.removeHandler(self._records)
        if self._old_level is not None:
            logger.setLevel(self._old_level)
            self._old_level = None

    def _log(self, message: str) -> None:
        self._cluster_log.append(f"{logging.Formatter().formatTime(logging.makeLogRecord({}))} - {message}")

    # ------------------------------------------------------------ state

    @property
    def scheduler_address(self) -> str:
        return self._cluster.scheduler_address

    @property
    def scheduler(self) -> Scheduler:
        return self._cluster.scheduler

    @property
    def workers(self) -> dict[str, Any]:
        """The running workers (nannies with ``processes=True``) by name."""
        return {node.name: node for node in self._cluster.workers}

    @property
    def dashboard_link(self) -> str | None:
        return self._cluster.dashboard_link

    @property
    def status(self) -> str:
        return "closed" if self._closed else self.scheduler.status

    def _summary(self) -> tuple[int, int, int]:
        """Workers, threads and total memory limit, as the scheduler sees them
        (read in the cluster's own thread)."""

        def read() -> tuple[int, int, int]:
            workers = list(self.scheduler.state.workers.values())
            return len(workers), sum(w.nthreads for w in workers), sum(w.memory_limit or 0 for w in workers)

        return self._portal.call(read)

    # ------------------------------------------------------------ actions

    def scale(self, n: int) -> None:
        """Add or remove workers until there are ``n``."""
        if n < 0:
            raise ValueError(f"cannot scale to a negative number of workers ({n})")
        self._log(f"scale to {n} worker{'s' if n != 1 else ''}")
        while len(self._cluster.workers) < n:
            self._portal.call(self._cluster.start_worker)
        while len(self._cluster.workers) > n:
            self._portal.call(self._cluster.remove_worker, self._cluster.workers[-1])

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> dict[str, str]:
        """What this cluster logged, as text by component (``"Cluster"``,
        ``"Scheduler"``, ``"Workers"``): the lines trioflow logged in this
        process at or above the ``silence_logs`` level while the cluster ran.
        Worker *processes* log to their own standard error; their nannies'
        lines are here."""
        out: dict[str, str] = {}
        lines = list(self._records.lines)
        if cluster:
            out["Cluster"] = "\n".join(self._cluster_log)
        if scheduler:
            out["Scheduler"] = "\n".join(t for n, t in lines if n.startswith(("trioflow.scheduler", "trioflow.diagnostics")))
        if workers:
            out["Workers"] = "\n".join(t for n, t in lines if n.startswith(("trioflow.worker", "trioflow.nanny")))
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _live_clusters.discard(self)
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._unsilence()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ display

    def __repr__(self) -> str:
        if self._closed:
            return f"LocalCluster({self.name or ''!r}, {self.scheduler_address!r}, status=closed)"
        n, threads, memory = self._summary()
        from .reprs import memory_text

        mem = memory_text(memory)
        return (
            f"LocalCluster({self.name or ''!r}, {self.scheduler_address!r}, "
            f"workers={n}, threads={threads}, memory={mem}, processes={self.processes})"
        )

    def _repr_html_(self) -> str:
        from .reprs import html_table, link_html, memory_text

        n, threads, memory = self._summary() if not self._closed else (0, 0, 0)
        rows = [
            ("Status", self.status),
            ("Scheduler", self.scheduler_address),
            ("Dashboard", link_html(None if self._closed else self.dashboard_link)),
            ("Workers", str(n)),
            ("Total threads", str(threads)),
            ("Total memory", memory_text(memory)),
            ("Workers run as", "processes (with nannies)" if self.processes else "threads in this process"),
        ]
        return html_table(f"LocalCluster {self.name}" if self.name else "LocalCluster", rows, raw=frozenset({"Dashboard"}))


_live_clusters: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _close_live_clusters() -> None:
    for cluster in list(_live_clusters):
        try:
            cluster.close()
        except Exception:  # noqa: BLE001 - at exit there is no one to tell
            pass


def _port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (as trio binds: with
    SO_REUSEADDR, so a port in TIME_WAIT counts as free)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return True  # let the real bind report it
    family, type_, proto, _, addr = infos[0]
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def cluster_for_client(
    address: Any, scheduler_file: str | None, cluster_kwargs: dict[str, Any], *, security: Any = None
) -> tuple[Any, LocalCluster | None]:
    """What a blocking ``Client`` connects to: ``(address or cluster, the
    cluster it started for itself or None)``.

    With no address, no scheduler file and no configured
    ``scheduler_address`` (:func:`trioflow.config.get_config`:
    ``TRIOFLOW_SCHEDULER_ADDRESS``, the YAML file, or dask's
    ``scheduler-address``), the client starts a :class:`LocalCluster` with
    ``cluster_kwargs`` (every ``LocalCluster`` argument; the client's
    ``security`` too) and must close it
    with itself.  Otherwise ``cluster_kwargs`` are ignored, as dask ignores
    them.

    Raises:
        TypeError: ``address`` is neither an address, a cluster object nor
            None (a cluster *class*, say).
    """
    if address is not None and not isinstance(address, str) and (
        isinstance(address, type) or not isinstance(getattr(address, "scheduler_address", None), str)
    ):
        raise TypeError(f"Scheduler address must be a string or a Cluster instance, got {type(address)}")
    if address is None and scheduler_file is None:
        configured = get_config().scheduler_address
        if configured:
            return configured, None
        if security is not None:
            cluster_kwargs = {**cluster_kwargs, "security": security}
        cluster = LocalCluster(**cluster_kwargs)
        return cluster, cluster
    return address, None


def _evolve(config: WorkerConfig, **changes: Any) -> WorkerConfig:
    """``attrs.evolve`` with the one-line error of :func:`~trioflow.config.build_config`."""
    return build_config(WorkerConfig, "start_worker", {**attrs.asdict(config, recurse=False), **changes})
