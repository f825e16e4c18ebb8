"""One port for the live page: HTTP with h11, websocket with trio-websocket.

Theory of operation
-------------------
:func:`serve_dashboard` binds one TCP port and runs this nursery tree::

    dashboard nursery
     ├ accept loop (one per listening socket) -> one task per connection
     ├ feed: builds snapshots while someone watches
     └ poll: keeps counters current, once a second

**Routes** (all under ``dashboard_prefix`` when it is set; ``/`` and the bare
prefix redirect to ``<prefix>/``): ``/`` and ``/status`` the live page,
``/static/*`` its JS, CSS and icon (shipped in the package: no CDN, no
external fonts), ``/ws`` the snapshot stream, ``/health`` (``ok``),
``/metrics`` (Prometheus text), ``/json/identity.json``, ``/workers`` (a plain
table, no JavaScript), ``/profile?prefix=&last=`` (the workers' statistical
profile as an icicle graph, asked of the workers when the page loads),
``/call-stacks`` (what each worker's running tasks are doing now) and
``/json/dashboard.json`` (this server's own
:meth:`DashboardServer.statistics`).  A worker serves the same routes about
itself.

**Dependencies.** h11 and wsproto come with trio-websocket (trio-websocket
requires wsproto, which requires h11); nothing else is needed.

**HTTP.** Every connection starts as HTTP/1.1, parsed by h11 (sans-IO).  The
request head is capped at :attr:`DashboardConfig.max_header_bytes` (16 KiB):
h11's ``max_incomplete_event_size`` stops a head that is still arriving, and
a complete head over the cap is refused too (h11 only caps incomplete ones).
Malformed requests get 400 (or h11's hint), oversized heads 431, and the
connection is closed after a short "lingering close" (the rest of what the
peer sent is read and dropped for up to a second, so the error response is
not lost to a TCP reset).  Only GET and HEAD are served.

**Websocket hand-off.** ``GET <prefix>/ws`` with ``Upgrade: websocket`` is
vetted by us first (route, whitelist, viewer cap), then handed to
trio-websocket.  trio-websocket's server entry points (``serve_websocket``,
``wrap_server_stream``) read the upgrade request themselves from a fresh
stream; wsproto can take an already-parsed request
(``WSConnection.initiate_upgrade_connection``), but trio-websocket has no
public way to adopt such a connection.  So we re-serialise the head h11
parsed, put it in front of the bytes h11 had not consumed
(``Connection.trailing_data``), and give ``wrap_server_stream`` a
:class:`_ReplayStream` that yields those bytes before reading the socket.
trio-websocket (with wsproto beneath it) then performs the real RFC 6455
handshake and framing through public API only.  The price is parsing one
small head twice per viewer.

**Snapshots.** A single :class:`_Feed` builds a snapshot (a dict from the
source, see :mod:`.sources`) and JSON-encodes it once, at most every
:attr:`DashboardConfig.interval` seconds, and only while at least one viewer
is connected; every viewer sends that same text.  When a build gets
expensive the feed slows down so that building stays under about 2% of the
event loop.  Each viewer task keeps only "the latest snapshot" (it skips
versions it was too slow to send) and gives every send
:attr:`DashboardConfig.viewer_send_timeout`; a viewer that cannot take one
snapshot in that time is dropped, never buffered for.  A viewer's own socket
send buffer is kept small for the same reason.  A new viewer first gets a
``history`` message (the recent task stream) and then live snapshots.

**Limits.** Every wait has a timeout: reading a request head
(``request_timeout``, which is also the keep-alive idle time), sending a
response, the websocket handshake, each snapshot send.  At most
``max_connections`` connections: when full, the connection idle the longest
(waiting for a request) is closed to make room, and if none is idle the
newcomer gets 503.  At most ``max_viewers`` websocket viewers (503 beyond).
Messages from a viewer are read and ignored; large ones (over 4 KiB) or more
than a few per second close it, and the bytes it may send are paced.

**Access.** ``dashboard_whitelist`` (when not empty) guards the websocket:
the viewer's ``Origin`` host (``host`` or ``host:port``) or its client
address must match an entry (exact, a glob such as ``*.example.com``, a CIDR
network such as ``10.0.0.0/8``, or ``*``); otherwise 403.  With
``use_xheaders`` the client address (for the whitelist and the log) is the
first ``X-Forwarded-For`` entry, and ``X-Forwarded-Proto`` is logged: only
turn it on behind a proxy that sets them.

Nothing here may take the server down: an unexpected error while serving one
connection or building one snapshot is logged and that connection (or
snapshot) is dropped.
"""

from __future__ import annotations

import errno
import fnmatch
import http
import ipaddress
import json
import logging
import time
import urllib.parse
from collections import deque
from importlib import resources
from typing import Any

import attrs
import h11
import trio
import trio_websocket

from ..errors import _BadRequest
from .pages import call_stacks_page, profile_page, workers_page
from .sources import source_for

logger = logging.getLogger("trioflow.diagnostics")

__all__ = ["DashboardConfig", "DashboardServer", "serve_dashboard", "parse_dashboard_address"]

_RECEIVE_BYTES = 16 * 1024
_HISTORY = 3000
_STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'self'"
)


@attrs.frozen(kw_only=True)
class DashboardConfig:
    """Limits and rates of the dashboard server (defaults suit production)."""

    #: Seconds between snapshots while someone watches (4 per second).
    interval: float = 0.25
    #: Open connections at most (idle ones are evicted first when full).
    max_connections: int = 256
    #: Websocket viewers at most.
    max_viewers: int = 64
    #: Request line plus headers, bytes.
    max_header_bytes: int = 16 * 1024
    #: To receive a complete request head; also the keep-alive idle time.
    request_timeout: float = 10.0
    #: To send one HTTP response.
    send_timeout: float = 10.0
    #: To complete the websocket handshake.
    handshake_timeout: float = 5.0
    #: To send one snapshot to a viewer; slower viewers are dropped.
    viewer_send_timeout: float = 5.0
    #: Kernel send buffer of a viewer's socket (bounds what one viewer holds).
    viewer_send_buffer: int = 128 * 1024
    #: Largest message a viewer may send (they need not send any).
    max_viewer_message: int = 4096
    #: Messages per second a viewer may send on average (burst: 4 times that).
    viewer_messages_per_s: float = 5.0
    #: Bytes per second read from a viewer at most (pacing, not an error).
    viewer_receive_rate: float = 64 * 1024


def parse_dashboard_address(address: str | int) -> tuple[str | None, int]:
    """``":8787"``, ``"8787"``, ``"127.0.0.1:8787"``, ``"[::1]:0"`` -> (host, port).

    ``None`` as the host means every interface.

    Raises:
        ValueError: not an address of that form.
    """
    if isinstance(address, int):
        return None, address
    text = str(address).strip()
    for scheme in ("http://", "https://", "tcp://"):
        if text.startswith(scheme):
            text = text[len(scheme) :].rstrip("/")
    host: str | None
    if text.isdigit():
        host, port_text = None, text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad dashboard address {address!r}")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = text, ""
    if not port_text:
        raise ValueError(f"bad dashboard address {address!r}: no port (use ':8787', 'host:8787' or ':0' for any free port)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad dashboard address {address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port < 65536:
        raise ValueError(f"bad dashboard address {address!r}: port {port} out of range")
    return (host or None), port


async def serve_dashboard(
    server: Any,
    address: str | int,
    *,
    config: DashboardConfig | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the diagnostics page of ``server`` (a Scheduler or a Worker).

    Start it with ``port = await nursery.start(serve_dashboard, server, ":8787")``;
    the port is bound when ``start`` returns.  Runs until cancelled.  The
    server's ``dashboard_prefix``, ``dashboard_whitelist`` and
    ``use_xheaders`` attributes are honoured when present.

    Raises:
        ValueError: ``address`` is malformed.
        OSError: the port is in use (a worker picks a free port instead, and
            logs it), or cannot be bound.
    """
    await DashboardServer(server, config=config).serve(address, task_status=task_status)


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


class DashboardServer:
    """The dashboard of one Scheduler or Worker; see the module docstring."""

    def __init__(self, server: Any, *, config: DashboardConfig | None = None) -> None:
        self.server = server
        self.source = source_for(server)
        self.config = config or getattr(server, "dashboard_config", None) or DashboardConfig()
        self.prefix = _normalize_prefix(getattr(server, "dashboard_prefix", "") or "")
        whitelist = getattr(server, "dashboard_whitelist", None) or []
        if isinstance(whitelist, str):
            whitelist = whitelist.replace(",", " ").split()
        self.whitelist = [str(e).strip().lower() for e in whitelist if str(e).strip()]
        self.use_xheaders = bool(getattr(server, "use_xheaders", False))
        self.feed = _Feed(self.source, self.config.interval)
        self.port = 0
        self.dropped_viewers = 0
        self.evicted = 0
        self.refused = 0
        self._connections: set[object] = set()
        self._idle: dict[object, trio.CancelScope] = {}
        self._static = _load_static()

    def statistics(self) -> dict[str, Any]:
        """Connections, viewers, snapshots built, viewers dropped, evictions."""
        return {
            "connections": len(self._connections),
            "idle": len(self._idle),
            "viewers": self.feed.viewers,
            "snapshots": self.feed.built,
            "snapshot_failures": self.feed.failures,
            "build_ms": round(self.feed.cost * 1000, 3),
            "dropped_viewers": self.dropped_viewers,
            "evicted": self.evicted,
            "refused": self.refused,
        }

    # ------------------------------------------------------------ listening

    async def serve(self, address: str | int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind ``address`` and serve until cancelled; ``started(port)`` once bound."""
        host, port = parse_dashboard_address(address)
        listeners = await self._listen(host, port, address)
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                nursery.start_soon(self.feed.run)
                nursery.start_soon(self._poll_loop)
                shown = host if host not in (None, "0.0.0.0", "::") else "127.0.0.1"
                shown = f"[{shown}]" if shown and ":" in shown else shown
                logger.info("dashboard at http://%s:%d%s/status", shown, self.port, self.prefix)
                task_status.started(self.port)
        finally:
            for listener in listeners:
                listener.socket.close()

    async def _listen(self, host: str | None, port: int, address: str | int) -> list[trio.SocketListener]:
        try:
            return await _bind(host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
            if self.source.kind == "worker":
                listeners = await _bind(host, 0)
                logger.info(
                    "dashboard port %d is in use; serving this worker's dashboard on port %d instead",
                    port,
                    listeners[0].socket.getsockname()[1],
                )
                return listeners
            raise OSError(
                errno.EADDRINUSE,
                f"dashboard address {address!r}: port {port} is already in use; "
                "choose another with --dashboard-address (':0' picks any free port) or disable it with --no-dashboard",
            ) from None

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        complained = False
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors and the like: wait, never crash the server.
                if not complained:
                    logger.warning("dashboard: cannot accept connections (%s); retrying", exc)
                    complained = True
                await trio.sleep(0.1)
                continue
            complained = False
            nursery.start_soon(self._handle_stream, stream)

    async def _poll_loop(self) -> None:
        poll = getattr(self.source, "poll", None)
        if poll is None:
            return
        while True:
            await trio.sleep(1.0)
            try:
                poll()
            except Exception:  # noqa: BLE001 - never let the page hurt the server
                self.feed._log_failure()

    # ------------------------------------------------------------ connections

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        async with stream:
            if len(self._connections) >= self.config.max_connections and not self._evict_idle():
                self.refused += 1
                with trio.move_on_after(1):
                    await stream.send_all(_plain_response(503, "too many connections to the dashboard"))
                return
            token = object()
            self._connections.add(token)
            try:
                await self._http(stream, token)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:  # noqa: BLE001 - one bad connection must not stop the server
                logger.exception("dashboard: error while serving %s", _peer(stream))
            finally:
                self._connections.discard(token)
                self._idle.pop(token, None)

    def _evict_idle(self) -> bool:
        """Close the connection that has waited longest for a request."""
        if not self._idle:
            return False
        token = next(iter(self._idle))
        self._idle.pop(token).cancel()
        self._connections.discard(token)
        self.evicted += 1
        return True

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

    # ------------------------------------------------------------ routes

    async def _serve_request(self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request, has_body: bool) -> bool:
        """Answer one request; return whether the connection may be reused."""
        target = req.target.decode("latin-1")
        path = urllib.parse.urlsplit(target).path or "/"
        if req.method not in (b"GET", b"HEAD"):
            await self._respond(conn, stream, 405, b"only GET and HEAD\n", b"text/plain", close=True, headers=[(b"allow", b"GET, HEAD")])
            await _linger(stream)
            return False
        head = req.method == b"HEAD"
        upgrade = _is_websocket(req)
        # After a body we did not read, or an upgrade we decline, start afresh.
        close = has_body or upgrade
        sub = self._strip_prefix(path)
        if sub == "/ws" and upgrade:
            await self._websocket(conn, stream, req)
            return False
        if sub is None:
            if path in ("/", self.prefix):
                status, body, ctype, extra = 302, b"", b"text/plain", [(b"location", (self.prefix + "/").encode())]
            else:
                status, body, ctype, extra = 404, b"not found\n", b"text/plain", []
        elif sub == "/ws":
            status, body, ctype, extra = 426, b"this is a websocket endpoint\n", b"text/plain", [(b"upgrade", b"websocket")]
        elif sub in ("/profile", "/profile/") and hasattr(self.source, "profile"):
            status, body, ctype, extra = await self._profile_route(target)
        elif sub in ("/call-stacks", "/call-stacks/") and hasattr(self.source, "call_stacks"):
            page = call_stacks_page(self.source, self.prefix, await self.source.call_stacks())
            status, body, ctype, extra = 200, page.encode(), _STATIC_TYPES[".html"], []
        else:
            status, body, ctype, extra = self._route(sub)
        if status == 200 and ctype.startswith(b"text/html"):
            extra = [*extra, (b"content-security-policy", _CSP), (b"referrer-policy", b"no-referrer")]
        ok = await self._respond(conn, stream, status, body, ctype, head=head, close=close, headers=extra)
        if close:
            await _linger(stream)
        return ok and not close

    async def _profile_route(self, target: str) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """``/profile?prefix=inc&last=60``: the profile view (see :func:`.pages.profile_page`)."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        task_prefix = (query.get("prefix") or [""])[0] or None
        try:
            last = max(0, int((query.get("last") or ["0"])[0]))
        except ValueError:
            return 400, b"last= takes whole seconds\n", b"text/plain; charset=utf-8", []
        start = time.time() - last if last else None
        tree, prefixes = await self.source.profile(task_prefix, start, None)
        return 200, profile_page(self.source, self.prefix, tree, prefixes, task_prefix, last).encode(), _STATIC_TYPES[".html"], []

    def _strip_prefix(self, path: str) -> str | None:
        if not self.prefix:
            return path
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) :]
        return None

    def _route(self, sub: str) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """Status, body, content type and extra headers for a plain GET."""
        text = b"text/plain; charset=utf-8"
        if sub in ("/", "/status", "/index.html"):
            return 200, self._static["index.html"], _STATIC_TYPES[".html"], []
        if sub == "/health":
            return 200, b"ok", text, []
        if sub == "/metrics":
            return 200, self.source.metrics(self.feed.viewers).encode(), b"text/plain; version=0.0.4; charset=utf-8", []
        if sub == "/json/identity.json":
            return 200, json.dumps(self.source.identity(), default=str, indent=1).encode(), b"application/json", []
        if sub == "/json/dashboard.json":
            return 200, json.dumps(self.statistics()).encode(), b"application/json", []
        if sub in ("/workers", "/workers/", "/info/main/workers.html"):
            return 200, workers_page(self.source, self.prefix).encode(), _STATIC_TYPES[".html"], []
        if sub.startswith("/static/"):
            name = sub[len("/static/") :]
            body = self._static.get(name)
            if body is not None and "/" not in name:
                ctype = _STATIC_TYPES.get(name[name.rfind(".") :], b"application/octet-stream")
                return 200, body, ctype, []
        return 404, b"not found\n", text, []

    # ------------------------------------------------------------ websocket

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


# ---------------------------------------------------------------- helpers


async def _bind(host: str | None, port: int) -> list[trio.SocketListener]:
    """Listen on ``host`` (every interface if None), all families on one port."""
    if host is None:
        first = await trio.open_tcp_listeners(port, host="0.0.0.0")
        try:
            more = await trio.open_tcp_listeners(first[0].socket.getsockname()[1], host="::")
        except OSError:
            more = []
        return first + more
    listeners = await trio.open_tcp_listeners(port, host=host)
    actual = listeners[0].socket.getsockname()[1]
    keep = [ln for ln in listeners if ln.socket.getsockname()[1] == actual]
    for ln in listeners:
        if ln not in keep:
            ln.socket.close()
    return keep


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


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip().strip("/")
    return f"/{prefix}" if prefix else ""


def _load_static() -> dict[str, bytes]:
    out = {}
    for entry in resources.files("trioflow.diagnostics").joinpath("static").iterdir():
        if entry.is_file():
            out[entry.name] = entry.read_bytes()
    return out
