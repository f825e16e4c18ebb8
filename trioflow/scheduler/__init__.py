"""The scheduler: sans-IO state machine and its Trio server."""

from .server import Scheduler
from .state import KilledWorker, SchedulerState

__all__ = ["KilledWorker", "Scheduler", "SchedulerState"]
