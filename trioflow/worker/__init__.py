"""The worker: sans-IO state machine, executor threads and its Trio server."""

from .server import Worker, get_worker
from .state import WorkerState

__all__ = ["Worker", "WorkerState", "get_worker"]
