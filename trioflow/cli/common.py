"""Shared pieces of the command-line programs.

Option parsing turns every bad value into a :class:`click.BadParameter`
naming the option; :func:`run_cli` prints it as one line and exits 2, and
turns runtime failures a user can cause (port in use, scheduler unreachable,
bad certificate) into one line and exit 1.  No traceback for a user mistake.

What a daemon does once its options are parsed (logging, signals, preload
modules, the PID file, start-up and shutdown) is in :mod:`trioflow.process`,
which does without click; the names the commands use are importable from
here as well.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import click

from ..comm import CommError
from ..comm.addressing import AddressError
from ..config import parse_memory_limit
from ..process.daemon import (
    UserError,
    check_preload,
    describe_exception,
    load_preload,
    run_servers,
    setup_logging,
)
from ..process.pidfile import PidFile
from ..process.signals import close_on_signals
from ..process.system import psutil_module
from ..protocol import ProtocolError
from ..security import Security, SecurityError


def run_cli(command: click.Command, prog: str, args: list[str] | None = None) -> None:
    """Run a click command with one-line errors and our exit codes."""
    try:
        rv = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        msg = exc.format_message()
        print(f"{prog}: error: {msg}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(rv or 0)


def user_errors(prog: str) -> tuple[type[BaseException], ...]:
    return (UserError, SecurityError, CommError, AddressError, ProtocolError, OSError)


# ---------------------------------------------------------------- values


def memory_limit_option(value: str, nthreads: int, nprocs: int) -> int:
    try:
        limit: str | float = value
        try:
            limit = float(value) if value.strip().lower() not in ("auto",) else value
            if isinstance(limit, float) and limit.is_integer() and limit > 1:
                limit = int(limit)
        except ValueError:
            limit = value
        return parse_memory_limit(limit, nthreads, n_workers=nprocs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory-limit") from None


def parse_resources(text: str | None) -> dict[str, float]:
    """``"GPU=2 MEM=10e9"`` (spaces or commas between) -> ``{"GPU": 2.0, "MEM": 1e10}``."""
    out: dict[str, float] = {}
    if not text:
        return out
    for item in text.replace(",", " ").split():
        name, sep, amount = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=AMOUNT, got {item!r}", param_hint="--resources")
        try:
            value = float(amount)
        except ValueError:
            raise click.BadParameter(f"amount of {name!r} is not a number: {amount!r}", param_hint="--resources") from None
        if value < 0:
            raise click.BadParameter(f"amount of {name!r} must not be negative", param_hint="--resources")
        out[name] = value
    return out


def parse_port_range(text: str | None, option: str = "--port") -> list[int]:
    """``"9000"`` -> [9000]; ``"9000:9010"`` -> 9000..9010; None/"0" -> [0]."""
    if text is None or text == "":
        return [0]
    first, sep, last = str(text).partition(":")
    try:
        lo = int(first)
        hi = int(last) if sep else lo
    except ValueError:
        raise click.BadParameter(f"expected a port or a range FIRST:LAST, got {text!r}", param_hint=option) from None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or hi < lo:
        raise click.BadParameter(f"port range {text!r} is not within 0-65535 in order", param_hint=option)
    return list(range(lo, hi + 1))


def interface_address(name: str) -> str:
    addrs = psutil_module().net_if_addrs()
    if name not in addrs:
        raise click.BadParameter(f"no network interface named {name!r} (available: {', '.join(sorted(addrs))})", param_hint="--interface")
    for a in addrs[name]:
        if a.family == socket.AF_INET:
            return str(a.address)
    for a in addrs[name]:
        if a.family == socket.AF_INET6:
            return str(a.address).split("%")[0]
    raise click.BadParameter(f"interface {name!r} has no IP address", param_hint="--interface")


def make_security(role: str, ca: str | None, cert: str | None, key: str | None, require: bool | None = None) -> Security | None:
    if not (ca or cert or key):
        return None
    if not (ca and cert):
        raise click.BadParameter("TLS needs --tls-ca-file and --tls-cert (and --tls-key unless the key is in the cert file)", param_hint="--tls-cert")
    kw: dict[str, Any] = {"tls_ca_file": ca, f"tls_{role}_cert": cert, f"tls_{role}_key": key}
    if role != "client":
        kw["tls_client_cert"] = cert
        kw["tls_client_key"] = key
    try:
        sec = Security(**kw, require_encryption=bool(require) if require is not None else True)
        sec.get_server_context(role)
        sec.get_client_context(role)
    except SecurityError as exc:
        text = str(exc)
        for field, flag in (("tls_ca_file", "--tls-ca-file"), (f"tls_{role}_cert", "--tls-cert"), (f"tls_{role}_key", "--tls-key"), ("tls_client_cert", "--tls-cert"), ("tls_client_key", "--tls-key")):
            text = text.replace(field, flag)
        raise UserError(text) from None
    return sec







def default_nthreads(nprocs: int) -> int:
    return max((os.cpu_count() or 1) // max(nprocs, 1), 1)


__all__ = [
    "PidFile",
    "UserError",
    "close_on_signals",
    "default_nthreads",
    "describe_exception",
    "interface_address",
    "check_preload",
    "load_preload",
    "make_security",
    "memory_limit_option",
    "parse_port_range",
    "parse_resources",
    "run_cli",
    "run_servers",
    "setup_logging",
]
