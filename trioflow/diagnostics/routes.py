"""Which answer each path gets (see the routes in the module docstring of
:mod:`.server`): the page and its assets, health, metrics, JSON, the plain
workers table, the profile and call-stack views; ``/ws`` goes to
:mod:`.viewers`."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import h11
import trio

from .assets import _CSP, _STATIC_TYPES
from .http_protocol import HTTPHandling, _is_websocket, _linger
from .pages import call_stacks_page, profile_page, workers_page

if TYPE_CHECKING:
    from .viewers import _Feed


class Routing(HTTPHandling):
    """The routes of :class:`~.server.DashboardServer`."""

    source: Any
    prefix: str
    feed: _Feed
    _static: dict[str, bytes]

    if TYPE_CHECKING:  # defined by the server object and by .viewers

        def statistics(self) -> dict[str, Any]: ...

        async def _websocket(self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request) -> None: ...

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
