"""The scheduler: a Trio shell around :class:`~trioflow.scheduler.state.SchedulerState`.

Theory of operation
-------------------
``Scheduler.serve`` builds this nursery tree::

    Scheduler nursery
     ├ listener -> one task per connection:
     │    RegisterWorker -> worker stream (receive loop + BatchedSend)
     │    RegisterClient -> client stream (receive loop + BatchedSend)
     │    anything else  -> request/response loop (WhoHas, Identity, ...)
     ├ liveness loop: a TickEvent every second (the machine drops silent workers)
     └ diagnostics server (when enabled)

Every message from a peer becomes a state-machine event in
:meth:`Scheduler._handle` (looked up by type in ``_worker_handlers`` and
``_client_handlers``), and the instructions it returns are queued on the
batched streams of the workers and clients they name, or carried out by
``_instruction_handlers`` (close a dropped worker's connection, ask a nanny
to restart, answer a retire, restart, replicate or rebalance request).
Every decision, those of retirement, restart, liveness, fire-and-forget,
retry, replicate and rebalance included, is the machine's; the shell (and
:mod:`.admin`) does the IO.  The scheduler never
unpickles user data: run specs, results and exceptions pass through as
:class:`~trioflow.protocol.serialize.Serialized` bytes.  The exceptions
are what a client sends to run here explicitly: ``run_on_scheduler``
(:mod:`.admin`) and scheduler plugins (:mod:`.plugins`), called by this
shell, never by the machine.

A peer's bad input never takes the scheduler down: a malformed frame or
unknown op closes that one connection (logged in one line); a well-formed
message that does not fit the state (``InvalidEvent``) is answered with an
error (or logged) and changes nothing.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..comm import BatchedSend, Comm, CommClosedError, listen
from ..comm.addressing import Address, parse_address
from ..config import SchedulerConfig, build_config, get_config
from ..process.lifecycle import FINAL, Status, ended_in_failure
from ..process.malloc import trim_process_memory
from ..process.system import default_host
from ..protocol import messages as m
from ..protocol.codec import ProtocolError
from ..protocol.serialize import dumps
from . import state as ss
from .admin import SchedulerAdmin
from .events import EventLog
from .extensions.serve import HANDLED as PRIMITIVE_REQUESTS
from .extensions.serve import PrimitivesServer
from .plugins import SchedulerPlugins
from .taskstream import TaskStream

logger = logging.getLogger("trioflow.scheduler")

__all__ = ["Scheduler"]

#: Finished tasks kept for the page's task stream (the newest): ~1.3 MB.
TASK_STREAM_LENGTH = 10_000  # the default of scheduler.task_stream_length (trioflow.config)


class Scheduler:
    """A scheduler server; start it with ``await nursery.start(scheduler.serve)``."""

    def __init__(
        self,
        address: str | None = None,
        *,
        config: SchedulerConfig | None = None,
        security: Any = None,
        **settings: Any,
    ) -> None:
        """``Scheduler("tcp://0.0.0.0:8786", worker_ttl=...)`` (dask's
        keywords), or ``Scheduler(config=SchedulerConfig(...))``.

        Args:
            address: where to listen (default ``tcp://127.0.0.1:0``).
            config: the whole configuration at once, instead of keywords.
            security: TLS settings (:class:`~trioflow.Security`).
            **settings: the fields of :class:`~trioflow.config.SchedulerConfig`.

        Raises:
            TypeError: an unknown keyword, or both ``config`` and settings.
            ValueError: a bad value (one line naming the field).
        """
        if config is None:
            if address is not None:
                settings["address"] = address
            config = build_config(SchedulerConfig, "Scheduler", settings)
        elif address is not None or settings:
            raise TypeError("Scheduler() takes config= or an address and keywords, not both")
        #: The configuration, whole (the attributes below are copies of it).
        self.config = config
        self.listen_address = config.address
        self.contact_address = config.contact_address
        self.security = security
        self.id = f"scheduler-{uuid.uuid4().hex[:12]}"
        self.name = config.name
        tuning = get_config().scheduler  # read once; see trioflow.config
        self.state = ss.SchedulerState(
            allowed_failures=config.allowed_failures,
            validate=config.validate,
            worker_saturation=config.worker_saturation,
            scheduler_id=self.id,
            worker_ttl=config.worker_ttl,
            bandwidth=float(tuning.bandwidth),
        )
        self.worker_ttl = config.worker_ttl
        self.scheduler_file = config.scheduler_file
        self.dashboard_address = config.dashboard_address
        self.dashboard_prefix = config.dashboard_prefix
        self.dashboard_whitelist = list(config.dashboard_whitelist)
        self.use_xheaders = config.use_xheaders
        self.address = ""
        self.services: dict[str, int] = {}
        self.worker_streams: dict[str, BatchedSend] = {}
        self.worker_comms: dict[str, Comm] = {}
        self.client_streams: dict[str, BatchedSend] = {}
        self.started = time.time()
        self.status = Status.created
        self._close_event = trio.Event()
        self._closed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._requests: dict[str, _PendingRequest] = {}
        self._request_counter = 0
        self.task_stream = TaskStream(tuning.task_stream_length)
        #: Transfers between workers, as the workers report them in heartbeats:
        #: (worker, peer it fetched from, bytes, start, stop, number of keys).
        self.transfer_stream: list[tuple[str, str, int, float, float, int]] = []
        self.bytes_transferred = 0
        #: Scheduler plugins registered by clients (see :mod:`trioflow.plugins`).
        self.plugins: list[Any] = []
        self._plugins = SchedulerPlugins(self)
        self.events_handled = 0
        #: Events logged by workers and clients, and who subscribes to them.
        self.event_log = EventLog()
        self._request_handlers: dict[type, Callable[[Any], Any]] = {
            m.GetEvents: self._get_events,
            m.WhoHas: self._who_has,
            m.HasWhat: self._has_what,
            m.IdentityRequest: self._identity,
            m.Shutdown: self._shutdown,
            m.RetireWorkers: self._retire_workers,
            m.Restart: self._restart,
            m.StoryRequest: self._story,
            m.RegisterPlugin: self._plugins.register,
            m.UnregisterPlugin: self._plugins.unregister,
        }
        self.primitives = PrimitivesServer(self)
        self._build_dispatch_tables()
        self.admin = SchedulerAdmin(self)
        self._request_handlers.update(self.admin.handlers())

    async def __aenter__(self) -> Scheduler:
        """``async with Scheduler(...)`` in Trio or asyncio (see :class:`~trioflow.client.bridge.ServerContext`)."""
        from ..client.bridge import ServerContext

        self._context = ServerContext(self)
        return await self._context.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> None:
        await self._context.__aexit__(*exc)

    def _build_dispatch_tables(self) -> None:
        """Peers' messages and the machine's instructions, by type: each
        handler turns a message into an event, or carries an instruction out."""
        self._worker_handlers: dict[type, Callable[[str, Any], None]] = {
            m.TaskFinished: self._task_finished,
            m.TaskErred: self._task_erred,
            m.Heartbeat: self._heartbeat,
            m.AddKeys: lambda a, msg: self._handle(ss.AddKeysEvent(worker=a, nbytes=msg.nbytes)),
            m.MissingData: lambda a, msg: self._handle(ss.MissingDataEvent(worker=a, key=msg.key, errant_worker=msg.worker)),
            m.StealResponse: lambda a, msg: self._handle(ss.StealResponseEvent(worker=a, key=msg.key, stolen=msg.stolen)),
            m.Reschedule: lambda a, msg: self._handle(ss.RescheduleEvent(worker=a, key=msg.key)),
            m.ReleaseWorkerData: lambda a, msg: self._handle(ss.ReleaseWorkerDataEvent(worker=a, keys=msg.keys)),
            m.LongRunning: lambda a, msg: self._handle(ss.LongRunningEvent(worker=a, key=msg.key)),
            m.LogEvent: lambda a, msg: self._log_event(msg),
        }
        self._client_handlers: dict[type, Callable[[str, Any], None]] = {
            m.UpdateGraph: self._update_graph,
            m.ReleaseKeys: lambda c, msg: self._handle(ss.ReleaseKeysEvent(client=c, keys=msg.keys)),
            m.CancelKeys: lambda c, msg: self._handle(ss.CancelKeysEvent(client=c, keys=msg.keys)),
            m.FireAndForget: lambda c, msg: self._handle(ss.FireAndForgetEvent(keys=msg.keys)),
            m.UpdateData: lambda c, msg: self._handle(ss.UpdateDataEvent(client=c, who_has=msg.who_has, nbytes=msg.nbytes)),
            m.LogEvent: lambda c, msg: self._log_event(msg),
            m.SubscribeTopic: lambda c, msg: self.event_log.subscribe(c, msg.topic),
            m.UnsubscribeTopic: lambda c, msg: self.event_log.unsubscribe(c, msg.topic),
        }
        self._instruction_handlers: dict[type, Callable[[Any], None]] = {
            ss.DropWorker: self._drop_worker,
            ss.RestartNanny: self._restart_nanny,
            ss.RetirementDone: self._request_done,
            ss.RestartDone: self._request_done,
            ss.DataMoveDone: self._request_done,
        }

    def __repr__(self) -> str:
        return f"<Scheduler {self.address or '(not started)'} workers={len(self.state.workers)} tasks={len(self.state.tasks)}>"

    # ------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`close` or cancellation; ready when ``start`` returns."""
        self.status = Status.starting
        failed = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                listener = await nursery.start(
                    lambda task_status: listen(
                        self.listen_address,
                        self._handle_comm,
                        security=self.security,
                        role="scheduler",
                        name=self.name,
                        task_status=task_status,
                    )
                )
                self.address = self.contact_address or _contact(listener.address)
                if self.dashboard_address is not None:
                    from ..diagnostics import serve_dashboard

                    port = await nursery.start(serve_dashboard, self, self.dashboard_address)
                    self.services["dashboard"] = port
                nursery.start_soon(self._liveness_loop)
                nursery.start_soon(self.primitives.run)
                self._write_scheduler_file()
                self.status = Status.running
                task_status.started(self)
                await self._close_event.wait()
                if self._plugins.active:
                    with trio.move_on_after(5):
                        await self._plugins.close()
                await self._tell_everyone_closing()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            failed = ended_in_failure(exc)
            raise
        finally:
            self.status = Status.failed if failed else Status.closed
            self._remove_scheduler_file()
            self._closed.set()

    def close(self) -> None:
        """Ask the scheduler to stop; :meth:`serve` returns soon after."""
        if self.status not in FINAL:  # closing a closed scheduler leaves it closed
            self.status = Status.closing
        self._close_event.set()

    async def aclose(self, timeout: float = 5) -> None:
        """Close and wait (at most ``timeout`` seconds) until closed."""
        self.close()
        with trio.move_on_after(timeout):
            await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until :meth:`serve` has returned (``status`` closed or failed)."""
        await self._closed.wait()

    async def _tell_everyone_closing(self) -> None:
        for b in list(self.worker_streams.values()):
            try:
                b.send(m.CloseWorker(reason="scheduler closing"))
            except CommClosedError:
                pass
        for b in list(self.client_streams.values()):
            try:
                b.send(m.SchedulerClosing(reason="scheduler closing"))
            except CommClosedError:
                pass
        with trio.move_on_after(1):
            for b in [*self.worker_streams.values(), *self.client_streams.values()]:
                await b.aclose(timeout=0.5)

    def _write_scheduler_file(self) -> None:
        if not self.scheduler_file:
            return
        info = {"type": "Scheduler", "id": self.id, "address": self.address, "services": self.services, "pid": os.getpid()}
        tmp = f"{self.scheduler_file}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, self.scheduler_file)

    def _remove_scheduler_file(self) -> None:
        if self.scheduler_file:
            try:
                with open(self.scheduler_file) as f:
                    if json.load(f).get("id") != self.id:
                        return
                os.remove(self.scheduler_file)
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------ state machine

    def _handle(self, event: Any) -> None:
        """Feed ``event`` to the state machine and carry out what it returns.

        Raises:
            InvalidEvent: the event did not fit; nothing changed.
        """
        instructions = self.state.handle(event, trio.current_time())
        self.events_handled += 1
        self._dispatch(instructions)
        if type(event) is ss.RemoveClientEvent:
            self.primitives.remove_client(event.client)
        elif type(event) is ss.RemoveWorkerEvent:
            self.primitives.remove_worker(event.address)

    def _dispatch(self, instructions: list[Any]) -> None:
        workers = self.worker_streams
        clients = self.client_streams
        for inst in instructions:
            kind = type(inst)
            if kind is ss.ToWorker:
                b = workers.get(inst.address)
            elif kind is ss.ToClient:
                b = clients.get(inst.client)
            else:
                self._instruction_handlers[kind](inst)
                continue
            if b is not None:
                try:
                    b.send(inst.msg)
                except CommClosedError:
                    pass  # its receive loop will notice and clean up
        if self._plugins.watch_transitions:
            self._plugins.report_transitions()

    def _drop_worker(self, inst: ss.DropWorker) -> None:
        """The machine removed a worker (silent too long): close its connection."""
        logger.warning("worker %s %s; removing it", inst.address, inst.reason)
        self.worker_streams.pop(inst.address, None)
        comm = self.worker_comms.pop(inst.address, None)
        if comm is not None and self._nursery is not None:
            self._nursery.start_soon(comm.aclose)

    def _restart_nanny(self, inst: ss.RestartNanny) -> None:
        if self._nursery is not None:
            timeout = self._requests[inst.request].timeout if inst.request in self._requests else 30.0
            self._nursery.start_soon(self._restart_one_nanny, inst.request, inst.nanny, timeout)

    async def _restart_one_nanny(self, request: str, nanny: str, timeout: float) -> None:
        from ..comm import ConnectionPool

        error = ""
        pool = ConnectionPool(security=self.security, role="scheduler", name=self.name)
        try:
            await pool.rpc(nanny, m.NannyRestart(reason="client.restart()"), m.Ok, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - report, keep going
            error = str(exc) or type(exc).__name__
        finally:
            await pool.aclose()
        self._handle(ss.NannyRestartedEvent(request=request, nanny=nanny, error=error))

    def _request_done(self, inst: ss.RetirementDone | ss.RestartDone | ss.DataMoveDone) -> None:
        pending = self._requests.get(inst.request)
        if pending is not None:
            pending.result = inst
            pending.done.set()

    async def _run_request(
        self, event: ss.RetireWorkersEvent | ss.RestartEvent | ss.ReplicateEvent | ss.RebalanceEvent
    ) -> ss.RetirementDone | ss.RestartDone | ss.DataMoveDone:
        """Hand a long request to the machine and wait until it says it is over
        (at its deadline at the latest: then a tick makes it end the request)."""
        pending = self._requests[event.request] = _PendingRequest(event.timeout)
        try:
            self._handle(event)
            with trio.move_on_after(max(event.timeout, 0)):
                await pending.done.wait()
            while pending.result is None:
                self._handle(ss.TickEvent())
                with trio.move_on_after(0.05):
                    await pending.done.wait()
            return pending.result
        finally:
            del self._requests[event.request]

    # ------------------------------------------------------------ connections

    async def _handle_comm(self, comm: Comm) -> None:
        try:
            first = await comm.recv()
        except CommClosedError:
            return
        if isinstance(first, m.RegisterWorker):
            await self._worker_stream(comm, first)
        elif isinstance(first, m.RegisterClient):
            await self._client_stream(comm, first)
        else:
            await self._request_loop(comm, first)

    async def _request_loop(self, comm: Comm, msg: m.Message | None) -> None:
        while True:
            if msg is None:
                try:
                    msg = await comm.recv()
                except CommClosedError:
                    return
            if type(msg) in PRIMITIVE_REQUESTS:
                # It answers on comm itself (and takes back what an
                # undeliverable answer granted).
                try:
                    await self.primitives.serve_request(comm, msg)
                except CommClosedError:
                    return
                msg = None
                continue
            handler = self._request_handlers.get(type(msg))
            if handler is None:
                reply: m.Message = m.ErrorReply(message=f"the scheduler does not serve {msg.op!r} requests on this connection")
            else:
                try:
                    reply = await handler(msg)
                except ss.InvalidEvent as exc:
                    reply = m.ErrorReply(message=str(exc))
            await comm.send(reply)
            # Hold neither while idle: a big reply's key strings, kept alive
            # between requests, would pin the memory of a released graph.
            del reply
            msg = None

    async def _register_worker(self, comm: Comm, reg: m.RegisterWorker) -> BatchedSend | None:
        """Hand the registration to the machine; None if it is refused (the
        worker is told why)."""
        address = reg.address
        try:
            parse_address(address)
        except ValueError as exc:
            await comm.send(m.ErrorReply(message=f"bad worker address: {exc}"))
            return None
        event = ss.AddWorkerEvent(
            address=address,
            name=reg.name,
            nthreads=reg.nthreads,
            memory_limit=reg.memory_limit,
            resources=reg.resources,
            nanny=reg.nanny,
            pid=reg.pid,
            local_directory=reg.local_directory,
            services=reg.services,
            nbytes=reg.nbytes,
        )
        await self.admin.worker_joining(address)
        try:
            instructions = self.state.handle(event, trio.current_time())
        except ss.InvalidEvent as exc:
            logger.warning("refused worker %s: %s", address, exc)
            await comm.send(m.ErrorReply(message=str(exc)))
            return None
        batched = BatchedSend(comm)
        self.worker_streams[address] = batched
        self.worker_comms[address] = comm
        # The machine's first message to the worker is its WorkerRegistered
        # (which carries the worker plugins).
        if self._plugins.worker:
            instructions = [_with_plugins(i, self._plugins) for i in instructions]
        self._dispatch(instructions)
        logger.info("Register worker %s (%s, %d threads)", address, reg.name, reg.nthreads)
        self._plugins.worker_joined(reg.nanny)
        if self._plugins.active:
            self._plugins.notify("add_worker", scheduler=self, worker=address)
        return batched

    async def _worker_stream(self, comm: Comm, reg: m.RegisterWorker) -> None:
        batched = await self._register_worker(comm, reg)
        if batched is None:
            return
        address = reg.address
        safe = False
        handlers = self._worker_handlers
        try:
            async with trio.open_nursery() as n:
                n.start_soon(_run_batched, batched, n.cancel_scope)
                while True:
                    msg = await comm.recv()
                    handler = handlers.get(type(msg))
                    if handler is None:
                        if isinstance(msg, m.WorkerUnregister):
                            safe = True
                            logger.info("worker %s is closing: %s", address, msg.reason)
                        else:
                            logger.warning("worker %s sent unexpected %r; closing its connection", address, msg.op)
                        n.cancel_scope.cancel()
                        break
                    try:
                        handler(address, msg)
                    except ss.InvalidEvent as exc:
                        logger.warning("worker %s: %s", address, exc)
                    del msg  # not kept alive while waiting for the next one (see _request_loop)
        except* CommClosedError as group:
            logger.info("lost worker %s: %s", address, group.exceptions[0])
        except* ProtocolError as group:
            logger.warning("worker %s broke the protocol: %s", address, group.exceptions[0])
        finally:
            if self.worker_streams.get(address) is batched:
                del self.worker_streams[address]
                self.worker_comms.pop(address, None)
                if self.status == "running" or self.status == "closing":
                    self._handle(ss.RemoveWorkerEvent(address=address, reason="connection closed", safe=safe))
                logger.info("Remove worker %s", address)
                if self._plugins.active:
                    self._plugins.notify("remove_worker", scheduler=self, worker=address, stimulus_id="remove-worker")

    # Worker messages -> state-machine events (see ``_worker_handlers``).

    def _task_finished(self, address: str, msg: m.TaskFinished) -> None:
        self._handle(ss.TaskFinishedEvent(worker=address, key=msg.key, nbytes=msg.nbytes, type_name=msg.type_name, start=msg.start, stop=msg.stop))
        self.task_stream.append(msg.key, address, msg.start, msg.stop, msg.thread)

    def _task_erred(self, address: str, msg: m.TaskErred) -> None:
        self._handle(
            ss.TaskErredEvent(
                worker=address,
                key=msg.key,
                exception=msg.exception,
                exception_text=msg.exception_text,
                traceback_text=msg.traceback_text,
                type_name=msg.type_name,
            )
        )

    def _heartbeat(self, address: str, msg: m.Heartbeat) -> None:
        metrics = attrs.asdict(msg)  # type: ignore[arg-type]
        for peer, nbytes, start, stop, nkeys in metrics.pop("transfers"):
            self._log_transfer(address, peer, nbytes, start, stop, nkeys)
        self._handle(ss.HeartbeatEvent(worker=address, metrics=metrics))  # answered with a HeartbeatAck

    def _log_transfer(self, worker: str, peer: str, nbytes: int, start: float, stop: float, nkeys: int) -> None:
        self.bytes_transferred += max(nbytes, 0)
        ts = self.transfer_stream
        ts.append((worker, peer, nbytes, start, stop, nkeys))
        if len(ts) > 5_000:
            del ts[:2_500]

    async def _client_stream(self, comm: Comm, reg: m.RegisterClient) -> None:
        cid = reg.client_id
        try:
            self._handle(ss.AddClientEvent(client=cid))
        except ss.InvalidEvent as exc:
            await comm.send(m.ErrorReply(message=str(exc)))
            return
        batched = BatchedSend(comm)
        self.client_streams[cid] = batched
        self.event_log.add_client(cid)
        batched.send(m.ClientRegistered(scheduler_id=self.id, address=self.address))
        logger.info("Receive client connection: %s", cid)
        if self._plugins.active:
            self._plugins.notify("add_client", scheduler=self, client=cid)
        handlers = self._client_handlers
        try:
            async with trio.open_nursery() as n:
                n.start_soon(_run_batched, batched, n.cancel_scope)
                while True:
                    msg = await comm.recv()
                    handler = handlers.get(type(msg))
                    if handler is None:
                        if not isinstance(msg, m.CloseClient):
                            logger.warning("client %s sent unexpected %r; closing its connection", cid, msg.op)
                        n.cancel_scope.cancel()
                        break
                    try:
                        handler(cid, msg)
                    except ss.InvalidEvent as exc:
                        logger.warning("client %s: %s", cid, exc)
                    del msg  # not kept alive while waiting for the next one (see _request_loop)
        except* CommClosedError:
            pass
        except* ProtocolError as group:
            logger.warning("client %s broke the protocol: %s", cid, group.exceptions[0])
        finally:
            if self.client_streams.get(cid) is batched:
                del self.client_streams[cid]
                self.event_log.remove_client(cid)
                self._handle(ss.RemoveClientEvent(client=cid))
                logger.info("Remove client %s", cid)
                if self._plugins.active:
                    self._plugins.notify("remove_client", scheduler=self, client=cid)

    # Client messages -> state-machine events (see ``_client_handlers``).

    def _update_graph(self, cid: str, msg: m.UpdateGraph) -> None:
        try:
            self._handle(ss.UpdateGraphEvent(client=cid, tasks=msg.tasks, keys=msg.keys))
            if self._plugins.active:
                self._plugins.notify("update_graph", self, client=cid, keys=set(msg.keys), tasks=[t.key for t in msg.tasks], stimulus_id="update-graph")
        except ss.InvalidEvent as exc:
            # Tell the client: every future it asked for errs with the reason.
            err = ValueError(f"invalid graph: {exc}")
            ser = dumps(err)
            b = self.client_streams.get(cid)
            if b is not None:
                for key in msg.keys:
                    b.send(m.KeyErred(key=key, exception=ser, exception_text=str(err), traceback_text="", type_name="ValueError"))

    def log_event(self, topic: str | list[str], msg: Any) -> None:
        """Log ``msg`` (picklable) under ``topic`` (or each of several), as
        workers and clients do; subscribed clients get it."""
        self._log_event(m.LogEvent(topics=[topic] if isinstance(topic, str) else list(topic), time=time.time(), msg=dumps(msg)))

    def _log_event(self, msg: m.LogEvent) -> None:
        for cid, out in self.event_log.log(msg.topics, msg.time, msg.msg):
            b = self.client_streams.get(cid)
            if b is not None:
                try:
                    b.send(out)
                except CommClosedError:
                    pass

    # ------------------------------------------------------------ requests

    async def _get_events(self, msg: m.GetEvents) -> m.Message:
        return m.EventsReply(events=self.event_log.get(msg.topic))

    async def _who_has(self, msg: m.WhoHas) -> m.Message:
        tasks = self.state.tasks
        keys = msg.keys if msg.keys is not None else list(tasks)
        out: dict[str, list[str]] = {}
        nbytes: dict[str, int] = {}
        for k in keys:
            ts = tasks.get(k)
            if ts is not None and ts.who_has:
                out[k] = [w.address for w in ts.who_has]
                nbytes[k] = ts.nbytes
            else:
                out[k] = []
        return m.WhoHasReply(who_has=out, nbytes=nbytes)

    async def _has_what(self, msg: m.HasWhat) -> m.Message:
        workers = self.state.workers
        addrs = msg.workers if msg.workers is not None else list(workers)
        out: dict[str, list[str]] = {}
        for a in addrs:
            w = workers.get(a) or workers.get(self.state.names.get(a, ""))
            out[a] = [t.key for t in w.has_what] if w is not None else []
        return m.HasWhatReply(has_what=out)

    async def _identity(self, msg: m.IdentityRequest) -> m.Message:
        return self.identity()

    def identity(self) -> m.IdentityReply:
        workers = {}
        for a, w in self.state.workers.items():
            met = w.metrics
            workers[a] = m.WorkerInfo(
                name=w.name,
                nthreads=w.nthreads,
                memory_limit=w.memory_limit,
                resources=dict(w.resources),
                nanny=w.nanny,
                pid=w.pid,
                local_directory=w.local_directory,
                memory=int(met.get("memory", 0)),
                managed=int(met.get("managed", 0)),
                spilled=int(met.get("spilled", 0)),
                cpu=float(met.get("cpu", 0.0)),
                executing=len(w.processing),
                in_memory=len(w.has_what),
                paused=w.status == "paused",
                last_seen=w.last_seen,
                services=dict(w.services),
            )
        return m.IdentityReply(
            scheduler_id=self.id,
            address=self.address,
            workers=workers,
            services=dict(self.services),
            started=self.started,
            n_tasks=len(self.state.tasks),
            n_clients=len(self.state.clients),
        )

    async def _story(self, msg: m.StoryRequest) -> m.Message:
        keys = set(msg.keys)
        # The state's times are Trio's clock; the story's, the wall clock
        # (as the workers' entries are).
        shift = time.time() - trio.current_time()
        return m.StoryReply(events=[(k, a, b, w, t + shift) for k, a, b, w, t in self.state.transition_log if k in keys])

    async def _shutdown(self, msg: m.Shutdown) -> m.Message:
        logger.info("shutdown requested by a client")
        self.close()
        return m.Ok()

    async def _retire_workers(self, msg: m.RetireWorkers) -> m.Message:
        """Retire workers (the machine decides what to copy and when they may
        close; see :mod:`trioflow.scheduler.state.membership`)."""
        done = await self._run_request(ss.RetireWorkersEvent(request=self._new_request(), workers=msg.workers, timeout=msg.timeout))
        assert isinstance(done, ss.RetirementDone)
        for address, keys in done.stuck.items():
            logger.warning(
                "not retiring worker %s: %d keys only it holds (%s) were not copied elsewhere within %ss",
                address, len(keys), ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else ""), msg.timeout,
            )  # fmt: skip
        return m.RetireWorkersReply(retired=done.retired)

    async def _restart(self, msg: m.Restart) -> m.Message:
        """Forget every task, restart the workers through their nannies (and
        close those without one), and wait for the nannied ones to return."""
        if self._plugins.active:
            self._plugins.notify("restart", self)
        done = await self._run_request(ss.RestartEvent(request=self._new_request(), timeout=msg.timeout))
        assert isinstance(done, ss.RestartDone)
        return m.ErrorReply(message=done.error) if done.error else m.Ok()

    def _new_request(self) -> str:
        self._request_counter += 1
        return f"request-{self._request_counter}"

    # ------------------------------------------------------------ liveness

    async def _liveness_loop(self) -> None:
        peak_tasks = last_tasks = 0
        while True:
            await trio.sleep(1.0)
            # Once a graph's tasks are gone (at most half the peak since the
            # last trim, and no change for a second: the release is over),
            # hand the C heap's free pages back: glibc keeps what it freed.
            n_tasks = len(self.state.tasks)
            peak_tasks = max(peak_tasks, n_tasks)
            if peak_tasks - n_tasks >= 1000 and n_tasks <= peak_tasks // 2 and n_tasks == last_tasks:
                # Cycles left by the graph's traffic (coroutines, tracebacks)
                # would wait for the next full collection: collect first
                # (~10 ms, once per released graph), then trim.
                gc.collect()
                trim_process_memory()
                peak_tasks = n_tasks
            last_tasks = n_tasks
            # The machine removes the workers silent for too long.
            self._handle(ss.TickEvent())


class _PendingRequest:
    """A long request (retire, restart, replicate, rebalance) waiting for the machine's answer."""

    __slots__ = ("timeout", "done", "result")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.done = trio.Event()
        self.result: ss.RetirementDone | ss.RestartDone | ss.DataMoveDone | None = None


async def _run_batched(batched: BatchedSend, scope: trio.CancelScope) -> None:
    try:
        await batched.run()
    except CommClosedError:
        scope.cancel()


def _with_plugins(inst: Any, plugins: SchedulerPlugins) -> Any:
    if type(inst) is ss.ToWorker and type(inst.msg) is m.WorkerRegistered:
        return ss.ToWorker(address=inst.address, msg=plugins.registered_message(inst.msg))
    return inst


def _contact(bound: str) -> str:
    addr = parse_address(bound)
    if addr.scheme != "inproc" and addr.host in ("0.0.0.0", "", "::"):
        return str(Address(addr.scheme, default_host(), addr.port))
    return bound


