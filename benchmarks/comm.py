"""Comm benchmarks: small-message rate and bulk throughput.

``python -m benchmarks.comm [--quick] [--repeat N] [--messages N] [--mib N] [--json FILE]``

What is measured (all on loopback, receiver in a separate process so sender
and receiver each get a core, as scheduler and worker do in a real cluster):

* small messages: ``N`` :class:`~trioflow.protocol.messages.Heartbeat`
  messages through a :class:`~trioflow.comm.BatchedSend` on ``tcp://``;
  the clock runs from the first ``send`` until the receiver, having decoded
  all ``N``, answers ``Ok``.  Two producer patterns: *burst* (all ``N``
  queued at once) and *trickle* (one ``send`` then a Trio checkpoint, as when
  many tasks each report one thing).  For reference, the same messages sent
  with one ``Comm.send`` each (no batching, one frame group per write).
* bulk: one ``PutData`` message carrying a 256 MiB numpy array (pickled with
  out-of-band buffers by ``trioflow.protocol.serialize.dumps``) over
  ``tcp://`` and ``tls://`` (``Security.temporary()``); the clock runs from
  ``dumps`` until the receiver has the whole message decoded and answers.
  Beside it, in the same run and interleaved repetition by repetition: plain
  blocking sockets, ``sendall`` of the array's memory into ``recv_into`` of a
  fresh ``bytearray`` (what any receiver of a new message must allocate) and
  of a reused, already-touched buffer (the ceiling), then a one-byte answer.
  For TLS the plain baseline is a blocking ``ssl.SSLSocket`` with the same
  contexts.

Each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"
MiB = 1 << 20


# ====================================================================== receivers
# (run in child processes started with the "spawn" method)


def _trioflow_receiver(conn: Any, security: Any, raw_nbytes: int) -> None:
    """Serve trioflow tcp:// and tls:// listeners (answer each PutData / end
    marker with Ok), and raw trio TCP / TLS listeners for the trio baseline."""
    import trio

    from trioflow.comm import CommClosedError, listen
    from trioflow.protocol import messages as m

    async def handler(comm: Any) -> None:
        count = 0
        while True:
            try:
                msg = await comm.recv()
            except CommClosedError:
                return
            t = type(msg)
            if t is m.Heartbeat:
                count += 1
                if msg.paused:  # end marker of a small-message run
                    await comm.send(m.Ok())
                    count = 0
            elif t is m.PutData:
                await comm.send(m.Ok())
                del msg
            else:
                await comm.send(m.Ok())

    async def raw_handler(stream: Any) -> None:
        # Same protocol as the plain receiver, with trio streams: mode byte, nbytes, answer b"k".
        nbytes = raw_nbytes
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        pending = bytearray()

        async def read_into(view: memoryview) -> None:
            nonlocal pending
            if pending:
                k = min(len(pending), len(view))
                view[:k] = pending[:k]
                del pending[:k]
                view = view[k:]
            while view:
                if sock is not None:
                    got = await sock.recv_into(view)
                    if not got:
                        raise EOFError
                    view = view[got:]
                else:
                    data = await stream.receive_some(1 << 20)
                    if not data:
                        raise EOFError
                    k = min(len(data), len(view))
                    view[:k] = data[:k]
                    pending += data[k:]
                    view = view[k:]

        try:
            if not isinstance(stream, trio.SocketStream):
                await stream.do_handshake()
            while True:
                mode = bytearray(1)
                await read_into(memoryview(mode))
                if mode == b"q":
                    return
                buf = bytearray(nbytes)
                await read_into(memoryview(buf))
                del buf
                await stream.send_all(b"k")
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def main() -> None:
        async with trio.open_nursery() as n:
            raw_tcp = (await trio.open_tcp_listeners(0, host=HOST))[0]
            raw_tls_sock = (await trio.open_tcp_listeners(0, host=HOST))[0]
            raw_tls = trio.SSLListener(
                raw_tls_sock, security.get_server_context("scheduler"), https_compatible=False
            )
            n.start_soon(trio.serve_listeners, raw_handler, [raw_tcp])
            n.start_soon(trio.serve_listeners, raw_handler, [raw_tls])
            tcp = await n.start(
                lambda task_status: listen(
                    f"tcp://{HOST}:0", handler, role="scheduler", task_status=task_status
                )
            )
            tls = await n.start(
                lambda task_status: listen(
                    f"tls://{HOST}:0",
                    handler,
                    role="scheduler",
                    security=security,
                    task_status=task_status,
                )
            )
            conn.send(
                (
                    tcp.address.replace("0.0.0.0", HOST),
                    tls.address.replace("0.0.0.0", HOST),
                    raw_tcp.socket.getsockname()[1],
                    raw_tls_sock.socket.getsockname()[1],
                )
            )
            await trio.to_thread.run_sync(conn.recv)  # parent says stop
            n.cancel_scope.cancel()

    trio.run(main)


def _recv_exactly_into(sock: Any, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed")
        view = view[n:]


def _plain_serve(sock: Any, nbytes: int) -> None:
    """Per request: 1-byte mode, then nbytes, answer b'k'.

    Modes: f = into a fresh ``bytearray`` (4 KiB pages faulted in by the copy),
    n = into a fresh ``numpy.empty`` (numpy asks for transparent huge pages on
    big allocations; this is what distributed's TCP comm receives into),
    r = into one reused, already faulted-in buffer, q = quit.
    """
    import numpy as np

    reused = bytearray(nbytes)
    memoryview(reused)[::4096] = b"\1" * len(range(0, nbytes, 4096))  # fault every page in now
    mode = bytearray(1)
    while True:
        _recv_exactly_into(sock, memoryview(mode))
        if mode == b"q":
            return
        if mode == b"f":
            buf: Any = memoryview(bytearray(nbytes))
        elif mode == b"n":
            buf = np.empty(nbytes, dtype="u1").data
        else:
            buf = memoryview(reused)
        _recv_exactly_into(sock, buf)
        del buf
        sock.sendall(b"k")


def _plain_receiver(conn: Any, nbytes: int, server_ctx: Any) -> None:
    """Plain blocking sockets: one tcp and one ssl listener, each served in a thread."""
    tcp = socket.create_server((HOST, 0))
    tls = socket.create_server((HOST, 0))
    conn.send((tcp.getsockname()[1], tls.getsockname()[1]))

    def serve(listener: socket.socket, wrap: bool) -> None:
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if wrap:
            s = server_ctx.wrap_socket(s, server_side=True)
        with s:
            _plain_serve(s, nbytes)

    threads = [
        threading.Thread(target=serve, args=(tcp, False)),
        threading.Thread(target=serve, args=(tls, True)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ====================================================================== senders


def _plain_connect(port: int, ctx: Any = None) -> Any:
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname=HOST)
    return s


def _plain_once(sock: Any, payload: memoryview, mode: bytes) -> float:
    t0 = time.perf_counter()
    sock.sendall(mode)
    sock.sendall(payload)
    ack = bytearray(1)
    _recv_exactly_into(sock, memoryview(ack))
    return time.perf_counter() - t0


async def _raw_trio_once(stream: Any, payload: memoryview) -> float:
    t0 = time.perf_counter()
    await stream.send_all(b"f")
    await stream.send_all(payload)
    ack = await stream.receive_some(1)
    elapsed = time.perf_counter() - t0
    assert ack == b"k", ack
    return elapsed


async def _bulk_trioflow_once(comm: Any, array: Any) -> float:
    from trioflow.protocol import messages as m
    from trioflow.protocol.serialize import dumps

    t0 = time.perf_counter()
    msg = m.PutData(data={"x": dumps(array)})
    await comm.send(msg)
    reply = await comm.recv()
    elapsed = time.perf_counter() - t0
    assert isinstance(reply, m.Ok), reply
    return elapsed


def _heartbeat(end: bool = False) -> Any:
    from trioflow.protocol import messages as m

    return m.Heartbeat(
        memory=123_456_789,
        managed=1_000_000,
        spilled=0,
        cpu=12.5,
        executing=1,
        ready=3,
        in_memory=42,
        bandwidth=1.0e8,
        paused=end,
    )


async def _small_batched_once(address: str, n: int, pattern: str) -> tuple[float, int]:
    import trio

    from trioflow.comm import BatchedSend, connect

    comm = await connect(address, role="client")
    try:
        async with trio.open_nursery() as nursery:
            b = BatchedSend(comm)
            await nursery.start(b.run)
            msg = _heartbeat()
            end = _heartbeat(end=True)
            t0 = time.perf_counter()
            if pattern == "burst":
                send = b.send
                for _ in range(n - 1):
                    send(msg)
            else:
                checkpoint = trio.lowlevel.checkpoint
                for _ in range(n - 1):
                    b.send(msg)
                    await checkpoint()
            b.send(end)
            await comm.recv()
            elapsed = time.perf_counter() - t0
            batches = b.batches
            await b.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await comm.aclose()
    return elapsed, batches


async def _small_unbatched_once(address: str, n: int) -> float:
    from trioflow.comm import connect

    comm = await connect(address, role="client")
    try:
        msg = _heartbeat()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            await comm.send(msg)
        await comm.send(_heartbeat(end=True))
        await comm.recv()
        return time.perf_counter() - t0
    finally:
        await comm.aclose()


# ====================================================================== driver


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import trio

    from trioflow import Security
    from trioflow.comm import connect

    security = Security.temporary()
    nbytes = args.mib * MiB
    ctx = mp.get_context("spawn")

    results: dict[str, Any] = {
        "repeat": args.repeat,
        "messages": args.messages,
        "mib": args.mib,
        "rows": {},
    }
    rows = results["rows"]

    tf_parent, tf_child = ctx.Pipe()
    pl_parent, pl_child = ctx.Pipe()
    tf_proc = ctx.Process(target=_trioflow_receiver, args=(tf_child, security, nbytes), daemon=True)
    # An SSLContext does not pickle: the child builds its own from the Security.
    pl_proc = ctx.Process(
        target=_plain_receiver_from_security, args=(pl_child, nbytes, security), daemon=True
    )
    tf_proc.start()
    pl_proc.start()
    try:
        tcp_addr, tls_addr, raw_tcp_port, raw_tls_port = tf_parent.recv()
        plain_tcp_port, plain_tls_port = pl_parent.recv()

        # ------------------------------------------------ small messages
        n = args.messages
        burst, trickle, unbatched, burst_batches, trickle_batches = [], [], [], [], []
        n_unbatched = max(1000, n // 10)
        for _ in range(args.repeat):
            e, nb = trio.run(_small_batched_once, tcp_addr, n, "burst")
            burst.append(n / e)
            burst_batches.append(nb)
            e, nb = trio.run(_small_batched_once, tcp_addr, n, "trickle")
            trickle.append(n / e)
            trickle_batches.append(nb)
            e = trio.run(_small_unbatched_once, tcp_addr, n_unbatched)
            unbatched.append(n_unbatched / e)
        rows["small_batched_burst_msgs_per_s"] = {
            "median": _median(burst),
            "runs": burst,
            "batches": burst_batches,
        }
        rows["small_batched_trickle_msgs_per_s"] = {
            "median": _median(trickle),
            "runs": trickle,
            "batches": trickle_batches,
        }
        rows["small_unbatched_msgs_per_s"] = {
            "median": _median(unbatched),
            "runs": unbatched,
            "n": n_unbatched,
        }

        # ------------------------------------------------ bulk
        array = np.random.default_rng(0).random(nbytes // 8)
        assert array.nbytes == nbytes
        payload = memoryview(array).cast("B")
        client_ctx = security.get_client_context("client")

        async def bulk(address: str, raw_port: int, tls: bool) -> dict[str, list[float]]:
            comm = await connect(address, role="client", security=security if tls else None)
            raw: Any = await trio.open_tcp_stream(HOST, raw_port)
            if tls:
                raw = trio.SSLStream(raw, client_ctx, server_hostname=HOST)
                await raw.do_handshake()
            out: dict[str, list[float]] = {
                "trioflow": [],
                "trio": [],
                "plain_fresh": [],
                "plain_numpy": [],
                "plain_reused": [],
            }
            try:
                await _bulk_trioflow_once(comm, array[: 1 << 17])  # warm the connection
                # Interleaved, so load from elsewhere on the machine hits every column alike.
                for _ in range(args.repeat):
                    out["trioflow"].append(await _bulk_trioflow_once(comm, array))
                    out["trio"].append(await _raw_trio_once(raw, payload))
                    out["plain_fresh"].append(
                        await trio.to_thread.run_sync(_plain_once, plain_sock, payload, b"f")
                    )
                    out["plain_numpy"].append(
                        await trio.to_thread.run_sync(_plain_once, plain_sock, payload, b"n")
                    )
                    out["plain_reused"].append(
                        await trio.to_thread.run_sync(_plain_once, plain_sock, payload, b"r")
                    )
                await raw.send_all(b"q")
                return out
            finally:
                await comm.aclose()
                await trio.aclose_forcefully(raw)

        for scheme, port, pctx, address, raw_port in (
            ("tcp", plain_tcp_port, None, tcp_addr, raw_tcp_port),
            ("tls", plain_tls_port, client_ctx, tls_addr, raw_tls_port),
        ):
            plain_sock = _plain_connect(port, pctx)
            try:
                times = trio.run(bulk, address, raw_port, scheme == "tls")
                plain_sock.sendall(b"q")
            finally:
                plain_sock.close()
            for col, ts in times.items():
                rates = [nbytes / t / 1e9 for t in ts]
                rows[f"bulk_{scheme}_{col}_GBps"] = {"median": _median(rates), "runs": rates}
    finally:
        try:
            tf_parent.send("stop")
        except OSError:
            pass
        for p in (tf_proc, pl_proc):
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def _plain_receiver_from_security(conn: Any, nbytes: int, security: Any) -> None:
    _plain_receiver(conn, nbytes, security.get_server_context("scheduler"))


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def print_table(results: dict[str, Any]) -> None:
    r = results["rows"]
    n = results["messages"]
    mib = results["mib"]
    print()
    print(f"small messages (Heartbeat, tcp://, loopback, median of {results['repeat']})")
    print(f"{'pattern':<50} | {'messages/s':>12} | {'batches/run':>11}")
    print("-" * 80)
    print(
        f"{f'BatchedSend, burst ({n:,} queued at once)':<50} | {_fmt_rate(r['small_batched_burst_msgs_per_s']['median']):>12} | {statistics.median(r['small_batched_burst_msgs_per_s']['batches']):>11,.0f}"
    )
    print(
        f"{f'BatchedSend, trickle (send + checkpoint) x{n:,}':<50} | {_fmt_rate(r['small_batched_trickle_msgs_per_s']['median']):>12} | {statistics.median(r['small_batched_trickle_msgs_per_s']['batches']):>11,.0f}"
    )
    nu = r["small_unbatched_msgs_per_s"]["n"]
    print(
        f"{f'Comm.send one at a time (no batching) x{nu:,}':<50} | {_fmt_rate(r['small_unbatched_msgs_per_s']['median']):>12} | {nu:>11,}"
    )
    print()
    print(
        f"bulk: one {mib} MiB numpy array (PutData) vs plain blocking sockets, loopback, "
        f"GB/s, median of {results['repeat']}"
    )
    cols = [
        ("trioflow", "trioflow"),
        ("plain_fresh", "plain, bytearray"),
        ("plain_numpy", "plain, np.empty"),
        ("plain_reused", "plain, reused buf"),
        ("trio", "trio streams"),
    ]
    head = f"{'transport':<9} | " + " | ".join(f"{t:>17}" for _, t in cols)
    head += f" | {'ratio to bytearray':>18} | {'ratio to np.empty':>17}"
    print(head)
    print("-" * len(head))
    for scheme in ("tcp", "tls"):
        v = {k: r[f"bulk_{scheme}_{k}_GBps"]["median"] for k, _ in cols}
        line = f"{scheme + '://':<9} | " + " | ".join(f"{v[k]:>17.2f}" for k, _ in cols)
        line += f" | {v['trioflow'] / v['plain_fresh']:>18.2f} | {v['trioflow'] / v['plain_numpy']:>17.2f}"
        print(line)
    for note in (
        "ratio = trioflow / plain.  plain = blocking sockets in two processes, sendall -> recv_into, 1-byte answer;",
        "tls:// plain = blocking ssl.SSLSocket with the same Security.temporary() contexts.  The receive buffer is",
        "allocated per message: bytearray (4 KiB pages, faulted in during the receive; trioflow does this today),",
        "np.empty (numpy madvises transparent huge pages; distributed's comm receives into this), or reused",
        "(already faulted in: the ceiling).  trio streams = SocketStream.send_all -> socket.recv_into into a fresh",
        "bytearray (tls: SSLStream.receive_some + copy), i.e. trio without trioflow's framing.",
    ):
        print(note)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.comm", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions (3) and 50,000 messages")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repetitions per figure (default 5, 3 with --quick)",
    )
    p.add_argument(
        "--messages", type=int, default=None, help="small messages per run (default 200,000)"
    )
    p.add_argument("--mib", type=int, default=256, help="bulk payload size in MiB (default 256)")
    p.add_argument("--json", metavar="FILE", help="write results as JSON")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.messages is None:
        args.messages = 50_000 if args.quick else 200_000
    t0 = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - t0
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
