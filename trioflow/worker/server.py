"""The worker: a Trio shell around :class:`~trioflow.worker.state.WorkerState`.

Theory of operation
-------------------
``Worker.serve`` builds this nursery tree::

    Worker nursery
     ├ listener: peers fetch data (GetData), clients scatter (PutData) and run
     │  functions (RunFunction)
     ├ scheduler stream: register, then receive ComputeTask / FreeKeys /
     │  CloseWorker; a BatchedSend owns the write side
     ├ executor loop: batches of finished jobs -> state events
     ├ heartbeat loop: memory, CPU, counts -> scheduler
     └ one task per transfer from a peer (GatherDep)

Every event goes through :meth:`Worker._handle`, which feeds the state
machine and carries out what it returns.  The shell decides nothing about
tasks or the scheduler link: scheduler messages become events through
``_FROM_SCHEDULER``, instructions are carried out through ``_INSTRUCTIONS``,
peer requests are answered through ``_PEER_REQUESTS`` (tables at the end of
this module); the liveness of the scheduler link is the state's
(:class:`~trioflow.worker.state.SchedulerTimerEvent`), the shell only fires
the timer and notes when it last heard the scheduler.  Values live in
``self.data`` (a plain dict, or the spilling store of
:mod:`trioflow.worker.spill` under a memory limit); the state machine only
ever sees keys and sizes.

Task functions and arguments are unpickled in the executor thread, not on
the event loop (:mod:`trioflow.worker.jobs`).  A result that cannot be
pickled makes the task err with a message naming its type; the worker
carries on.

When the scheduler stream breaks, the worker either closes
(``reconnect=False``) or keeps its data and registers again when a scheduler
answers at that address, giving up after ``death_timeout`` seconds.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..comm import BatchedSend, Comm, CommClosedError, CommError, ConnectionPool, connect, listen
from ..comm.addressing import Address, parse_address
from ..config import WorkerConfig, build_config, load_config
from ..errors import RegistrationRefused
from ..process.lifecycle import FINAL, Status, ended_in_failure
from ..process.malloc import trim_process_memory
from ..process.system import ProcessMeter
from ..process.workspace import WORKSPACE_PREFIX, claim_workspace, purge_stale_workspaces
from ..protocol import messages as m
from ..protocol.codec import ProtocolError
from ..protocol.serialize import (
    SerializationError,
    Serialized,
    dumps,
    loads,
    loads_function,
)
from ..sizeof import sizeof
from . import state as ws
from .executor import ThreadExecutor, thread_state
from .jobs import error_record, make_job
from .profile import Sampler
from .spill import SpillBuffer

logger = logging.getLogger("trioflow.worker")

__all__ = ["Worker", "get_worker"]


def get_worker() -> Worker:
    """The worker running the current task.

    Raises:
        ValueError: not called from inside a task on a worker.
    """
    w = getattr(thread_state, "worker", None)
    if w is None:
        raise ValueError("get_worker() called outside of a task running on a worker")
    return w  # type: ignore[no-any-return]


class Worker:
    """A worker process's server; start it with ``await nursery.start(worker.serve)``."""

    def __init__(
        self,
        scheduler_address: str | None = None,
        *,
        config: WorkerConfig | None = None,
        security: Any = None,
        workspace: str | None = None,
        nanny: str = "",
        **settings: Any,
    ) -> None:
        """``Worker("tcp://scheduler:8786", nthreads=2, memory_limit=...)``
        (dask's keywords), or ``Worker(config=WorkerConfig(...))``.

        Args:
            scheduler_address: the scheduler to register with.
            config: the whole configuration at once, instead of the address
                and keywords.
            security: TLS settings (:class:`~trioflow.Security`).
            workspace: a scratch directory made for this worker (by its
                nanny, which removes it even when the worker is killed);
                without one the worker makes its own in ``local_directory``.
            nanny: the supervising nanny's address, if any.
            **settings: the fields of :class:`~trioflow.config.WorkerConfig`
                (``nthreads``, ``name``, ``memory_limit``, ``resources``,
                ``listen_address``, ``death_timeout``, ...).

        Raises:
            TypeError: an unknown keyword, or both ``config`` and settings.
            ValueError: a bad value (one line naming the field).
        """
        if config is None:
            if scheduler_address is None:
                raise TypeError("Worker() needs the scheduler's address (or config=)")
            if settings.get("name", "") is None:
                del settings["name"]
            config = build_config(WorkerConfig, "Worker", {"scheduler_address": scheduler_address, **settings})
        elif scheduler_address is not None or settings:
            raise TypeError("Worker() takes config= or the scheduler address and keywords, not both")
        #: The configuration, whole (the attributes below are copies of it).
        self.config = config
        self.scheduler_address = config.scheduler_address
        self.nthreads = config.nthreads
        self.id = f"worker-{uuid.uuid4().hex[:8]}"
        self.name = config.name
        self.memory_limit = config.memory_limit
        self.resources = dict(config.resources)
        self.security = security
        sched = parse_address(config.scheduler_address, default_port=8786)
        if sched.scheme == "inproc":
            from ..comm.inproc import new_inproc_name

            default_listen = f"inproc://{new_inproc_name('worker')}"
        else:
            default_listen = f"{sched.scheme}://127.0.0.1:0"
        self.listen_address = config.listen_address or default_listen
        self.contact_address = config.contact_address
        self._local_directory_parent = config.local_directory
        #: A directory made for us (by our nanny, which removes it even when
        #: we are killed); otherwise we make one inside ``local_directory``.
        self._workspace = workspace
        self.local_directory = ""
        self.reconnect = config.reconnect
        self.death_timeout = config.death_timeout
        self.heartbeat_interval = config.heartbeat_interval
        self.nanny = nanny
        self.validate = config.validate
        self.connect_timeout = config.connect_timeout
        self.address = ""
        self.data: dict[str, Any] | SpillBuffer = {}
        self._serialized: dict[str, Serialized] = {}
        self.state: ws.WorkerState | None = None
        self.status = Status.created
        self.batched: BatchedSend | None = None
        self._close_event = trio.Event()
        self._closed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.executor: ThreadExecutor | None = None
        self.pool: ConnectionPool | None = None
        self.scheduler_id = ""
        self.bandwidth = 100e6
        self.transfer_log: list[dict[str, Any]] = []
        self.task_log: list[tuple[str, float, float, int]] = []
        #: Finished runs for ``client.get_task_stream``, newest last:
        #: (key, thread, start, stop, "OK" | "error", nbytes, type name).
        self.task_records: collections.deque[tuple[str, int, float, float, str, int, str]] = collections.deque(maxlen=10_000)
        #: What happened to keys here, for ``client.story``:
        #: (key, what, wall-clock time, detail), newest last.
        self.story_log: collections.deque[tuple[str, str, float, str]] = collections.deque(maxlen=20_000)
        #: The statistical profiler (None while stopped or switched off).
        self.profiler: Sampler | None = None
        self.close_reason = ""
        self._proc = ProcessMeter()
        self.services: dict[str, int] = {}
        self.dashboard_address = config.dashboard_address
        self.bytes_transferred = 0
        self._unreported_transfers: list[tuple[str, int, float, float, int]] = []
        self.dashboard_prefix = config.dashboard_prefix
        # Memory management (only with a memory limit): spill least recently
        # used values past target * limit of managed bytes; stop starting
        # tasks while the process uses more than pause * limit.  (The nanny
        # restarts the worker at 95%.)  None switches a threshold off.
        self.memory_target_fraction = config.memory_target_fraction
        self.memory_pause_fraction = config.memory_pause_fraction
        # Tuning of the state machine, read once (none of it has a
        # dask.config key, so dask is not imported for it).
        self._tuning = load_config(use_dask=False).config.worker
        #: The client that tasks get from get_client(): made on first use,
        #: hosted in this worker's loop, closed with the worker.
        self._task_client: Any = None
        self._task_client_lock = threading.Lock()
        #: Seceded runs waiting for a slot (rejoin): key -> their thread's event.
        self._rejoin_waiters: dict[str, threading.Event] = {}
        #: Actor instances held here, by key (see :mod:`trioflow.actor`).
        self.actors: dict[str, Any] = {}
        from .._plugin_host import PluginHost

        #: Worker plugins registered by clients (see :mod:`trioflow.plugins`).
        self._plugin_host = PluginHost(self)
        self.plugins = self._plugin_host.plugins

    async def __aenter__(self) -> Worker:
        """``async with Worker(...)`` in Trio or asyncio (see :class:`~trioflow.client.bridge.ServerContext`)."""
        from ..client.bridge import ServerContext

        self._context = ServerContext(self)
        return await self._context.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> None:
        await self._context.__aexit__(*exc)

    def __repr__(self) -> str:
        return f"<Worker {self.address or '(not started)'} name={self.name!r} status={self.status}>"

    # ------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until closed (by :meth:`close`, the scheduler, or cancellation).

        ``task_status.started`` fires once registered with the scheduler.
        """
        self.status = Status.starting
        failed = False
        parent = self._local_directory_parent
        if parent:
            os.makedirs(parent, exist_ok=True)
        if self._workspace:
            os.makedirs(self._workspace, exist_ok=True)
            self.local_directory = self._workspace
        else:
            purge_stale_workspaces(parent or tempfile.gettempdir())
            self.local_directory = tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=parent or None)
        claim_workspace(self.local_directory)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.pool = ConnectionPool(security=self.security, role="worker", name=self.name, timeout=self.connect_timeout)
                listener = await nursery.start(
                    lambda task_status: listen(
                        self.listen_address,
                        self._handle_peer,
                        security=self.security,
                        role="worker",
                        name=self.name,
                        task_status=task_status,
                    )
                )
                if self.dashboard_address is not None:
                    from ..diagnostics import serve_dashboard

                    self.services["dashboard"] = await nursery.start(serve_dashboard, self, self.dashboard_address)
                comm = await self._connect_scheduler(initial=True)
                self.address = self._contact(listener.address, comm)
                if not self.name:
                    self.name = self.address
                t = self._tuning
                self.state = ws.WorkerState(
                    address=self.address,
                    nthreads=self.nthreads,
                    resources=self.resources,
                    validate=self.validate,
                    prefetch_max=t.prefetch_max,
                    prefetch_horizon=t.prefetch_horizon,
                    prefetch_below=t.prefetch_below,
                    memory_resume_fraction=t.memory.resume,
                )
                if self.memory_limit and self.memory_target_fraction:
                    self.data = SpillBuffer(
                        os.path.join(self.local_directory, "spill"), int(self.memory_limit * self.memory_target_fraction)
                    )
                self.executor = ThreadExecutor(self.nthreads, name=f"trioflow-{self.name}", context=self)
                if self.config.profile_interval:
                    self.profiler = Sampler(self.executor.running, interval=self.config.profile_interval, cycle=self.config.profile_cycle_interval)
                    self.profiler.start()
                await self._register(comm)
                self.status = Status.running
                nursery.start_soon(self._executor_loop)
                nursery.start_soon(self._heartbeat_loop)
                if self.memory_limit and self.memory_pause_fraction:
                    nursery.start_soon(self._memory_monitor)
                nursery.start_soon(self._scheduler_loop, comm)
                task_status.started(self)
                await self._close_event.wait()
                await self._close_task_client()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            failed = ended_in_failure(exc)
            raise
        finally:
            self.status = Status.failed if failed else Status.closed
            with trio.CancelScope(shield=True):
                await self._close_task_client()
                for waiter in list(self._rejoin_waiters.values()):
                    waiter.set()  # a thread waiting to rejoin goes on (its result is lost)
                self._rejoin_waiters.clear()
                if self.profiler is not None:
                    await trio.to_thread.run_sync(self.profiler.stop)
                if self.executor is not None:
                    await self.executor.aclose(timeout=2)
                if self.plugins:
                    with trio.move_on_after(5):
                        await self._plugin_host.teardown_all()
                if self.pool is not None:
                    await self.pool.aclose()
            if isinstance(self.data, SpillBuffer):
                self.data.close()
            self.data.clear()
            self._serialized.clear()
            self.actors.clear()
            shutil.rmtree(self.local_directory, ignore_errors=True)
            self._closed.set()

    def close(self, reason: str = "") -> None:
        """Ask the worker to stop; :meth:`serve` returns soon after."""
        if not self.close_reason:
            self.close_reason = reason
        if self.status not in FINAL:  # closing a closed worker leaves it closed
            self.status = Status.closing
        self._close_event.set()

    async def aclose(self, reason: str = "closed", *, timeout: float = 5) -> None:
        """Close cleanly: tell the scheduler, stop, wait (bounded)."""
        if self.status in FINAL:
            return
        if self.batched is not None:
            try:
                self.batched.send(m.WorkerUnregister(reason=reason))
                await self.batched.aclose(timeout=1)
            except CommClosedError:
                pass
        self.close(reason)
        with trio.move_on_after(timeout):
            await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until :meth:`serve` has returned (``status`` closed or failed)."""
        await self._closed.wait()

    def _contact(self, bound: str, scheduler_comm: Comm) -> str:
        if self.contact_address:
            return self.contact_address
        addr = parse_address(bound)
        if addr.scheme != "inproc" and addr.host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
            stream = getattr(scheduler_comm, "_stream", None)
            sock = getattr(stream, "socket", None) or getattr(getattr(stream, "transport_stream", None), "socket", None)
            if sock is not None:
                try:
                    host = sock.getsockname()[0]
                except OSError:
                    pass
            return str(Address(addr.scheme, host, addr.port))
        return bound

    async def _connect_scheduler(self, *, initial: bool) -> Comm:
        """Connect, retrying until ``death_timeout`` (forever if None)."""
        deadline = trio.current_time() + self.death_timeout if self.death_timeout is not None else None
        delay = 0.1
        logged = False
        while True:
            try:
                return await connect(
                    self.scheduler_address,
                    security=self.security,
                    role="worker",
                    name=self.name,
                    timeout=self.connect_timeout if deadline is None else max(min(self.connect_timeout, deadline - trio.current_time()), 0.1),
                )
            except (CommError, OSError) as exc:
                if deadline is not None and trio.current_time() >= deadline:
                    raise CommError(
                        f"could not reach the scheduler at {self.scheduler_address} within --death-timeout {self.death_timeout}s: {exc}"
                    ) from None
                if not logged:
                    logger.info("waiting for the scheduler at %s: %s", self.scheduler_address, exc)
                    logged = True
                await trio.sleep(delay)
                delay = min(delay * 1.5, 1.0)

    async def _register(self, comm: Comm) -> None:
        assert self.state is not None
        held = {k: t.nbytes for k, t in self.state.tasks.items() if t.state == "memory"}
        await comm.send(
            m.RegisterWorker(
                address=self.address,
                name=self.name,
                nthreads=self.nthreads,
                memory_limit=self.memory_limit,
                resources=self.resources,
                nanny=self.nanny,
                pid=os.getpid(),
                local_directory=self.local_directory,
                nbytes=held,
                services=self.services,
            )
        )
        with trio.fail_after(self.connect_timeout):
            reply = await comm.recv()
        if isinstance(reply, m.ErrorReply):
            raise RegistrationRefused(f"the scheduler refused registration: {reply.message}")
        if not isinstance(reply, m.WorkerRegistered):
            raise CommError(f"unexpected registration reply {reply.op!r}")
        self.scheduler_id = reply.scheduler_id
        for name, data in reply.plugins.items():
            if not self._plugin_host.has(name, data):
                await self._plugin_host.setup(name, data)  # failures are logged
        self._handle(
            ws.RegisteredEvent(
                now=trio.current_time(), heartbeat_interval=reply.heartbeat_interval, worker_ttl=reply.worker_ttl, forget=reply.forget
            )
        )
        self.batched = BatchedSend(comm)
        logger.info("Registered to: %s", self.scheduler_address)

    # ------------------------------------------------------------ scheduler stream

    async def _scheduler_loop(self, comm: Comm) -> None:
        self._scheduler_comm = comm
        try:
            await self._scheduler_loop_inner(comm)
        finally:
            # Cancelled (worker closing) or done: the stream must not outlive us.
            with trio.CancelScope(shield=True):
                await self._scheduler_comm.aclose()

    async def _scheduler_loop_inner(self, comm: Comm) -> None:
        while True:
            assert self.batched is not None
            batched = self.batched
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(self._run_batched, batched)
                    n.start_soon(self._watch_scheduler)
                    if await self._receive_from_scheduler(comm, batched):
                        return
            except* (CommClosedError, trio.BrokenResourceError) as group:
                logger.info("lost the scheduler at %s: %s", self.scheduler_address, group.exceptions[0])
            except* ProtocolError as group:
                logger.warning("bad message from the scheduler: %s", group.exceptions[0])
            await comm.aclose()
            if self.status != "running":
                return
            if not self.reconnect:
                self.close("scheduler lost (--no-reconnect)")
                return
            self._reset_for_reconnect()
            try:
                comm = await self._rejoin()
            except (CommError, trio.TooSlowError) as exc:
                logger.warning("%s", exc)
                self.close("scheduler lost")
                return
            self._scheduler_comm = comm

    async def _receive_from_scheduler(self, comm: Comm, batched: BatchedSend) -> bool:
        """Dispatch the scheduler's messages (through ``_FROM_SCHEDULER``)
        until one asks us to close: then True."""
        while True:
            msg = await comm.recv()
            assert self.state is not None
            self.state.scheduler_heard_at = trio.current_time()
            to_event = _FROM_SCHEDULER.get(type(msg))
            if to_event is not None:
                self._note_story(msg)
                self._handle(to_event(msg))
            elif type(msg) is m.CloseWorker:
                logger.info("the scheduler asked us to close: %s", msg.reason)
                await batched.aclose(timeout=1)
                self.close(f"scheduler: {msg.reason}")
                return True
            else:
                logger.warning("unexpected %r from the scheduler, ignored", msg.op)
            del msg  # a ComputeTask's run spec is not kept alive while idle

    def _note_story(self, msg: m.Message) -> None:
        """Log what the scheduler asked of which keys (``client.story``)."""
        now = time.time()
        if type(msg) is m.ComputeTask:
            self.story_log.append((msg.key, "compute-task", now, ""))
        elif type(msg) is m.FreeKeys:
            self.story_log.extend((k, "free-keys", now, "") for k in msg.keys)
        elif type(msg) is m.StealRequest:
            self.story_log.append((msg.key, "steal-request", now, ""))

    async def _watch_scheduler(self) -> None:
        """Fire the state's liveness timer: it gives up on a scheduler that
        has said nothing (not even a heartbeat acknowledgement) for too long
        (:class:`~trioflow.worker.state.DisconnectScheduler`, raised here as
        CommClosedError)."""
        while True:
            assert self.state is not None
            now = trio.current_time()
            instructions = self.state.handle(ws.SchedulerTimerEvent(now=now))
            for inst in instructions:
                if type(inst) is ws.DisconnectScheduler:
                    raise CommClosedError(inst.reason)
            self._run_instructions(instructions)
            await trio.sleep(self.state.scheduler_timer_delay(now))

    async def _rejoin(self) -> Comm:
        """Connect and register again after losing the scheduler.

        A scheduler that has not yet noticed our old stream is gone refuses
        the address (or name) as taken; it drops the old entry within its
        worker TTL, so keep asking for twice that long."""
        assert self.state is not None
        give_up = self.state.rejoin_deadline(trio.current_time())
        while True:
            comm = await self._connect_scheduler(initial=False)
            try:
                await self._register(comm)
                return comm
            except RegistrationRefused as exc:
                await comm.aclose()
                if trio.current_time() > give_up:
                    raise
                logger.info("%s; asking again", exc)
                await trio.sleep(1.0)
            except BaseException:
                await comm.aclose()
                raise

    async def _run_batched(self, batched: BatchedSend) -> None:
        try:
            await batched.run()
        except CommClosedError:
            pass

    def _reset_for_reconnect(self) -> None:
        """Forget everything but the data held: a new scheduler starts afresh."""
        assert self.state is not None
        self.state = self.state.after_scheduler_lost()

    # ------------------------------------------------------------ events and instructions

    def _handle(self, event: Any) -> None:
        assert self.state is not None
        try:
            instructions = self.state.handle(event)
        except ws.InvalidWorkerEvent as exc:
            logger.debug("ignored event: %s", exc)
            return
        self._run_instructions(instructions)

    def _run_instructions(self, instructions: list[Any]) -> None:
        for inst in instructions:
            _INSTRUCTIONS[type(inst)](self, inst)
        if self._plugin_host.watchers:
            _report_transitions(self._plugin_host, instructions)

    def _send_msg(self, inst: ws.SendMsg) -> None:
        self._send(inst.msg)

    def _start_gather(self, inst: ws.GatherDep) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._gather_dep, inst)

    def _drop_data(self, inst: ws.DropData) -> None:
        self.data.pop(inst.key, None)
        self._serialized.pop(inst.key, None)
        self.actors.pop(inst.key, None)

    def _grant_rejoin(self, inst: ws.GrantRejoin) -> None:
        waiter = self._rejoin_waiters.pop(inst.key, None)
        if waiter is not None:
            waiter.set()

    # ------------------------------------------------------------ tasks reaching back (secede, rejoin, get_client)

    def _secede_current(self) -> None:
        """The calling task's thread leaves the pool (see :func:`trioflow.secede`).

        Runs in an executor thread."""
        assert self.executor is not None
        key = getattr(thread_state, "key", None)
        if key is None:
            raise ValueError("secede() called outside of a task running on a worker")
        self.executor.secede()
        self._from_thread(self._handle_quietly, ws.SecedeEvent(key=key))

    def _rejoin_current(self) -> None:
        """Wait for a slot for the calling, seceded task (see :func:`trioflow.rejoin`).

        Runs in an executor thread."""
        key = getattr(thread_state, "key", None)
        if key is None:
            raise ValueError("rejoin() called outside of a task running on a worker")
        waiter = threading.Event()

        def ask() -> None:
            assert self.state is not None
            self._rejoin_waiters[key] = waiter
            try:
                instructions = self.state.handle(ws.RejoinEvent(key=key))
            except ws.InvalidWorkerEvent:
                # Not seceded (or a run from before a reconnect): nothing to wait for.
                self._rejoin_waiters.pop(key, None)
                waiter.set()
                return
            self._run_instructions(instructions)

        self._from_thread(ask)
        waiter.wait()

    def log_event(self, topic: str | list[str], msg: Any) -> None:
        """Log ``msg`` (picklable) under ``topic`` (or each of several) at
        the scheduler; from a task or the worker's loop."""
        event = m.LogEvent(topics=[topic] if isinstance(topic, str) else list(topic), time=time.time(), msg=dumps(msg))
        if self.executor is not None and getattr(thread_state, "worker", None) is self:
            try:
                self.executor._token.run_sync_soon(self._send, event)
            except trio.RunFinishedError:
                pass
        else:
            self._send(event)

    def _handle_quietly(self, event: Any) -> None:
        if self.state is not None:
            self._handle(event)

    def _from_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.executor is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self.executor._token)

    def _client_for_tasks(self) -> Any:
        """The blocking client tasks share (see :func:`trioflow.get_client`),
        connected on first use to this worker's scheduler with its security.

        Runs in an executor thread."""
        with self._task_client_lock:
            if self._task_client is None:
                assert self.executor is not None
                from ..client.current import WorkerClient

                token = self.executor._token
                core = trio.from_thread.run(self._start_task_client, trio_token=token)
                self._task_client = WorkerClient(core, token)
            return self._task_client

    async def _start_task_client(self) -> Any:
        from ..client.core import AsyncClient

        assert self._nursery is not None
        core = AsyncClient(self.scheduler_address, security=self.security, timeout=self.connect_timeout)
        await core._start(self._nursery)
        return core

    async def _close_task_client(self) -> None:
        client, self._task_client = self._task_client, None
        if client is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await client._core.aclose()

    def _disconnect_scheduler(self, inst: ws.DisconnectScheduler) -> None:
        # Only the liveness timer decides this, and _watch_scheduler acts
        # on it before the rest of its instructions run.
        raise CommClosedError(inst.reason)

    def _send(self, msg: m.Message) -> None:
        if self.batched is None:
            return
        try:
            self.batched.send(msg)
        except CommClosedError:
            pass  # the scheduler loop notices and reconnects

    def _execute(self, inst: ws.Execute) -> None:
        assert self.executor is not None
        try:
            deps = {k: self.data[k] for k in inst.dependencies}
        except KeyError as exc:
            # Make the error now: ``exc`` is unbound once this block ends, and
            # a job that raises NameError instead would leave the task
            # 'executing' for ever.
            err = RuntimeError(f"dependency {exc} missing on {self.address}")
            self.executor.submit(lambda: error_record(inst.key, err, 0.0, 0.0, 0))
            return
        self.executor.submit(make_job(inst.key, inst.function, inst.args, deps))

    async def _executor_loop(self) -> None:
        assert self.executor is not None
        while True:
            # One call per batch, so that nothing of a batch (results that may
            # be large arrays) stays alive in this frame while we wait.
            self._executor_results(await self.executor.next_batch())

    def _executor_results(self, batch: list[Any]) -> None:
        assert self.state is not None
        events: list[Any] = []
        for rec in batch:
            if isinstance(rec, BaseException):
                logger.error("executor failure: %r", rec)
                continue
            key = rec[1]
            current = self.state.is_current_run(key)
            if not current and key not in self.state.superseded:
                continue  # started before a reconnect: the state knows nothing of it
            if rec[0] == "reschedule":
                events.append(ws.ExecuteRescheduleEvent(key=key))
            elif rec[0] == "ok":
                _, key, result, nbytes, type_name, start, stop, index, serialized = rec
                # A superseded run's result is dropped: the key has a
                # value put (scattered) here meanwhile, which wins.
                if current:
                    self._store(key, result, nbytes)
                    if serialized is not None:
                        self._serialized[key] = serialized
                events.append(ws.ExecuteSuccessEvent(key=key, nbytes=nbytes, type_name=type_name, start=start, stop=stop, thread=index))
                self.task_log.append((key, start, stop, index))
                self.task_records.append((key, index, start, stop, "OK", nbytes, type_name))
                self.story_log.append((key, "executing", start, ""))
                self.story_log.append((key, "memory", stop, ""))
            else:
                _, key, ser, text, tb, type_name, start, stop, index = rec
                self.task_records.append((key, index, start, stop, "error", 0, type_name))
                self.story_log.append((key, "executing", start, ""))
                self.story_log.append((key, "error", stop, text))
                events.append(
                    ws.ExecuteFailureEvent(
                        key=key, exception=ser, exception_text=text, traceback_text=tb, type_name=type_name, start=start, stop=stop, thread=index
                    )
                )
        if len(self.task_log) > 10_000:
            del self.task_log[:5_000]
        if events:
            # (A task that erred is forgotten by the state once reported.)
            try:
                instructions = self.state.handle_many(events)
            except ws.InvalidWorkerEvent as exc:
                logger.debug("ignored execution result: %s", exc)
                return
            self._run_instructions(instructions)

    async def _gather_dep(self, inst: ws.GatherDep) -> None:
        assert self.pool is not None
        start = time.time()
        try:
            reply = await self.pool.rpc(inst.worker, m.GetData(keys=list(inst.keys)), m.DataReply, timeout=max(60, inst.nbytes / 10e6))
        except Exception as exc:  # noqa: BLE001 - any failure means "not from there"
            logger.info("could not fetch %d keys from %s: %s", len(inst.keys), inst.worker, exc)
            self.pool.drop(inst.worker)
            self._handle(ws.GatherDepFailedEvent(worker=inst.worker, keys=list(inst.keys)))
            return
        nbytes: dict[str, int] = {}
        for key, ser in reply.data.items():
            if key not in inst.keys:
                continue
            if self.state is not None and not self.state.takes_fetched_value(key):
                continue
            try:
                value = loads(ser)
            except SerializationError as exc:
                logger.warning("could not deserialize %r from %s: %s", key, inst.worker, exc)
                continue
            nbytes[key] = sizeof(value)
            self._store(key, value, nbytes[key])
        stop = time.time()
        total = sum(ser.nbytes for ser in reply.data.values())
        if total > 1_000_000 and stop > start:
            self.bandwidth = 0.8 * self.bandwidth + 0.2 * (total / (stop - start))
        self.transfer_log.append({"who": inst.worker, "keys": list(nbytes), "bytes": total, "start": start, "stop": stop})
        self.story_log.extend((k, "fetched", stop, inst.worker) for k in nbytes)
        self.bytes_transferred += total
        if len(self._unreported_transfers) < 1000:
            self._unreported_transfers.append((inst.worker, total, start, stop, len(nbytes)))
        if len(self.transfer_log) > 1000:
            del self.transfer_log[:500]
        self._handle(ws.GatherDepDoneEvent(worker=inst.worker, nbytes=nbytes, missing=list(reply.missing)))

    def _store(self, key: str, value: Any, nbytes: int) -> None:
        if isinstance(self.data, SpillBuffer):
            self.data.set(key, value, nbytes)
        else:
            self.data[key] = value

    async def _memory_monitor(self) -> None:
        """Pause (run no new tasks, tell the scheduler) while the process is
        over the pause threshold; spill to get back under it."""
        assert self.memory_pause_fraction is not None
        pause_at = self.memory_limit * self.memory_pause_fraction
        while True:
            await trio.sleep(0.1)
            rss = self._proc.rss()
            if rss is None:
                continue
            if rss > pause_at and isinstance(self.data, SpillBuffer) and self.data.fast:
                self.data.spill_lru(int(rss - pause_at * self._tuning.memory.resume))
                if trim_process_memory():
                    rss = self._proc.rss() or rss
            self._handle(ws.MemorySampleEvent(rss=rss, pause_at=pause_at))  # the state decides

    def _report_pause(self, inst: ws.ReportPause) -> None:
        assert self.memory_pause_fraction is not None
        if inst.paused:
            logger.warning(
                "worker %s is using %d MB, over %d%% of its %d MB limit: pausing",
                self.address, inst.rss // 2**20, int(self.memory_pause_fraction * 100), self.memory_limit // 2**20,
            )
        else:
            logger.info("worker %s is using %d MB again: resuming", self.address, inst.rss // 2**20)
        self._send(self._heartbeat())

    async def _heartbeat_loop(self) -> None:
        self._proc.cpu_percent()
        while True:
            assert self.state is not None
            await trio.sleep(self.state.heartbeat_interval)  # the scheduler's
            self._send(self._heartbeat())

    def _heartbeat(self) -> m.Heartbeat:
        assert self.state is not None and self.executor is not None
        rss = self._proc.rss() or 0
        cpu = self._proc.cpu_percent()
        return m.Heartbeat(
            memory=rss,
            managed=self.data.fast_bytes if isinstance(self.data, SpillBuffer) else self.state.nbytes_in_memory,
            spilled=self.data.slow_bytes if isinstance(self.data, SpillBuffer) else 0,
            cpu=cpu,
            executing=self.state.n_executing,
            ready=self.state.n_ready,
            in_memory=len(self.data),
            bandwidth=self.bandwidth,
            paused=self.state.paused,
            transfers=self._take_transfers(),
        )

    def _take_transfers(self) -> list[tuple[str, int, float, float, int]]:
        out, self._unreported_transfers = self._unreported_transfers, []
        return out

    # ------------------------------------------------------------ peers

    async def _handle_peer(self, comm: Comm) -> None:
        while True:
            try:
                msg = await comm.recv()
            except CommClosedError:
                return
            serve = _PEER_REQUESTS.get(type(msg))
            if serve is not None:
                reply: m.Message = await serve(self, msg)
            else:
                reply = m.ErrorReply(message=f"a worker does not serve {msg.op!r} requests")
            await comm.send(reply)
            # Hold neither while the connection idles: a DataReply's frames are
            # views of the values sent, and would keep a released 256 MiB
            # array alive for as long as the peer keeps its pooled connection.
            del msg, reply

    async def _serve_get_data(self, msg: m.GetData) -> m.Message:
        return self._get_data(msg.keys)

    async def _serve_put_data(self, msg: m.PutData) -> m.Message:
        return self._put_data(msg.data)

    def _get_data(self, keys: list[str]) -> m.Message:
        data: dict[str, Serialized] = {}
        missing: list[str] = []
        errors: list[str] = []
        for key in keys:
            if key not in self.data:
                missing.append(key)
                continue
            ser = self._serialized.get(key)
            if ser is None and isinstance(self.data, SpillBuffer):
                ser = self.data.serialized(key)
            if ser is None:
                try:
                    ser = dumps(self.data[key])
                except SerializationError as exc:
                    errors.append(f"{key}: {exc}")
                    continue
            data[key] = ser
        if errors:
            return m.ErrorReply(message="; ".join(errors))
        return m.DataReply(data=data, missing=missing)

    def _put_data(self, data: dict[str, Serialized]) -> m.Message:
        nbytes: dict[str, int] = {}
        try:
            values = {k: loads(v) for k, v in data.items()}
        except SerializationError as exc:
            return m.ErrorReply(message=f"cannot store scattered data: {exc}")
        for k, v in values.items():
            nbytes[k] = sizeof(v)
            self._store(k, v, nbytes[k])
            self._serialized.pop(k, None)
        self._handle(ws.DataPutEvent(nbytes=nbytes))
        return m.Ok()

    async def _serve_actor_call(self, msg: m.ActorCall) -> m.Message:
        from ..actor import serve_actor_call

        return await serve_actor_call(self, msg)

    async def _serve_profile(self, msg: m.ProfileRequest) -> m.Message:
        # Merging a long window's trees takes a while: not on the event loop.
        tree = await trio.to_thread.run_sync(lambda: json.dumps(self.profile_tree(msg.prefix, msg.start, msg.stop)))
        return m.ProfileReply(tree=tree, prefixes=self.profiler.prefixes() if self.profiler else [])

    async def _serve_call_stacks(self, msg: m.CallStackRequest) -> m.Message:
        return m.CallStackReply(stacks=self.call_stacks(msg.keys))

    def call_stacks(self, keys: list[str] | None = None) -> dict[str, list[str]]:
        """The stacks of the tasks running now (``keys``: only those), as
        text lines, outermost frame first."""
        import sys

        from .profile import call_stack

        if self.executor is None:
            return {}
        frames = sys._current_frames()
        wanted = None if keys is None else set(keys)
        try:
            return {k: call_stack(frames.get(ident)) for ident, k in list(self.executor.running.items()) if wanted is None or k in wanted}
        finally:
            del frames

    def profile_tree(self, prefix: str | None = None, start: float | None = None, stop: float | None = None) -> dict[str, Any]:
        """This worker's profile (dask's dict shape; empty with the profiler off)."""
        from .profile import create

        return create() if self.profiler is None else self.profiler.get(prefix, start, stop)

    async def _run_function(self, msg: m.RunFunction) -> m.Message:
        def run() -> Any:
            thread_state.worker = self
            try:
                func = loads_function(msg.function)
                a, kw = loads(msg.args)
                return ("ok", func(*a, **kw))
            except BaseException as exc:  # noqa: BLE001
                return ("err", exc)
            finally:
                thread_state.worker = None

        kind, value = await trio.to_thread.run_sync(run)
        if kind == "ok":
            try:
                return m.RunReply(result=dumps(value))
            except SerializationError as exc:
                value = exc
        tb = "".join(traceback.format_exception(type(value), value, value.__traceback__))
        try:
            ser: Serialized | None = dumps(value)
        except SerializationError:
            ser = None
        return m.RunReply(result=None, exception=ser, exception_text=f"{type(value).__name__}: {value}", traceback_text=tb, type_name=type(value).__name__)

    async def _plugin_setup(self, msg: m.PluginSetup) -> m.Message:
        return m.PluginReply(failures=await self._plugin_host.setup(msg.name, msg.plugin))

    async def _plugin_teardown(self, msg: m.PluginTeardown) -> m.Message:
        return m.PluginReply(failures=await self._plugin_host.teardown(msg.name))


def _report_transitions(host: Any, instructions: list[Any]) -> None:
    """Tell worker plugins of the transitions the machine's instructions show."""
    for inst in instructions:
        kind = type(inst)
        if kind is ws.Execute:
            host.transition(inst.key, "ready", "executing")
        elif kind is ws.SendMsg:
            msg = inst.msg
            if type(msg) is m.TaskFinished:
                host.transition(msg.key, "executing", "memory")
            elif type(msg) is m.TaskErred:
                host.transition(msg.key, "executing", "error")


# ---------------------------------------------------------------- dispatch tables

#: Scheduler message type -> the state event it becomes (CloseWorker, the
#: one message that is not an event, is handled by the receive loop).
_FROM_SCHEDULER: dict[type, Callable[[Any], ws.Event]] = {
    m.ComputeTask: lambda msg: ws.ComputeTaskEvent(msg=msg),
    m.AcquireReplicas: lambda msg: ws.AcquireReplicasEvent(who_has=msg.who_has, nbytes=msg.nbytes),
    m.StealRequest: lambda msg: ws.StealRequestEvent(key=msg.key),
    m.FreeKeys: lambda msg: ws.FreeKeysEvent(keys=msg.keys),
    m.HeartbeatAck: lambda msg: ws.HeartbeatAckEvent(heartbeat_interval=msg.heartbeat_interval, worker_ttl=msg.worker_ttl),
}

#: Instruction type -> the method of Worker that carries it out.
_INSTRUCTIONS: dict[type, Callable[[Worker, Any], None]] = {
    ws.Execute: Worker._execute,
    ws.SendMsg: Worker._send_msg,
    ws.GatherDep: Worker._start_gather,
    ws.DropData: Worker._drop_data,
    ws.ReportPause: Worker._report_pause,
    ws.DisconnectScheduler: Worker._disconnect_scheduler,
    ws.GrantRejoin: Worker._grant_rejoin,
}

#: Peer request type -> the method of Worker that answers it.
_PEER_REQUESTS: dict[type, Callable[[Worker, Any], Awaitable[m.Message]]] = {
    m.GetData: Worker._serve_get_data,
    m.PutData: Worker._serve_put_data,
    m.RunFunction: Worker._run_function,
    m.ActorCall: Worker._serve_actor_call,
    m.ProfileRequest: Worker._serve_profile,
    m.CallStackRequest: Worker._serve_call_stacks,
    m.PluginSetup: Worker._plugin_setup,
    m.PluginTeardown: Worker._plugin_teardown,
}
