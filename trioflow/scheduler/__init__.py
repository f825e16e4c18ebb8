"""The scheduler: sans-IO state machine and its Trio server.

Names load on first use (PEP 562): importing the state machine
(``trioflow.scheduler.state``) must not import the server, and with it trio,
ssl and sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Scheduler
    from .state import KilledWorker, SchedulerState

_LAZY = {"Scheduler": "server", "KilledWorker": "state", "SchedulerState": "state"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["KilledWorker", "Scheduler", "SchedulerState"]
