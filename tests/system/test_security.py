"""Tests for trioflow.security: configuration, context building, handshake errors.

Real TLS handshakes over 127.0.0.1 are marked slow; everything else builds
contexts without touching the network.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pickle
import ssl
import stat
import tempfile
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trioflow.security import Security, SecurityError, describe_ssl_error

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _trustme_security(ca: trustme.CA, leaf: trustme.LeafCert | None = None) -> Security:
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


def _expired_material() -> tuple[str, str, str]:
    """(CA PEM, leaf cert PEM, leaf key PEM); the leaf expired yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test expiry CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=60))
        .not_valid_after(now + datetime.timedelta(days=60))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca_cert.public_bytes(pem).decode(),
        leaf_cert.public_bytes(pem).decode(),
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


@attrs.define
class Exchange:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    reply: bytes | bytearray | None = None
    server_saw_client_cert: bool = False


async def _exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext | None) -> Exchange:
    """One connection over 127.0.0.1: client sends b"ping", server echoes it upper-cased.

    ``client_ctx=None`` sends plaintext instead.  Errors on either side are
    recorded, never raised; every socket is closed before returning.
    """
    result = Exchange()
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listeners[0] as listener:

            async def serve() -> None:
                stream = trio.SSLStream(await listener.accept(), server_ctx, server_side=True)
                try:
                    await stream.do_handshake()
                    result.server_saw_client_cert = bool(stream.getpeercert())
                    data = await stream.receive_some()
                    await stream.send_all(data.upper())
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                    result.server_error = exc
                finally:
                    await trio.aclose_forcefully(stream)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                transport = await trio.testing.open_stream_to_socket_listener(listener)
                if client_ctx is None:
                    try:
                        await transport.send_all(b"ping, in plain text\r\n")
                        while await transport.receive_some():
                            pass
                    except (trio.BrokenResourceError, OSError):
                        pass
                    finally:
                        await trio.aclose_forcefully(transport)
                    return result
                client = trio.SSLStream(transport, client_ctx)
                try:
                    await client.do_handshake()
                    await client.send_all(b"ping")
                    result.reply = await client.receive_some()
                    if not result.reply:
                        raise trio.BrokenResourceError("server closed the connection")
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                    result.client_error = exc
                finally:
                    await trio.aclose_forcefully(client)
    return result


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def other_ca() -> trustme.CA:
    return trustme.CA()


# ---------------------------------------------------------------------------
# real handshakes
# ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_temporary_gives_working_mutual_tls() -> None:
    security = Security.temporary()
    result = await _exchange(
        security.get_server_context("scheduler"), security.get_client_context("worker")
    )
    assert result.server_error is None and result.client_error is None
    assert result.reply == b"PING"
    assert result.server_saw_client_cert


@pytest.mark.slow
async def test_file_based_config_works(ca: trustme.CA, tmp_path) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("scheduler")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    # Only one pair configured: every role falls back to it.
    security = Security(
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_scheduler_cert=str(tmp_path / "cert.pem"),
        tls_scheduler_key=str(tmp_path / "key.pem"),
    )
    result = await _exchange(
        security.get_server_context("scheduler"), security.get_client_context("client")
    )
    assert result.reply == b"PING"


@pytest.mark.slow
async def test_client_cert_from_another_ca_is_rejected(
    ca: trustme.CA, other_ca: trustme.CA
) -> None:
    server = _trustme_security(ca)
    # The client trusts the server's CA, but its own certificate is foreign.
    client = _trustme_security(ca, other_ca.issue_cert("client"))
    result = await _exchange(
        server.get_server_context("scheduler"), client.get_client_context("client")
    )
    assert result.reply is None
    assert result.server_error is not None and result.client_error is not None
    assert describe_ssl_error(result.server_error) == (
        "certificate verify failed: unable to get local issuer certificate"
        " (certificate from another CA?)"
    )
    # trio drops the fatal alert, so all the client learns is that the
    # server hung up mid-handshake; the description says so.
    assert "peer" in describe_ssl_error(result.client_error)


@pytest.mark.slow
async def test_server_cert_from_another_ca_is_rejected(
    ca: trustme.CA, other_ca: trustme.CA
) -> None:
    server = _trustme_security(other_ca)
    client = _trustme_security(ca)
    result = await _exchange(
        server.get_server_context("scheduler"), client.get_client_context("worker")
    )
    assert result.client_error is not None
    assert "(certificate from another CA?)" in describe_ssl_error(result.client_error)


@pytest.mark.slow
async def test_expired_server_cert() -> None:
    ca_pem, cert_pem, key_pem = _expired_material()
    server = Security(tls_ca_file=ca_pem, tls_scheduler_cert=cert_pem, tls_scheduler_key=key_pem)
    client_side = trustme.CA()
    client = _trustme_security(client_side)
    client.tls_ca_file = ca_pem  # trusts the expired cert's CA; no context built yet
    result = await _exchange(
        server.get_server_context("scheduler"), client.get_client_context("client")
    )
    assert result.client_error is not None
    assert "certificate has expired" in describe_ssl_error(result.client_error)


@pytest.mark.slow
async def test_expired_client_cert() -> None:
    ca_pem, cert_pem, key_pem = _expired_material()
    server = Security.temporary()
    # The client trusts the server's CA; the server accepts clients of the
    # expiry CA (no context has been built yet, so changing it is fine).
    client = Security(
        tls_ca_file=server.tls_ca_file, tls_client_cert=cert_pem, tls_client_key=key_pem
    )
    server.tls_ca_file = ca_pem
    result = await _exchange(
        server.get_server_context("scheduler"), client.get_client_context("client")
    )
    assert result.server_error is not None
    assert describe_ssl_error(result.server_error) == (
        "certificate verify failed: certificate has expired"
    )


@pytest.mark.slow
async def test_plaintext_client_to_tls_server() -> None:
    security = Security.temporary()
    result = await _exchange(security.get_server_context("scheduler"), None)
    assert result.server_error is not None
    assert describe_ssl_error(result.server_error) == (
        "peer did not speak TLS (plaintext to a TLS port?)"
    )


@pytest.mark.slow
async def test_client_without_certificate(ca: trustme.CA) -> None:
    server = _trustme_security(ca)
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    ca.configure_trust(bare)
    result = await _exchange(server.get_server_context("worker"), bare)
    assert result.server_error is not None
    assert describe_ssl_error(result.server_error) == "peer did not present a certificate"


# ---------------------------------------------------------------------------
# describe_ssl_error without a network
# ---------------------------------------------------------------------------


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    exc.verify_code = code
    exc.verify_message = message
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    return exc


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


def _wrapped(inner: BaseException) -> trio.BrokenResourceError:
    try:
        raise trio.BrokenResourceError from inner
    except trio.BrokenResourceError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            _verify_error(10, "certificate has expired"),
            "certificate verify failed: certificate has expired",
        ),
        (
            _verify_error(20, "unable to get local issuer certificate"),
            "certificate verify failed: unable to get local issuer certificate"
            " (certificate from another CA?)",
        ),
        (_ssl_error("WRONG_VERSION_NUMBER"), "peer did not speak TLS (plaintext to a TLS port?)"),
        (_ssl_error("HTTP_REQUEST"), "peer did not speak TLS (plaintext to a TLS port?)"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "peer did not present a certificate"),
        (
            _ssl_error("TLSV1_ALERT_UNKNOWN_CA"),
            "peer rejected our certificate: unknown CA (certificate from another CA?)",
        ),
        (_ssl_error("SOME_NEW_REASON"), "some new reason"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset by peer"),
        (trio.BrokenResourceError(), "BrokenResourceError"),
    ],
)
def test_describe_ssl_error(exc: BaseException, expected: str) -> None:
    assert describe_ssl_error(exc) == expected


def test_describe_ssl_error_looks_through_wrappers_and_groups() -> None:
    inner = _ssl_error("WRONG_VERSION_NUMBER")
    assert describe_ssl_error(_wrapped(inner)) == describe_ssl_error(inner)
    group = BaseExceptionGroup("many", [ValueError("x"), _wrapped(inner)])
    assert describe_ssl_error(group) == describe_ssl_error(inner)
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert "closed the connection" in describe_ssl_error(eof)


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


def test_temporary_material_is_inline_and_sane() -> None:
    security = Security.temporary()
    assert security.require_encryption and security.enabled
    for name, value in security.to_dict().items():
        if name.startswith("tls_") and name != "tls_min_version":
            assert isinstance(value, str) and value.startswith("-----BEGIN"), name
    assert security.tls_worker_cert is not None and security.tls_ca_file is not None
    cert = x509.load_pem_x509_certificate(security.tls_worker_cert.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=360) < lifetime <= datetime.timedelta(days=366)
    ca = x509.load_pem_x509_certificate(security.tls_ca_file.encode())
    assert cert.issuer == ca.subject
    assert security.tls_client_cert == security.tls_scheduler_cert == security.tls_worker_cert
    # two calls, two different CAs
    assert Security.temporary().tls_ca_file != security.tls_ca_file


def test_contexts_are_mutual_and_cached() -> None:
    security = Security.temporary()
    server = security.get_server_context("scheduler")
    client = security.get_client_context("client")
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and not client.check_hostname
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert security.get_server_context("scheduler") is server
    assert security.get_client_context("client") is client
    assert security.get_server_context("worker") is not server


def test_enabled_and_cert_for_fallback(ca: trustme.CA) -> None:
    assert not Security().enabled
    assert not Security(require_encryption=True).enabled
    assert Security().cert_for("worker") == (None, None)

    full = _trustme_security(ca)
    assert full.enabled
    only_scheduler = Security(
        tls_ca_file=full.tls_ca_file,
        tls_scheduler_cert=full.tls_scheduler_cert,
        tls_scheduler_key=full.tls_scheduler_key,
    )
    pair = (full.tls_scheduler_cert, full.tls_scheduler_key)
    for role in ("scheduler", "worker", "nanny", "client"):
        assert only_scheduler.cert_for(role) == pair

    distinct = Security(tls_worker_cert="w.pem", tls_client_cert="c.pem", tls_client_key="c.key")
    assert distinct.cert_for("nanny") == ("w.pem", None)
    assert distinct.cert_for("worker") == ("w.pem", None)
    assert distinct.cert_for("client") == ("c.pem", "c.key")
    assert distinct.cert_for("scheduler") == ("w.pem", None)
    with pytest.raises(ValueError, match="unknown role"):
        distinct.cert_for("janitor")


def test_combined_cert_and_key_file(ca: trustme.CA, tmp_path) -> None:
    leaf = ca.issue_cert("worker")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    security = Security(
        tls_ca_file=str(tmp_path / "ca.pem"), tls_worker_cert=str(tmp_path / "both.pem")
    )
    security.get_server_context("worker")
    security.get_client_context("nanny")


def test_missing_files_name_option_and_path(ca: trustme.CA, tmp_path) -> None:
    leaf = ca.issue_cert("x")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert, key, ca_file = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "ca.pem"))

    security = Security(tls_ca_file="/nope.pem", tls_client_cert=cert, tls_client_key=key)
    with pytest.raises(SecurityError, match=r"^tls_ca_file: no such file '/nope\.pem'$"):
        security.get_client_context("client")

    security = Security(tls_ca_file=ca_file, tls_client_cert="/no/cert.pem", tls_client_key=key)
    with pytest.raises(SecurityError, match=r"^tls_client_cert: no such file '/no/cert\.pem'$"):
        security.get_server_context("client")

    security = Security(tls_ca_file=ca_file, tls_worker_cert=cert, tls_worker_key="/no/key.pem")
    with pytest.raises(SecurityError, match=r"^tls_worker_key: no such file '/no/key\.pem'$"):
        security.get_server_context("nanny")

    # PEM text for the cert with a missing key file still names the key option
    security = Security(
        tls_ca_file=ca_file,
        tls_worker_cert=leaf.cert_chain_pems[0].bytes().decode(),
        tls_worker_key="/no/key.pem",
    )
    with pytest.raises(SecurityError, match=r"^tls_worker_key: no such file '/no/key\.pem'$"):
        security.get_server_context("worker")

    security = Security(tls_ca_file=str(tmp_path), tls_worker_cert=cert, tls_worker_key=key)
    with pytest.raises(SecurityError, match=r"^tls_ca_file: .* is a directory"):
        security.get_server_context("worker")


def test_missing_ca_or_cert() -> None:
    temporary = Security.temporary()
    with pytest.raises(SecurityError, match="^tls_ca_file: not set"):
        Security(tls_scheduler_cert=temporary.tls_scheduler_cert).get_server_context("scheduler")
    with pytest.raises(SecurityError, match="^tls_scheduler_cert: not set"):
        Security(tls_ca_file=temporary.tls_ca_file).get_server_context("scheduler")
    with pytest.raises(SecurityError, match="^tls_worker_cert: not set"):
        Security(tls_ca_file=temporary.tls_ca_file).get_client_context("nanny")
    with pytest.raises(SecurityError, match="^tls_client_key: set without tls_client_cert"):
        Security(tls_client_key=temporary.tls_client_key)


def _as_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("as_files", [False, True], ids=["pem", "files"])
def test_key_not_matching_cert(ca: trustme.CA, tmp_path, as_files: bool) -> None:
    cert = ca.issue_cert("a").cert_chain_pems[0].bytes().decode()
    key = ca.issue_cert("b").private_key_pem.bytes().decode()
    if as_files:
        cert, key = _as_file(tmp_path, "cert.pem", cert), _as_file(tmp_path, "key.pem", key)
    security = Security(
        tls_ca_file=ca.cert_pem.bytes().decode(), tls_scheduler_cert=cert, tls_scheduler_key=key
    )
    with pytest.raises(SecurityError) as info:
        security.get_server_context("scheduler")
    message = str(info.value)
    assert message.startswith(
        "tls_scheduler_cert/tls_scheduler_key: private key does not match the certificate ("
    )
    assert "key values mismatch" in message  # OpenSSL's reason is kept


@pytest.mark.parametrize("as_files", [False, True], ids=["pem", "files"])
def test_unreadable_pem(ca: trustme.CA, tmp_path, as_files: bool) -> None:
    leaf = ca.issue_cert("a")
    good_ca = ca.cert_pem.bytes().decode()
    good_cert = leaf.cert_chain_pems[0].bytes().decode()
    good_key = leaf.private_key_pem.bytes().decode()
    junk_cert = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    junk_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"

    def make(**kw: str) -> Security:
        if as_files:
            kw = {k: _as_file(tmp_path, k, v) for k, v in kw.items()}
        return Security(**kw)

    cases: list[tuple[Callable[[], Security], str]] = [
        (
            lambda: make(tls_ca_file=junk_cert, tls_client_cert=good_cert, tls_client_key=good_key),
            "tls_ca_file: cannot load CA certificates from ",
        ),
        (
            lambda: make(tls_ca_file=good_ca, tls_client_cert=junk_cert, tls_client_key=good_key),
            "tls_client_cert: no valid PEM certificate in ",
        ),
        (
            lambda: make(tls_ca_file=good_ca, tls_client_cert=good_cert, tls_client_key=junk_key),
            "tls_client_key: unreadable PEM private key in ",
        ),
        (
            lambda: make(tls_ca_file=good_ca, tls_client_cert=good_cert, tls_client_key=good_cert),
            "tls_client_key: no PEM private key in ",
        ),
        (
            lambda: make(tls_ca_file=good_ca, tls_client_cert=good_cert),
            "tls_client_cert: no private key in ",
        ),
    ]
    for build, prefix in cases:
        with pytest.raises(SecurityError) as info:
            build().get_client_context("client")
        assert str(info.value).startswith(prefix), str(info.value)
        assert "PRIVATE KEY" not in str(info.value) and "BEGIN" not in str(info.value)


def test_encrypted_key_is_refused_without_prompting(ca: trustme.CA, tmp_path) -> None:
    leaf = ca.issue_cert("a")
    private_key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    encrypted = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    for key in (encrypted, _as_file(tmp_path, "key.pem", encrypted)):
        security = Security(
            tls_ca_file=ca.cert_pem.bytes().decode(),
            tls_worker_cert=leaf.cert_chain_pems[0].bytes().decode(),
            tls_worker_key=key,
        )
        with pytest.raises(SecurityError, match="^tls_worker_key: the private key is encrypted"):
            security.get_server_context("worker")


@pytest.mark.parametrize(
    "version",
    [
        ssl.TLSVersion.TLSv1,
        ssl.TLSVersion.TLSv1_1,
        ssl.TLSVersion.SSLv3,
        ssl.TLSVersion.MINIMUM_SUPPORTED,
        "1.0",
        "1.1",
        "banana",
        1.2,
    ],
)
def test_min_version_below_1_2_is_refused(version: object) -> None:
    with pytest.raises(SecurityError, match="^tls_min_version: "):
        Security(tls_min_version=version)
    security = Security()
    with pytest.raises(SecurityError, match="^tls_min_version: "):
        security.tls_min_version = version  # type: ignore[assignment]
    assert security.tls_min_version == ssl.TLSVersion.TLSv1_2


def test_min_version_1_3() -> None:
    for value in (ssl.TLSVersion.TLSv1_3, "1.3"):
        security = Security.temporary()
        security.tls_min_version = value  # type: ignore[assignment]  # converter takes str
        assert security.tls_min_version is ssl.TLSVersion.TLSv1_3
        assert security.get_server_context("worker").minimum_version is ssl.TLSVersion.TLSv1_3
        assert security.to_dict()["tls_min_version"] == "1.3"


def test_bad_option_types() -> None:
    with pytest.raises(SecurityError, match="^tls_ca_file: .*bytes"):
        Security(tls_ca_file=b"/ca.pem")  # type: ignore[arg-type]
    with pytest.raises(SecurityError, match="^tls_worker_cert: .*int"):
        Security(tls_worker_cert=3)  # type: ignore[arg-type]
    with pytest.raises(SecurityError, match="^tls_client_cert: empty"):
        Security(tls_client_cert="")
    with pytest.raises(SecurityError, match="^require_encryption: "):
        Security(require_encryption="yes")


def test_check_scheme() -> None:
    relaxed = Security()
    for scheme in ("tcp", "tls", "inproc", "ws"):
        relaxed.check_scheme(scheme, action="connect to")

    strict = Security(require_encryption=True)
    strict.check_scheme("tls", action="connect to")
    strict.check_scheme("inproc", action="listen on")
    with pytest.raises(SecurityError) as info:
        strict.check_scheme("tcp", action="connect to")
    assert (
        str(info.value) == "require_encryption is set: refusing to connect to tcp:// (use tls://)"
    )
    with pytest.raises(SecurityError, match="refusing to listen on ws://"):
        strict.check_scheme("ws", action="listen on")


def test_to_dict_from_dict_round_trip(ca: trustme.CA) -> None:
    for security in (
        Security(),
        Security.temporary(),
        Security(tls_ca_file="/etc/ca.pem", tls_worker_cert="/w.pem", tls_min_version="1.3"),
    ):
        d = security.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert d["tls_min_version"] in ("1.2", "1.3")
        again = Security.from_dict(d)
        assert again == security
        assert again.to_dict() == d

    assert Security.from_dict({}) == Security()
    with pytest.raises(SecurityError, match="unknown TLS option.*'tls_cert'"):
        Security.from_dict({"tls_cert": "x"})


def test_pickle_and_copy_carry_config_not_contexts() -> None:
    security = Security.temporary()
    security.get_server_context("scheduler")  # SSLContext itself cannot be pickled
    restored = pickle.loads(pickle.dumps(security))
    assert restored == security
    assert restored.get_server_context("scheduler") is not security.get_server_context("scheduler")


def test_repr_hides_key_material(ca: trustme.CA) -> None:
    security = Security.temporary()
    text = repr(security)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    assert "tls_worker_key=<PEM>" in text and "require_encryption=True" in text
    assert str(security) == text

    paths = Security(tls_ca_file="/etc/ca.pem", tls_client_cert="/c.pem")
    assert repr(paths) == (
        "Security(tls_ca_file='/etc/ca.pem', tls_client_cert='/c.pem', "
        "tls_min_version='1.2', require_encryption=False)"
    )


def test_no_temp_files_left_behind(ca: trustme.CA, monkeypatch, tmp_path) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    before = sorted(os.listdir(tempfile.gettempdir()))

    loaded: list[str] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: Any, **kwargs: Any) -> None:
        mode = stat.S_IMODE(os.stat(certfile).st_mode)
        assert mode == 0o600, oct(mode)
        loaded.append(certfile)
        return original(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)

    security = Security.temporary()
    for role in ("scheduler", "worker", "nanny", "client"):
        security.get_server_context(role)
        security.get_client_context(role)
    # a failing load must clean up too
    mismatched = Security(
        tls_ca_file=ca.cert_pem.bytes().decode(),
        tls_client_cert=ca.issue_cert("a").cert_chain_pems[0].bytes().decode(),
        tls_client_key=ca.issue_cert("b").private_key_pem.bytes().decode(),
    )
    with pytest.raises(SecurityError):
        mismatched.get_client_context("client")

    assert len(loaded) == 9
    assert all(os.path.dirname(path) == str(private_tmp) for path in loaded)
    assert sorted(os.listdir(tempfile.gettempdir())) == before
