"""Trio IO: addresses, connect/listen, comms, batched streams, connection pool."""

from .addressing import Address, AddressError, parse_address
from .batched import BatchedSend
from .connect import Listener, connect, listen
from .core import Comm, CommClosedError, CommError, HandshakeError
from .pool import ConnectionPool, RemoteError

__all__ = [
    "Address",
    "AddressError",
    "BatchedSend",
    "Comm",
    "CommClosedError",
    "CommError",
    "ConnectionPool",
    "HandshakeError",
    "Listener",
    "RemoteError",
    "connect",
    "listen",
    "parse_address",
]
