"""In-process comms: message objects over Trio memory channels.

Used by in-process clusters in tests, where determinism matters more than
exercising sockets: with ``autojump_clock`` a whole cluster runs on virtual
time.  Messages are frozen attrs objects, so handing the object itself across
is safe; nothing is encoded (so no frame limits apply either).  Names are
unique per Trio run: the registry is keyed by the run's root task, and a
listener removes its entry when it stops.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from typing import Any

import trio

from ..protocol.codec import ProtocolError
from ..protocol.messages import Message
from .addressing import Address
from .connect import Listener, log_dropped, server_handshake
from .core import Comm, CommClosedError, CommError

logger = logging.getLogger("trioflow.comm")

_counter = itertools.count()
# (trio run's root task, name) -> channel of incoming comms
_listeners: dict[tuple[Any, str], trio.MemorySendChannel[InprocComm]] = {}


def new_inproc_name(prefix: str = "node") -> str:
    return f"{prefix}-{next(_counter)}"


class InprocComm(Comm):
    def __init__(
        self,
        send: trio.MemorySendChannel[Message],
        receive: trio.MemoryReceiveChannel[Message],
        *,
        local_address: str,
        peer_address: str,
    ) -> None:
        self._send = send
        self._receive = receive
        self._closed = False
        self.local_address = local_address
        self.peer_address = peer_address

    def _closed_error(self) -> CommClosedError:
        self_closed = self._closed
        self._closed = True
        if self_closed:
            return CommClosedError(f"connection to {self.peer_address} was closed", clean=True)
        return CommClosedError(f"connection to {self.peer_address} closed by peer", clean=True)

    async def send_many(self, msgs: Iterable[Message]) -> None:
        try:
            for msg in msgs:
                self._send.send_nowait(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._closed_error() from None
        await trio.lowlevel.checkpoint()

    async def recv(self) -> Message:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed_error() from None

    async def aclose(self) -> None:
        self._closed = True
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()

    @property
    def closed(self) -> bool:
        return self._closed

    def is_reusable(self) -> bool:
        if self._closed:
            return False
        incoming = self._receive.statistics()
        outgoing = self._send.statistics()
        return (
            incoming.open_send_channels > 0
            and incoming.current_buffer_used == 0
            and outgoing.open_receive_channels > 0
        )


def _key(name: str) -> tuple[Any, str]:
    return (trio.lowlevel.current_root_task(), name)


async def connect_inproc(addr: Address, **_: Any) -> InprocComm:
    try:
        incoming = _listeners[_key(addr.host)]
    except KeyError:
        raise CommError(f"could not connect to {addr}: nothing listens there") from None
    a_send, b_recv = trio.open_memory_channel[Message](math.inf)
    b_send, a_recv = trio.open_memory_channel[Message](math.inf)
    local = f"inproc://{addr.host}/client-{next(_counter)}"
    ours = InprocComm(a_send, a_recv, local_address=local, peer_address=str(addr))
    theirs = InprocComm(b_send, b_recv, local_address=str(addr), peer_address=local)
    try:
        incoming.send_nowait(theirs)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise CommError(f"could not connect to {addr}: listener closed") from None
    await trio.lowlevel.checkpoint()
    return ours


async def listen_inproc(
    addr: Address,
    handler: Any,
    *,
    role: str,
    name: str,
    handshake_timeout: float,
    task_status: trio.TaskStatus[Listener],
) -> None:
    key = _key(addr.host)
    if key in _listeners:
        raise OSError(f"inproc address {addr} is already in use")
    send, receive = trio.open_memory_channel[InprocComm](math.inf)
    _listeners[key] = send
    bound = str(addr)

    async def serve_one(comm: InprocComm) -> None:
        try:
            await server_handshake(comm, role=role, name=name, address=bound, timeout=handshake_timeout)
            await handler(comm)
        except (ProtocolError, CommError) as exc:
            log_dropped(role, comm.peer_address, exc)
        except Exception:
            logger.exception("%s: error serving %s", role, comm.peer_address)
        finally:
            await comm.aclose()

    try:
        async with trio.open_nursery() as nursery:
            task_status.started(Listener(address=bound, port=0))
            async for comm in receive:
                nursery.start_soon(serve_one, comm)
    finally:
        _listeners.pop(key, None)
        send.close()
        # Connections that arrived but were never served: hang up on them
        # rather than leave their clients waiting out the handshake timeout.
        while True:
            try:
                pending = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            with trio.CancelScope(shield=True):
                await pending.aclose()
        receive.close()
