"""TLS comms: tls:// connect/listen with temporary and file-based
certificates, and every way it can be misconfigured or misused failing with a
message that says what happened, while the server keeps serving.

Real handshakes over 127.0.0.1 are marked slow; configuration refusals that
happen before any IO are not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
import trustme
from support import echo, echo_once, start, warnings_from  # noqa: E402

from trioflow.comm import (
    Comm,
    CommError,
    ConnectionPool,
    HandshakeError,
    connect,
    listen,
)
from trioflow.comm.inproc import new_inproc_name
from trioflow.protocol import messages as m
from trioflow.protocol.messages import PROTOCOL_VERSION
from trioflow.protocol.serialize import dumps, loads
from trioflow.security import Security, SecurityError


def trustme_security(ca: trustme.CA, leaf: trustme.LeafCert | None = None) -> Security:
    """Inline-PEM Security trusting ``ca`` and presenting ``leaf`` in every role."""
    leaf = leaf if leaf is not None else ca.issue_cert("localhost", "127.0.0.1")
    cert = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes().decode()
    return Security(
        tls_ca_file=ca.cert_pem.bytes().decode(),
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
    )


@pytest.fixture(scope="module")
def security() -> Security:
    return Security.temporary()


# ---------------------------------------------------------------- working TLS


@pytest.mark.slow
async def test_tls_round_trip_with_temporary_certificates(security: Security) -> None:
    seen: list[m.Hello | None] = []

    async def handler(comm: Comm) -> None:
        seen.append(comm.peer)
        await echo(comm)

    arr = np.arange(2_000_000, dtype="f8")  # 16 MB: many TLS records, large-frame path
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, "tls://127.0.0.1:0", handler, security=security)
            assert listener.address == f"tls://127.0.0.1:{listener.port}"
            comm = await connect(listener.address, security=security, role="worker", name="w")
            assert comm.peer == m.Hello(
                role="scheduler", name="sched", version=PROTOCOL_VERSION, address=listener.address
            )
            reply = await echo_once(comm, m.PutData(data={"x": dumps(arr), "y": dumps(b"small")}))
            assert isinstance(reply, m.PutData)
            np.testing.assert_array_equal(loads(reply.data["x"]), arr)
            assert loads(reply.data["y"]) == b"small"
            for i in range(50):
                assert await echo_once(comm, m.KeyInMemory(key=str(i))) == m.KeyInMemory(key=str(i))
            await comm.aclose()
            nursery.cancel_scope.cancel()
    assert seen[0] is not None and (seen[0].role, seen[0].name) == ("worker", "w")


@pytest.mark.slow
async def test_tls_with_certificate_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    for role in ("scheduler", "client"):
        leaf = ca.issue_cert(f"{role}.cluster")
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"{role}.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / f"{role}-key.pem"))
    server_security = Security(
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_scheduler_cert=str(tmp_path / "scheduler.pem"),
        tls_scheduler_key=str(tmp_path / "scheduler-key.pem"),
        require_encryption=True,
    )
    client_security = Security(
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_client_cert=str(tmp_path / "client.pem"),
        tls_client_key=str(tmp_path / "client-key.pem"),
        require_encryption=True,
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, "tls://127.0.0.1:0", security=server_security)
            comm = await connect(listener.address, security=client_security, role="client")
            assert await echo_once(comm, m.Ok()) == m.Ok()
            await comm.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_tls_pool_reuses_and_discards_connections_the_server_closed(
    security: Security,
) -> None:
    connections = 0

    async def one_request_then_idle_close(comm: Comm) -> None:
        nonlocal connections
        connections += 1
        await comm.recv()
        await comm.send(m.WhoHasReply(who_has={}))
        with trio.move_on_after(0.1):
            while True:
                await comm.recv()

    pool = ConnectionPool(security=security, role="client")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(
                nursery, "tls://127.0.0.1:0", one_request_then_idle_close, security=security
            )
            await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            async with pool.connection(listener.address) as idle:
                pass
            while idle.is_reusable():  # the TLS close_notify / FIN arrives
                await trio.sleep(0.01)
            await pool.rpc(listener.address, m.WhoHas(), m.WhoHasReply)
            assert connections == 2 and pool.connects == 2
            await pool.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- refusals before any IO


async def test_require_encryption_refuses_tcp_on_listen_and_connect(security: Security) -> None:
    assert security.require_encryption
    with pytest.raises(
        SecurityError,
        match=r"require_encryption is set: refusing to listen on tcp:// \(use tls://\)",
    ):
        await listen("tcp://127.0.0.1:0", echo, role="scheduler", security=security)
    with pytest.raises(
        SecurityError,
        match=r"require_encryption is set: refusing to connect to tcp:// \(use tls://\)",
    ):
        await connect("tcp://127.0.0.1:8786", security=security)
    with pytest.raises(SecurityError, match="refusing to connect to tcp://"):
        await ConnectionPool(security=security).rpc("127.0.0.1:8786", m.WhoHas(), m.WhoHasReply)


async def test_require_encryption_allows_inproc(security: Security) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, f"inproc://{new_inproc_name('enc')}", security=security)
            comm = await connect(listener.address, security=security)
            assert await echo_once(comm, m.Ok()) == m.Ok()
            await comm.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("sec", [None, Security()], ids=["no-security", "empty-security"])
async def test_tls_address_without_certificates(sec: Security | None) -> None:
    with pytest.raises(
        SecurityError,
        match=r"cannot connect to tls://127.0.0.1:8786: tls:// needs TLS certificates",
    ):
        await connect("tls://127.0.0.1:8786", security=sec)
    with pytest.raises(
        SecurityError, match=r"cannot listen on tls://127.0.0.1:0: tls:// needs TLS certificates"
    ):
        await listen("tls://127.0.0.1:0", echo, role="scheduler", security=sec)


# ---------------------------------------------------------------- misuse over real sockets


@pytest.mark.slow
async def test_plaintext_client_to_tls_port(
    security: Security, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, "tls://127.0.0.1:0", security=security)
            good = await connect(listener.address, security=security)
            with pytest.raises((CommError, HandshakeError)) as info:
                await connect(f"tcp://127.0.0.1:{listener.port}", timeout=5)
            assert await echo_once(good, m.Ok()) == m.Ok()
            await good.aclose()
            nursery.cancel_scope.cancel()
    message = str(info.value)
    assert f"tcp://127.0.0.1:{listener.port}" in message
    assert "TLS" in message or "tls://" in message, message
    [record] = warnings_from(caplog)
    assert (
        "TLS handshake failed: peer did not speak TLS (plaintext to a TLS port?)"
        in record.getMessage()
    )


@pytest.mark.slow
async def test_tls_client_to_plaintext_port(
    security: Security, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, "tcp://127.0.0.1:0")
            good = await connect(listener.address)
            with pytest.raises(CommError) as info:
                await connect(f"tls://127.0.0.1:{listener.port}", security=security, timeout=5)
            assert await echo_once(good, m.Ok()) == m.Ok()
            await good.aclose()
            nursery.cancel_scope.cancel()
    assert f"TLS handshake with tls://127.0.0.1:{listener.port} failed" in str(info.value)
    assert "or is it a plaintext server (tcp://)?" in str(info.value)
    [record] = warnings_from(caplog)
    assert (
        "peer speaks TLS on a plaintext connection (a tls:// peer on a tcp:// address?)"
        in record.getMessage()
    )


@pytest.mark.slow
async def test_server_certificate_from_another_ca(caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = trustme.CA(), trustme.CA()
    server = trustme_security(theirs)
    client = trustme_security(ours)
    good = trustme_security(theirs)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, "tls://127.0.0.1:0", security=server)
            with pytest.raises(CommError) as info:
                await connect(listener.address, security=client, timeout=5)
            comm = await connect(listener.address, security=good)
            assert await echo_once(comm, m.Ok()) == m.Ok()
            await comm.aclose()
            nursery.cancel_scope.cancel()
    message = str(info.value)
    assert message.startswith(
        f"TLS handshake with {listener.address} failed: certificate verify failed: "
    )
    assert message.endswith(" (certificate from another CA?)")
    # The client's alert may or may not reach the server before the hang-up.
    [record] = warnings_from(caplog)
    assert any(
        why in record.getMessage()
        for why in ("peer rejected our certificate: unknown CA", "did it reject our certificate?")
    ), record.getMessage()


@pytest.mark.slow
async def test_client_certificate_from_another_ca(caplog: pytest.LogCaptureFixture) -> None:
    ca, other = trustme.CA(), trustme.CA()
    server = trustme_security(ca)
    # trusts the server's CA, but presents a certificate the server cannot verify
    client = trustme_security(ca, other.issue_cert("client"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = await start(nursery, "tls://127.0.0.1:0", security=server)
            with pytest.raises(CommError) as info:
                await connect(listener.address, security=client, timeout=5)
            comm = await connect(listener.address, security=server)
            assert await echo_once(comm, m.Ok()) == m.Ok()
            await comm.aclose()
            nursery.cancel_scope.cancel()
    # With TLS 1.3 the client finishes its side of the handshake before the
    # server has checked its certificate: it learns of the refusal when it
    # reads, as a broken connection with the reason or the likely cause.
    assert listener.address in str(info.value)
    assert "certificate" in str(info.value), str(info.value)
    [record] = warnings_from(caplog)
    assert record.getMessage().endswith(
        "TLS handshake failed: certificate verify failed: unable to get local issuer certificate"
        " (certificate from another CA?)"
    )
