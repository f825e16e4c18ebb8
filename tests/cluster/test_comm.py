"""Comms over TCP and inproc: messages of every kind arrive intact, the
handshake says who is who, and a peer that misbehaves in any way is dropped
with one log line while everyone else keeps being served.  Then the batched
sender and the connection pool built on top.

inproc tests run on ``autojump_clock`` where they wait on timeouts; TCP tests
use real sockets on 127.0.0.1 under ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import logging
import pickle
import socket
import struct
import sys
import tracemalloc
from typing import Any

import attrs
import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Handler, echo, echo_once, start, warnings_from  # noqa: E402

from trioflow.comm import (
    BatchedSend,
    Comm,
    CommClosedError,
    CommError,
    ConnectionPool,
    HandshakeError,
    Listener,
    RemoteError,
    connect,
    listen,
)
from trioflow.comm.addressing import parse_address
from trioflow.comm.connect import client_handshake
from trioflow.comm.core import HANDSHAKE_LIMITS, StreamComm
from trioflow.comm.inproc import connect_inproc, new_inproc_name
from trioflow.protocol import messages as m
from trioflow.protocol.codec import Limits
from trioflow.protocol.messages import MESSAGES, PROTOCOL_VERSION
from trioflow.protocol.serialize import Serialized, dumps, loads
from trioflow.testing import message_strategy

# ---------------------------------------------------------------- helpers




def tcp() -> str:
    return "tcp://127.0.0.1:0"


def inproc() -> str:
    return f"inproc://{new_inproc_name('test')}"


@pytest.fixture(params=["tcp", "inproc"])
def address(request: pytest.FixtureRequest) -> str:
    return tcp() if request.param == "tcp" else inproc()




async def raw_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def wait_closed_by_peer(stream: trio.SocketStream) -> None:
    """Read until the peer closes (an orderly end or a reset)."""
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return
        if not data:
            return


def prefix(*lengths: int, n: int | None = None) -> bytes:
    n = len(lengths) if n is None else n
    return struct.pack(f"<I{len(lengths)}Q", n, *lengths)


# ---------------------------------------------------------------- every kind of message

ALL_CLASSES = sorted(MESSAGES.values(), key=lambda c: c.op)
ONE_OF_EACH = st.tuples(*[message_strategy(c) for c in ALL_CLASSES])


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "inproc"])
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(msgs=ONE_OF_EACH)
async def test_every_message_kind_round_trips(transport: str, msgs: tuple[m.Message, ...]) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp() if transport == "tcp" else inproc())
            comm = await connect(listener.address)
            try:
                # one at a time, and all at once in one write
                for msg in msgs:
                    assert await echo_once(comm, msg) == msg
                await comm.send_many(msgs)
                back = [await comm.recv() for _ in msgs]
                assert back == list(msgs)
            finally:
                await comm.aclose()
            nursery.cancel_scope.cancel()


async def test_numpy_arrays_and_large_bytes(address: str) -> None:
    arr = np.arange(300_000, dtype="f8").reshape(600, 500)  # 2.4 MB, out of band
    farr = np.asfortranarray(np.arange(40_000, dtype="i4").reshape(200, 200))
    medium = np.full(20 * 1024, 7, dtype="u1")  # just over the out-of-band threshold
    small = np.arange(10)  # stays in band
    big = bytes(range(256)) * (80 * 1024)  # 20 MiB
    values = {
        "arr": arr,
        "farr": farr,
        "medium": medium,
        "small": small,
        "strided": arr[::3, ::2],
        "big": big,
        "bytearray": bytearray(b"z" * (1 << 20)),
        "memoryview": memoryview(b"m" * 100_000),
        "empty": b"",
    }
    data = {k: dumps(v) for k, v in values.items()}
    assert len(data["arr"].buffers) == 1 and len(data["medium"].buffers) == 1
    assert data["small"].buffers == ()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address)
            comm = await connect(listener.address)
            reply = await echo_once(comm, m.PutData(data=data))
            await comm.aclose()
            nursery.cancel_scope.cancel()
    assert isinstance(reply, m.PutData)
    got = {k: loads(v) for k, v in reply.data.items()}
    for k in ("arr", "farr", "medium", "small", "strided"):
        np.testing.assert_array_equal(got[k], values[k])
        assert got[k].dtype == values[k].dtype
    assert got["farr"].flags.f_contiguous
    assert got["big"] == big
    assert got["bytearray"] == values["bytearray"] and type(got["bytearray"]) is bytearray
    assert bytes(got["memoryview"]) == bytes(values["memoryview"])
    assert got["empty"] == b""


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket options")


@linux_only
async def test_writes_are_not_capped_at_16_kib() -> None:
    """Trio's SocketStream caps unsent data at 16 KiB (TCP_NOTSENT_LOWAT);
    comms on both ends lift the cap so a large frame goes out in big writes."""
    seen: list[int] = []

    async def handler(comm: Comm) -> None:
        assert isinstance(comm, StreamComm) and comm._sock is not None
        seen.append(comm._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))
        await echo(comm)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), handler)
            comm = await connect(listener.address)
            assert isinstance(comm, StreamComm) and comm._sock is not None
            assert comm._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 0
            payload = b"p" * (4 * 1024 * 1024)
            reply = await echo_once(comm, m.PutData(data={"k": dumps(payload)}))
            assert isinstance(reply, m.PutData) and loads(reply.data["k"]) == payload
            await comm.aclose()
            nursery.cancel_scope.cancel()
    assert seen == [0]


@pytest.mark.parametrize("nbytes", [1024 * 1024, 3 * 1024 * 1024 + 8])
async def test_received_arrays_have_memory_of_their_own(nbytes: int) -> None:
    """Each frame of a megabyte or more is read into its own buffer: arrays
    start aligned whatever the length of what precedes them, and one value
    does not keep another's memory alive."""
    values = {
        "a": np.arange(nbytes // 8, dtype="f8"),
        "b": np.arange(nbytes // 4, dtype="i4"),
        "odd": np.frombuffer(b"x" * 777, dtype="u1"),  # in band, shifts offsets
    }
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp())
            comm = await connect(listener.address)
            reply = await echo_once(comm, m.PutData(data={k: dumps(v) for k, v in values.items()}))
            await comm.aclose()
            nursery.cancel_scope.cancel()
    assert isinstance(reply, m.PutData)
    a, b = loads(reply.data["a"]), loads(reply.data["b"])
    np.testing.assert_array_equal(a, values["a"])
    np.testing.assert_array_equal(b, values["b"])
    assert a.flags.aligned and b.flags.aligned
    assert a.ctypes.data % 16 == 0 and b.ctypes.data % 16 == 0
    assert not np.shares_memory(a.base, b.base)
    assert a.flags.writeable


@linux_only
async def test_large_frames_leave_the_socket_ready_for_small_messages() -> None:
    """Reading a large frame raises the receive low-water mark (below a
    megabyte: to what is left of the frame); it is back at 1 afterwards, so
    small messages are not held back."""
    sizes = [200 * 1024, 3 * 1024 * 1024 + 5, 10, 1024 * 1024, 5]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp())
            comm = await connect(listener.address)
            assert isinstance(comm, StreamComm)
            sock = comm._sock
            assert sock is not None
            for n in sizes:
                payload = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
                reply = await echo_once(comm, m.PutData(data={"k": dumps(payload)}))
                assert isinstance(reply, m.PutData) and loads(reply.data["k"]) == payload
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
                with trio.fail_after(2):
                    assert await echo_once(comm, m.KeyInMemory(key="k")) == m.KeyInMemory(key="k")
            await comm.aclose()
            nursery.cancel_scope.cancel()


async def test_peer_hanging_up_inside_a_large_frame_is_noticed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The low-water mark never keeps a reader waiting for bytes that will
    not come: an end of stream in the middle of a large frame is reported."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp())
            stream = await raw_connect(listener.port)
            await client_handshake(StreamComm(stream, peer_address="x"), role="client", name="c")
            header = msgpack.packb({"op": "key-in-memory", "key": "k", "type_name": ""})
            await stream.send_all(prefix(len(header), 8 * 1024 * 1024) + header + b"\0" * (2 * 1024 * 1024 + 3))
            await stream.send_eof()
            await wait_closed_by_peer(stream)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    [record] = warnings_from(caplog)
    assert "closed by peer in the middle of a message" in record.getMessage()


async def test_multidimensional_buffers_are_sent_as_bytes() -> None:
    # A Serialized whose buffers are typed, 2-d views (not the flat byte views
    # dumps() makes).  send_all slices by len(), so these must go out cast to
    # bytes or the stream is corrupted / the send never finishes.
    arr = np.arange(1_000_000, dtype="f8").reshape(1000, 1000)  # 8 MB > socket buffers
    buffers: list[memoryview] = []
    data = pickle.dumps(
        arr, protocol=5, buffer_callback=lambda b: buffers.append(memoryview(b)) or False
    )
    assert buffers[0].ndim == 2 and buffers[0].format == "d"
    ser = Serialized(kind=0, data=data, buffers=tuple(buffers))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp())
            comm = await connect(listener.address)
            reply = await echo_once(comm, m.RunFunction(function=b"f", args=ser))
            await comm.aclose()
            nursery.cancel_scope.cancel()
    assert isinstance(reply, m.RunFunction)
    np.testing.assert_array_equal(loads(reply.args), arr)


async def test_many_messages_in_flight_both_ways(address: str) -> None:
    msgs = [m.KeyInMemory(key=f"k{i}", type_name="x" * (i % 50)) for i in range(1000)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address)
            comm = await connect(listener.address)
            got: list[m.Message] = []

            async def receive() -> None:
                for _ in msgs:
                    got.append(await comm.recv())

            async with trio.open_nursery() as inner:
                inner.start_soon(receive)
                for i in range(0, len(msgs), 100):
                    await comm.send_many(msgs[i : i + 100])
            assert got == msgs
            await comm.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- handshake


async def test_handshake_roles_and_names_visible_on_both_sides(address: str) -> None:
    seen: list[m.Hello | None] = []

    async def handler(comm: Comm) -> None:
        seen.append(comm.peer)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(
                nursery, address, handler, role="scheduler", name="the-scheduler"
            )
            comm = await connect(
                listener.address,
                role="worker",
                name="worker-7",
                local_address="tcp://10.1.2.3:4567",
            )
            assert comm.peer == m.Hello(
                role="scheduler",
                name="the-scheduler",
                version=PROTOCOL_VERSION,
                address=listener.address,
            )
            assert "scheduler 'the-scheduler'" in repr(comm)
            with pytest.raises(CommClosedError):
                await comm.recv()  # the handler returned, so the server hung up
            await comm.aclose()
            nursery.cancel_scope.cancel()
    assert seen == [
        m.Hello(
            role="worker", name="worker-7", version=PROTOCOL_VERSION, address="tcp://10.1.2.3:4567"
        )
    ]


async def _fake_server(
    answer: m.Message, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A TCP server that answers any hello with ``answer``."""

    async def serve(stream: trio.SocketStream) -> None:
        comm = StreamComm(stream, peer_address="tcp://client")
        try:
            await comm.recv()
            await comm.send(answer)
            await comm.recv()  # until the client goes
        except CommClosedError:
            pass
        finally:
            await comm.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(serve, listeners, handler_nursery=nursery)
    finally:
        for ln in listeners:
            await trio.aclose_forcefully(ln)


async def test_server_with_other_protocol_version_is_a_clear_client_error() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                _fake_server, m.Hello(role="scheduler", name="s", version=99)
            )
            with pytest.raises(HandshakeError) as info:
                await connect(f"tcp://127.0.0.1:{port}")
            nursery.cancel_scope.cancel()
    assert f"speaks protocol version 99, we speak {PROTOCOL_VERSION}" in str(info.value)
    assert f"tcp://127.0.0.1:{port}" in str(info.value)


async def test_refused_handshake_is_a_handshake_error() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_fake_server, m.HandshakeRejected(reason="go away"))
            with pytest.raises(HandshakeError, match="refused the handshake: go away"):
                await connect(f"tcp://127.0.0.1:{port}")
            port2 = await nursery.start(_fake_server, m.Ok())
            with pytest.raises(HandshakeError, match="answered the handshake with 'ok'"):
                await connect(f"tcp://127.0.0.1:{port2}")
            nursery.cancel_scope.cancel()


async def _raw_comm(listener: Listener) -> Comm:
    """A comm to ``listener`` that has not said hello."""
    addr = parse_address(listener.address)
    if addr.scheme == "inproc":
        return await connect_inproc(addr)
    stream = await raw_connect(addr.port)
    return StreamComm(stream, peer_address=listener.address)


async def test_client_with_other_protocol_version_is_refused_and_server_keeps_serving(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address)
            good = await connect(listener.address)
            old = await _raw_comm(listener)
            await old.send(m.Hello(role="worker", name="old", version=PROTOCOL_VERSION + 41))
            reply = await old.recv()
            assert isinstance(reply, m.HandshakeRejected)
            assert f"protocol version {PROTOCOL_VERSION + 41} is not supported" in reply.reason
            assert f"speaks version {PROTOCOL_VERSION}" in reply.reason
            with pytest.raises(CommClosedError):
                await old.recv()
            await old.aclose()
            assert await echo_once(good, m.Ok()) == m.Ok()
            await good.aclose()
            nursery.cancel_scope.cancel()
    [record] = warnings_from(caplog)
    assert f"protocol version {PROTOCOL_VERSION + 41} is not supported" in record.getMessage()


async def test_first_message_must_be_hello(address: str, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address)
            rude = await _raw_comm(listener)
            await rude.send(m.WhoHas())
            reply = await rude.recv()
            assert reply == m.HandshakeRejected(
                reason="expected 'hello' as the first message, got 'who-has'"
            )
            await rude.aclose()
            nursery.cancel_scope.cancel()
    [record] = warnings_from(caplog)
    assert "expected 'hello'" in record.getMessage()


async def test_silent_peer_is_dropped_after_handshake_timeout_inproc(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, inproc(), handshake_timeout=5)
        silent = await _raw_comm(listener)
        start_time = trio.current_time()
        good = await connect(listener.address)
        with pytest.raises(CommClosedError):
            await silent.recv()
        assert trio.current_time() - start_time == pytest.approx(5)
        assert await echo_once(good, m.Ok()) == m.Ok()
        await good.aclose()
        await silent.aclose()
        nursery.cancel_scope.cancel()
    [record] = warnings_from(caplog)
    assert "no hello within 5s" in record.getMessage()


async def test_silent_peer_is_dropped_after_handshake_timeout_tcp(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), handshake_timeout=0.1)
            silent = await raw_connect(listener.port)
            good = await connect(listener.address)
            await wait_closed_by_peer(silent)
            assert await echo_once(good, m.Ok()) == m.Ok()
            await good.aclose()
            await silent.aclose()
            nursery.cancel_scope.cancel()
    [record] = warnings_from(caplog)
    assert "no hello within 0.1s" in record.getMessage()


async def test_connect_closes_its_comm_when_the_handshake_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A server that accepts but never answers: the handshake times out, and
    # the server-side comm sees the client hang up.
    name = new_inproc_name("mute")
    closed = trio.Event()

    async def never_answer(comm: Comm) -> None:
        pass

    from trioflow.comm import inproc as inproc_module

    send, receive = trio.open_memory_channel[Any](10)
    inproc_module._listeners[inproc_module._key(name)] = send
    try:
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                theirs = await receive.receive()
                with pytest.raises(CommClosedError):
                    while True:
                        await theirs.recv()
                closed.set()

            nursery.start_soon(accept)
            with pytest.raises(CommError, match="did not answer the handshake within 3s"):
                await connect(f"inproc://{name}", timeout=3)
            await closed.wait()
    finally:
        inproc_module._listeners.pop(inproc_module._key(name), None)


# ---------------------------------------------------------------- bad input

SMALL = Limits(max_header=1024, max_message=64 * 1024, max_frames=8)
FOUR_GIB = 4 * 1024**3

BAD_INPUT = {
    "garbage-header": (prefix(6) + b"\xc1\xc1\xc1\xc1\xc1\xc1", "undecodable message header"),
    "http-request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "frames exceeds the limit of"),
    "no-frames": (prefix(n=0), "frame group with no frames"),
    "header-over-cap": (prefix(2048), "message header of 2048 bytes exceeds the limit of"),
    "total-over-cap": (prefix(10, 100_000), "message of 100010 bytes exceeds the limit of"),
    "frames-over-cap": (prefix(*[1] * 9), "frame group of 9 frames exceeds the limit of"),
    "4-GiB-frame": (prefix(10, FOUR_GIB), f"message of {FOUR_GIB + 10} bytes exceeds the limit of"),
    "truncated": (prefix(100) + b"\x81" * 10, "closed by peer in the middle of a message"),
    "truncated-prefix": (
        struct.pack("<I", 3) + b"\0" * 5,
        "closed by peer in the middle of a message",
    ),
    "unknown-op": (
        (lambda h: prefix(len(h)) + h)(msgpack.packb({"op": "launch-missiles"})),
        "unknown op 'launch-missiles'",
    ),
    "wrong-field-type": (
        (lambda h: prefix(len(h)) + h)(msgpack.packb({"op": "who-has", "keys": 3})),
        "invalid 'who-has' message",
    ),
}


@pytest.mark.parametrize("when", ["after-hello", "instead-of-hello"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_drops_that_connection_only(
    case: str, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    payload, why = BAD_INPUT[case]
    if when == "instead-of-hello":
        # before the handshake a stranger gets the small handshake limits
        why = why.replace("limit of 1024", f"limit of {HANDSHAKE_LIMITS.max_header}")
        if case == "total-over-cap":
            why = "message of 100010 bytes exceeds the limit of 65536"
        if case == "http-request":
            # a stranger's first bytes are recognised and named
            why = "an HTTP client answered, not a trioflow peer"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), limits=SMALL)
            good = await connect(listener.address)  # connected at the same time
            bad_stream = await raw_connect(listener.port)
            if when == "after-hello":
                await client_handshake(
                    StreamComm(bad_stream, peer_address="x"), role="client", name="bad"
                )
            await bad_stream.send_all(payload)
            if case.startswith("truncated"):
                await bad_stream.send_eof()
            await wait_closed_by_peer(bad_stream)
            await bad_stream.aclose()
            assert await echo_once(good, m.KeyInMemory(key="still-served")) == m.KeyInMemory(
                key="still-served"
            )
            await good.aclose()
            nursery.cancel_scope.cancel()
    [record] = warnings_from(caplog)
    assert why in record.getMessage()
    assert "dropped tcp://127.0.0.1:" in record.getMessage()


async def test_claimed_size_is_refused_before_anything_is_allocated() -> None:
    """A stranger claiming a huge frame (within the configured limits even)
    costs nothing: the handshake limits refuse it from the prefix alone; a
    cluster member is held to ``Limits`` the same way."""
    limits = Limits(max_message=2 * 1024**3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), limits=limits)
            tracemalloc.start()
            try:
                base, _ = tracemalloc.get_traced_memory()
                # a stranger, within the cluster limits
                s = await raw_connect(listener.port)
                await s.send_all(prefix(10, 1024**3) + b"x" * 100)
                await wait_closed_by_peer(s)
                await s.aclose()
                # a cluster member, over them
                s = await raw_connect(listener.port)
                await client_handshake(StreamComm(s, peer_address="x"), role="client", name="c")
                await s.send_all(prefix(10, FOUR_GIB) + b"x" * 100)
                await wait_closed_by_peer(s)
                await s.aclose()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
    assert peak - base < 8 * 1024**2


async def test_handshake_limits_never_loosen_configured_ones() -> None:
    tiny = Limits(max_header=100, max_message=200, max_frames=2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), limits=tiny)
            comm = await connect(listener.address)
            assert await echo_once(comm, m.Ok()) == m.Ok()
            await comm.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- closes are not warnings


async def test_peer_hanging_up_is_not_a_warning(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioflow.comm")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, role="worker")

            async def recv_forever(comm: Comm) -> None:
                while True:
                    await comm.recv()  # CommClosedError escapes to listen

            listener2 = await start(
                nursery,
                address.replace("test-", "other-") if "inproc" in address else tcp(),
                recv_forever,
            )
            for lst in (listener, listener2):
                comm = await connect(lst.address)
                assert await echo_once(comm, m.Ok()) == m.Ok() if lst is listener else True
                await comm.aclose()
            # and one that connects and hangs up without a word
            silent = await _raw_comm(listener)
            await silent.aclose()
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.2):
                while sum("disconnected" in r.getMessage() for r in caplog.records) < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert warnings_from(caplog) == []
    assert sum("disconnected" in r.getMessage() for r in caplog.records) >= 2


async def test_clean_close_and_truncation_are_told_apart() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), lambda comm: trio.sleep_forever())
            for payload, clean in ((b"", True), (prefix(50) + b"abc", False)):
                s = await raw_connect(listener.port)
                comm = StreamComm(s, peer_address="x")
                await client_handshake(comm, role="client", name="c")
                server_side = await _accepting_pair(s, payload)
                with pytest.raises(CommClosedError) as info:
                    await server_side.recv()
                assert info.value.clean is clean
                assert info.value.partial is not clean
                await server_side.aclose()
                await comm.aclose()
            nursery.cancel_scope.cancel()


async def _accepting_pair(_: Any, payload: bytes) -> StreamComm:
    """A StreamComm reading ``payload`` and then an end of stream."""
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(payload)
    await a.aclose()
    return StreamComm(b, peer_address="memory")


# ---------------------------------------------------------------- connect errors


async def test_nothing_listening_names_the_address() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with trio.fail_after(10):
        with pytest.raises(CommError) as info:
            await connect(f"tcp://127.0.0.1:{port}")
    assert str(info.value) == f"could not connect to tcp://127.0.0.1:{port}: Connection refused"
    with pytest.raises(
        CommError, match="could not connect to inproc://nobody-here: nothing listens there"
    ):
        await connect("inproc://nobody-here")


async def test_connect_timeout_names_the_timeout() -> None:
    # A socket that listens but never accepts: the kernel completes the TCP
    # handshake, nobody ever answers ours.
    s = trio.socket.socket()
    try:
        await s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with trio.fail_after(10):
            with pytest.raises(CommError) as info:
                await connect(f"tcp://127.0.0.1:{port}", timeout=0.1)
    finally:
        s.close()
    assert str(info.value) == f"timed out after 0.1s connecting to tcp://127.0.0.1:{port}"


async def test_bad_addresses_fail_before_any_io() -> None:
    from trioflow.comm import AddressError

    with pytest.raises(AddressError, match="no port"):
        await connect("tcp://127.0.0.1")
    with pytest.raises(AddressError, match="unknown scheme 'udp'"):
        await connect("udp://127.0.0.1:1")
    with pytest.raises(AddressError, match="port 99999 out of range"):
        await listen("tcp://127.0.0.1:99999", echo, role="scheduler")


# ---------------------------------------------------------------- listen


async def test_listen_closes_its_socket_and_connections_when_cancelled() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as scope:
                scope_box: list[trio.CancelScope] = []

                async def run_listener(task_status: trio.TaskStatus[Listener]) -> None:
                    with trio.CancelScope() as cs:
                        scope_box.append(cs)
                        await listen(tcp(), echo, role="scheduler", task_status=task_status)

                listener = await outer.start(run_listener)
                comm = await connect(listener.address)
                assert await echo_once(comm, m.Ok()) == m.Ok()
                scope_box[0].cancel()
                with pytest.raises(CommClosedError):
                    await comm.recv()
                await comm.aclose()
            assert not scope.cancelled_caught
    with pytest.raises(CommError, match="Connection refused"):
        await connect(listener.address)


async def test_port_in_use_names_the_address() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp())
            with pytest.raises(OSError, match=f"cannot listen on tcp://127.0.0.1:{listener.port}"):
                await listen(f"tcp://127.0.0.1:{listener.port}", echo, role="scheduler")
            name = new_inproc_name("dup")
            await start(nursery, f"inproc://{name}")
            with pytest.raises(OSError, match="already in use"):
                await listen(f"inproc://{name}", echo, role="scheduler")
            nursery.cancel_scope.cancel()


async def test_handler_exception_is_logged_and_listener_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def buggy(comm: Comm) -> None:
        msg = await comm.recv()
        if isinstance(msg, m.Shutdown):
            raise ZeroDivisionError("bug in handler")
        await comm.send(msg)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, tcp(), buggy)
            c1 = await connect(listener.address)
            await c1.send(m.Shutdown())
            with pytest.raises(CommClosedError):
                await c1.recv()
            c2 = await connect(listener.address)
            assert await echo_once(c2, m.Ok()) == m.Ok()
            for c in (c1, c2):
                await c.aclose()
            nursery.cancel_scope.cancel()
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "error serving" in record.getMessage() and record.exc_info is not None


# ---------------------------------------------------------------- BatchedSend


async def _collector(received: list[m.Message], done: trio.Event) -> Handler:
    async def handler(comm: Comm) -> None:
        try:
            while True:
                received.append(await comm.recv())
        except CommClosedError:
            done.set()

    return handler


async def test_batched_send_many_small_messages_arrive_in_order_in_few_batches(
    address: str,
) -> None:
    received: list[m.Message] = []
    done = trio.Event()
    n = 5000
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, await _collector(received, done))
            comm = await connect(listener.address)
            b = BatchedSend(comm)
            async with trio.open_nursery() as inner:
                await inner.start(b.run)
                for burst in range(10):
                    for i in range(n // 10):
                        b.send(m.KeyInMemory(key=f"{burst}-{i}"))
                    await trio.sleep(0)
                b.close()
            await comm.aclose()
            await done.wait()
            nursery.cancel_scope.cancel()
    assert [r.key for r in received] == [
        f"{burst}-{i}" for burst in range(10) for i in range(n // 10)
    ]  # type: ignore[attr-defined]
    assert b.messages == n
    assert b.batches <= 20, b.batches


async def test_batched_send_lone_message_goes_out_without_a_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[m.Message] = []
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, inproc(), await _collector(received, done))
        comm = await connect(listener.address)
        b = BatchedSend(comm)
        nursery.start_soon(b.run)
        t0 = trio.current_time()
        b.send(m.Ok())
        while not received:
            await trio.sleep(0)
        assert trio.current_time() == t0
        await b.aclose()
        await comm.aclose()
        nursery.cancel_scope.cancel()


async def test_batched_close_flushes_and_later_sends_raise(address: str) -> None:
    received: list[m.Message] = []
    done = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, await _collector(received, done))
            comm = await connect(listener.address)
            b = BatchedSend(comm, max_batch=7)
            for i in range(100):  # queued before the sender even runs
                b.send(m.KeyInMemory(key=str(i)))
            b.send_nowait_many([m.KeyInMemory(key="last")])
            nursery.start_soon(b.run)
            await b.aclose()
            assert b.pending == 0
            with pytest.raises(CommClosedError, match="is closed"):
                b.send(m.Ok())
            with pytest.raises(CommClosedError, match="is closed"):
                b.send_nowait_many([m.Ok()])
            await comm.aclose()
            await done.wait()
            nursery.cancel_scope.cancel()
    assert [r.key for r in received] == [*map(str, range(100)), "last"]  # type: ignore[attr-defined]
    assert b.batches == 15  # 101 messages, 7 at a time


async def test_batched_broken_comm_makes_run_and_send_raise() -> None:
    server_side: list[Comm] = []
    got_one = trio.Event()

    async def handler(comm: Comm) -> None:
        server_side.append(comm)
        await comm.recv()
        got_one.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, inproc(), handler)
            comm = await connect(listener.address)
            b = BatchedSend(comm)
            error: list[BaseException] = []

            async def run() -> None:
                try:
                    await b.run()
                except CommClosedError as exc:
                    error.append(exc)

            nursery.start_soon(run)
            b.send(m.Ok())
            await got_one.wait()
            await server_side[0].aclose()  # the peer goes away
            b.send(m.Ok())
            while not error:
                await trio.sleep(0)
            assert "closed by peer" in str(error[0])
            with pytest.raises(CommClosedError, match="broke"):
                b.send(m.Ok())
            await comm.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- ConnectionPool


@attrs.define
class RequestServer:
    """Answers WhoHas with WhoHasReply, Shutdown with an ErrorReply, GetData
    when ``gate`` is set, and counts everything."""

    connections: int = 0
    requests: int = 0
    active: int = 0
    max_active: int = 0
    closed: int = 0
    gate: trio.Event = attrs.Factory(trio.Event)

    async def __call__(self, comm: Comm) -> None:
        self.connections += 1
        try:
            while True:
                msg = await comm.recv()
                self.requests += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    if isinstance(msg, m.Shutdown):
                        await comm.send(m.ErrorReply(message="no shutting down here"))
                    elif isinstance(msg, m.GetData):
                        await self.gate.wait()
                        await comm.send(m.DataReply(data={}))
                    elif isinstance(msg, m.IdentityRequest):
                        await comm.send(m.Ok())
                    else:
                        await comm.send(m.WhoHasReply(who_has={}))
                finally:
                    self.active -= 1
        except CommClosedError:
            self.closed += 1


async def test_pool_reuses_a_connection_for_sequential_rpcs(address: str) -> None:
    server = RequestServer()
    pool = ConnectionPool()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, server)
            for _ in range(5):
                assert await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply) == m.WhoHasReply(
                    who_has={}
                )
            assert server.connections == 1 and pool.connects == 1
            assert pool.open_connections == 1
            await pool.aclose()
            with pytest.raises(RuntimeError, match="pool is closed"):
                await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            nursery.cancel_scope.cancel()


async def test_pool_cancelled_rpc_closes_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = RequestServer()
    pool = ConnectionPool()
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, inproc(), server)
        with trio.move_on_after(5) as cs:
            await pool.rpc(listener.address, m.GetData(keys=["x"]), m.DataReply)
        assert cs.cancelled_caught
        assert pool.open_connections == 0
        server.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert server.closed == 1  # its late reply found the connection gone
        assert await pool.rpc(listener.address, m.GetData(keys=["x"]), m.DataReply) == m.DataReply(
            data={}
        )
        assert pool.connects == 2
        with pytest.raises(trio.TooSlowError):
            server.gate = trio.Event()
            await pool.rpc(listener.address, m.GetData(keys=["x"]), m.DataReply, timeout=3)
        assert pool.open_connections == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_pool_error_reply_becomes_remote_error(address: str) -> None:
    server = RequestServer()
    pool = ConnectionPool()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, server)
            with pytest.raises(RemoteError, match="^no shutting down here$"):
                await pool.rpc(listener.address, m.Shutdown(), m.Ok)
            with pytest.raises(RemoteError, match="answered 'identity' with 'ok'"):
                await pool.rpc(listener.address, m.IdentityRequest(), m.IdentityReply)
            # a whole reply was read each time: the connection stays usable
            assert pool.connects == 1 and pool.open_connections == 1
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_pool_limit_caps_concurrent_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = RequestServer()
    pool = ConnectionPool(limit=2)
    results: list[m.Message] = []
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, inproc(), server)

        async def call() -> None:
            results.append(await pool.rpc(listener.address, m.GetData(keys=[]), m.DataReply))

        async with trio.open_nursery() as calls:
            for _ in range(6):
                calls.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert server.active == 2 and server.connections == 2
            assert pool.open_connections == 2
            server.gate.set()
        assert len(results) == 6
        assert server.max_active == 2 and server.connections == 2
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_pool_limit_counts_idle_connections_to_other_addresses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    servers = [RequestServer() for _ in range(3)]
    pool = ConnectionPool(limit=2)
    async with trio.open_nursery() as nursery:
        listeners = [await start(nursery, inproc(), s) for s in servers]
        for listener in listeners:
            await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            assert pool.open_connections <= 2
        await trio.testing.wait_all_tasks_blocked()
        assert [s.closed for s in servers] == [1, 0, 0]  # the oldest idle one went
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_pool_one_task_may_hold_several_connections(address: str) -> None:
    server = RequestServer()
    pool = ConnectionPool(limit=3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, server)
            async with (
                pool.connection(listener.address) as c1,
                pool.connection(listener.address) as c2,
            ):
                assert c1 is not c2
                assert await echo_once(c1, m.WhoHas()) == await echo_once(c2, m.WhoHas())
            assert pool.open_connections == 2
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_pool_discards_idle_connections_the_server_closed(address: str) -> None:
    """A server that hangs up on idle clients: the pool notices before
    sending anything on the dead connection."""
    requests_per_conn: list[int] = []

    async def closes_when_idle(comm: Comm) -> None:
        n = 0
        while True:
            with trio.move_on_after(0.05):
                await comm.recv()
                n += 1
                await comm.send(m.WhoHasReply(who_has={}))
                continue
            requests_per_conn.append(n)
            return  # idle too long: hang up

    pool = ConnectionPool()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, closes_when_idle)
            await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            async with pool.connection(listener.address) as comm:
                idle = comm
            while idle.is_reusable():
                await trio.sleep(0.01)
            await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            assert pool.connects == 2
            await pool.aclose()
            nursery.cancel_scope.cancel()
    assert requests_per_conn[0] == 1  # nothing was sent on the dead connection


async def test_pool_retries_once_when_a_reused_connection_was_closed(address: str) -> None:
    """The peer closes a reused connection as the request arrives (the race
    the idle check cannot see): retried once on a fresh connection."""
    seen: list[int] = []

    async def hang_up_on_second_request(comm: Comm) -> None:
        await comm.recv()
        seen.append(1)
        await comm.send(m.WhoHasReply(who_has={}))
        await comm.recv()
        seen.append(2)  # ... and hang up without answering

    pool = ConnectionPool()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, hang_up_on_second_request)
            await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            assert await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply) == m.WhoHasReply(
                who_has={}
            )
            assert seen == [1, 2, 1]
            assert pool.connects == 2
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_pool_does_not_retry_on_a_fresh_connection(address: str) -> None:
    seen: list[int] = []

    async def hang_up(comm: Comm) -> None:
        await comm.recv()
        seen.append(1)

    pool = ConnectionPool()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, address, hang_up)
            with pytest.raises(CommClosedError):
                await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            assert seen == [1] and pool.connects == 1
            assert pool.open_connections == 0
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_pool_does_not_retry_after_part_of_a_reply() -> None:
    """A reply cut short means the request was handled: never resent."""
    seen: list[int] = []

    async def serve(stream: trio.SocketStream) -> None:
        comm = StreamComm(stream, peer_address="client")
        await comm.recv()  # hello
        await comm.send(m.Hello(role="scheduler", name="s", version=PROTOCOL_VERSION))
        await comm.recv()
        seen.append(1)
        await comm.send(m.WhoHasReply(who_has={}))
        await comm.recv()
        seen.append(2)
        await stream.send_all(prefix(100) + b"\x81")  # half a reply
        await stream.aclose()

    pool = ConnectionPool()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(trio.serve_listeners, serve, listeners))
                await pool.rpc(f"tcp://127.0.0.1:{port}", m.WhoHas(), m.WhoHasReply)
                with pytest.raises(CommClosedError, match="in the middle of a message") as info:
                    await pool.rpc(f"tcp://127.0.0.1:{port}", m.WhoHas(), m.WhoHasReply)
                assert info.value.partial
                assert seen == [1, 2]
                await pool.aclose()
                nursery.cancel_scope.cancel()
    finally:
        for ln in listeners:
            await trio.aclose_forcefully(ln)


async def test_pool_drop_closes_idle_connections(autojump_clock: trio.testing.MockClock) -> None:
    server = RequestServer()
    pool = ConnectionPool()
    async with trio.open_nursery() as nursery:
        listener = await start(nursery, inproc(), server)
        await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
        pool.drop(listener.address)
        assert pool.open_connections == 0
        await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == 2 and server.closed == 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- cancelling a receive


def _memory_comms() -> tuple[StreamComm, StreamComm]:
    a, b = trio.testing.memory_stream_pair()
    return StreamComm(a, peer_address="memory-b"), StreamComm(b, peer_address="memory-a")


async def test_recv_cancelled_while_waiting_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = _memory_comms()
    await a.send(m.KeyInMemory(key="first"))
    assert await b.recv() == m.KeyInMemory(key="first")
    for _ in range(3):
        with trio.move_on_after(1):  # an idle wait with a timeout
            await b.recv()
    await a.send(m.KeyInMemory(key="second"))
    assert await b.recv() == m.KeyInMemory(key="second")
    assert b.is_reusable()
    await a.aclose()
    await b.aclose()


async def test_recv_cancelled_mid_message_makes_the_comm_unusable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = _memory_comms()
    frames = msgpack.packb({"op": "key-in-memory", "key": "k", "type_name": ""})
    await a._stream.send_all(prefix(len(frames)) + frames[:3])  # half a message
    with trio.move_on_after(1):
        await b.recv()
    await a._stream.send_all(frames[3:])
    assert not b.is_reusable()
    with pytest.raises(CommClosedError, match="interrupted in the middle of a message"):
        await b.recv()
    await a.aclose()
    await b.aclose()
