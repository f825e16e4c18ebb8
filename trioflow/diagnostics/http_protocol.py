"""HTTP/1.1 with h11 (sans-IO): one connection's request loop, answers, and
the protocol's small parts (see the module docstring of :mod:`.server`:
head size cap, timeouts, lingering close, only GET and HEAD)."""

from __future__ import annotations

import http
from typing import TYPE_CHECKING, Any

import h11
import trio

from ..errors import _BadRequest

if TYPE_CHECKING:
    from .server import DashboardConfig

_RECEIVE_BYTES = 16 * 1024


class HTTPHandling:
    """The HTTP side of :class:`~.server.DashboardServer`: read requests on a
    connection, hand each to ``_serve_request`` (:mod:`.routes`), answer."""

    config: DashboardConfig
    _idle: dict[object, trio.CancelScope]

    if TYPE_CHECKING:  # defined by .routes

        async def _serve_request(self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request, has_body: bool) -> bool: ...

    async def _http(self, stream: trio.SocketStream, token: object) -> None:
        cfg = self.config
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cfg.max_header_bytes)
        while True:
            request: h11.Request | None = None
            bad: _BadRequest | None = None
            with trio.CancelScope() as idle:
                self._idle[token] = idle
                try:
                    with trio.move_on_after(cfg.request_timeout) as timer:
                        request = await _read_request(conn, stream)
                except _BadRequest as exc:
                    bad = exc
                finally:
                    self._idle.pop(token, None)
            if bad is not None:
                await self._error(conn, stream, bad.status, str(bad))
                return
            if idle.cancelled_caught:
                return
            if timer.cancelled_caught:
                if conn.their_state is h11.IDLE and _has_partial_data(conn):
                    await self._error(conn, stream, 408, "request timeout")
                return
            if request is None:
                return
            if request.http_version not in (b"1.0", b"1.1"):
                await self._error(conn, stream, 505, "HTTP/1.0 or HTTP/1.1 only")
                return
            if _head_size(request) > cfg.max_header_bytes:
                await self._error(conn, stream, 431, f"request headers over {cfg.max_header_bytes} bytes")
                return
            try:
                has_body = type(conn.next_event()) is not h11.EndOfMessage
            except h11.RemoteProtocolError as exc:
                await self._error(conn, stream, exc.error_status_hint, str(exc))
                return
            keep = await self._serve_request(conn, stream, request, has_body)
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _error(self, conn: h11.Connection, stream: trio.SocketStream, status: int, text: str) -> None:
        await self._respond(conn, stream, status, (text + "\n").encode(), b"text/plain; charset=utf-8", close=True)
        await _linger(stream)

    async def _respond(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        body: bytes,
        content_type: bytes,
        *,
        head: bool = False,
        close: bool = False,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        hs = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"server", b"trioflow"),
        ]
        if close:
            hs.append((b"connection", b"close"))
        hs.extend(headers or ())
        try:
            out = conn.send(h11.Response(status_code=status, headers=hs, reason=_reason(status)))
            if body and not head:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return False
        with trio.move_on_after(self.config.send_timeout) as timer:
            await stream.send_all(out)
        return not timer.cancelled_caught


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next request head, or None when the peer closed first.

    Raises:
        _BadRequest: the bytes are not HTTP/1.x, or the head is too large.
    """
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _BadRequest(exc.error_status_hint, f"bad request: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE_BYTES)
            conn.receive_data(data)
            continue
        if type(event) is h11.Request:
            return event
        return None


def _has_partial_data(conn: h11.Connection) -> bool:
    return bool(conn.trailing_data[0])


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read and drop what the peer still sends, briefly.

    Closing a socket with unread input makes Linux send a reset, which can
    destroy the error response we just sent before the peer reads it.
    """
    with trio.move_on_after(1):
        try:
            await stream.send_eof()
            total = 0
            while total < 256 * 1024:
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    return
                total += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def _plain_response(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    conn = h11.Connection(h11.SERVER)
    out = conn.send(
        h11.Response(
            status_code=status,
            reason=_reason(status),
            headers=[(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body)), (b"connection", b"close")],
        )
    )
    out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    return out


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _head_size(req: h11.Request) -> int:
    return len(req.method) + len(req.target) + sum(len(k) + len(v) + 4 for k, v in req.headers.raw_items())


def _header(req: h11.Request, name: bytes) -> str:
    for k, v in req.headers:
        if k == name:
            return v.decode("latin-1").strip()
    return ""


def _is_websocket(req: h11.Request) -> bool:
    upgrade = _header(req, b"upgrade").lower()
    connection = _header(req, b"connection").lower()
    return "websocket" in upgrade and "upgrade" in connection


def _serialize_head(req: h11.Request) -> bytes:
    lines = [b"%s %s HTTP/%s" % (req.method, req.target, req.http_version)]
    lines.extend(k + b": " + v for k, v in req.headers.raw_items())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _peer(stream: Any) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, AttributeError, IndexError):
        return "?"
