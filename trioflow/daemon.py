"""What a trioflow daemon process does besides serving: logging, signals,
preload modules, its PID file, and the whole of a nanny's worker process.

No click here (the command-line parsing is :mod:`trioflow.cli`): a nanny's
worker process (``python -m trioflow.nanny``) runs on this module alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import linecache
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import trio

from .comm import CommError
from .memory import limit_malloc_arenas, trim_process_memory
from .protocol import ProtocolError
from .security import Security

logger = logging.getLogger("trioflow.cli")

__all__ = [
    "PidFile",
    "UserError",
    "check_preload",
    "close_on_signals",
    "describe_exception",
    "load_preload",
    "preload_setup",
    "preload_teardown",
    "release_startup_memory",
    "run_worker_process",
    "setup_logging",
]


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
    """Run one worker in this process (the nanny's child); returns the exit code.

    Talks to the nanny over ``ready_fd`` in lines: ``ALIVE`` once the
    configuration is read (the nanny's start-up timeout stops there: waiting
    for the scheduler may legitimately take long), then either
    ``READY <address>`` once registered and preloaded, or ``ERROR <one line>``
    when the worker cannot start (exit code 3: the nanny gives up rather than
    restart a worker that cannot work).  Exit 0 means the worker meant to stop.
    """
    setup_logging(os.environ.get("TRIOFLOW_WORKER_LOG_LEVEL") or "INFO")  # LocalCluster(silence_logs=)
    limit_malloc_arenas(config["nthreads"])  # before any thread exists

    def tell(line: str) -> None:
        nonlocal ready_fd
        if ready_fd < 0:
            return
        try:
            os.write(ready_fd, (line.replace("\n", " ") + "\n").encode())
        except OSError:
            pass

    def finish(line: str) -> None:
        nonlocal ready_fd
        tell(line)
        if ready_fd >= 0:
            os.close(ready_fd)
            ready_fd = -1

    tell("ALIVE")
    from .worker.server import Worker

    try:
        preload = [load_preload(p) for p in config.get("preload") or []]
    except UserError as exc:
        logger.error("%s", exc)
        finish(f"ERROR {exc}")
        return 3
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
        workspace=config.get("workspace"),
        reconnect=config.get("reconnect", True),
        death_timeout=config.get("death_timeout"),
        nanny=config.get("nanny", ""),
        dashboard_address=config.get("dashboard_address"),
        dashboard_prefix=config.get("dashboard_prefix") or "",
        **(config.get("options") or {}),
    )

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            startup = trio.CancelScope()
            started = False

            def on_signal() -> None:
                # Before registration there is nothing to hand back: stop
                # waiting for the scheduler.  After it, leave politely so the
                # scheduler does not count running tasks as lost.
                if started:
                    nursery.start_soon(worker.aclose, "signal")
                else:
                    startup.cancel()

            await nursery.start(close_on_signals, on_signal)
            if watch_stdin:
                nursery.start_soon(_watch_parent, worker)
            with startup:
                try:
                    await nursery.start(worker.serve)
                except BaseException as exc:  # noqa: BLE001 - sorted out below
                    leaf = _user_leaf(exc)
                    if leaf is None:
                        raise
                    msg = f"worker failed to start: {describe_exception(leaf)}"
                    logger.error("%s", msg)
                    finish(f"ERROR {msg}")
                    nursery.cancel_scope.cancel()
                    return 3
                started = True
            if not started:  # a signal during start-up
                finish("ERROR worker stopped during start-up")
                nursery.cancel_scope.cancel()
                return 0
            try:
                await preload_setup(preload, worker)
            except UserError as exc:
                logger.error("%s", exc)
                finish(f"ERROR {exc}")
                await worker.aclose(str(exc))
                nursery.cancel_scope.cancel()
                return 3
            finish(f"READY {worker.address}")
            release_startup_memory()
            await worker._closed.wait()
            await preload_teardown(preload, worker)
            nursery.cancel_scope.cancel()
        return 0

    code = 0
    try:
        code = trio.run(main)
    except* KeyboardInterrupt:
        pass
    finally:
        if ready_fd >= 0:  # died of a bug before saying why: EOF reads as a crash
            os.close(ready_fd)
    return code


def _user_leaf(exc: BaseException) -> BaseException | None:
    """The failure a user can fix inside ``exc`` (maybe an exception group), or None."""
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            leaf = _user_leaf(e)
            if leaf is not None:
                return leaf
        return None
    if isinstance(exc, (UserError, CommError, OSError, ValueError, ProtocolError, trio.TooSlowError)):
        return exc
    return None


async def _watch_parent(worker: Any) -> None:
    """Close the worker when stdin (a pipe from the nanny) reaches EOF.

    The nanny died (maybe by SIGKILL): nobody supervises this process any
    more, so it must be gone within a second, even with a task stuck in a
    thread.
    """
    stream = trio.lowlevel.FdStream(os.dup(0))
    try:
        while True:
            data = await stream.receive_some(1024)
            if not data:
                break
    finally:
        await stream.aclose()
    logger.warning("nanny went away; closing worker")
    worker.close("nanny gone")
    with trio.move_on_after(0.7):
        await worker._closed.wait()
        return
    logger.warning("worker did not close in time; exiting now")
    if worker.local_directory:
        shutil.rmtree(worker.local_directory, ignore_errors=True)
    os._exit(1)
