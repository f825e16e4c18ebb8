"""Comms: one message at a time over a Trio stream, plus connect and listen.

Theory of operation
-------------------
A :class:`Comm` sends and receives whole messages.  :class:`StreamComm` wraps
a Trio byte stream (TCP, or TLS over TCP) and speaks the frame-group format of
:mod:`trioflow.protocol.codec`; :class:`InprocComm` (in :mod:`.inproc`) hands
message objects across memory channels inside one Trio run.

Reading is buffered: small reads (prefixes, headers, small frames) come out of
a 256 KiB buffer filled with as much as the kernel has; a large frame is read
with ``recv_into`` straight into its final, preallocated memory, so a 256 MiB
array is never copied or concatenated on the way in.  A frame of a megabyte
or more gets memory of its own (an array viewing it starts aligned, and is
freed with its value alone); smaller frames share one buffer per message.
The frame-count and lengths are checked against
:class:`~trioflow.protocol.codec.Limits` before anything is allocated for the
frames.

While a large frame is being read, the socket's receive low-water mark
(``SO_RCVLOWAT``, Linux) is raised to 1 MiB or what is left of the frame,
whichever is less, so that Trio wakes us once per megabyte rather than once
per 64 KiB segment; it is set back to 1 when the frame is in.

Writing gathers small pieces (prefixes, headers, small frames) into one buffer
and writes large frames straight from their own memory.  Trio's
``SocketStream`` sets ``TCP_NOTSENT_LOWAT`` to 16 KiB, which suits protocols
that decide late what to send but makes a 256 MiB frame go out in thousands
of ~200 KiB writes, each after a wakeup; a comm always writes whole messages,
so it lifts that cap and lets the kernel take what its send buffer holds.
One writer at a time
per comm: long-lived streams give a :class:`~trioflow.comm.batched.BatchedSend`
sole ownership; request/response comms are used by one task at a time from a
:class:`~trioflow.comm.pool.ConnectionPool`.

Every connection opens with a handshake: the connecting side sends
:class:`~trioflow.protocol.messages.Hello`, the listening side answers with
its own ``Hello`` or with ``HandshakeRejected`` and a reason.  A peer that
says nothing within ``handshake_timeout``, sends garbage, or speaks another
protocol version is disconnected with one warning line; the listener keeps
serving everyone else.  A peer that simply hangs up between messages is not
an error: that is logged at debug level only.

Until the handshake is done the peer is a stranger, so its messages are read
under :data:`HANDSHAKE_LIMITS` (a hello is tiny): a stranger cannot make us
allocate the gigabytes that :class:`~trioflow.protocol.codec.Limits` allows a
cluster member for one message.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import select
import socket
import ssl
import struct
import sys
from collections.abc import Iterable
from typing import Any

import trio

from ..errors import CommClosedError, CommError, HandshakeError
from ..protocol import codec
from ..protocol.codec import DEFAULT_LIMITS, Limits, ProtocolError
from ..protocol.messages import Hello, Message

logger = logging.getLogger("trioflow.comm")

__all__ = [
    "Comm",
    "CommClosedError",
    "CommError",
    "HandshakeError",
    "StreamComm",
]

_BUFSIZE = 256 * 1024
_SMALL = 64 * 1024
_RCVLOWAT = 1 << 20
_OWN_BUFFER = 1 << 20  # frames this big are read into memory of their own
_U32 = struct.Struct("<I")
# TLS record content types: change_cipher_spec, alert, handshake, application_data
_TLS_RECORD_TYPES = (20, 21, 22, 23)

#: Limits on what a peer may send before the handshake is complete.
HANDSHAKE_LIMITS = Limits(max_header=64 * 1024, max_message=64 * 1024, max_frames=4)


class Comm:
    """A bidirectional message stream; see the module docstring."""

    local_address: str = ""
    peer_address: str = ""
    peer: Hello | None = None

    async def send(self, msg: Message) -> None:
        await self.send_many((msg,))

    async def send_many(self, msgs: Iterable[Message]) -> None:
        raise NotImplementedError

    async def recv(self) -> Message:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def is_reusable(self) -> bool:
        """For an idle pooled comm: could a new request go out on it?

        Sync and non-blocking.  False once the comm is known to be closed;
        subclasses also look whether the peer has hung up (or sent something
        nobody asked for) since the last reply.
        """
        return not self.closed

    def __repr__(self) -> str:
        peer = f" {self.peer.role} {self.peer.name!r}" if self.peer else ""
        return f"<{type(self).__name__} {self.local_address} -> {self.peer_address}{peer}>"


def _nbytes(buf: Any) -> int:
    return buf.nbytes if type(buf) is memoryview else len(buf) if type(buf) in (bytes, bytearray) else memoryview(buf).nbytes


def _byte_view(buf: Any) -> Any:
    """``buf`` as something whose ``len`` counts bytes.

    ``send_all`` slices what it is given by the number of bytes sent, so a
    frame that is a 2-d or float-typed buffer must be cast to plain bytes.
    """
    if type(buf) in (bytes, bytearray):
        return buf
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if mv.ndim == 1 and mv.itemsize == 1:
        return mv
    return mv.cast("B") if mv.c_contiguous else mv.tobytes()


#: A peer that stops acknowledging (a cut link, a frozen host) fails our
#: connections to it after about this many seconds, whether or not we are
#: sending: keepalive probes cover idle connections, TCP_USER_TIMEOUT
#: unacknowledged data.  Without them such a connection waits for many minutes.
TCP_TIMEOUT = 30.0


def set_tcp_timeouts(sock: trio.socket.SocketType, timeout: float = TCP_TIMEOUT) -> None:
    """Make a dead peer show up on ``sock`` within about ``timeout`` seconds."""
    interval = max(1, int(timeout // 4))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS spells idle TCP_KEEPALIVE
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, interval)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, round(timeout / interval) - 1))
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))
    except OSError as exc:  # pragma: no cover - exotic platforms
        logger.debug("could not set TCP timeouts: %s", exc)


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under a plain or TLS stream, if there is one."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    transport = getattr(stream, "transport_stream", None)
    return transport.socket if isinstance(transport, trio.SocketStream) else None


def _rcvlowat_works() -> bool:
    """Can ``SO_RCVLOWAT`` be raised safely while waiting with epoll?

    Linux honours it in poll/epoll since 4.x, but before 5.8 (and the 4.19 /
    5.4 stable backports of the fix) a low-water mark above what memory
    pressure lets the socket queue could hang the reader.  Elsewhere we do
    not rely on it.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_RCVLOWAT"):
        return False
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= (5, 8)


_RCVLOWAT_WORKS = _rcvlowat_works()


class StreamComm(Comm):
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        local_address: str = "",
        peer_address: str = "",
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._stream = stream
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._rcvlowat = _RCVLOWAT_WORKS and self._sock is not None
        raw = _socket_of(stream)
        if raw is not None:
            set_tcp_timeouts(raw)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                try:
                    # 0: the system default (no cap on Linux; off on macOS).
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 0)
                except OSError:
                    pass
        # Anonymous memory, not a bytearray (which zero-fills all 256 KiB):
        # the pages become resident as reads first reach them, so a quiet
        # connection (heartbeats, small messages) costs a few KiB, not 256.
        self._view = memoryview(mmap.mmap(-1, _BUFSIZE))
        self._pos = 0
        self._end = 0
        self._limits = limits
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False
        self._closed_locally = False
        self._messages_received = 0
        self._desynced = False
        self.local_address = local_address
        self.peer_address = peer_address
        self.bytes_received = 0
        self.bytes_sent = 0

    # ------------------------------------------------------------ reading

    async def _receive_into(self, view: memoryview) -> int:
        try:
            if self._sock is not None:
                n = await self._sock.recv_into(view)
            else:
                # Bounded: SSLObject.read(n) allocates n bytes up front.
                data = await self._stream.receive_some(min(len(view), _BUFSIZE))
                n = len(data)
                view[:n] = data
        except trio.ClosedResourceError as exc:
            self._closed = True
            raise CommClosedError(f"connection to {self.peer_address} was closed", clean=True) from exc
        except (trio.BrokenResourceError, OSError) as exc:
            self._closed = True
            raise CommClosedError(f"connection to {self.peer_address} broke: {_cause(exc)}") from exc
        if n == 0:
            self._closed = True
            raise CommClosedError(f"connection to {self.peer_address} closed by peer", clean=True)
        self.bytes_received += n
        return n

    async def _read_into(self, view: memoryview) -> None:
        avail = self._end - self._pos
        if avail:
            k = min(avail, len(view))
            view[:k] = self._view[self._pos : self._pos + k]
            self._pos += k
            view = view[k:]
        if not view:
            return
        if len(view) >= _BUFSIZE // 2:
            lowat = 1
            try:
                while view:
                    if self._rcvlowat and min(len(view), _RCVLOWAT) != lowat:
                        # Never above what is left: the peer owes us that much.
                        lowat = self._set_rcvlowat(min(len(view), _RCVLOWAT)) or 1
                    n = await self._receive_into(view)
                    view = view[n:]
            finally:
                if lowat != 1 and self._set_rcvlowat(1) != 1:
                    # Still waiting for a megabyte: a small message would hang.
                    self._desynced = True
            return
        # Small read: refill our buffer (possibly reading ahead) then copy.
        self._pos = self._end = 0
        need = len(view)
        while self._end < need:
            self._end += await self._receive_into(self._view[self._end :])
        view[:] = self._view[:need]
        self._pos = need

    async def _read_frames(self, lengths: list[int], frames: list[memoryview]) -> None:
        """Read the frames of a message into ``frames``.

        A frame of ``_OWN_BUFFER`` bytes or more is read into memory of its
        own: the value made from it keeps only that alive (not the other
        values of a multi-key reply), and a numpy array viewing it starts
        aligned.  Runs of smaller frames share one buffer and one read (one
        allocation per small frame would cost more than the copy: fresh 4 KiB
        pages instead of huge ones).
        """
        # Only user data (the frames after the header) is worth numpy's
        # uninitialised memory: a process that only ever gets big headers
        # (the scheduler, a graph's tasks) never imports numpy.
        small = sum(n for n in lengths[1:] if n < _OWN_BUFFER)
        shared = _new_buffer(small + (lengths[0] if lengths[0] < _OWN_BUFFER else 0), uninitialised=small >= _UNINIT_THRESHOLD)
        start = end = 0  # the run of small frames not read yet: shared[start:end]
        for i, n in enumerate(lengths):
            if n < _OWN_BUFFER:
                frames.append(shared[end : end + n])
                end += n
                continue
            if end > start:
                await self._read_into(shared[start:end])
                start = end
            own = _new_buffer(n, uninitialised=i > 0)
            await self._read_into(own)
            frames.append(own)
        if end > start:
            await self._read_into(shared[start:end])

    def _set_rcvlowat(self, n: int) -> int:
        """Wake the reader only once ``n`` bytes are queued.

        Returns the mark now set: ``n``, or 0 when the socket refused (it is
        closed, most likely); we then read without a mark from now on.
        """
        assert self._sock is not None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:
            self._rcvlowat = False
            return 0
        return n

    async def _read_exactly(self, n: int) -> memoryview:
        if self._end - self._pos >= n:
            v = self._view[self._pos : self._pos + n]
            self._pos += n
            return v
        out = memoryview(bytearray(n))
        await self._read_into(out)
        return out

    async def recv(self) -> Message:
        """Receive one message.

        .. warning:: Cancelling a receive that is waiting for a message is
           safe; cancelling it once part of a message has arrived leaves the
           comm unusable (later receives raise :class:`CommClosedError`).

        Raises:
            CommClosedError: the connection closed or broke; ``clean`` when
                the peer hung up between messages, ``partial`` when it did
                so in the middle of one.
            ProtocolError: the peer sent something malformed or over a limit;
                the comm should then be closed.
        """
        if self._desynced:
            raise CommClosedError(
                f"connection to {self.peer_address} is unusable: a receive was interrupted "
                "in the middle of a message"
            )
        if self._pos == self._end:
            # Wait for the first byte of the next message into our buffer; an
            # end of stream here is a clean close, anywhere later a truncation.
            # Cancelling this wait is harmless: nothing has been consumed.
            self._pos = self._end = 0
            self._end = await self._receive_into(self._view)
        try:
            return await self._recv_rest()
        except CommClosedError as exc:
            if exc.clean and not self._closed_locally:
                raise CommClosedError(
                    f"connection to {self.peer_address} closed by peer in the middle of a message",
                    partial=True,
                ) from None
            exc.partial = True
            raise
        except BaseException:
            # Cancelled (or refused) part-way: where the next message starts
            # is unknown, so this comm can never be read from again.
            self._desynced = True
            raise

    async def _recv_rest(self) -> Message:
        head = await self._read_exactly(4)
        if not self._messages_received and head[0] in _TLS_RECORD_TYPES and head[1] == 3:
            # A first message starting like a TLS record (handshake, alert):
            # the peer speaks TLS and we do not.  A real first message has
            # one frame, so this cannot be a trioflow frame count.
            raise ProtocolError(
                "peer speaks TLS on a plaintext connection (a tls:// peer on a tcp:// address?)"
            )
        if not self._messages_received and bytes(head[:4]) in (b"HTTP", b"GET ", b"POST", b"SSH-"):
            what = {b"HTTP": "an HTTP server", b"GET ": "an HTTP client", b"POST": "an HTTP client", b"SSH-": "an SSH server"}[bytes(head[:4])]
            raise ProtocolError(f"{what} answered, not a trioflow peer")
        (n,) = _U32.unpack(head)
        codec.check_count(n, self._limits)
        lengths = codec.check_prefix(await self._read_exactly(8 * n), n, self._limits)
        total = sum(lengths)
        frames: list[memoryview] = []
        if total <= self._end - self._pos:  # all frames small: the buffer holds 256 KiB
            # Whole message already buffered: copy it out once (the buffer is reused).
            data = memoryview(bytes(self._view[self._pos : self._pos + total]))
            self._pos += total
            off = 0
            for length in lengths:
                frames.append(data[off : off + length])
                off += length
        else:
            await self._read_frames(lengths, frames)
        msg = codec.decode(frames)
        self._messages_received += 1
        return msg

    # ------------------------------------------------------------ writing

    async def send_many(self, msgs: Iterable[Message]) -> None:
        parts: list[Any] = []
        small = bytearray()
        for msg in msgs:
            frames = codec.encode(msg)
            small += codec.pack_prefix(frames)
            for f in frames:
                if _nbytes(f) < _SMALL:
                    small += f
                else:
                    if small:
                        parts.append(small)
                        small = bytearray()
                    parts.append(_byte_view(f))
        if small:
            parts.append(small)
        async with self._send_lock:
            try:
                for part in parts:
                    await self._stream.send_all(part)
                    self.bytes_sent += _nbytes(part)
            except trio.ClosedResourceError as exc:
                self._closed = True
                raise CommClosedError(f"connection to {self.peer_address} was closed", clean=True) from exc
            except (trio.BrokenResourceError, OSError) as exc:
                self._closed = True
                raise CommClosedError(f"connection to {self.peer_address} broke: {_cause(exc)}") from exc

    async def aclose(self) -> None:
        self._closed = True
        self._closed_locally = True
        with trio.move_on_after(1) as cs:
            cs.shield = True
            try:
                await self._stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        if cs.cancelled_caught:
            await trio.aclose_forcefully(self._stream)

    @property
    def closed(self) -> bool:
        return self._closed

    def is_reusable(self) -> bool:
        if self._closed or self._desynced or self._pos != self._end:
            return False
        sock = _socket_of(self._stream)
        if sock is None:
            return True
        # An idle connection has nothing to read: anything readable is an
        # end of stream, a reset, a TLS close_notify or junk.  None of them
        # leaves the connection fit for a request.
        try:
            if hasattr(select, "poll"):
                p = select.poll()
                p.register(sock.fileno(), select.POLLIN)
                return not p.poll(0)
            return not select.select([sock.fileno()], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def set_limits(self, limits: Limits) -> None:
        """Change the limits checked on incoming messages from now on."""
        self._limits = limits

    @property
    def limits(self) -> Limits:
        return self._limits


def _tighter(a: Limits, b: Limits) -> Limits:
    return Limits(
        max_header=min(a.max_header, b.max_header),
        max_message=min(a.max_message, b.max_message),
        max_frames=min(a.max_frames, b.max_frames),
    )


def _is_eof(exc: BaseException) -> bool:
    """Did the peer hang up in the middle of a TLS handshake?"""
    inner = exc.__cause__ or exc.__context__ or exc
    return isinstance(inner, ssl.SSLEOFError) or getattr(inner, "reason", None) == "UNEXPECTED_EOF_WHILE_READING"


_UNINIT_THRESHOLD = 1 << 20


def _new_buffer(n: int, *, uninitialised: bool) -> memoryview:
    """Writable memory for ``n`` received bytes.

    ``bytearray(n)`` writes zeros over all of it first and faults it in 4 KiB
    at a time.  For a large buffer, numpy (when installed) hands out
    uninitialised memory and asks the kernel for transparent huge pages, as
    dask's comm does; the receive then writes each byte once.  (Where the
    kernel compacts memory for huge pages a first touch can stall: large
    transfers on this machine are bimodal for every program that asks.)
    """
    if uninitialised:
        try:
            import numpy
        except ImportError:
            pass
        else:
            return memoryview(numpy.empty(n, dtype=numpy.uint8)).cast("B")  # type: ignore[arg-type]
    return memoryview(bytearray(n))


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__ or exc
    if isinstance(inner, ssl.SSLError):
        from ..security import describe_ssl_error

        return describe_ssl_error(inner)
    return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
