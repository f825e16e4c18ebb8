"""Clients: the Trio ``open_client`` / ``AsyncClient`` and the blocking ``Client``."""

from .core import AsyncClient, open_client
from .current import get_client
from .futures import (
    CancelledError,
    Future,
    FutureLostError,
    as_completed,
    fire_and_forget,
    futures_of,
    wait,
)
from .primitives import Event, Lock, MultiLock, Pub, Queue, Semaphore, Sub, Variable
from .sync import Client, default_client

__all__ = ["AsyncClient", "CancelledError", "Client", "Future", "FutureLostError", "as_completed", "default_client", "fire_and_forget", "futures_of", "get_client", "open_client", "wait", "Event", "Lock", "MultiLock", "Pub", "Queue", "Semaphore", "Sub", "Variable"]
