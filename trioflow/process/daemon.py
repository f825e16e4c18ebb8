"""What a trioflow daemon process does besides serving: logging, one-line
errors, preload modules, and :func:`run_servers`, the one start-up and
shutdown path of every daemon (the command line's scheduler and workers, and
a nanny's worker process).

No click here (the command-line parsing is :mod:`trioflow.cli`): a nanny's
worker process (``python -m trioflow.process.nanny``) runs without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import linecache
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import trio

from ..errors import UserError
from .malloc import trim_process_memory
from .signals import close_on_signals

logger = logging.getLogger("trioflow.cli")

__all__ = [
    "UserError",
    "check_preload",
    "describe_exception",
    "load_preload",
    "preload_setup",
    "preload_teardown",
    "release_startup_memory",
    "run_servers",
    "setup_logging",
]


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


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


def release_startup_memory() -> None:
    """Call once the daemon is up: give back what starting it freed.

    Importing and starting leave a few MiB of freed memory inside the C heap
    (the contents of every ``.pyc`` read, compiler temporaries, handshakes)
    that glibc keeps for ever; returning it takes well under a millisecond
    and lowers the idle RSS by about 2 MiB.

    attrs also keeps the source text of every method it generated (each
    message and state class's ``__init__``, ``__eq__``, ...) in
    :mod:`linecache`, so that a traceback through one can show its line:
    about 0.4 MiB in a scheduler.  A daemon drops it; such a traceback then
    names the generated function without quoting its source.
    """
    # list(): executor threads may be formatting a traceback meanwhile.
    for name in list(linecache.cache):
        if name.startswith("<attrs generated"):
            linecache.cache.pop(name, None)
    trim_process_memory()


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


def check_preload(spec: str, option: str = "--preload") -> None:
    """Fail early if ``spec`` cannot be found, without running it here.

    For ``--preload`` under a nanny the module runs in the worker process,
    not in this one; a user can still learn about a typo at once.
    """
    if spec.endswith(".py") or os.sep in spec:
        if not os.path.isfile(os.path.abspath(spec)):
            raise UserError(f"{option}: no such file {spec!r}")
        return
    try:
        found = importlib.util.find_spec(spec)
    except Exception as exc:  # noqa: BLE001 - a parent package failed to import
        raise UserError(f"{option}: cannot import {spec!r}: {type(exc).__name__}: {exc}") from None
    if found is None:
        raise UserError(f"{option}: cannot import {spec!r}: no module named {spec!r}")


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


# ---------------------------------------------------------------- start-up and shutdown


async def run_servers(
    servers: Sequence[Any],
    preload: Sequence[ModuleType] = (),
    *,
    on_started: Callable[[Any], None] | None = None,
    on_ready: Callable[[trio.Nursery], None] | None = None,
) -> bool:
    """The life of a daemon's servers, from start to close: the one path the
    command line (scheduler, workers with or without nannies) and a nanny's
    worker process share.

    Starts every server (``await nursery.start(server.serve)``, all at once),
    calls ``on_started(server)`` as each is up, runs the preload modules'
    ``trioflow_setup(server)``, calls ``on_ready(nursery)`` (a nursery for
    tasks that should live as long as the servers), gives back the memory
    starting freed, and waits until every server is closed; then runs
    ``trioflow_teardown(server)``.  The first SIGINT/SIGTERM closes the
    servers politely (one still starting is cancelled); a second is fatal.

    Whatever fails, the servers that did start are closed before the error
    leaves: no orphans.

    Returns:
        False if a signal came during start-up (nothing was served), else True.

    Raises:
        BaseExceptionGroup: what a server's start raised (a port in use, no
            scheduler within ``death_timeout``, ...), as the nursery groups it.
        UserError: a preload module's ``trioflow_setup`` failed (inside a group).
    """
    started: list[Any] = []
    startup = trio.CancelScope()

    async def close_started() -> None:
        with trio.CancelScope(shield=True):
            for server in started:
                await server.aclose()

    async def start(nursery: trio.Nursery, server: Any) -> None:
        await nursery.start(server.serve)
        started.append(server)
        if on_started is not None:
            on_started(server)

    async with trio.open_nursery() as nursery:

        def close_all() -> None:
            # Servers still starting (waiting for the scheduler) are
            # cancelled; running ones close politely: a nanny stops its
            # worker with the SIGTERM -> SIGKILL ladder, a worker
            # unregisters from the scheduler.
            startup.cancel()
            for server in started:
                nursery.start_soon(server.aclose)

        await nursery.start(close_on_signals, close_all)
        with startup:
            try:
                async with trio.open_nursery() as starters:
                    for server in servers:
                        starters.start_soon(start, nursery, server)
            except BaseException:
                await close_started()  # before reporting: no orphans
                raise
        if startup.cancelled_caught:
            await close_started()
            nursery.cancel_scope.cancel()
            return False
        try:
            for server in servers:
                await preload_setup(list(preload), server)
        except UserError:
            await close_started()
            raise
        if on_ready is not None:
            on_ready(nursery)
        release_startup_memory()
        for server in servers:
            await server.wait_closed()
        for server in servers:
            await preload_teardown(list(preload), server)
        nursery.cancel_scope.cancel()
    return True
