"""The websocket feed: one shared snapshot builder (:class:`_Feed`) and the
viewers it is pushed to (see "Websocket hand-off", "Snapshots", "Limits"
and "Access" in the module docstring of :mod:`.server`)."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import logging
import time
import urllib.parse
from collections import deque
from typing import TYPE_CHECKING, Any

import h11
import trio
import trio_websocket

from .http_protocol import HTTPHandling, _header, _linger, _peer, _serialize_head

if TYPE_CHECKING:
    from .server import DashboardConfig

logger = logging.getLogger("trioflow.diagnostics")

_HISTORY = 3000


class _ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first yields ``replay`` bytes; paces what it reads.

    Lets trio-websocket read an upgrade request h11 has already read (see
    the module docstring), and bounds how fast a viewer can make us parse.
    """

    def __init__(self, stream: trio.SocketStream, replay: bytes, rate: float) -> None:
        self.stream = stream
        self._replay = replay
        self._rate = rate
        self._allowance = rate
        self._t = trio.current_time()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            data, self._replay = self._replay, b""
            await trio.lowlevel.checkpoint()
            return data
        now = trio.current_time()
        self._allowance = min(self._rate, self._allowance + (now - self._t) * self._rate)
        self._t = now
        if self._allowance <= 0:
            await trio.sleep(-self._allowance / self._rate)
        data = await self.stream.receive_some(max_bytes)
        self._allowance -= len(data)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Feed:
    """Builds the shared snapshot while anyone watches; see the module docstring."""

    def __init__(self, source: Any, interval: float) -> None:
        self.source = source
        self.interval = interval
        self.viewers = 0
        self.version = 0
        self.text = ""
        self.cost = 0.0
        self.built = 0
        self.failures = 0
        self.extra: dict[str, Any] = {}
        self._stream: deque[list[Any]] = deque(maxlen=_HISTORY)
        self._transfers: deque[list[Any]] = deque(maxlen=_HISTORY)
        self._history: tuple[int, str] = (-1, "")
        self._changed = trio.Event()
        self._wanted = trio.Event()
        self._last_error_log = -1e9

    def join(self) -> None:
        self.viewers += 1
        self._wanted.set()

    def leave(self) -> None:
        self.viewers -= 1

    async def wait_newer(self, version: int) -> None:
        """Return once a snapshot newer than ``version`` exists."""
        while self.version <= version:
            await self._changed.wait()

    def history_text(self) -> str:
        """The recent task stream up to the current version, as JSON."""
        if self._history[0] != self.version:
            msg = {"type": "history", "seq": self.version, "stream": list(self._stream), "transfers": list(self._transfers)}
            self._history = (self.version, json.dumps(msg, separators=(",", ":")))
        return self._history[1]

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._seed()
            while self.viewers > 0:
                self.build()
                # Building may take at most ~2% of the loop's time.
                await trio.sleep(max(self.interval, 50 * self.cost))
            self._wanted = trio.Event()

    def _seed(self) -> None:
        self._stream.clear()
        self._transfers.clear()
        try:
            stream, transfers = self.source.seed(_HISTORY)
        except Exception:  # noqa: BLE001 - never let the page hurt the server
            self._log_failure()
            return
        self._stream.extend(stream)
        self._transfers.extend(transfers)

    def build(self) -> None:
        """Build one snapshot now (the feed task calls this; tests may too)."""
        t0 = time.perf_counter()
        try:
            snap = self.source.snapshot()
            self._stream.extend(snap["stream"])
            self._transfers.extend(snap["transfers"])
            self.version += 1
            snap["seq"] = self.version
            snap["interval"] = max(self.interval, 50 * self.cost)
            snap["dashboard"] = {"viewers": self.viewers, "build_ms": round(self.cost * 1000, 2), **self.extra}
            self.text = json.dumps(snap, separators=(",", ":"), default=str)
        except Exception:  # noqa: BLE001 - never let the page hurt the server
            self._log_failure()
            return
        finally:
            self.cost = time.perf_counter() - t0
        self.built += 1
        self._changed.set()
        self._changed = trio.Event()

    def _log_failure(self) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            logger.exception("dashboard: could not build a snapshot (logged at most once a minute)")


class ViewerHandling(HTTPHandling):
    """The websocket side of :class:`~.server.DashboardServer`."""

    config: DashboardConfig
    feed: _Feed
    whitelist: list[str]
    use_xheaders: bool
    dropped_viewers: int


    def _client(self, stream: trio.SocketStream, req: h11.Request) -> tuple[str, str]:
        """(client address, description for the log) honouring X-Forwarded-*."""
        peer = _peer(stream)
        if not self.use_xheaders:
            return peer, peer
        forwarded = _header(req, b"x-forwarded-for")
        proto = _header(req, b"x-forwarded-proto")
        client = forwarded.split(",")[0].strip() if forwarded else peer
        desc = client
        if forwarded or proto:
            desc = f"{client} ({proto or 'http'} via proxy {peer})"
        return client, desc

    def _allowed(self, req: h11.Request, client: str) -> bool:
        if not self.whitelist:
            return True
        names: list[str] = [client.lower()]
        origin = _header(req, b"origin")
        if origin and origin != "null":
            parts = urllib.parse.urlsplit(origin)
            if parts.hostname:
                names.append(parts.hostname.lower())
                if parts.port:
                    names.append(f"{parts.hostname.lower()}:{parts.port}")
        return any(_matches(entry, name) for entry in self.whitelist for name in names)

    async def _websocket(self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request) -> None:
        client, desc = self._client(stream, req)
        if not self._allowed(req, client):
            logger.info("dashboard: refused a viewer from %s (origin %r): not in the whitelist", desc, _header(req, b"origin"))
            await self._error(conn, stream, 403, "origin or client address not in the dashboard whitelist")
            return
        if not _header(req, b"sec-websocket-key") or _header(req, b"sec-websocket-version") != "13":
            await self._respond(
                conn, stream, 426, b"websocket version 13 with a key, please\n", b"text/plain", close=True, headers=[(b"sec-websocket-version", b"13")]
            )
            await _linger(stream)
            return
        if self.feed.viewers >= self.config.max_viewers:
            await self._error(conn, stream, 503, "too many dashboard viewers")
            return
        trailing, _closed = conn.trailing_data
        replay = _ReplayStream(stream, _serialize_head(req) + trailing, self.config.viewer_receive_rate)
        _shrink_send_buffer(stream, self.config.viewer_send_buffer)
        await self._viewer(replay, desc)

    async def _viewer(self, stream: _ReplayStream, desc: str) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(cfg.handshake_timeout):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, stream, message_queue_size=4, max_message_size=cfg.max_viewer_message
                    )
                    ws = await request.accept()
            except (trio.TooSlowError, trio_websocket.ConnectionClosed, trio_websocket.HandshakeError) as exc:
                logger.debug("dashboard: websocket handshake with %s failed: %r", desc, exc)
                nursery.cancel_scope.cancel()
                return
            self.feed.join()
            logger.info("dashboard viewer connected from %s (%d watching)", desc, self.feed.viewers)
            dropped = False
            read_done = trio.Event()
            try:
                nursery.start_soon(self._read_viewer, ws, nursery.cancel_scope, desc, read_done)
                dropped = await self._push(ws, desc)
                if not dropped:
                    # trio-websocket may be sending a close frame (1009): let it.
                    with trio.move_on_after(1):
                        await read_done.wait()
            finally:
                self.feed.leave()
                nursery.cancel_scope.cancel()
        logger.debug("dashboard viewer %s left", desc)
        if not dropped:
            # Let a close frame we sent (1008, 1009) reach the viewer.
            await _linger(stream.stream)

    async def _push(self, ws: trio_websocket.WebSocketConnection, desc: str) -> bool:
        """Send snapshots until the viewer leaves; return True if it was dropped."""
        cfg = self.config
        feed = self.feed
        version = 0  # the feed's first snapshot is version 1
        first = True
        while True:
            with trio.move_on_after(max(5.0, 20 * cfg.interval)):
                await feed.wait_newer(version)
            if feed.version <= version:
                continue  # the feed is stalled (failing builds); keep waiting
            version = feed.version
            messages = [feed.history_text(), feed.text] if first else [feed.text]
            first = False
            for text in messages:
                with trio.move_on_after(cfg.viewer_send_timeout) as timer:
                    try:
                        await ws.send_message(text)
                    except trio_websocket.ConnectionClosed:
                        return False
                if timer.cancelled_caught:
                    self.dropped_viewers += 1
                    logger.info("dashboard: dropped slow viewer %s (a snapshot took over %.1fs to send)", desc, cfg.viewer_send_timeout)
                    return True

    async def _read_viewer(self, ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope, desc: str, done: trio.Event) -> None:
        """Read and ignore what a viewer sends; close it if it floods us."""
        try:
            await self._read_viewer_messages(ws, scope, desc)
        finally:
            done.set()

    async def _read_viewer_messages(self, ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope, desc: str) -> None:
        rate = self.config.viewer_messages_per_s
        burst = 4 * rate
        allowance = burst
        t = trio.current_time()
        while True:
            try:
                await ws.get_message()
            except trio_websocket.ConnectionClosed:
                scope.cancel()
                return
            now = trio.current_time()
            allowance = min(burst, allowance + (now - t) * rate) - 1
            t = now
            if allowance < 0:
                logger.info("dashboard: closed viewer %s: it sends too many messages", desc)
                with trio.move_on_after(1):
                    await ws.aclose(1008, "too many messages")
                scope.cancel()
                return


def _shrink_send_buffer(stream: trio.SocketStream, size: int) -> None:
    import socket

    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass


def _matches(entry: str, name: str) -> bool:
    if entry == "*" or entry == name:
        return True
    if "/" in entry:
        try:
            return ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    if any(c in entry for c in "*?["):
        return fnmatch.fnmatchcase(name, entry)
    return False
