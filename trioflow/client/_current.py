"""Which client a primitive talks through.

Every primitive (``Variable``, ``Lock``, ...), ``get_dataset`` and the
executor find their client with :func:`_current_client`: the client passed
explicitly, else the one set for the running task (by the worker, through
:func:`_set_task_client`, once tasks have a client of their own), else the
default blocking :class:`~trioflow.client.sync.Client`.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import AsyncClient

__all__ = ["_current_client", "_set_task_client"]

_task_client: contextvars.ContextVar[Any] = contextvars.ContextVar("trioflow_task_client", default=None)
_thread = threading.local()


def _set_task_client(client: Any) -> contextvars.Token[Any]:
    """Make ``client`` the current one in this context (a task's thread or
    Trio task); reset with ``_task_client.reset(token)``."""
    _thread.client = client
    return _task_client.set(client)


def _current_client(client: Any = None) -> AsyncClient:
    """The async client behind ``client`` or, if None, the current client.

    Raises:
        ValueError: no client is given and none is running.
    """
    if client is None:
        client = _task_client.get() or getattr(_thread, "client", None)
    if client is None:
        from .sync import default_client

        client = default_client()
    core = getattr(client, "_core", client)
    if not hasattr(core, "_rpc"):
        raise TypeError(f"not a trioflow client: {client!r}")
    return core  # type: ignore[no-any-return]
