"""The diagnostics server over plain HTTP and websockets.

A real cluster (``open_cluster`` with ``dashboard_address="127.0.0.1:0"``)
serves the page; tests talk to it over raw Trio TCP (with h11 as the client
parser where the response is well-formed) and with trio-websocket's client.
Tests that need tighter limits start a second :class:`DashboardServer` on the
same scheduler with their own :class:`DashboardConfig`.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket
import wsproto
import wsproto.events
from support import wait_until
from trio_websocket import open_websocket_url

from trioflow import open_client, open_cluster
from trioflow.diagnostics import (
    DashboardConfig,
    DashboardServer,
    parse_dashboard_address,
    serve_dashboard,
)
from trioflow.diagnostics.sources import _Tail

#: Every ``trioflow_cluster`` in this file serves its dashboard on a free port.
pytestmark = pytest.mark.trioflow_cluster(dashboard_address="127.0.0.1:0")


STATIC = Path(__file__).resolve().parents[2] / "trioflow" / "diagnostics" / "static"

# ---------------------------------------------------------------- task functions


def slow_inc(x: int) -> int:
    time.sleep(0.02)
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


# ---------------------------------------------------------------- helpers


async def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float = 5,
) -> tuple[int, dict[str, str], bytes]:
    """One request with h11 as the client; returns (status, headers, body)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            hs = [("host", f"127.0.0.1:{port}"), ("connection", "close"), *(headers or [])]
            if body:
                hs.append(("content-length", str(len(body))))
            data = conn.send(h11.Request(method=method, target=path, headers=hs))
            if body:
                data += conn.send(h11.Data(data=body))
            await stream.send_all(data + conn.send(h11.EndOfMessage()))
            return await _read_response(conn, stream)


async def _read_response(conn: h11.Connection, stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, headers, body


async def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            out = b""
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
            return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def ws_status(port: int, path: str = "/ws", headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """The status of a websocket handshake (raw, so a refusal leaks nothing)."""
    lines = [
        f"GET {path} HTTP/1.1".encode(),
        f"Host: 127.0.0.1:{port}".encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
        *(k + b": " + v for k, v in headers or []),
    ]
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                assert chunk, "closed before a status line"
                data += chunk
            return status_of(data)


@asynccontextmanager
async def dashboard(server: Any, config: DashboardConfig | None = None) -> AsyncIterator[DashboardServer]:
    """A second dashboard on ``server`` with its own config."""
    ds = DashboardServer(server, config=config)
    async with trio.open_nursery() as nursery:
        await nursery.start(ds.serve, "127.0.0.1:0")
        try:
            yield ds
        finally:
            nursery.cancel_scope.cancel()


async def receive_json(ws: trio_websocket.WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


class RawViewer:
    """A websocket client on wsproto (sans-IO): full control, closes its socket."""

    def __init__(self, stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
        self.stream = stream
        self.ws = ws

    async def send_text(self, *texts: str) -> None:
        await self.stream.send_all(b"".join(self.ws.send(wsproto.events.Message(data=t)) for t in texts))

    async def close_code(self, timeout: float = 10) -> int | None:
        """Read until the server closes; its close code (None: no close frame)."""
        with trio.fail_after(timeout):
            while True:
                for event in self.ws.events():
                    if isinstance(event, wsproto.events.CloseConnection):
                        return event.code
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.ws.receive_data(data)


@asynccontextmanager
async def raw_viewer(port: int) -> AsyncIterator[RawViewer]:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(ws.send(wsproto.events.Request(host=f"127.0.0.1:{port}", target="/ws")))
        with trio.fail_after(5):
            accepted = False
            while not accepted:
                ws.receive_data(await stream.receive_some(65536))
                accepted = any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events())
        yield RawViewer(stream, ws)


@pytest.fixture
async def cluster(trioflow_cluster: Any) -> Any:
    """The shipped ``trioflow_cluster`` with its dashboard on a free port
    (``pytestmark`` above)."""
    return trioflow_cluster


def port_of(cluster: Any) -> int:
    return int(cluster.scheduler.services["dashboard"])


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "text, expected",
    [
        (":8787", (None, 8787)),
        ("8787", (None, 8787)),
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:8787", ("::1", 8787)),
        ("localhost:0", ("localhost", 0)),
        ("http://127.0.0.1:9000/", ("127.0.0.1", 9000)),
        (8789, (None, 8789)),
    ],
)
def test_parse_dashboard_address(text: Any, expected: tuple[str | None, int]) -> None:
    assert parse_dashboard_address(text) == expected


@pytest.mark.parametrize("text", ["", "host", ":port", "1.2.3.4:99999", "[::1", "host:-1"])
def test_parse_dashboard_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="dashboard address"):
        parse_dashboard_address(text)


# ---------------------------------------------------------------- routes


async def test_routes(cluster: Any) -> None:
    port = port_of(cluster)
    assert cluster.dashboard_link == f"http://127.0.0.1:{port}/status"

    status, headers, body = await fetch(port, "/health")
    assert (status, body) == (200, b"ok")
    assert headers["content-type"].startswith("text/plain")

    for path in ("/", "/status"):
        status, headers, body = await fetch(port, path)
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b'src="static/dashboard.js"' in body
        assert "connect-src" in headers["content-security-policy"]

    status, headers, body = await fetch(port, "/json/identity.json")
    assert status == 200 and headers["content-type"] == "application/json"
    ident = json.loads(body)
    assert ident["type"] == "Scheduler"
    assert ident["address"] == cluster.scheduler.address
    assert ident["services"]["dashboard"] == port
    assert sorted(w["name"] for w in ident["workers"].values()) == ["worker-0", "worker-1"]

    status, headers, body = await fetch(port, "/workers")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for w in cluster.workers:
        assert w.address.encode() in body and w.name.encode() in body

    for name, ctype in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"), ("favicon.svg", "image/svg+xml")]:
        status, headers, body = await fetch(port, f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(ctype)
        assert body == (STATIC / name).read_bytes()

    status, _, body = await fetch(port, "/json/dashboard.json")
    assert status == 200 and json.loads(body)["viewers"] == 0

    for path in ("/nope", "/static/../server.py", "/static/nope.js", "/ws/extra"):
        assert (await fetch(port, path))[0] == 404


async def test_metrics(cluster: Any) -> None:
    port = port_of(cluster)
    async with open_client(cluster) as client:
        futures = await client.map(slow_inc, range(10))
        assert await client.gather(futures) == list(range(1, 11))
        status, headers, body = await fetch(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) trioflow_\w+ .+", line), line
            continue
        m = re.fullmatch(r'(trioflow_\w+(?:\{(?:\w+="[^"]*",?)+\})?) (-?[0-9.e+]+)', line)
        assert m, line
        values[m.group(1)] = float(m.group(2))
    assert values["trioflow_workers"] == 2
    assert values["trioflow_threads"] == 2
    assert values['trioflow_tasks{state="memory"}'] == 10
    assert values['trioflow_tasks{state="processing"}'] == 0
    assert values['trioflow_prefix_tasks{prefix="slow_inc",state="memory"}'] == 10
    for kind in ("managed", "unmanaged", "spilled"):
        assert f'trioflow_memory_bytes{{kind="{kind}"}}' in values
    assert values['trioflow_memory_bytes{kind="managed"}'] > 0
    assert values["trioflow_tasks_finished_total"] == 10
    assert "# TYPE trioflow_tasks_finished_total counter" in text


async def test_head_keepalive_and_methods(cluster: Any) -> None:
    port = port_of(cluster)
    status, headers, body = await fetch(port, "/health", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "2")

    status, headers, _ = await fetch(port, "/health", method="POST", body=b"abc")
    assert status == 405 and headers["allow"] == "GET, HEAD"

    status, headers, _ = await fetch(port, "/ws")
    assert status == 426

    # Two requests on one connection.
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            for path in ("/health", "/metrics"):
                await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[("host", "x")])) + conn.send(h11.EndOfMessage()))
                status, _, body = await _read_response(conn, stream)
                assert status == 200 and body
                conn.start_next_cycle()


async def test_static_files_are_self_contained() -> None:
    """No CDN, no external fonts: the page must work on an air-gapped cluster."""
    for path in STATIC.iterdir():
        text = path.read_text()
        urls = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text) if "www.w3.org/2000/svg" not in u]
        assert urls == [], (path.name, urls)
        assert "@import" not in text and "@font-face" not in text


# ---------------------------------------------------------------- flags


@pytest.mark.trioflow_cluster(n_workers=1, dashboard_address="127.0.0.1:0", scheduler_options={"dashboard_prefix": "/dash/"})
async def test_prefix(trioflow_cluster: Any) -> None:
    c = trioflow_cluster
    port = port_of(c)
    assert (await fetch(port, "/dash/health"))[:3:2] == (200, b"ok")
    assert (await fetch(port, "/health"))[0] == 404
    assert (await fetch(port, "/metrics"))[0] == 404
    for path in ("/", "/dash"):
        status, headers, _ = await fetch(port, path)
        assert status == 302 and headers["location"] == "/dash/"
    for path in ("/dash/", "/dash/status", "/dash/workers", "/dash/metrics", "/dash/json/identity.json", "/dash/static/dashboard.js"):
        assert (await fetch(port, path))[0] == 200, path
    status, _, body = await fetch(port, "/dash/workers")
    assert b'href="/dash/static/dashboard.css"' in body
    async with open_websocket_url(f"ws://127.0.0.1:{port}/dash/ws") as ws:
        assert (await receive_json(ws))["type"] == "history"
        assert (await receive_json(ws))["type"] == "snapshot"
    assert await ws_status(port, "/ws") == 404
    assert await ws_status(port, "/dash/ws") == 101


@pytest.mark.parametrize(
    "whitelist, origin, allowed",
    [
        (["dash.example.com"], "http://dash.example.com:8787", True),
        (["dash.example.com:8787"], "http://dash.example.com:8787", True),
        (["*.example.com"], "https://dash.example.com", True),
        (["dash.example.com"], "http://evil.example.org", False),
        (["dash.example.com"], None, False),
        (["127.0.0.1"], "http://evil.example.org", True),
        (["127.0.0.0/8"], None, True),
        (["10.0.0.0/8"], None, False),
    ],
)
async def test_whitelist(whitelist: list[str], origin: str | None, allowed: bool) -> None:
    async with open_cluster(n_workers=0, dashboard_address="127.0.0.1:0", scheduler_options={"dashboard_whitelist": whitelist}) as c:
        url = f"ws://127.0.0.1:{port_of(c)}/ws"
        headers = [(b"origin", origin.encode())] if origin else []
        if allowed:
            async with open_websocket_url(url, extra_headers=headers) as ws:
                assert (await receive_json(ws))["type"] == "history"
        else:
            assert await ws_status(port_of(c), "/ws", headers) == 403
        # The whitelist guards the stream, not the plain endpoints.
        assert (await fetch(port_of(c), "/health"))[0] == 200


@pytest.mark.parametrize("use_xheaders", [True, False])
async def test_use_xheaders(use_xheaders: bool, caplog: pytest.LogCaptureFixture) -> None:
    options = {"dashboard_whitelist": ["203.0.113.7"], "use_xheaders": use_xheaders}
    async with open_cluster(n_workers=0, dashboard_address="127.0.0.1:0", scheduler_options=options) as c:
        url = f"ws://127.0.0.1:{port_of(c)}/ws"
        headers = [(b"x-forwarded-for", b"203.0.113.7, 10.1.1.1"), (b"x-forwarded-proto", b"https")]
        if use_xheaders:
            async with open_websocket_url(url, extra_headers=headers) as ws:
                await receive_json(ws)
            assert "dashboard viewer connected from 203.0.113.7 (https via proxy 127.0.0.1)" in caplog.text
        else:
            assert await ws_status(port_of(c), "/ws", headers) == 403


async def test_scheduler_port_in_use_is_an_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # (The scheduler's nurseries wrap it in exception groups.)
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, match=f"port {port} is already in use"), flatten_subgroups=True):
            async with open_cluster(n_workers=0, dashboard_address=f"127.0.0.1:{port}"):
                pass  # pragma: no cover


@pytest.mark.trioflow_cluster(n_workers=1)
async def test_worker_dashboard_and_port_fallback(trioflow_cluster: Any, trioflow_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    c, client = trioflow_cluster, trioflow_client
    worker = c.workers[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_dashboard, worker, f"127.0.0.1:{taken}")
            assert port != taken
            assert f"dashboard port {taken} is in use; serving this worker's dashboard on port {port} instead" in caplog.text

            futures = await client.map(slow_inc, range(5))
            assert await client.gather(futures) == [1, 2, 3, 4, 5]
            assert (await fetch(port, "/health"))[:3:2] == (200, b"ok")
            status, _, body = await fetch(port, "/")
            assert status == 200 and b"dashboard.js" in body
            ident = json.loads((await fetch(port, "/json/identity.json"))[2])
            assert ident["type"] == "Worker" and ident["address"] == worker.address
            metrics = (await fetch(port, "/metrics"))[2].decode()
            assert "trioflow_threads 1" in metrics
            assert 'trioflow_worker_tasks{state="memory"} 5' in metrics
            assert "trioflow_bytes_transferred_total 0" in metrics
            assert "trioflow_tasks_executed_total 5" in metrics
            async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
                history = await receive_json(ws)
                assert [e[0] for e in history["stream"]][-5:] and history["type"] == "history"
                snap = await receive_json(ws)
                assert snap["kind"] == "worker"
                assert snap["workers"][0]["address"] == worker.address
                assert snap["prefixes"][0]["name"] == "slow_inc" and snap["prefixes"][0]["memory"] == 5
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- the stream


@pytest.mark.slow
async def test_websocket_snapshots_while_a_graph_runs(cluster: Any) -> None:
    port = port_of(cluster)
    async with open_client(cluster) as client:
        futures = await client.map(slow_inc, range(60))
        total = await client.submit(add, futures[0], futures[1])
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            history = await receive_json(ws)
            assert history["type"] == "history" and isinstance(history["stream"], list)
            seen_processing = seen_memory = False
            stream: list[list[Any]] = list(history["stream"])
            seqs = []
            with trio.fail_after(20):
                while not (seen_processing and seen_memory and len(stream) >= 60):
                    snap = await receive_json(ws)
                    assert snap["type"] == "snapshot" and snap["kind"] == "scheduler"
                    seqs.append(snap["seq"])
                    rows = snap["workers"]
                    assert sorted(r["name"] for r in rows) == ["worker-0", "worker-1"]
                    assert {"address", "nthreads", "memory", "managed", "unmanaged", "spilled", "cpu", "processing", "held"} <= set(rows[0])
                    prefixes = {p["name"]: p for p in snap["prefixes"]}
                    if "slow_inc" in prefixes:
                        p = prefixes["slow_inc"]
                        assert p["total"] == p["waiting"] + p["processing"] + p["memory"] + p["erred"] + p["released"]
                        seen_processing |= p["processing"] > 0
                        seen_memory |= p["memory"] > 0
                    if snap["seq"] > history["seq"]:
                        stream.extend(snap["stream"])
                    assert snap["summary"]["workers"] == 2
                    assert snap["dashboard"]["viewers"] == 1
        assert await total == 3
    assert seqs == sorted(seqs)
    keys = [e[0] for e in stream]
    assert len(keys) == len(set(keys)), "a task-stream entry arrived twice"
    key, prefix, worker, thread, start, stop = stream[0]
    assert prefix == "slow_inc" and worker in {w.address for w in cluster.workers}
    assert thread == 0 and stop >= start


@pytest.mark.slow
async def test_snapshots_only_while_watched_and_shared(cluster: Any) -> None:
    config = DashboardConfig(interval=0.05)
    async with dashboard(cluster.scheduler, config) as ds:
        await trio.sleep(0.3)
        assert ds.feed.built == 0  # nobody watches: nothing is built
        url = f"ws://127.0.0.1:{ds.port}/ws"
        async with open_websocket_url(url) as a, open_websocket_url(url) as b:
            for ws in (a, b):
                await receive_json(ws)
            t0, built0 = trio.current_time(), ds.feed.built
            got = 0
            with trio.move_on_after(0.6):
                while True:
                    await receive_json(a)
                    await receive_json(b)
                    got += 1
            elapsed = trio.current_time() - t0
            built = ds.feed.built - built0
            # One build per interval serves both viewers.
            assert built <= elapsed / config.interval + 2
            assert got >= 3
            assert ds.statistics()["viewers"] == 2
        await wait_until(lambda: ds.feed.viewers == 0)
        await trio.sleep(0.2)
        settled = ds.feed.built
        await trio.sleep(0.3)
        assert ds.feed.built == settled


@pytest.mark.slow
async def test_a_failing_snapshot_does_not_hurt(cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with dashboard(cluster.scheduler, DashboardConfig(interval=0.02)) as ds:

        def broken() -> dict[str, Any]:
            raise RuntimeError("boom")

        ds.source.snapshot = broken  # type: ignore[method-assign]
        async with open_websocket_url(f"ws://127.0.0.1:{ds.port}/ws"):
            await wait_until(lambda: ds.feed.failures >= 3)
            assert (await fetch(ds.port, "/health"))[0] == 200
        assert caplog.text.count("could not build a snapshot") == 1
    assert cluster.scheduler.status == "running"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n", 400),  # TLS hello
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    ],
)
async def test_malformed_request_400(cluster: Any, request_bytes: bytes, status: int) -> None:
    response = await raw_exchange(port_of(cluster), request_bytes)
    assert status_of(response) == status
    assert b"connection: close" in response.lower()
    assert (await fetch(port_of(cluster), "/health"))[0] == 200


@pytest.mark.parametrize("complete", [True, False])
async def test_oversize_headers_431(cluster: Any, complete: bool) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
    if complete:
        head += b"\r\n"
    response = await raw_exchange(port_of(cluster), head)
    assert status_of(response) == 431
    assert (await fetch(port_of(cluster), "/health"))[0] == 200


async def test_headers_just_under_the_limit_are_fine(cluster: Any) -> None:
    filler = [(f"x-filler-{i}", "a" * 1000) for i in range(14)]
    status, _, body = await fetch(port_of(cluster), "/health", headers=filler)
    assert (status, body) == (200, b"ok")


@pytest.mark.slow
async def test_many_idle_connections_do_not_stop_health(cluster: Any) -> None:
    config = DashboardConfig(max_connections=64)
    async with dashboard(cluster.scheduler, config) as ds:
        streams = []
        try:
            # Idle sockets, and slow-loris ones that send half a request.
            for i in range(300):
                s = await trio.open_tcp_stream("127.0.0.1", ds.port)
                if i % 2:
                    await s.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                streams.append(s)
            for _ in range(5):
                status, _, body = await fetch(ds.port, "/health")
                assert (status, body) == (200, b"ok")
            stats = ds.statistics()
            assert stats["connections"] <= config.max_connections
            assert stats["evicted"] >= 300 - config.max_connections
            # The main dashboard never saw them and serves as usual.
            assert (await fetch(port_of(cluster), "/health"))[0] == 200
        finally:
            for s in streams:
                await s.aclose()


@pytest.mark.slow
async def test_idle_connection_times_out(cluster: Any) -> None:
    async with dashboard(cluster.scheduler, DashboardConfig(request_timeout=0.2)) as ds:
        # Silent: closed without a word.
        assert await raw_exchange(ds.port, b"", timeout=3) == b""
        # Half a request: 408.
        response = await raw_exchange(ds.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", timeout=3)
        assert status_of(response) == 408


async def test_too_many_viewers_503(cluster: Any) -> None:
    async with dashboard(cluster.scheduler, DashboardConfig(max_viewers=1)) as ds:
        url = f"ws://127.0.0.1:{ds.port}/ws"
        async with open_websocket_url(url) as ws:
            await receive_json(ws)
            assert await ws_status(ds.port) == 503
        await wait_until(lambda: ds.feed.viewers == 0)
        async with open_websocket_url(url) as ws:
            await receive_json(ws)


async def test_bad_websocket_handshake(cluster: Any) -> None:
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n"
    response = await raw_exchange(port_of(cluster), request)
    assert status_of(response) == 426
    assert b"sec-websocket-version: 13" in response.lower()


async def test_websocket_flood_is_closed(cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with raw_viewer(port_of(cluster)) as viewer:
        await viewer.send_text(*(f"hello {i}" for i in range(500)))
        assert await viewer.close_code() == 1008
    assert "sends too many messages" in caplog.text
    assert (await fetch(port_of(cluster), "/health"))[0] == 200


async def test_websocket_oversized_message_is_closed(cluster: Any) -> None:
    async with raw_viewer(port_of(cluster)) as viewer:
        await viewer.send_text("x" * 100_000)
        assert await viewer.close_code() == 1009
    assert (await fetch(port_of(cluster), "/health"))[0] == 200


@pytest.mark.slow
async def test_slow_viewer_is_dropped(cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    config = DashboardConfig(interval=0.02, viewer_send_timeout=0.3, viewer_send_buffer=4096)
    async with dashboard(cluster.scheduler, config) as ds, open_client(cluster) as client:
        # Keep task-stream entries flowing so snapshots are not tiny.
        futures = await client.map(slow_inc, range(200))
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", ds.port))
        stalled = trio.SocketStream(sock)
        async with stalled:
            await stalled.send_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            with trio.fail_after(5):
                assert (await stalled.receive_some(100)).startswith(b"HTTP/1.1 101")
            # A well-behaved viewer alongside keeps getting snapshots.
            async with open_websocket_url(f"ws://127.0.0.1:{ds.port}/ws") as good:
                await receive_json(good)
                # ... while the stalled one, which reads nothing, is dropped.
                await wait_until(lambda: ds.dropped_viewers == 1, timeout=20)
                await receive_json(good)
                assert ds.feed.viewers == 1
                assert (await fetch(ds.port, "/health"))[0] == 200
        await client.gather(futures)
    assert "dropped slow viewer 127.0.0.1" in caplog.text


# ---------------------------------------------------------------- internals


def test_tail_follows_a_trimmed_list() -> None:
    items: list[tuple[int]] = []
    tail = _Tail(lambda: items)
    assert tail.take(10) == ((), 0)
    items.extend((i,) for i in range(5))
    new, n = tail.take(3)
    assert n == 5 and list(new) == [(2,), (3,), (4,)]
    assert tail.take(3) == ((), 0)
    items.extend((i,) for i in range(5, 30))
    del items[:3]  # the owner trims old items from the front
    new, n = tail.take(100)
    assert n == 25 and list(new) == [(i,) for i in range(5, 30)]
    items.extend((i,) for i in range(30, 40))
    del items[:30]  # ... even past the last item seen: all that is left is new
    new, n = tail.take(100)
    assert n == 7 and list(new) == [(i,) for i in range(33, 40)]
    items.clear()
    items.append((99,))
    assert tail.take(5) == ([(99,)], 1)


async def test_snapshot_cost_is_small(cluster: Any) -> None:
    """Building a snapshot is cheap next to the 250 ms between snapshots."""
    ds = DashboardServer(cluster.scheduler)
    for _ in range(3):
        ds.feed.build()
    assert ds.feed.failures == 0
    assert ds.feed.cost < 0.01
    snap = json.loads(ds.feed.text)
    assert snap["summary"]["workers"] == 2 and snap["seq"] == 3


async def test_serve_dashboard_task_status(cluster: Any) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_dashboard, cluster.scheduler, "127.0.0.1:0", config=DashboardConfig()))
        assert isinstance(port, int) and port > 0
        assert (await fetch(port, "/health"))[0] == 200
        nursery.cancel_scope.cancel()
    with pytest.raises(TypeError, match="not a Scheduler or a Worker"):
        DashboardServer(object())


async def test_worker_dashboard_before_it_registers() -> None:
    """A worker may start its dashboard before it knows its own address."""
    from trioflow import Worker

    worker = Worker("tcp://127.0.0.1:9", nthreads=2, name="early")
    async with dashboard(worker) as ds:
        assert (await fetch(ds.port, "/health"))[2] == b"ok"
        metrics = (await fetch(ds.port, "/metrics"))[2].decode()
        assert "trioflow_threads 2" in metrics
        assert json.loads((await fetch(ds.port, "/json/identity.json"))[2])["name"] == "early"
        ds.feed.build()
        assert ds.feed.failures == 0
        snap = json.loads(ds.feed.text)
        assert snap["kind"] == "worker" and snap["workers"][0]["name"] == "early"
