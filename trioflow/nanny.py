"""The nanny: supervises one worker process and restarts it when it dies.

Theory of operation
-------------------
::

    Nanny nursery
     ├ listener (requests: NannyRestart, NannyKill)
     └ supervise loop
          start worker process (python -m trioflow.nanny)  ── stdin: config, then kept open
          read its status lines on a private pipe            (EOF on stdin = nanny gone)
            ALIVE            configured (start-up timeout ends here)
            READY <address>  registered with the scheduler
            ERROR <reason>   cannot start: give up, do not restart
          ├ memory watch: RSS > 95% of the limit -> restart
          └ wait for exit -> restart with backoff, or stop

The worker process reads its configuration as one JSON line from stdin and
then keeps stdin open: when the nanny dies, even by SIGKILL, the kernel
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

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import trio

from .comm import Comm, CommClosedError, listen
from .memory import MALLOC_ENV
from .protocol import messages as m
from .system import default_host, process_rss
from .workspace import WORKSPACE_PREFIX, purge_stale_workspaces

logger = logging.getLogger("trioflow.nanny")

__all__ = ["Nanny", "NannyStartError"]

READY_TIMEOUT = 60.0
MEMORY_TERMINATE_FRACTION = 0.95


class NannyStartError(RuntimeError):
    """The nanny's first worker process could not start; the message says why in one line."""


class Nanny:
    """Supervise a worker process; start with ``await nursery.start(nanny.serve)``."""

    def __init__(
        self,
        scheduler_address: str,
        *,
        name: str | None = None,
        nthreads: int = 1,
        memory_limit: int = 0,
        resources: dict[str, float] | None = None,
        security: Any = None,
        listen_address: str | None = None,
        worker_listen_address: str | None = None,
        contact_address: str | None = None,
        local_directory: str | None = None,
        reconnect: bool = True,
        death_timeout: float | None = None,
        preload: list[str] | None = None,
        dashboard_address: str | None = None,
        dashboard_prefix: str = "",
        grace: float = 5.0,
        memory_terminate_fraction: float = MEMORY_TERMINATE_FRACTION,
        env: dict[str, str] | None = None,
        **worker_options: Any,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.name = name or ""
        self.security = security
        self.memory_limit = memory_limit
        self.listen_address = listen_address
        self.grace = grace
        self.memory_terminate_fraction = memory_terminate_fraction
        self.env = env or {}
        self.config: dict[str, Any] = {
            "scheduler_address": scheduler_address,
            "name": self.name,
            "nthreads": nthreads,
            "memory_limit": memory_limit,
            "resources": resources or {},
            "security": security.to_dict() if security is not None else None,
            "listen_address": worker_listen_address,
            "contact_address": contact_address,
            "local_directory": local_directory,
            "reconnect": reconnect,
            "death_timeout": death_timeout,
            "preload": preload or [],
            "dashboard_address": dashboard_address,
            "dashboard_prefix": dashboard_prefix,
            "options": worker_options,
        }
        self.address = ""
        self.worker_address = ""
        self.process: trio.Process | None = None
        self.status = "init"
        self.restarts = 0
        self._restart_requested = False
        self._closing = False
        self._closed = trio.Event()
        self._worker_ready = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Nanny:
        """``async with Nanny(...)`` in Trio or asyncio (see :class:`~trioflow.client.bridge.ServerContext`)."""
        from .client.bridge import ServerContext

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
                    self.config["nanny"] = self.address
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
            # Our own nursery wraps it; the caller should see the one reason.
            errors, rest = group.split(NannyStartError)
            if errors is not None and rest is None:
                raise _first_leaf(errors) from None
            raise
        finally:
            self.status = "closed"
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
        parent = self.config["local_directory"]
        if parent:
            os.makedirs(parent, exist_ok=True)
        purge_stale_workspaces(parent or tempfile.gettempdir())
        scratch = tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=parent or None)
        config = {**self.config, "workspace": scratch}
        ready_r, ready_w = os.pipe()
        env = {**MALLOC_ENV, **os.environ, **self.env, "TRIOFLOW_NANNY_READY_FD": str(ready_w)}
        cmd = [sys.executable, "-m", "trioflow.nanny"]
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
        self.status = "starting"
        try:
            assert proc.stdin is not None
            try:
                await proc.stdin.send_all(json.dumps(config).encode() + b"\n")
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
                logger.error("worker process %d did not start within %ss", proc.pid, READY_TIMEOUT)
                await self._stop_process(proc)
                return proc.returncode if proc.returncode is not None else -1
            if line.startswith(b"READY "):
                self.worker_address = line[6:].strip().decode()
                self.status = "running"
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
            if self.status != "closed":
                self.status = "restarting" if not self._closing else "closing"

    async def _read_status(self, stream: trio.lowlevel.FdStream, proc: trio.Process | None) -> bytes | None:
        """One status line from the worker process (b"" at EOF), or None on
        timeout (only with ``proc``: the start-up phase)."""
        buf = self._status_buf
        with trio.move_on_after(READY_TIMEOUT if proc is not None else float("inf")):
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

    async def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """Stop the worker process (cleanly, with the ladder) and wait, at most
        ``timeout`` seconds, until the supervise loop has a new one registered.

        Raises:
            TimeoutError: no new worker within ``timeout``.
        """
        old = self.process
        if old is None or old.returncode is not None:
            return
        self._restart_requested = True
        await self._stop_process(old)
        with trio.move_on_after(timeout):
            while not (self.process is not old and self.status == "running"):
                if self._closed.is_set():
                    return
                await trio.sleep(0.02)
            return
        raise TimeoutError(f"worker process did not restart within {timeout}s")

    def close(self) -> None:
        self._closing = True
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def aclose(self, timeout: float = 10) -> None:
        """Stop the worker (ladder) and the nanny."""
        self._closing = True
        if self.process is not None and self.process.returncode is None:
            await self._stop_process(self.process)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.move_on_after(timeout):
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


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---------------------------------------------------------------- the worker process


def _child_main() -> None:
    """Entry point of a nanny's worker process (``python -m trioflow.nanny``)."""
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)
    config = json.loads(line)
    ready_fd = int(os.environ.pop("TRIOFLOW_NANNY_READY_FD", "-1"))
    from .daemon import run_worker_process

    code = run_worker_process(config, ready_fd=ready_fd, watch_stdin=True)
    sys.exit(code)


if __name__ == "__main__":
    _child_main()
