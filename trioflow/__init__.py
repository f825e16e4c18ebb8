"""trioflow: a distributed task scheduler for Python on Trio structured concurrency.

Everything a user imports comes from here; the names match dask.distributed's
where dask has them, so switching is a change of import.
"""

from typing import TYPE_CHECKING, Any

from ._joblib_hook import install as _install_joblib_hook
from ._version import __version__
from .logs import install as _install_log_ring

# Every trioflow process keeps its recent log lines (get_worker_logs & co).
_install_log_ring()

# joblib.parallel_backend("trioflow") (and "dask" without dask.distributed);
# imports nothing until joblib itself is imported.
_install_joblib_hook()

# Names load on first use (PEP 562): a worker process never pays for the
# client, the local-cluster code or anyio, which keeps its start-up time and
# memory down.
_LAZY = {
    # Every exception is in trioflow.errors, which imports no trio.
    "CancelledError": "errors",
    "CommClosedError": "errors",
    "CommError": "errors",
    "FutureLostError": "errors",
    "KilledWorker": "errors",
    "ProtocolError": "errors",
    "SecurityError": "errors",
    "SerializationError": "errors",
    "TimeoutError": "errors",
    "TrioflowError": "errors",
    "Actor": "actor",
    "ActorFuture": "actor",
    "AsyncClient": "client",
    "Client": "client",
    "Future": "client",
    "as_completed": "client",
    "default_client": "client",
    "fire_and_forget": "client",
    "futures_of": "client",
    "open_client": "client",
    "wait": "client",
    "Event": "client",
    "Lock": "client",
    "MultiLock": "client",
    "Pub": "client",
    "Queue": "client",
    "Semaphore": "client",
    "Sub": "client",
    "Variable": "client",
    "LocalCluster": "deploy",
    "open_cluster": "deploy",
    "Nanny": "process.nanny",
    "Status": "process.lifecycle",
    "progress": "progress",
    "get_task_stream": "diagnostics.report",
    "performance_report": "diagnostics.report",
    "Scheduler": "scheduler",
    "Security": "security",
    "Worker": "worker",
    "PluginError": "errors",
    "WorkerPlugin": "plugins",
    "SchedulerPlugin": "plugins",
    "NannyPlugin": "plugins",
    "UploadFile": "plugins",
    "UploadDirectory": "plugins",
    "Environ": "plugins",
    "PipInstall": "plugins",
    "get_worker": "worker",
    "get_client": "client.current",
    "worker_client": "client.current",
    "rejoin": "worker.threads",
    "print": "worker.printing",
    "warn": "worker.printing",
    "Reschedule": "errors",
    "secede": "worker.threads",
}

if TYPE_CHECKING:
    from .actor import Actor, ActorFuture
    from .client import (
        AsyncClient,
        Client,
        Event,
        Future,
        Lock,
        MultiLock,
        Pub,
        Queue,
        Semaphore,
        Sub,
        Variable,
        as_completed,
        default_client,
        fire_and_forget,
        futures_of,
        open_client,
        wait,
    )
    from .client.current import get_client, worker_client
    from .deploy import LocalCluster, open_cluster
    from .diagnostics.report import get_task_stream, performance_report
    from .errors import (
        CancelledError,
        CommClosedError,
        CommError,
        FutureLostError,
        KilledWorker,
        PluginError,
        ProtocolError,
        Reschedule,
        SecurityError,
        SerializationError,
        TimeoutError,
        TrioflowError,
    )
    from .plugins import (
        Environ,
        NannyPlugin,
        PipInstall,
        SchedulerPlugin,
        UploadDirectory,
        UploadFile,
        WorkerPlugin,
    )
    from .process.lifecycle import Status
    from .process.nanny import Nanny
    from .progress import progress
    from .scheduler import Scheduler
    from .security import Security
    from .worker import Worker, get_worker
    from .worker.printing import print, warn  # noqa: A004
    from .worker.threads import rejoin, secede


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trioflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Actor",
    "ActorFuture",
    "AsyncClient",
    "Environ",
    "NannyPlugin",
    "PipInstall",
    "PluginError",
    "SchedulerPlugin",
    "UploadDirectory",
    "UploadFile",
    "WorkerPlugin",
    "CancelledError",
    "Client",
    "CommClosedError",
    "CommError",
    "Event",
    "Future",
    "FutureLostError",
    "KilledWorker",
    "LocalCluster",
    "Nanny",
    "Lock",
    "MultiLock",
    "ProtocolError",
    "Pub",
    "Queue",
    "Reschedule",
    "Scheduler",
    "Security",
    "SecurityError",
    "Semaphore",
    "SerializationError",
    "Sub",
    "TimeoutError",
    "TrioflowError",
    "Status",
    "Variable",
    "Worker",
    "__version__",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "get_task_stream",
    "get_worker",
    "open_client",
    "open_cluster",
    "performance_report",
    "print",
    "progress",
    "rejoin",
    "secede",
    "wait",
    "warn",
    "worker_client",
]
