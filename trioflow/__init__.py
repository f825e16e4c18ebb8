"""trioflow: a distributed task scheduler for Python on Trio structured concurrency.

Everything a user imports comes from here; the names match dask.distributed's
where dask has them, so switching is a change of import.
"""

from ._version import __version__
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
