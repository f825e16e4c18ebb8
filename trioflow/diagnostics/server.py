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

**Parts.** This module holds the server object (listening, accepting,
connection limits) and its configuration; :class:`DashboardServer` takes its
other parts from one module each: :mod:`.http_protocol` (a connection's
HTTP/1.1 request loop and the protocol helpers), :mod:`.routes` (which
answer each path gets), :mod:`.viewers` (the snapshot feed and the
websocket viewers) and :mod:`.assets` (the static files and the content
security policy).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import attrs
import trio

from .assets import _load_static
from .http_protocol import _peer, _plain_response
from .routes import Routing
from .sources import source_for
from .viewers import ViewerHandling, _Feed

logger = logging.getLogger("trioflow.diagnostics")

__all__ = ["DashboardConfig", "DashboardServer", "serve_dashboard", "parse_dashboard_address"]


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

class DashboardServer(Routing, ViewerHandling):
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


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip().strip("/")
    return f"/{prefix}" if prefix else ""
