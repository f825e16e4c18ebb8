"""Shared pieces of the command-line programs.

Option parsing turns every bad value into a :class:`click.BadParameter`
naming the option; :func:`run_cli` prints it as one line and exits 2, and
turns runtime failures a user can cause (port in use, scheduler unreachable,
bad certificate) into one line and exit 1.  No traceback for a user mistake.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import click
import psutil
import trio

from ..comm import CommError
from ..comm.addressing import AddressError
from ..memory import parse_memory_limit
from ..protocol import ProtocolError
from ..security import Security, SecurityError

logger = logging.getLogger("trioflow.cli")


class UserError(Exception):
    """A failure the user can fix; printed as one line, exit 1."""


# ---------------------------------------------------------------- logging and errors


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger("trioflow")
    if any(getattr(h, "_trioflow", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    handler._trioflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


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


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


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
    addrs = psutil.net_if_addrs()
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


# ---------------------------------------------------------------- files


class PidFile:
    def __init__(self, path: str | None) -> None:
        self.path = path

    def __enter__(self) -> PidFile:
        if self.path:
            try:
                with open(self.path, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                raise UserError(f"--pid-file: cannot write {self.path!r}: {exc.strerror}") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.path:
            try:
                os.remove(self.path)
            except OSError:
                pass


# ---------------------------------------------------------------- preload


def load_preload(spec: str, option: str = "--preload") -> ModuleType:
    """Import a module by dotted name or from a ``.py`` path."""
    try:
        if spec.endswith(".py") or os.sep in spec:
            path = os.path.abspath(spec)
            if not os.path.exists(path):
                raise UserError(f"{option}: no such file {spec!r}")
            name = os.path.splitext(os.path.basename(path))[0]
            mod_spec = importlib.util.spec_from_file_location(name, path)
            if mod_spec is None or mod_spec.loader is None:
                raise UserError(f"{option}: cannot load {spec!r}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's
        raise UserError(f"{option}: cannot import {spec!r}: {type(exc).__name__}: {exc}") from None


async def _call_hook(module: ModuleType, name: str, server: Any) -> None:
    fn: Callable[..., Any] | None = getattr(module, name, None)
    if fn is None:
        return
    result = fn(server)
    if inspect.isawaitable(result):
        await result


async def preload_setup(modules: list[ModuleType], server: Any) -> None:
    for mod in modules:
        try:
            await _call_hook(mod, "trioflow_setup", server)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--preload {mod.__name__}: trioflow_setup failed: {type(exc).__name__}: {exc}") from None


async def preload_teardown(modules: list[ModuleType], server: Any) -> None:
    for mod in modules:
        try:
            await _call_hook(mod, "trioflow_teardown", server)
        except Exception:  # noqa: BLE001
            logger.exception("--preload %s: trioflow_teardown failed", mod.__name__)


# ---------------------------------------------------------------- signals


async def close_on_signals(close: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``close()`` on the first SIGINT/SIGTERM; a second one is fatal."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                logger.info("received %s, closing", signal.Signals(signum).name)
                close()
            else:
                raise KeyboardInterrupt


# ---------------------------------------------------------------- worker process (nanny child)


def run_worker_process(config: dict[str, Any], *, ready_fd: int = -1, watch_stdin: bool = False) -> int:
    """Run one worker in this process (the nanny's child); returns the exit code."""
    setup_logging()
    from ..worker.server import Worker

    preload = [load_preload(p) for p in config.get("preload") or []]
    security = Security.from_dict(config["security"]) if config.get("security") else None
    worker = Worker(
        config["scheduler_address"],
        nthreads=config["nthreads"],
        name=config.get("name") or None,
        memory_limit=config.get("memory_limit", 0),
        resources=config.get("resources") or {},
        listen_address=config.get("listen_address"),
        contact_address=config.get("contact_address"),
        security=security,
        local_directory=config.get("local_directory"),
        reconnect=config.get("reconnect", True),
        death_timeout=config.get("death_timeout"),
        nanny=config.get("nanny", ""),
        dashboard_address=config.get("dashboard_address"),
        **(config.get("options") or {}),
    )

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(close_on_signals, worker.close)
            if watch_stdin:
                nursery.start_soon(_watch_parent, worker)
            try:
                await nursery.start(worker.serve)
            except (CommError, OSError) as exc:
                logger.error("worker failed to start: %s", describe_exception(exc))
                nursery.cancel_scope.cancel()
                return 3
            if ready_fd >= 0:
                os.write(ready_fd, f"READY {worker.address}\n".encode())
                os.close(ready_fd)
            await preload_setup(preload, worker)
            await worker._closed.wait()
            await preload_teardown(preload, worker)
            nursery.cancel_scope.cancel()
        return 0

    code = 0
    try:
        code = trio.run(main)
    except* KeyboardInterrupt:
        pass
    return code


async def _watch_parent(worker: Any) -> None:
    """Close the worker when stdin (a pipe from the nanny) reaches EOF."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    try:
        while True:
            data = await stream.receive_some(1024)
            if not data:
                logger.warning("nanny went away; closing worker")
                worker.close("nanny gone")
                return
    finally:
        await stream.aclose()


def default_nthreads(nprocs: int) -> int:
    return max((os.cpu_count() or 1) // max(nprocs, 1), 1)


__all__ = [
    "PidFile",
    "UserError",
    "close_on_signals",
    "default_nthreads",
    "interface_address",
    "load_preload",
    "make_security",
    "memory_limit_option",
    "parse_port_range",
    "parse_resources",
    "preload_setup",
    "preload_teardown",
    "run_cli",
    "run_worker_process",
    "setup_logging",
]
