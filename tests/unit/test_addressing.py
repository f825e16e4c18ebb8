"""Address parsing: every form we accept, and a clear message for every
malformed one (the text quoted, and what is wrong with it)."""

from __future__ import annotations

import pytest

from trioflow.comm import Address, AddressError, parse_address
from trioflow.comm.addressing import normalize_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:8786", Address("tcp", "127.0.0.1", 8786)),
        ("tls://scheduler.example.org:8786", Address("tls", "scheduler.example.org", 8786)),
        ("TCP://Host-1:1", Address("tcp", "Host-1", 1)),
        ("tcp://[::1]:8786", Address("tcp", "::1", 8786)),
        ("tls://[fe80::1%eth0]:9000", Address("tls", "fe80::1%eth0", 9000)),
        ("tcp://[2001:db8::1]:0", Address("tcp", "2001:db8::1", 0)),
        ("tcp://host_name:65535", Address("tcp", "host_name", 65535)),
        ("inproc://scheduler-3", Address("inproc", "scheduler-3", 0)),
        ("  tcp://10.0.0.1:80  ", Address("tcp", "10.0.0.1", 80)),
        # no scheme: the default one
        ("10.0.0.1:8786", Address("tcp", "10.0.0.1", 8786)),
        ("localhost:1234", Address("tcp", "localhost", 1234)),
        ("[::1]:1234", Address("tcp", "::1", 1234)),
    ],
)
def test_valid_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


def test_default_scheme() -> None:
    assert parse_address("host:1", default_scheme="tls") == Address("tls", "host", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://host", Address("tcp", "host", 8786)),
        ("tls://[::1]", Address("tls", "::1", 8786)),
        ("host", Address("tcp", "host", 8786)),
        ("tcp://host:1", Address("tcp", "host", 1)),  # an explicit port wins
        # an empty host is every interface, for listening addresses
        ("tcp://:9000", Address("tcp", "0.0.0.0", 9000)),
    ],
)
def test_default_port(text: str, expected: Address) -> None:
    assert parse_address(text, default_port=8786) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("TLS://[::1]:1", "tls://[::1]:1"),
        ("inproc://x", "inproc://x"),
        ("host:5", "tcp://host:5"),
    ],
)
def test_str_round_trips(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected
    assert parse_address(expected) == parse_address(text)
    assert normalize_address(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # no host
        ("tcp://", "no host"),
        ("tcp://:8786", "no host"),
        ("tls://", "no host"),
        # ports
        ("tcp://host", "no port"),
        ("host", "no port"),
        ("tcp://host:", "empty port"),
        ("tcp://host:http", "port 'http' is not a number"),
        ("tcp://host:87x6", "port '87x6' is not a number"),
        ("tcp://host:+80", "port '+80' is not a number"),
        ("tcp://host:8_0", "port '8_0' is not a number"),
        ("tcp://host: 80", "port ' 80' is not a number"),
        ("tcp://host:-1", "port '-1' is not a number"),
        ("tcp://host:\u0668\u0660", "is not a number"),  # Arabic-Indic digits
        ("tcp://host:65536", "port 65536 out of range 0-65535"),
        ("tcp://host:99999999999999999999", "out of range"),
        ("tcp://[::1]:70000", "port 70000 out of range"),
        # schemes
        ("http://host:80", "unknown scheme 'http'"),
        ("udp://host:80", "unknown scheme 'udp'"),
        ("://host:80", "unknown scheme ''"),
        ("ucx://host:80", "expected one of tcp://, tls://, inproc://"),
        # IPv6
        ("tcp://::1:8786", "IPv6 hosts must be in brackets"),
        ("::1", "IPv6 hosts must be in brackets"),
        ("tcp://[::1:8786", "unclosed '['"),
        ("tcp://[::1]8786", "unexpected '8786' after the IPv6 host"),
        ("tcp://[nothost]:1", "'nothost' in brackets is not an IPv6 address"),
        ("tcp://[]:1", "in brackets is not an IPv6 address"),
        # junk
        ("tcp://host:80/path", "unexpected path"),
        ("tcp://host/path:80", "unexpected path"),
        ("tcp://user@host:80", "'user@host' is not a valid host name"),
        ("tcp://ho st:80", "'ho st' is not a valid host name"),
        ("tcp://host?x=1:80", "is not a valid host name"),
        ("tcp://-host:80", "is not a valid host name"),
        ("tcp://host:80?x=1", "is not a number"),
        ("inproc://", "inproc:// needs a name"),
        ("inproc://a/b", "cannot contain '/'"),
        ("inproc://a b", "cannot contain '/' or spaces"),
        ("", "empty address"),
        ("   ", "empty address"),
    ],
)
def test_malformed_addresses(text: str, why: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    message = str(info.value)
    assert why in message
    if text.strip():
        assert repr(text) in message, "the message quotes what the user wrote"


def test_not_a_string() -> None:
    with pytest.raises(AddressError, match="address must be a string, got int"):
        parse_address(8786)  # type: ignore[arg-type]


def test_address_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_address("nope://x:1")
