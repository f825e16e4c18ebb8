"""The nanny: supervises one worker process and restarts it when it dies.

Theory of operation
-------------------
::

    Nanny nursery
     ├ listener (requests: NannyRestart, NannyKill)
     └ supervise loop
          start worker process (python -m trioflow.process.nanny)  ── stdin: StartWorkerProcess, then kept open
          read its status lines on a private pipe            (EOF on stdin = nanny gone)
            ALIVE            configured (start-up timeout ends here)
            READY <address>  registered with the scheduler
            ERROR <reason>   cannot start: give up, do not restart
          ├ memory watch: RSS > 95% of the limit -> restart
          └ wait for exit -> restart with backoff, or stop

The worker process reads its configuration from stdin as one protocol
message, :class:`~trioflow.protocol.messages.StartWorkerProcess` (the
:class:`~trioflow.config.WorkerConfig`, TLS settings, its scratch directory),
framed and checked by the strict codec like any message from a peer; then it
keeps stdin open: when the nanny dies, even by SIGKILL, the kernel
closes the pipe and the worker sees end-of-file and exits at once.  (Linux's
parent-death signal would fire when the *thread* that forked exits, and
Trio forks from worker threads, so it is not used.)

Waiting for the scheduler is not a hang: after ``ALIVE`` the nanny waits
for ``READY`` without a time limit, and the worker's own ``death_timeout``
ends the wait.  A worker that cannot start (``ERROR``: the scheduler did not
answer within ``death_timeout``, a preload that does not import, a port in
use) is not restarted: the first time, :meth:`Nanny.serve` raises
:class:`NannyStartError` with the reason; later, the nanny closes and keeps
the reason in :attr:`Nanny.failure`.

Stopping the worker is a ladder: SIGTERM (the worker closes cleanly and
exits 0), a bounded wait, then SIGKILL; it runs in ``finally`` under a
shielded cancel scope *with a time limit*, so Ctrl+C can never hang on it.

Exit codes decide what happens next: 0 means the worker meant to stop
(the scheduler closed it, ``--no-reconnect``, ``--death-timeout``), so the
nanny stops too; anything else is a crash and the worker is started again,
with exponential backoff when it keeps dying within seconds of starting.
A restart because of memory is a crash from the scheduler's point of view:
its running task counts towards ``KilledWorker``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from typing import Any

import attrs
import trio

from ..comm import Comm, CommClosedError, CommError, listen
from ..config import NannyConfig, WorkerConfig, build_config, load_config
from ..errors import NannyStartError, find_leaf, leaves
from ..protocol import messages as m
from ..protocol.codec import ProtocolError, check_count, check_prefix, decode, encode, pack_prefix
from .daemon import UserError, describe_exception, load_preload, run_servers, setup_logging
from .lifecycle import FINAL, Status, ended_in_failure
from .malloc import MALLOC_ENV, limit_malloc_arenas
from .system import default_host, process_rss
from .workspace import WORKSPACE_PREFIX, purge_stale_workspaces

logger = logging.getLogger("trioflow.nanny")

__all__ = ["Nanny", "NannyStartError", "read_start_message", "run_worker_process"]

READY_TIMEOUT = 60.0  # default of nanny.ready_timeout (trioflow.config)
MEMORY_TERMINATE_FRACTION = 0.95  # default of worker.memory.terminate


class Nanny:
    """Supervise a worker process; start with ``await nursery.start(nanny.serve)``."""

    def __init__(
        self,
        scheduler_address: str | None = None,
        *,
        config: NannyConfig | None = None,
        security: Any = None,
        listen_address: str | None = None,
        worker_listen_address: str | None = None,
        grace: float | None = None,
        memory_terminate_fraction: float | None = None,
        env: dict[str, str] | None = None,
        **worker_settings: Any,
    ) -> None:
        """``Nanny("tcp://scheduler:8786", nthreads=2, ...)`` (dask's
        keywords), or ``Nanny(config=NannyConfig(worker=WorkerConfig(...)))``.

        Args:
            scheduler_address: the scheduler its worker registers with.
            config: the whole configuration at once, instead of keywords.
            security: TLS settings for the nanny and its worker.
            listen_address: the nanny's own listener (None: none).
            worker_listen_address: the worker's listener.
            grace, memory_terminate_fraction, env: see
                :class:`~trioflow.config.NannyConfig`.
            **worker_settings: the fields of :class:`~trioflow.config.WorkerConfig`.

        Raises:
            TypeError: an unknown keyword, or both ``config`` and keywords.
            ValueError: a bad value (one line naming the field).
        """
        if config is None:
            if scheduler_address is None:
                raise TypeError("Nanny() needs the scheduler's address (or config=)")
            if worker_settings.get("name", "") is None:
                del worker_settings["name"]
            worker = build_config(
                WorkerConfig,
                "Nanny",
                {"scheduler_address": scheduler_address, "listen_address": worker_listen_address, **worker_settings},
            )
            nanny_settings: dict[str, Any] = {"worker": worker, "listen_address": listen_address, "env": dict(env or {})}
            if grace is not None:
                nanny_settings["grace"] = grace
            if memory_terminate_fraction is not None:
                nanny_settings["memory_terminate_fraction"] = memory_terminate_fraction
            # What is not given comes from the configuration (nanny.grace,
            # worker.memory.terminate).
            config = build_config(NannyConfig, "Nanny", nanny_settings)
        elif scheduler_address is not None or worker_settings or listen_address is not None or worker_listen_address is not None:
            raise TypeError("Nanny() takes config= or the scheduler address and keywords, not both")
        #: The configuration, whole (the attributes below are copies of it).
        self.config = config
        self.scheduler_address = config.worker.scheduler_address
        self.name = config.worker.name
        self.security = security
        self.memory_limit = config.worker.memory_limit
        self.listen_address = config.listen_address
        self.grace = config.grace
        self.memory_terminate_fraction = config.memory_terminate_fraction
        #: Seconds a new worker process gets to report ready (nanny.ready_timeout).
        self.ready_timeout = load_config(use_dask=False).config.nanny.ready_timeout
        self.env = dict(config.env)
        self.address = ""
        self.worker_address = ""
        self.process: trio.Process | None = None
        self.status = Status.created
        self.restarts = 0
        self._restart_requested = False
        self._closing = False
        self._closed = trio.Event()
        self._worker_ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        from .._plugin_host import PluginHost

        #: Nanny plugins registered by clients (see :mod:`trioflow.plugins`).
        self._plugin_host = PluginHost(self)
        self.plugins = self._plugin_host.plugins

    async def __aenter__(self) -> Nanny:
        """``async with Nanny(...)`` in Trio or asyncio (see :class:`~trioflow.client.bridge.ServerContext`)."""
        from ..client.bridge import ServerContext

        self._context = ServerContext(self)
        return await self._context.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> None:
        await self._context.__aexit__(*exc)

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<Nanny {self.address} worker={self.worker_address} pid={pid} status={self.status}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def serve(self, *, task_status: trio.TaskStatus[Nanny] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until closed; ``started`` once the first worker has registered.

        Raises:
            NannyStartError: the first worker process could not start (its
                one-line reason, e.g. the scheduler unreachable within
                ``death_timeout`` or a preload that does not import).
        """
        self.status = Status.starting
        failed = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.listen_address is not None:
                    listener = await nursery.start(
                        lambda task_status: listen(
                            self.listen_address,  # type: ignore[arg-type]
                            self._handle_request,
                            security=self.security,
                            role="nanny",
                            name=self.name,
                            task_status=task_status,
                        )
                    )
                    self.address = listener.address
                    if "0.0.0.0" in self.address:
                        self.address = self.address.replace("0.0.0.0", default_host())
                    logger.info("        Start Nanny at: %s", self.address)
                first = True
                while not self._closing:
                    code = await self._run_worker_once(task_status if first else None)
                    first = False
                    if self._closing:
                        break
                    if self._restart_requested:
                        self._restart_requested = False
                        continue
                    if code == 0:
                        logger.info("worker %s exited cleanly; nanny closing", self.worker_address or self.name)
                        break
                    if code is None:
                        break
                    if self.failure is not None:
                        logger.error("worker process cannot start (%s); nanny closing", self.failure)
                        break
                    self.restarts += 1
                    delay = min(0.5 * 2 ** min(self._quick_failures - 1, 6), 30.0) if self._quick_failures > 1 else 0.0
                    logger.warning(
                        "worker process %s died (%s); restarting%s",
                        self.pid,
                        _describe_exit(code),
                        f" in {delay:.1f}s" if delay else "",
                    )
                    if delay:
                        await trio.sleep(delay)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            failed = ended_in_failure(group)
            # Our own nursery wraps it; the caller should see the one reason.
            errors, rest = group.split(NannyStartError)
            if errors is not None and rest is None:
                raise leaves(errors)[0] from None
            raise
        except BaseException as exc:
            failed = ended_in_failure(exc)
            raise
        finally:
            if self.plugins:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._plugin_host.teardown_all()
            self.status = Status.failed if failed or self.failure is not None else Status.closed
            self._closed.set()

    _quick_failures = 0

    async def _run_worker_once(self, task_status: Any) -> int | None:
        """Start one worker process, supervise it, return its exit code.

        With ``task_status`` (the first start), a worker that cannot start
        raises :class:`NannyStartError`; otherwise its reason is kept in
        :attr:`failure` and its exit code returned.
        """
        self.failure = None
        self._status_buf = b""
        # The worker's scratch space (spilled data) lives in a directory of
        # ours, removed when the process is gone however it ended: a worker
        # killed with SIGKILL cannot clean up after itself.
        parent = self.config.worker.local_directory
        if parent:
            os.makedirs(parent, exist_ok=True)
        purge_stale_workspaces(parent or tempfile.gettempdir())
        scratch = tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=parent or None)
        start = m.StartWorkerProcess(
            config=self.config.worker,
            security=_tls_settings(self.security),
            workspace=scratch,
            nanny=self.address,
        )
        ready_r, ready_w = os.pipe()
        env = {**MALLOC_ENV, **os.environ, **self.env, "TRIOFLOW_NANNY_READY_FD": str(ready_w)}
        cmd = [sys.executable, "-m", "trioflow.process.nanny"]
        started = trio.current_time()
        try:
            proc = await trio.lowlevel.open_process(
                cmd,
                stdin=subprocess.PIPE,
                pass_fds=(ready_w,),
                env=env,
                start_new_session=False,
            )
        except BaseException:
            os.close(ready_r)
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            os.close(ready_w)
        self.process = proc
        self.status = Status.starting
        try:
            assert proc.stdin is not None
            try:
                frames = encode(start)
                await proc.stdin.send_all(b"".join([pack_prefix(frames), *frames]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it died at once; its exit code says why
            ready = trio.lowlevel.FdStream(ready_r)
            ready_r = -1
            async with ready:
                line = await self._read_status(ready, proc)
                if line == b"ALIVE":
                    # Configured and running; registering may legitimately
                    # wait for the scheduler (death_timeout is the worker's).
                    line = await self._read_status(ready, None)
            if line is None:  # start-up timeout
                logger.error("worker process %d did not start within %ss", proc.pid, self.ready_timeout)
                await self._stop_process(proc)
                return proc.returncode if proc.returncode is not None else -1
            if line.startswith(b"READY "):
                self.worker_address = line[6:].strip().decode()
                self.status = Status.running
                self._worker_ready.set()
                if task_status is not None:
                    task_status.started(self)
            else:
                # The worker exited before it was ready: bad configuration,
                # no scheduler within death_timeout, killed, or told to stop.
                code = await proc.wait()
                reason = line[6:].decode(errors="replace").strip() if line.startswith(b"ERROR ") else ""
                if code != 0 and not self._closing:
                    self.failure = reason or None
                    self._quick_failures += 1  # a crash during start-up: back off
                    if task_status is not None:
                        raise NannyStartError(reason or f"worker process failed to start ({_describe_exit(code)})")
                return code
            self.memory_restarted = False
            async with trio.open_nursery() as n:
                n.start_soon(self._memory_watch, proc, n.cancel_scope)
                code = await proc.wait()
                n.cancel_scope.cancel()
            if self.memory_restarted:
                # A task's appetite, not a crash loop: KilledWorker ends it.
                self.memory_restarts += 1
                self._quick_failures = 0
            elif code == 0 or self._restart_requested or self._closing:
                pass  # not a crash
            elif trio.current_time() - started < 10:
                self._quick_failures += 1
            else:
                self._quick_failures = 0
            return code
        finally:
            if ready_r >= 0:
                os.close(ready_r)
            if proc.returncode is None:
                with trio.CancelScope(shield=True):
                    await self._stop_process(proc)
            if proc.stdin is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(proc.stdin)
            shutil.rmtree(scratch, ignore_errors=True)
            self._worker_ready = trio.Event()
            if self.status not in FINAL:
                self.status = Status.starting if not self._closing else Status.closing

    async def _read_status(self, stream: trio.lowlevel.FdStream, proc: trio.Process | None) -> bytes | None:
        """One status line from the worker process (b"" at EOF), or None on
        timeout (only with ``proc``: the start-up phase)."""
        buf = self._status_buf
        with trio.move_on_after(self.ready_timeout if proc is not None else float("inf")):
            while b"\n" not in buf:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    self._status_buf = b""
                    return buf.strip()
                buf += chunk
            line, _, rest = buf.partition(b"\n")
            self._status_buf = rest
            return line.strip()
        self._status_buf = b""
        return None

    _status_buf = b""
    failure: str | None = None
    memory_restarted = False
    memory_restarts = 0

    async def _memory_watch(self, proc: trio.Process, scope: trio.CancelScope) -> None:
        if not self.memory_limit:
            return
        limit = self.memory_limit * self.memory_terminate_fraction
        while True:
            await trio.sleep(0.2)
            rss = process_rss(proc.pid)
            if rss is None:
                return
            if rss > limit:
                logger.warning(
                    "worker %s uses %d MB, over %d%% of its %d MB memory limit; restarting it",
                    self.worker_address,
                    rss // 2**20,
                    int(self.memory_terminate_fraction * 100),
                    self.memory_limit // 2**20,
                )
                self.memory_restarted = True
                with trio.CancelScope(shield=True):
                    await self._kill_process(proc)
                return

    async def _stop_process(self, proc: trio.Process) -> None:
        """SIGTERM, bounded wait, SIGKILL; never hangs."""
        with trio.move_on_after(self.grace + 2) as outer:
            outer.shield = True
            if proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                with trio.move_on_after(self.grace):
                    await proc.wait()
            if proc.returncode is None:
                await self._kill_process(proc)

    async def _kill_process(self, proc: trio.Process) -> None:
        with trio.move_on_after(2) as cs:
            cs.shield = True
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()

    async def restart(self, timeout: float | None = None) -> None:
        """Stop the worker process (cleanly, with the ladder) and wait, at most
        ``timeout`` seconds (default :attr:`ready_timeout`), until the
        supervise loop has a new one registered.

        Raises:
            TimeoutError: no new worker within ``timeout``.
        """
        old = self.process
        if old is None or old.returncode is not None:
            return
        self._restart_requested = True
        if timeout is None:
            timeout = self.ready_timeout
        await self._stop_process(old)
        with trio.move_on_after(timeout):
            while not (self.process is not old and self.status is Status.running):
                if self._closed.is_set():
                    return
                await trio.sleep(0.02)
            return
        raise TimeoutError(f"worker process did not restart within {timeout}s")

    def close(self) -> None:
        """Ask the nanny to stop its worker (SIGTERM) and close; returns at once."""
        self._closing = True
        if self.status not in FINAL:
            self.status = Status.closing
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def aclose(self, timeout: float = 10) -> None:
        """Stop the worker (ladder) and the nanny; wait at most ``timeout`` seconds."""
        self._closing = True
        if self.status not in FINAL:
            self.status = Status.closing
        if self.process is not None and self.process.returncode is None:
            await self._stop_process(self.process)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.move_on_after(timeout):
            await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until :meth:`serve` has returned (``status`` closed or failed)."""
        await self._closed.wait()

    async def _handle_request(self, comm: Comm) -> None:
        while True:
            try:
                msg = await comm.recv()
            except CommClosedError:
                return
            if isinstance(msg, m.NannyRestart):
                logger.info("restart requested: %s", msg.reason or "no reason given")
                try:
                    await self.restart()
                    reply: m.Message = m.Ok()
                except TimeoutError as exc:
                    reply = m.ErrorReply(message=str(exc))
            elif isinstance(msg, m.PluginSetup):
                reply = await self._plugin_setup(msg)
            elif isinstance(msg, m.PluginTeardown):
                reply = m.PluginReply(failures=await self._plugin_host.teardown(msg.name))
            elif isinstance(msg, m.NannyKill):
                logger.info("close requested: %s", msg.reason or "no reason given")
                self._closing = True
                reply = m.Ok()
                await comm.send(reply)
                await self.aclose()
                return
            else:
                reply = m.ErrorReply(message=f"a nanny does not serve {msg.op!r} requests")
            await comm.send(reply)


    async def _plugin_setup(self, msg: m.PluginSetup) -> m.Message:
        """Set a nanny plugin up (once: the scheduler sends it again each time
        our worker registers); one with ``restart`` restarts the worker after
        the reply, so that a fresh worker process sees what it changed."""
        if self._plugin_host.has(msg.name, msg.plugin):
            return m.PluginReply()
        failures = await self._plugin_host.setup(msg.name, msg.plugin)
        plugin = self.plugins.get(msg.name)
        if plugin is not None and getattr(plugin, "restart", False) and self._nursery is not None:
            self._nursery.start_soon(self._restart_for_plugin, msg.name)
        return m.PluginReply(failures=failures)

    async def _restart_for_plugin(self, name: str) -> None:
        logger.info("restarting the worker for plugin %r", name)
        try:
            await self.restart()
        except TimeoutError as exc:
            logger.warning("restart for plugin %r: %s", name, exc)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---------------------------------------------------------------- the link's codec


def _tls_settings(security: Any) -> m.TLSSettings | None:
    if security is None:
        return None
    return m.TLSSettings(**security.to_dict())


def _security(settings: m.TLSSettings | None) -> Any:
    if settings is None:
        return None
    from ..security import Security

    return Security.from_dict({a.name: getattr(settings, a.name) for a in attrs.fields(m.TLSSettings)})


def _read_exactly(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ProtocolError(f"the nanny's message ended after {len(data)} of {n} bytes")
    return bytes(data)


def read_start_message(f: Any) -> m.StartWorkerProcess | None:
    """The :class:`~trioflow.protocol.messages.StartWorkerProcess` a nanny
    wrote to binary stream ``f`` (one frame group: count, lengths, frames),
    checked by the strict codec; None at end-of-file (the nanny is gone).

    Raises:
        ProtocolError: anything else than that message, whole.
    """
    head = f.read(4)
    if not head:
        return None
    if len(head) != 4:
        raise ProtocolError("the nanny's message ended inside its prefix")
    (n,) = struct.unpack("<I", head)
    check_count(n)
    lengths = check_prefix(_read_exactly(f, 8 * n), n)
    msg = decode([_read_exactly(f, length) for length in lengths])
    if not isinstance(msg, m.StartWorkerProcess):
        raise ProtocolError(f"expected a 'start-worker-process' message from the nanny, got {msg.op!r}")
    return msg


# ---------------------------------------------------------------- the worker process


def run_worker_process(start: m.StartWorkerProcess, *, ready_fd: int = -1, watch_stdin: bool = False) -> int:
    """Run one worker in this process (the nanny's child); returns the exit code.

    Talks to the nanny over ``ready_fd`` in lines: ``ALIVE`` once the
    configuration is read (the nanny's start-up timeout stops there: waiting
    for the scheduler may legitimately take long), then either
    ``READY <address>`` once registered and preloaded, or ``ERROR <one line>``
    when the worker cannot start (exit code 3: the nanny gives up rather than
    restart a worker that cannot work).  Exit 0 means the worker meant to stop.
    Start-up and shutdown are :func:`~trioflow.process.daemon.run_servers`,
    as for ``trioflow-worker --no-nanny``.
    """
    config = start.config
    setup_logging(os.environ.get("TRIOFLOW_WORKER_LOG_LEVEL") or "INFO")  # LocalCluster(silence_logs=)
    limit_malloc_arenas(config.nthreads)  # before any thread exists

    def tell(line: str) -> None:
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
    from ..worker.server import Worker

    try:
        preload = [load_preload(p) for p in config.preload]
    except UserError as exc:
        logger.error("%s", exc)
        finish(f"ERROR {exc}")
        return 3
    worker = Worker(
        config=config,
        security=_security(start.security),
        workspace=start.workspace or None,
        nanny=start.nanny,
    )

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            if watch_stdin:
                nursery.start_soon(_watch_parent, worker)
            try:
                served = await run_servers(
                    [worker], preload, on_ready=lambda _nursery: finish(f"READY {worker.address}")
                )
            except BaseException as exc:  # noqa: BLE001 - sorted out below
                leaf = find_leaf(exc, _USER_ERRORS)
                if leaf is None:
                    raise
                msg = str(leaf) if isinstance(leaf, UserError) else f"worker failed to start: {describe_exception(leaf)}"
                logger.error("%s", msg)
                finish(f"ERROR {msg}")
                nursery.cancel_scope.cancel()
                return 3
            if not served:  # a signal during start-up
                finish("ERROR worker stopped during start-up")
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


#: Start-up failures a user can fix: all reported alike, as "worker failed to
#: start: ..." on the ready pipe, so one tier (the first found).
_USER_ERRORS = (UserError, CommError, OSError, ValueError, ProtocolError, trio.TooSlowError)


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
        await worker.wait_closed()
        return
    logger.warning("worker did not close in time; exiting now")
    if worker.local_directory:
        shutil.rmtree(worker.local_directory, ignore_errors=True)
    os._exit(1)


def _child_main() -> None:
    """Entry point of a nanny's worker process (``python -m trioflow.process.nanny``)."""
    ready_fd = int(os.environ.pop("TRIOFLOW_NANNY_READY_FD", "-1"))
    try:
        start = read_start_message(sys.stdin.buffer)
    except ProtocolError as exc:
        line = f"ERROR bad start message from the nanny: {exc}"
        if ready_fd >= 0:
            os.write(ready_fd, (line.replace("\n", " ") + "\n").encode())
        sys.exit(3)
    if start is None:
        sys.exit(0)
    sys.exit(run_worker_process(start, ready_fd=ready_fd, watch_stdin=True))


if __name__ == "__main__":
    _child_main()
