"""Addresses: ``tcp://host:port``, ``tls://host:port``, ``inproc://name``."""

from __future__ import annotations

import attrs

SCHEMES = ("tcp", "tls", "inproc")


class AddressError(ValueError):
    """An address string is malformed."""


@attrs.frozen
class Address:
    scheme: str
    host: str  # for inproc: the name
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "inproc":
            return f"inproc://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(text: str, *, default_port: int | None = None, default_scheme: str = "tcp") -> Address:
    """Parse an address string.

    ``host:port`` without a scheme means ``default_scheme``; a missing port
    means ``default_port`` (an error when that is None).

    Raises:
        AddressError: the text is not an address; the message says why.
    """
    if not isinstance(text, str):
        raise AddressError(f"address must be a string, got {type(text).__name__}")
    original = text
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if "://" in text:
        scheme, _, rest = text.partition("://")
    else:
        scheme, rest = default_scheme, text
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise AddressError(
            f"invalid address {original!r}: unknown scheme {scheme!r} (expected one of tcp://, tls://, inproc://)"
        )
    if scheme == "inproc":
        if not rest or "/" in rest:
            raise AddressError(f"invalid address {original!r}: inproc:// needs a name")
        return Address("inproc", rest, 0)
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep:
            raise AddressError(f"invalid address {original!r}: unclosed '[' in IPv6 host")
        if tail and not tail.startswith(":"):
            raise AddressError(f"invalid address {original!r}: junk after IPv6 host")
        port_text = tail[1:] if tail else ""
    elif rest.count(":") > 1:
        raise AddressError(f"invalid address {original!r}: IPv6 hosts must be in brackets, like tcp://[::1]:8786")
    else:
        host, _, port_text = rest.partition(":")
    if "/" in port_text or "/" in host:
        raise AddressError(f"invalid address {original!r}: unexpected path")
    if not port_text:
        if default_port is None:
            raise AddressError(f"invalid address {original!r}: no port")
        port = default_port
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise AddressError(f"invalid address {original!r}: port {port_text!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise AddressError(f"invalid address {original!r}: port {port} out of range 0-65535")
    if not host:
        host = "0.0.0.0" if default_port is not None else ""
        if not host:
            raise AddressError(f"invalid address {original!r}: no host")
    return Address(scheme, host, port)


def normalize_address(text: str, *, default_port: int | None = None) -> str:
    return str(parse_address(text, default_port=default_port))
