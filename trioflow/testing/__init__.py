"""Helpers for testing trioflow and code that talks to it.

* hypothesis strategies for every protocol message (:func:`messages`,
  :func:`message_strategy`, :func:`serialized`), to test your own peers;
* :class:`LeakChecker`, which finds threads, sockets and child processes a
  test left behind;
* pytest fixtures ``trioflow_cluster``, ``trioflow_client`` and
  ``trioflow_no_leaks`` (see :mod:`trioflow.testing.plugin`), available as
  soon as trioflow is installed.

Names load on first use (PEP 562): the pytest plugin imports this package in
every pytest run of an environment where trioflow is installed, and a plain
install has no hypothesis.  Only the strategies need it (the ``test`` extra).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "LeakChecker": "leaks",
    "LeakError": "leaks",
    "message_strategy": "strategies",
    "messages": "strategies",
    "serialized": "strategies",
}

if TYPE_CHECKING:
    from .leaks import LeakChecker, LeakError
    from .strategies import message_strategy, messages, serialized


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["LeakChecker", "LeakError", "message_strategy", "messages", "serialized"]
