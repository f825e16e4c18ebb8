"""trioflow: a distributed task scheduler for Python on Trio structured concurrency.

Everything a user imports comes from here; the names match dask.distributed's
where dask has them, so switching is a change of import.
"""

from typing import TYPE_CHECKING, Any

from ._joblib_hook import install as _install_joblib_hook
from ._version import __version__

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
    "AsyncClient": "client",
    "Client": "client",
    "Future": "client",
    "as_completed": "client",
    "default_client": "client",
    "fire_and_forget": "client",
    "futures_of": "client",
    "open_client": "client",
    "wait": "client",
    "LocalCluster": "deploy",
    "open_cluster": "deploy",
    "Nanny": "process.nanny",
    "Status": "process.lifecycle",
    "progress": "progress",
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
}

if TYPE_CHECKING:
    from .client import (
        AsyncClient,
        Client,
        Future,
        as_completed,
        default_client,
        fire_and_forget,
        futures_of,
        open_client,
        wait,
    )
    from .deploy import LocalCluster, open_cluster
    from .errors import (
        CancelledError,
        CommClosedError,
        CommError,
        FutureLostError,
        KilledWorker,
        PluginError,
        ProtocolError,
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
    "Future",
    "FutureLostError",
    "KilledWorker",
    "LocalCluster",
    "Nanny",
    "ProtocolError",
    "Scheduler",
    "Security",
    "SecurityError",
    "SerializationError",
    "TimeoutError",
    "TrioflowError",
    "Status",
    "Worker",
    "__version__",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_worker",
    "open_client",
    "open_cluster",
    "progress",
    "wait",
]
