"""A pool of connections for request/response calls.

Each call borrows an idle connection to the address (or opens one), sends one
request, reads one reply, and returns the connection.  A call that fails or is
cancelled part-way closes its connection instead: its state is unknown.

At most ``limit`` connections are open at once, idle ones included: callers
beyond the cap wait for a connection to be returned, and opening a new one
when the cap is reached closes an idle one (the oldest to its address) first.

An idle connection may have been closed by its peer (a server restarting, or
one that hangs up on idle clients).  Before reuse the pool looks whether the
peer has hung up (:meth:`~trioflow.comm.core.Comm.is_reusable`) and discards
such a connection.  The check cannot see a close that is still in flight, so
:meth:`ConnectionPool.rpc` also retries a request once, on a fresh
connection, when a *reused* connection fails before any byte of the reply
arrived.  A request on a fresh connection is never retried.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from ..errors import RemoteError
from ..protocol.messages import ErrorReply, Message
from .connect import connect
from .core import Comm, CommClosedError

__all__ = ["ConnectionPool", "RemoteError"]

logger = logging.getLogger("trioflow.comm")

_R = TypeVar("_R", bound=Message)


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
        self.limit = limit
        self._idle: defaultdict[str, list[Comm]] = defaultdict(list)  # oldest first
        self._limiter = trio.CapacityLimiter(limit)
        self._active = 0
        self._closed = False
        self._to_close: list[Comm] = []
        #: connections opened so far (for tests and diagnostics)
        self.connects = 0

    @property
    def open_connections(self) -> int:
        """Borrowed plus idle connections."""
        return self._active + sum(len(v) for v in self._idle.values())

    @asynccontextmanager
    async def connection(self, address: str) -> AsyncIterator[Comm]:
        """Borrow a connection to ``address``.

        Returned to the pool when the block exits normally; closed when it
        raises or is cancelled.
        """
        async with self._borrow(address) as (comm, _):
            yield comm

    @asynccontextmanager
    async def _borrow(self, address: str, *, fresh: bool = False) -> AsyncIterator[tuple[Comm, bool]]:
        if self._closed:
            raise RuntimeError("connection pool is closed")
        # A token per borrow: one task may hold several connections at once.
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        try:
            await self._close_dropped()
            idle = self._idle[address]
            comm = None
            while idle and not fresh:
                c = idle.pop()
                if c.is_reusable():
                    comm = c
                    break
                with trio.CancelScope(shield=True):
                    await c.aclose()
            reused = comm is not None
            if comm is None:
                await self._make_room()
                self._active += 1
                try:
                    comm = await connect(
                        address, security=self.security, role=self.role, name=self.name, timeout=self.timeout
                    )
                except BaseException:
                    self._active -= 1
                    raise
                self.connects += 1
            else:
                self._active += 1
            ok = False
            try:
                yield comm, reused
                ok = True
            finally:
                self._active -= 1
                if ok and not comm.closed and not self._closed:
                    self._idle[address].append(comm)
                else:
                    with trio.CancelScope(shield=True):
                        await comm.aclose()
        finally:
            self._limiter.release_on_behalf_of(token)

    async def _make_room(self) -> None:
        """Close idle connections while opening one more would break the limit."""
        while self.open_connections >= self.limit:
            victims = [(address, comms) for address, comms in self._idle.items() if comms]
            if not victims:
                return
            _, comms = victims[0]
            c = comms.pop(0)
            with trio.CancelScope(shield=True):
                await c.aclose()

    async def _close_dropped(self) -> None:
        while self._to_close:
            c = self._to_close.pop()
            with trio.CancelScope(shield=True):
                await c.aclose()

    async def rpc(self, address: str, request: Message, reply_type: type[_R], *, timeout: float | None = None) -> _R:
        """Send ``request`` to ``address`` and return its reply.

        Raises:
            RemoteError: the peer answered with an error.
            CommError: connection trouble.
            trio.TooSlowError: no reply within ``timeout``.
        """
        with trio.fail_after(timeout if timeout is not None else max(self.timeout, 60)):
            reply = await self._call(address, request)
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.message)
        if not isinstance(reply, reply_type):
            raise RemoteError(f"{address} answered {request.op!r} with {reply.op!r}")
        return reply

    async def _call(self, address: str, request: Message) -> Message:
        reused = False
        try:
            async with self._borrow(address) as (comm, reused):
                await comm.send(request)
                return await comm.recv()
        except CommClosedError as exc:
            if not reused or exc.partial or self._closed:
                raise
            logger.debug("reused connection to %s was closed by the peer (%s); retrying on a new one", address, exc)
        async with self._borrow(address, fresh=True) as (comm, _):
            await comm.send(request)
            return await comm.recv()

    def drop(self, address: str) -> None:
        """Forget idle connections to ``address`` (it went away); they are
        closed on the next borrow or when the pool closes."""
        self._to_close.extend(self._idle.pop(address, []))

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            for comms in [*self._idle.values(), self._to_close]:
                for c in comms:
                    await c.aclose()
        self._idle.clear()
        self._to_close.clear()
