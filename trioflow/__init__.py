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
    "AsyncClient": "client",
    "CancelledError": "client",
    "Client": "client",
    "Future": "client",
    "FutureLostError": "client",
    "as_completed": "client",
    "default_client": "client",
    "fire_and_forget": "client",
    "open_client": "client",
    "wait": "client",
    "CommClosedError": "comm",
    "CommError": "comm",
    "LocalCluster": "deploy",
    "open_cluster": "deploy",
    "progress": "progress",
    "ProtocolError": "protocol",
    "SerializationError": "protocol",
    "KilledWorker": "scheduler",
    "Scheduler": "scheduler",
    "Security": "security",
    "SecurityError": "security",
    "Worker": "worker",
    "get_worker": "worker",
}

if TYPE_CHECKING:
    from .client import (
        AsyncClient,
        CancelledError,
        Client,
        Future,
        FutureLostError,
        as_completed,
        default_client,
        fire_and_forget,
        open_client,
        wait,
    )
    from .comm import CommClosedError, CommError
    from .deploy import LocalCluster, open_cluster
    from .progress import progress
    from .protocol import ProtocolError, SerializationError
    from .scheduler import KilledWorker, Scheduler
    from .security import Security, SecurityError
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
    "CancelledError",
    "Client",
    "CommClosedError",
    "CommError",
    "Future",
    "FutureLostError",
    "KilledWorker",
    "LocalCluster",
    "ProtocolError",
    "Scheduler",
    "Security",
    "SecurityError",
    "SerializationError",
    "Worker",
    "__version__",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "get_worker",
    "open_client",
    "open_cluster",
    "progress",
    "wait",
]
