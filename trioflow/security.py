"""TLS configuration: certificates, keys and the SSL contexts built from them.

Theory of operation
-------------------
A :class:`Security` object is plain configuration: a CA, up to three
certificate/key pairs (one per role: scheduler, worker, client), a minimum TLS
version and a ``require_encryption`` switch.  The comm layer asks it for an
:class:`ssl.SSLContext` per role and direction (:meth:`get_server_context`,
:meth:`get_client_context`) and wraps its streams in ``trio.SSLStream``; the
CLI and the deploy code build it from options and ship it to child processes
with :meth:`to_dict` / :meth:`from_dict`.

Invariants:

* **Always mutual TLS, one private CA.**  Servers demand a client certificate
  signed by the CA; clients verify the server against the same CA and only
  that CA (the system trust store is never loaded).  Hostnames are not checked:
  certificates name roles in a cluster, not hosts, and the CA is private to the
  cluster.
* **Every value is a path or PEM text.**  A value that starts with
  ``-----BEGIN`` is PEM text; anything else is a path.  OpenSSL can load a CA
  from memory but a certificate chain only from a file, so PEM text for a
  certificate/key is written to a private (0600) temporary file that is
  deleted in ``finally:`` before the loader returns.  No file outlives a call.
* **Configuration problems are** :class:`SecurityError` **and say which option
  and why** ("tls_ca_file: no such file '/nope.pem'"), whether they are found at
  construction (types, TLS version, key without certificate) or when a context
  is first built (missing files, bad PEM, key not matching certificate).  Files
  are only read when a context is built, so a :class:`Security` can be created
  and shipped on a machine that does not hold the files.
* **Key material never appears in a repr.**  ``repr()`` shows which options
  are set, the paths, and ``<PEM>`` for inline text.
* **Configured once.**  Built contexts are cached per (direction, role) on the
  instance because building one costs milliseconds of CPU on the event loop.
  The cache is *not* invalidated when a field changes: treat the object as
  immutable once a context has been built (make a new one instead).  Copies
  and pickles carry the configuration, not the cache.

Errors seen on the wire during a handshake (``ssl.SSLError`` and friends,
usually wrapped in ``trio.BrokenResourceError``) are turned into a short
human cause by :func:`describe_ssl_error`, for logs and for the error a user
sees when a connection is refused.

This module does no IO besides reading and writing the certificate files and
does not import trio.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import attrs

from .errors import SecurityError, _EncryptedKey, find_leaf

__all__ = ["Security", "SecurityError", "describe_ssl_error"]


ROLES = frozenset({"scheduler", "worker", "nanny", "client"})

# Under require_encryption these schemes may still be used: tls:// is the
# encrypted transport, inproc:// never leaves the process.
_SCHEMES_ALLOWED_WHEN_ENCRYPTED = frozenset({"tls", "inproc"})

_MATERIAL_FIELDS = (
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "tls_scheduler_cert",
    "tls_scheduler_key",
    "tls_worker_cert",
    "tls_worker_key",
)

# Which certificate a role presents, then the fallbacks tried in order, so a
# single --tls-cert/--tls-key pair works for every process.
_CERT_PREFERENCE = {
    "scheduler": ("scheduler", "worker", "client"),
    "worker": ("worker", "scheduler", "client"),
    "nanny": ("worker", "scheduler", "client"),
    "client": ("client", "worker", "scheduler"),
}

_TLS_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_TLS_VERSION_NAMES = {v: k for k, v in _TLS_VERSIONS.items()}
# Accepted as input only so that they are refused with the right message.
_OLD_TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1}

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)


def _is_pem(value: str) -> bool:
    return value.lstrip().startswith("-----BEGIN")


def _label(value: str) -> str:
    """How to name a value in a message without leaking PEM contents."""
    return "inline PEM" if _is_pem(value) else repr(value)


# --------------------------------------------------------------------------
# attrs converters / validators (run at construction and on assignment)
# --------------------------------------------------------------------------


def _material(option: str) -> Callable[[Any], str | None]:
    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, bytes):
            raise SecurityError(f"{option}: expected a path or PEM text as str, got bytes")
        if not isinstance(value, str):
            raise SecurityError(
                f"{option}: expected a path or PEM text, got {type(value).__name__}"
            )
        if not value.strip():
            raise SecurityError(f"{option}: empty value (use None to leave it unset)")
        return value

    return convert


def _tls_version(value: Any) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        version = value
    elif isinstance(value, str) and value.strip() in _TLS_VERSIONS:
        version = _TLS_VERSIONS[value.strip()]
    elif isinstance(value, str) and value.strip() in _OLD_TLS_VERSIONS:
        version = _OLD_TLS_VERSIONS[value.strip()]
    elif isinstance(value, str) and value.strip() in ssl.TLSVersion.__members__:
        version = ssl.TLSVersion[value.strip()]
    else:
        raise SecurityError(
            f"tls_min_version: unsupported TLS version {value!r} (use '1.2' or '1.3')"
        )
    if version not in _TLS_VERSION_NAMES:
        raise SecurityError(
            f"tls_min_version: {version.name} is refused, the minimum is TLS 1.2 "
            "(use '1.2' or '1.3')"
        )
    return version


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SecurityError(f"require_encryption: expected True or False, got {value!r}")
    return value


def _material_field(option: str) -> Any:
    return attrs.field(default=None, converter=_material(option))


@attrs.define(kw_only=True, repr=False)
class Security:
    """TLS settings for every process in a cluster.

    Each ``tls_*`` option is a filesystem path or PEM text. A ``*_cert`` may
    hold the private key too, in which case its ``*_key`` can stay unset.

    Treat an instance as configured-once: contexts are cached on first use and
    later changes to the fields are not seen by them.

    Raises:
        SecurityError: at construction, for a wrongly typed option, a TLS
            version below 1.2, or a key set without its certificate.
    """

    tls_ca_file: str | None = _material_field("tls_ca_file")
    tls_client_cert: str | None = _material_field("tls_client_cert")
    tls_client_key: str | None = _material_field("tls_client_key")
    tls_scheduler_cert: str | None = _material_field("tls_scheduler_cert")
    tls_scheduler_key: str | None = _material_field("tls_scheduler_key")
    tls_worker_cert: str | None = _material_field("tls_worker_cert")
    tls_worker_key: str | None = _material_field("tls_worker_key")
    tls_min_version: ssl.TLSVersion = attrs.field(
        default=ssl.TLSVersion.TLSv1_2, converter=_tls_version
    )
    require_encryption: bool = attrs.field(default=False, converter=_strict_bool)
    _contexts: dict[tuple[str, str], ssl.SSLContext] = attrs.field(
        init=False, factory=dict, eq=False
    )

    def __attrs_post_init__(self) -> None:
        for kind in ("client", "scheduler", "worker"):
            if getattr(self, f"tls_{kind}_key") is not None and (
                getattr(self, f"tls_{kind}_cert") is None
            ):
                raise SecurityError(
                    f"tls_{kind}_key: set without tls_{kind}_cert "
                    "(a private key is useless without its certificate)"
                )

    # ---- construction helpers ------------------------------------------------

    @classmethod
    def temporary(cls) -> Security:
        """A throwaway CA and one certificate shared by every role.

        Everything is generated in memory (EC P-256, valid for a year, SAN
        localhost / 127.0.0.1 / ::1) and stored as PEM text: nothing is
        written to disk.  ``require_encryption`` is on.

        Returns:
            A ready-to-use :class:`Security`.
        """
        ca_pem, cert_pem, key_pem = _generate_temporary_material()
        return cls(
            tls_ca_file=ca_pem,
            tls_client_cert=cert_pem,
            tls_client_key=key_pem,
            tls_scheduler_cert=cert_pem,
            tls_scheduler_key=key_pem,
            tls_worker_cert=cert_pem,
            tls_worker_key=key_pem,
            require_encryption=True,
        )

    def to_dict(self) -> dict[str, str | bool | None]:
        """Plain data for passing to a subprocess (PEM text is kept inline).

        ``tls_min_version`` becomes ``"1.2"`` or ``"1.3"``.
        """
        d: dict[str, str | bool | None] = {name: getattr(self, name) for name in _MATERIAL_FIELDS}
        d["tls_min_version"] = _TLS_VERSION_NAMES[self.tls_min_version]
        d["require_encryption"] = self.require_encryption
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Security:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises:
            SecurityError: for an unknown key or a bad value.
        """
        known = {*_MATERIAL_FIELDS, "tls_min_version", "require_encryption"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SecurityError(f"unknown TLS option(s): {', '.join(map(repr, unknown))}")
        return cls(**d)

    def __reduce__(self) -> tuple[Any, ...]:
        # Copy/pickle the configuration, never the cache of SSLContexts
        # (which cannot be pickled and belongs to this process).
        return (_from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        parts = []
        for name in _MATERIAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={'<PEM>' if _is_pem(value) else repr(value)}")
        parts.append(f"tls_min_version={_TLS_VERSION_NAMES[self.tls_min_version]!r}")
        parts.append(f"require_encryption={self.require_encryption!r}")
        return f"Security({', '.join(parts)})"

    # ---- queries -------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True if any TLS material (CA, certificate or key) is configured."""
        return any(getattr(self, name) is not None for name in _MATERIAL_FIELDS)

    def cert_for(self, role: str) -> tuple[str | None, str | None]:
        """The (certificate, key) a process in ``role`` presents.

        A nanny uses the worker's pair.  If the role's own certificate is not
        set, the first other configured pair is used.  The key is ``None``
        when it is inside the certificate's PEM, and both are ``None`` when no
        certificate is configured at all.

        Raises:
            ValueError: for an unknown role.
        """
        cert_option, key_option = self._cert_options_for(role)
        if cert_option is None:
            return None, None
        return getattr(self, cert_option), getattr(self, key_option)

    def _cert_options_for(self, role: str) -> tuple[str | None, str]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")
        for kind in _CERT_PREFERENCE[role]:
            if getattr(self, f"tls_{kind}_cert") is not None:
                return f"tls_{kind}_cert", f"tls_{kind}_key"
        own = "worker" if role == "nanny" else role
        return None, f"tls_{own}_key"

    def check_scheme(self, scheme: str, *, action: str) -> None:
        """Refuse an unencrypted transport when ``require_encryption`` is set.

        Args:
            scheme: the address scheme, e.g. ``"tcp"`` (without ``://``).
            action: what the caller was about to do, for the message
                ("connect to", "listen on").

        Raises:
            SecurityError: if encryption is required and ``scheme`` is
                neither ``tls`` nor ``inproc``.
        """
        if self.require_encryption and scheme.lower() not in _SCHEMES_ALLOWED_WHEN_ENCRYPTED:
            raise SecurityError(
                f"require_encryption is set: refusing to {action} {scheme}:// (use tls://)"
            )

    # ---- contexts ------------------------------------------------------------

    def get_server_context(self, role: str) -> ssl.SSLContext:
        """An SSL context for accepting connections as ``role`` (mutual TLS).

        Peers must present a certificate signed by ``tls_ca_file``.  Cached per
        role on this instance.

        Raises:
            SecurityError: no CA, no certificate for the role, or material that
                cannot be loaded.
            ValueError: for an unknown role.
        """
        key = ("server", role)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._build_context(role, server_side=True)
            self._contexts[key] = ctx
        return ctx

    def get_client_context(self, role: str) -> ssl.SSLContext:
        """An SSL context for connecting to a server as ``role``.

        Verifies the server against ``tls_ca_file`` (hostnames are not checked)
        and presents :meth:`cert_for` ``(role)`` as the client certificate.
        Cached per role on this instance.

        Raises:
            SecurityError: no CA, no certificate (servers always require one),
                or material that cannot be loaded.
            ValueError: for an unknown role.
        """
        key = ("client", role)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._build_context(role, server_side=False)
            self._contexts[key] = ctx
        return ctx

    def _build_context(self, role: str, *, server_side: bool) -> ssl.SSLContext:
        cert_option, key_option = self._cert_options_for(role)
        side = "server" if server_side else "client"
        if self.tls_ca_file is None:
            raise SecurityError(
                f"tls_ca_file: not set; a {role} TLS {side} needs the CA to verify its peers"
            )
        if cert_option is None:
            raise SecurityError(
                f"tls_{'worker' if role == 'nanny' else role}_cert: not set and no other "
                f"certificate is configured; a {role} TLS {side} must present one "
                "(mutual TLS)"
            )
        if server_side:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # Certificates name cluster roles, not hosts; trust comes from the
            # private CA alone.  Must be switched off before verify_mode is set.
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = self.tls_min_version
        ctx.options |= ssl.OP_NO_COMPRESSION
        _load_ca(ctx, self.tls_ca_file)
        _load_cert_chain(
            ctx, cert_option, getattr(self, cert_option), key_option, getattr(self, key_option)
        )
        return ctx


def _from_dict(d: Mapping[str, Any]) -> Security:
    return Security.from_dict(d)


# --------------------------------------------------------------------------
# loading material into a context
# --------------------------------------------------------------------------


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    reason = getattr(exc, "reason", None)
    if reason:
        return reason.lower().replace("_", " ")
    text = str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text) or type(exc).__name__


def _check_file(option: str, path: str) -> str:
    """Return ``path`` with ``~`` expanded, or raise if it is not a regular file."""
    expanded = os.path.expanduser(path)
    if not os.path.exists(expanded):
        raise SecurityError(f"{option}: no such file {path!r}")
    if os.path.isdir(expanded):
        raise SecurityError(f"{option}: {path!r} is a directory, not a PEM file")
    return expanded


def _read_text(option: str, path: str) -> str:
    expanded = _check_file(option, path)
    try:
        with open(expanded, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as exc:
        raise SecurityError(f"{option}: cannot read {path!r}: {_ssl_reason(exc)}") from exc


def _load_ca(ctx: ssl.SSLContext, value: str) -> None:
    try:
        if _is_pem(value):
            ctx.load_verify_locations(cadata=value)
        else:
            ctx.load_verify_locations(cafile=_check_file("tls_ca_file", value))
    except SecurityError:
        raise
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise SecurityError(
            f"tls_ca_file: cannot load CA certificates from {_label(value)}: {_ssl_reason(exc)}"
        ) from exc


def _refuse_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal for a passphrase.
    raise _EncryptedKey


def _load_cert_chain(
    ctx: ssl.SSLContext, cert_option: str, cert: str, key_option: str, key: str | None
) -> None:
    """Load a certificate (chain) and its key, from paths or PEM text."""
    key_label = key_option if key is not None else cert_option
    try:
        if not _is_pem(cert) and (key is None or not _is_pem(key)):
            cert_path = _check_file(cert_option, cert)
            key_path = None if key is None else _check_file(key_option, key)
            ctx.load_cert_chain(cert_path, key_path, password=_refuse_password)
            return
        cert_text = cert if _is_pem(cert) else _read_text(cert_option, cert)
        key_text = None if key is None else key if _is_pem(key) else _read_text(key_option, key)
        _load_cert_chain_from_text(ctx, cert_text, key_text)
    except _EncryptedKey:
        raise SecurityError(
            f"{key_label}: the private key is encrypted; an unencrypted key is required"
        ) from None
    except SecurityError:
        raise
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise SecurityError(_diagnose_cert_chain(cert_option, cert, key_option, key, exc)) from exc


def _load_cert_chain_from_text(ctx: ssl.SSLContext, cert_text: str, key_text: str | None) -> None:
    # load_cert_chain only takes paths: go through a file only we can read
    # (mkstemp creates it 0600) and always remove it.
    fd, path = tempfile.mkstemp(prefix="trioflow-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(cert_text.strip() + "\n")
            if key_text is not None:
                f.write(key_text.strip() + "\n")
        ctx.load_cert_chain(path, password=_refuse_password)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _diagnose_cert_chain(
    cert_option: str, cert: str, key_option: str, key: str | None, exc: BaseException
) -> str:
    """Say which of certificate and key is wrong; OpenSSL mostly says 'PEM lib'."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    reason = _ssl_reason(exc)
    try:
        cert_text = cert if _is_pem(cert) else _read_text(cert_option, cert)
        key_text = (
            cert_text if key is None else key if _is_pem(key) else _read_text(key_option, key)
        )
    except SecurityError as read_error:
        return str(read_error)
    key_label = cert_option if key is None else key_option
    try:
        certs = x509.load_pem_x509_certificates(cert_text.encode("ascii", "replace"))
    except ValueError:
        return f"{cert_option}: no valid PEM certificate in {_label(cert)} ({reason})"
    match = _PRIVATE_KEY_BLOCK.search(key_text)
    if match is None:
        if key is None:
            return (
                f"{cert_option}: no private key in {_label(cert)}; "
                f"set {key_option} or append the key to the certificate ({reason})"
            )
        return f"{key_option}: no PEM private key in {_label(key)} ({reason})"
    try:
        private_key = serialization.load_pem_private_key(match.group(0).encode("ascii"), None)
    except TypeError:
        return f"{key_label}: the private key is encrypted; an unencrypted key is required"
    except ValueError:
        return f"{key_label}: unreadable PEM private key in {_label(key or cert)} ({reason})"
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certs[0].public_key().public_bytes(*fmt) != private_key.public_key().public_bytes(*fmt):
        return f"{cert_option}/{key_label}: private key does not match the certificate ({reason})"
    return f"{cert_option}/{key_label}: cannot load certificate and key: {reason}"


# --------------------------------------------------------------------------
# temporary credentials
# --------------------------------------------------------------------------


def _generate_temporary_material() -> tuple[str, str, str]:
    """(CA cert PEM, leaf cert PEM, leaf key PEM), all made in memory."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    # Backdate a little so peers with a slightly slow clock still accept it.
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trioflow temporary CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trioflow")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    return (
        ca_cert.public_bytes(pem).decode("ascii"),
        leaf_cert.public_bytes(pem).decode("ascii"),
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii"),
    )


# --------------------------------------------------------------------------
# explaining handshake failures
# --------------------------------------------------------------------------

_ANOTHER_CA = " (certificate from another CA?)"
# X509_V_ERR_* codes -> hint appended to OpenSSL's own verify message.
_VERIFY_HINTS = {
    2: _ANOTHER_CA,  # unable to get issuer certificate
    18: _ANOTHER_CA,  # self-signed certificate
    19: _ANOTHER_CA,  # self-signed certificate in certificate chain
    20: _ANOTHER_CA,  # unable to get local issuer certificate
    21: _ANOTHER_CA,  # unable to verify the first certificate
    9: " (clocks out of sync?)",  # certificate is not yet valid
    26: " (certificate lacks the serverAuth/clientAuth extended key usage?)",
}

_NOT_TLS = "peer did not speak TLS (plaintext to a TLS port?)"
_REASONS = {
    "WRONG_VERSION_NUMBER": _NOT_TLS,
    "HTTP_REQUEST": _NOT_TLS,
    "HTTPS_PROXY_REQUEST": _NOT_TLS,
    "UNKNOWN_PROTOCOL": _NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": _NOT_TLS,
    "RECORD_LAYER_FAILURE": _NOT_TLS,
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "peer did not present a certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": ("peer requires a certificate and we did not present one"),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "peer rejected our certificate: certificate has expired",
    "TLSV1_ALERT_UNKNOWN_CA": "peer rejected our certificate: unknown CA" + _ANOTHER_CA,
    "SSLV3_ALERT_BAD_CERTIFICATE": "peer rejected our certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "peer rejected our certificate (unsupported type)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "peer rejected our certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (check tls_min_version)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (check tls_min_version)",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common (check tls_min_version)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "TLS handshake failure (no cipher or parameters in common)",
    "NO_SHARED_CIPHER": "TLS handshake failure (no cipher in common)",
    "UNEXPECTED_EOF_WHILE_READING": (
        "peer closed the connection during TLS (did it reject our certificate?)"
    ),
}


def describe_ssl_error(exc: BaseException) -> str:
    """A short human cause for a failed TLS connection.

    Looks through ``__cause__`` / ``__context__`` (``trio.SSLStream`` wraps
    the ``ssl.SSLError`` in ``trio.BrokenResourceError``) and exception groups.

    Args:
        exc: the exception raised by a handshake, send or receive.

    Returns:
        e.g. ``"certificate verify failed: certificate has expired"`` or
        ``"peer did not speak TLS (plaintext to a TLS port?)"``.
    """
    err = find_leaf(exc, ssl.SSLError, chained=True)
    if not isinstance(err, ssl.SSLError):
        if isinstance(exc, ConnectionResetError):
            return "connection reset by peer"
        text = str(exc)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(err, ssl.SSLCertVerificationError):
        message = getattr(err, "verify_message", None) or "unknown reason"
        hint = _VERIFY_HINTS.get(getattr(err, "verify_code", -1), "")
        return f"certificate verify failed: {message}{hint}"
    reason = getattr(err, "reason", None) or ""
    if reason in _REASONS:
        return _REASONS[reason]
    if isinstance(err, ssl.SSLEOFError):
        return _REASONS["UNEXPECTED_EOF_WHILE_READING"]
    return _ssl_reason(err)
