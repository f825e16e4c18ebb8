"""The worker: sans-IO state machine, executor threads and its Trio server.

The package is lazy (PEP 562): ``import trioflow.worker.state`` loads the
state machine alone, without trio or the sockets the server needs; the
server's names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Worker, get_worker
    from .state import WorkerState

__all__ = ["Worker", "WorkerState", "get_worker"]

_LAZY = {"Worker": ".server", "get_worker": ".server", "WorkerState": ".state"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
