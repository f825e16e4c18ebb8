"""Addresses: ``tcp://host:port``, ``tls://host:port``, ``inproc://name``.

An address is parsed once, at the edge (CLI option, ``connect``, ``listen``),
into an :class:`Address`; anything malformed is an :class:`AddressError` whose
message quotes the text and says what is wrong with it, so a typo in a
command line reads "port '87x6' is not a number" rather than a socket error
later.  IPv6 hosts go in brackets (``tcp://[::1]:8786``), as in URLs.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from ..errors import AddressError

SCHEMES = ("tcp", "tls", "inproc")

# A host name or IPv4 address; "*" means every interface (listen only).
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\*")
_INPROC_NAME = re.compile(r"[^\s/]+")


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
    means ``default_port`` (an error when that is None).  An empty host
    (``tcp://:8786``) means every interface, and is only accepted when a
    ``default_port`` is given (listening addresses).

    Raises:
        AddressError: the text is not an address; the message says why.
    """
    if not isinstance(text, str):
        raise AddressError(f"address must be a string, got {type(text).__name__}")
    original = text
    text = text.strip()
    if not text:
        raise AddressError("empty address")

    def bad(why: str) -> AddressError:
        return AddressError(f"invalid address {original!r}: {why}")

    if "://" in text:
        scheme, _, rest = text.partition("://")
    else:
        scheme, rest = default_scheme, text
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise bad(f"unknown scheme {scheme!r} (expected one of tcp://, tls://, inproc://)")
    if scheme == "inproc":
        if not rest:
            raise bad("inproc:// needs a name")
        if not _INPROC_NAME.fullmatch(rest):
            raise bad("an inproc:// name cannot contain '/' or spaces")
        return Address("inproc", rest, 0)
    if not rest:
        raise bad("no host")
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep:
            raise bad("unclosed '[' in IPv6 host")
        if tail and not tail.startswith(":"):
            raise bad(f"unexpected {tail!r} after the IPv6 host")
        port_text = tail[1:] if tail else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} in brackets is not an IPv6 address") from None
    elif rest.count(":") > 1:
        raise bad("IPv6 hosts must be in brackets, like tcp://[::1]:8786")
    else:
        host, sep, port_text_ = rest.partition(":")
        port_text = port_text_ if sep else None
        if "/" in port_text_:
            raise bad("unexpected path after the port")
        if host and not _HOST.fullmatch(host):
            if "/" in host:
                raise bad("unexpected path after the host")
            raise bad(f"{host!r} is not a valid host name")
    if port_text is None:
        if default_port is None:
            raise bad("no port (like tcp://host:8786)")
        port = default_port
    elif not port_text:
        raise bad("empty port after ':'")
    else:
        if not (port_text.isascii() and port_text.isdigit()):
            raise bad(f"port {port_text!r} is not a number")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise bad(f"port {port} out of range 0-65535")
    if not host:
        if default_port is None:
            raise bad("no host")
        host = "0.0.0.0"
    return Address(scheme, host, port)


def normalize_address(text: str, *, default_port: int | None = None) -> str:
    return str(parse_address(text, default_port=default_port))
