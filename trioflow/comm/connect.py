"""Connections: the handshake every connection opens with, connect and listen.

:func:`connect` dials an address (tcp://, tls://, inproc://) with retries until
its timeout and says in one line why it failed (refused, unreachable, a TLS
certificate the other side would not take); :func:`listen` serves one task per
accepted connection.  Both run the handshake (:func:`client_handshake`,
:func:`server_handshake`) under :data:`~trioflow.comm.core.HANDSHAKE_LIMITS`
before a comm is handed over, so everything past this module talks to a
known peer.  The comms themselves are in :mod:`trioflow.comm.core`.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..errors import CommClosedError, CommError, HandshakeError, find_leaf
from ..protocol.codec import DEFAULT_LIMITS, Limits, ProtocolError
from ..protocol.messages import PROTOCOL_VERSION, HandshakeRejected, Hello, Message
from .addressing import Address, parse_address
from .core import (
    HANDSHAKE_LIMITS,
    Comm,
    StreamComm,
    _cause,
    _is_eof,
    _tighter,
)

logger = logging.getLogger("trioflow.comm")

__all__ = ["Listener", "client_handshake", "connect", "listen", "log_dropped", "server_handshake"]


# ---------------------------------------------------------------- handshake


class _handshake_limits:
    """Read under :data:`HANDSHAKE_LIMITS` for the duration of a handshake."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm if isinstance(comm, StreamComm) else None

    def __enter__(self) -> None:
        if self.comm is not None:
            self.saved = self.comm.limits
            self.comm.set_limits(_tighter(self.saved, HANDSHAKE_LIMITS))

    def __exit__(self, *exc_info: object) -> None:
        if self.comm is not None:
            self.comm.set_limits(self.saved)


def _tls_hint(peer_address: str) -> str:
    other = "tcp" if peer_address.startswith("tls") else "tls"
    return f"does it expect {other}://?"


async def client_handshake(comm: Comm, *, role: str, name: str, address: str = "", timeout: float = 10) -> Hello:
    """Say hello and read the answer.

    Raises:
        HandshakeError: refused, or the peer answered with something else.
        CommError: the peer closed the connection or did not answer in time.
    """
    try:
        with trio.fail_after(timeout), _handshake_limits(comm):
            await comm.send(Hello(role=role, name=name, version=PROTOCOL_VERSION, address=address))
            reply = await comm.recv()
    except trio.TooSlowError:
        raise CommError(f"{comm.peer_address} did not answer the handshake within {timeout}s") from None
    except CommClosedError as exc:
        if not exc.clean:
            # A cause is known (a TLS alert, a reset): say that, not a guess.
            raise CommClosedError(f"handshake failed: {exc}") from None
        raise CommClosedError(
            f"{comm.peer_address} closed the connection during the handshake ({_tls_hint(comm.peer_address)})",
            clean=True,
        ) from None
    except HandshakeError:
        raise
    except ProtocolError as exc:
        if "answered, not a trioflow peer" in str(exc):
            hint = " (the diagnostics page listens on 8787; the scheduler on 8786)" if "HTTP server" in str(exc) else ""
            raise HandshakeError(f"{comm.peer_address} is not a trioflow server: {exc}{hint}") from None
        raise HandshakeError(
            f"{comm.peer_address} is not a trioflow server ({_tls_hint(comm.peer_address)}): "
            f"bad handshake: {exc}"
        ) from None
    if isinstance(reply, HandshakeRejected):
        raise HandshakeError(f"{comm.peer_address} refused the handshake: {reply.reason}")
    if not isinstance(reply, Hello):
        raise HandshakeError(f"{comm.peer_address} answered the handshake with {reply.op!r}")
    if reply.version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"{comm.peer_address} speaks protocol version {reply.version}, we speak {PROTOCOL_VERSION}"
        )
    comm.peer = reply
    return reply


async def server_handshake(comm: Comm, *, role: str, name: str, address: str, timeout: float) -> Hello:
    """Read the peer's hello and answer it.

    Raises:
        HandshakeError: the peer's hello was missing, late or wrong; it has
            been told why when possible.
        CommClosedError: the peer hung up before saying hello.
        ProtocolError: the peer's first bytes were not a message.
    """
    try:
        with trio.fail_after(timeout), _handshake_limits(comm):
            msg = await comm.recv()
    except trio.TooSlowError:
        raise HandshakeError(f"no hello within {timeout}s") from None
    if not isinstance(msg, Hello):
        reason = f"expected 'hello' as the first message, got {msg.op!r}"
        await _try_send(comm, HandshakeRejected(reason=reason))
        raise HandshakeError(reason)
    if msg.version != PROTOCOL_VERSION:
        reason = f"protocol version {msg.version} is not supported; this {role} speaks version {PROTOCOL_VERSION}"
        await _try_send(comm, HandshakeRejected(reason=reason))
        raise HandshakeError(reason)
    try:
        with trio.fail_after(timeout):
            await comm.send(Hello(role=role, name=name, version=PROTOCOL_VERSION, address=address))
    except trio.TooSlowError:
        raise HandshakeError(f"could not answer the hello within {timeout}s (peer not reading)") from None
    comm.peer = msg
    return msg


async def _try_send(comm: Comm, msg: Message) -> None:
    with trio.move_on_after(1):
        try:
            await comm.send(msg)
        except CommError:
            pass


def log_dropped(role: str, peer_address: str, exc: BaseException) -> None:
    """The one log line for a connection a server gave up on.

    A peer hanging up between messages is routine (debug); anything else, a
    protocol violation, a truncated message, a broken or refused connection,
    is a warning.
    """
    if isinstance(exc, CommClosedError) and exc.clean:
        logger.debug("%s: %s disconnected: %s", role, peer_address, exc)
    else:
        logger.warning("%s: dropped %s: %s", role, peer_address, exc)


# ---------------------------------------------------------------- connect


def _connect_cause(exc: OSError) -> str:
    """The useful part of a failed ``open_tcp_stream``: trio reports "all
    attempts failed" with the real errors in an exception group under it."""
    e = find_leaf(exc, _says_why, chained=True)
    if isinstance(e, socket.gaierror) and e.strerror:
        return e.strerror
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    return str(exc) or type(exc).__name__


def _says_why(e: BaseException) -> bool:
    return isinstance(e, socket.gaierror) and bool(e.strerror) or isinstance(e, OSError) and bool(e.errno)


async def connect(
    address: str,
    *,
    security: Any = None,
    role: str = "client",
    name: str = "",
    local_address: str = "",
    timeout: float = 10,
    limits: Limits = DEFAULT_LIMITS,
) -> Comm:
    """Open a connection to ``address`` and complete the handshake.

    Raises:
        AddressError: malformed address.
        SecurityError: ``tcp://`` under ``require_encryption``, ``tls://``
            without certificates, or bad TLS files.
        CommError: nothing listens there, TLS failed, or no answer in time;
            the message names the address and the cause.
        HandshakeError: the peer is not a compatible trioflow server.
    """
    addr = parse_address(address)
    if security is not None:
        security.check_scheme(addr.scheme, action="connect to")
    if addr.scheme == "inproc":
        from .inproc import connect_inproc

        comm: Comm = await connect_inproc(addr, limits=limits)
        try:
            await client_handshake(comm, role=role, name=name, address=local_address, timeout=timeout)
        except BaseException:
            await comm.aclose()
            raise
        return comm
    ctx: ssl.SSLContext | None = None
    if addr.scheme == "tls":
        if security is None or not security.enabled:
            from ..security import SecurityError

            raise SecurityError(f"cannot connect to {address}: tls:// needs TLS certificates (pass security=)")
        ctx = security.get_client_context(role)
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(timeout):
            try:
                stream = await trio.open_tcp_stream(addr.host, addr.port)
            except OSError as exc:
                raise CommError(f"could not connect to {addr}: {_connect_cause(exc)}") from None
            if ctx is not None:
                ssl_stream = trio.SSLStream(stream, ctx, server_hostname=addr.host)
                stream = ssl_stream
                try:
                    await ssl_stream.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError) as exc:
                    hint = ""
                    if _is_eof(exc):
                        hint = "; or is it a plaintext server (tcp://)?"
                    raise CommError(f"TLS handshake with {addr} failed: {_cause(exc)}{hint}") from None
            comm = StreamComm(stream, peer_address=str(addr), local_address=local_address, limits=limits)
            await client_handshake(comm, role=role, name=name, address=local_address, timeout=timeout)
            return comm
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise CommError(f"timed out after {timeout}s connecting to {addr}") from None
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise


# ---------------------------------------------------------------- listen


@attrs.frozen
class Listener:
    """What :func:`listen` reports once it is ready."""

    address: str  # the bound address, with the real port
    port: int


Handler = Callable[[Comm], Awaitable[None]]


async def listen(
    address: str,
    handler: Handler,
    *,
    security: Any = None,
    role: str,
    name: str = "",
    limits: Limits = DEFAULT_LIMITS,
    handshake_timeout: float = 10,
    task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve connections on ``address`` until cancelled.

    Each accepted connection is handshaken, then passed to ``handler(comm)``
    in its own task; the comm is closed when the handler returns.  Errors of a
    single connection (protocol errors, broken connections, TLS failures)
    are logged in one line and never stop the listener.  When cancelled, the
    listening sockets and every open connection are closed before returning.

    Raises:
        AddressError, SecurityError: bad address or TLS configuration.
        OSError: the address cannot be bound (port in use); the message
            names the address.
    """
    addr = parse_address(address, default_port=0)
    if security is not None:
        security.check_scheme(addr.scheme, action="listen on")
    if addr.scheme == "inproc":
        from .inproc import listen_inproc

        await listen_inproc(
            addr, handler, role=role, name=name, handshake_timeout=handshake_timeout, task_status=task_status
        )
        return
    ctx: ssl.SSLContext | None = None
    if addr.scheme == "tls":
        if security is None or not security.enabled:
            from ..security import SecurityError

            raise SecurityError(f"cannot listen on {address}: tls:// needs TLS certificates (pass security=)")
        ctx = security.get_server_context(role)
    host: str | None = addr.host
    if host in ("", "0.0.0.0", "*"):
        host = None if host == "*" else "0.0.0.0"
    try:
        listeners = await trio.open_tcp_listeners(addr.port, host=host)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror or exc}") from exc
    try:
        port = listeners[0].socket.getsockname()[1]
        if addr.port == 0:
            # Port 0 on a host with several addresses (``*``, ``localhost``)
            # gives each socket its own random port; we can only announce one.
            for extra in [ln for ln in listeners if ln.socket.getsockname()[1] != port]:
                listeners.remove(extra)
                await trio.aclose_forcefully(extra)
        bound = str(Address(addr.scheme, addr.host or "0.0.0.0", port))

        async def serve_one(stream: trio.SocketStream) -> None:
            try:
                peer = stream.socket.getpeername()
                peer_address = str(Address(addr.scheme, peer[0], peer[1]))
            except OSError:
                peer_address = f"{addr.scheme}://?"
            s: trio.abc.Stream = stream
            comm: StreamComm | None = None
            try:
                if ctx is not None:
                    s = trio.SSLStream(stream, ctx, server_side=True)
                    try:
                        with trio.fail_after(handshake_timeout):
                            await s.do_handshake()
                    except trio.TooSlowError:
                        logger.warning("%s: dropped %s: no TLS handshake within %ss", role, peer_address, handshake_timeout)
                        return
                    except (trio.BrokenResourceError, ssl.SSLError) as exc:
                        logger.warning("%s: dropped %s: TLS handshake failed: %s", role, peer_address, _cause(exc))
                        return
                comm = StreamComm(s, local_address=bound, peer_address=peer_address, limits=limits)
                await server_handshake(comm, role=role, name=name, address=bound, timeout=handshake_timeout)
                await handler(comm)
            except (ProtocolError, CommError) as exc:
                log_dropped(role, peer_address, exc)
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                logger.warning("%s: dropped %s: %s", role, peer_address, _cause(exc))
            except Exception:
                logger.exception("%s: error serving %s", role, peer_address)
            finally:
                if comm is not None:
                    await comm.aclose()
                else:
                    await trio.aclose_forcefully(s)

        async with trio.open_nursery() as nursery:
            task_status.started(Listener(address=bound, port=port))
            await trio.serve_listeners(serve_one, listeners, handler_nursery=nursery)  # type: ignore[arg-type]
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
