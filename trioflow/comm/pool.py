"""A pool of connections for request/response calls.

Each call borrows an idle connection to the address (or opens one), sends one
request, reads one reply, and returns the connection.  A call that fails or is
cancelled part-way closes its connection instead: its state is unknown.  The
number of open connections is capped; callers beyond the cap wait.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from ..protocol.messages import ErrorReply, Message
from .core import Comm, connect

__all__ = ["ConnectionPool", "RemoteError"]

_R = TypeVar("_R", bound=Message)


class RemoteError(RuntimeError):
    """The peer answered a request with an error."""


class ConnectionPool:
    def __init__(
        self,
        *,
        security: Any = None,
        role: str = "rpc",
        name: str = "",
        limit: int = 256,
        timeout: float = 10,
    ) -> None:
        self.security = security
        self.role = role
        self.name = name
        self.timeout = timeout
        self._idle: defaultdict[str, list[Comm]] = defaultdict(list)
        self._limiter = trio.CapacityLimiter(limit)
        self._closed = False
        self._to_close: list[Comm] = []

    @asynccontextmanager
    async def connection(self, address: str) -> AsyncIterator[Comm]:
        """Borrow a connection to ``address``."""
        if self._closed:
            raise RuntimeError("connection pool is closed")
        async with self._limiter:
            idle = self._idle[address]
            comm = None
            while idle:
                c = idle.pop()
                if not c.closed:
                    comm = c
                    break
            if comm is None:
                comm = await connect(address, security=self.security, role=self.role, name=self.name, timeout=self.timeout)
            ok = False
            try:
                yield comm
                ok = True
            finally:
                if ok and not comm.closed and not self._closed:
                    idle.append(comm)
                else:
                    with trio.CancelScope(shield=True):
                        await comm.aclose()

    async def rpc(self, address: str, request: Message, reply_type: type[_R], *, timeout: float | None = None) -> _R:
        """Send ``request`` to ``address`` and return its reply.

        Raises:
            RemoteError: the peer answered with an error.
            CommError: connection trouble.
            trio.TooSlowError: no reply within ``timeout``.
        """
        with trio.fail_after(timeout if timeout is not None else max(self.timeout, 60)):
            async with self.connection(address) as comm:
                await comm.send(request)
                reply = await comm.recv()
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.message)
        if not isinstance(reply, reply_type):
            raise RemoteError(f"{address} answered {request.op!r} with {reply.op!r}")
        return reply

    def drop(self, address: str) -> None:
        """Forget idle connections to ``address`` (it went away)."""
        self._to_close.extend(self._idle.pop(address, []))

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            for comms in [*self._idle.values(), self._to_close]:
                for c in comms:
                    await c.aclose()
        self._idle.clear()
