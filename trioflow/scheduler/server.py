"""The scheduler: a Trio shell around :class:`~trioflow.scheduler.state.SchedulerState`.

Theory of operation
-------------------
``Scheduler.serve`` builds this nursery tree::

    Scheduler nursery
     ├ listener -> one task per connection:
     │    RegisterWorker -> worker stream (receive loop + BatchedSend)
     │    RegisterClient -> client stream (receive loop + BatchedSend)
     │    anything else  -> request/response loop (WhoHas, Identity, ...)
     ├ liveness loop: drop workers silent for longer than ``worker_ttl``
     └ diagnostics server (when enabled)

Every event from a peer becomes a state-machine event in
:meth:`Scheduler._handle`, and the instructions it returns are queued on the
batched streams of the workers and clients they name.  The scheduler never
unpickles user data: run specs, results and exceptions pass through as
:class:`~trioflow.protocol.serialize.Serialized` bytes.

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
from ..config import SchedulerConfig, build_config
from ..process.lifecycle import FINAL, Status, ended_in_failure
from ..process.malloc import trim_process_memory
from ..process.system import default_host
from ..protocol import messages as m
from ..protocol.codec import ProtocolError
from ..protocol.serialize import dumps
from . import state as ss
from .taskstream import TaskStream

logger = logging.getLogger("trioflow.scheduler")

__all__ = ["Scheduler"]

#: Pseudo-client that holds fire-and-forget keys until they finish.
FIRE_AND_FORGET = "fire-and-forget"
#: Finished tasks kept for the page's task stream (the newest): ~1.3 MB.
TASK_STREAM_LENGTH = 10_000


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
        self.state = ss.SchedulerState(
            allowed_failures=config.allowed_failures, validate=config.validate, worker_saturation=config.worker_saturation
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
        self._closing_workers: set[str] = set()
        self.task_stream = TaskStream(TASK_STREAM_LENGTH)
        #: Transfers between workers, as the workers report them in heartbeats:
        #: (worker, peer it fetched from, bytes, start, stop, number of keys).
        self.transfer_stream: list[tuple[str, str, int, float, float, int]] = []
        self.bytes_transferred = 0
        self.plugins: list[Any] = []
        self.events_handled = 0
        self._request_handlers: dict[type, Callable[[Any], Any]] = {
            m.WhoHas: self._who_has,
            m.HasWhat: self._has_what,
            m.IdentityRequest: self._identity,
            m.Shutdown: self._shutdown,
            m.RetireWorkers: self._retire_workers,
            m.Restart: self._restart,
            m.StoryRequest: self._story,
        }

    async def __aenter__(self) -> Scheduler:
        """``async with Scheduler(...)`` in Trio or asyncio (see :class:`~trioflow.client.bridge.ServerContext`)."""
        from ..client.bridge import ServerContext

        self._context = ServerContext(self)
        return await self._context.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> None:
        await self._context.__aexit__(*exc)

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
                self._write_scheduler_file()
                self.status = Status.running
                task_status.started(self)
                await self._close_event.wait()
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
        """Feed ``event`` to the state machine and send what it returns.

        Raises:
            InvalidEvent: the event did not fit; nothing changed.
        """
        instructions = self.state.handle(event, trio.current_time())
        self.events_handled += 1
        self._dispatch(instructions)

    def _dispatch(self, instructions: list[Any]) -> None:
        workers = self.worker_streams
        clients = self.client_streams
        finished_ff: list[str] = []
        for inst in instructions:
            if type(inst) is ss.ToWorker:
                b = workers.get(inst.address)
            else:
                if inst.client == FIRE_AND_FORGET:
                    if isinstance(inst.msg, (m.KeyInMemory, m.KeyErred, m.KeyCancelled)):
                        finished_ff.append(inst.msg.key)
                    continue
                b = clients.get(inst.client)
            if b is not None:
                try:
                    b.send(inst.msg)
                except CommClosedError:
                    pass  # its receive loop will notice and clean up
        if finished_ff:
            # Fire-and-forget keys are done: nobody waits for them any more.
            self._handle(ss.ReleaseKeysEvent(client=FIRE_AND_FORGET, keys=finished_ff))

    def _fire_and_forget(self, keys: list[str]) -> None:
        """Keep ``keys`` wanted by a pseudo-client until they finish."""
        if FIRE_AND_FORGET not in self.state.clients:
            self._handle(ss.AddClient(client=FIRE_AND_FORGET))
        known = [k for k in keys if k in self.state.tasks]
        if known:
            self._handle(ss.UpdateGraphEvent(client=FIRE_AND_FORGET, tasks=[], keys=known))

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

    async def _worker_stream(self, comm: Comm, reg: m.RegisterWorker) -> None:
        address = reg.address
        try:
            parse_address(address)
        except ValueError as exc:
            await comm.send(m.ErrorReply(message=f"bad worker address: {exc}"))
            return
        event = ss.AddWorker(
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
        try:
            instructions = self.state.handle(event, trio.current_time())
        except ss.InvalidEvent as exc:
            logger.warning("refused worker %s: %s", address, exc)
            await comm.send(m.ErrorReply(message=str(exc)))
            return
        batched = BatchedSend(comm)
        self.worker_streams[address] = batched
        self.worker_comms[address] = comm
        forget = [
            k for inst in instructions if type(inst) is ss.ToWorker and inst.address == address and isinstance(inst.msg, m.FreeKeys) for k in inst.msg.keys
        ]
        batched.send(
            m.WorkerRegistered(scheduler_id=self.id, heartbeat_interval=self._heartbeat_interval(), worker_ttl=self._worker_ttl(), forget=forget)
        )
        self._dispatch([i for i in instructions if not (type(i) is ss.ToWorker and isinstance(i.msg, m.FreeKeys) and i.address == address)])
        logger.info("Register worker %s (%s, %d threads)", address, reg.name, reg.nthreads)
        safe = False
        try:
            async with trio.open_nursery() as n:
                n.start_soon(_run_batched, batched, n.cancel_scope)
                while True:
                    msg = await comm.recv()
                    try:
                        if isinstance(msg, m.TaskFinished):
                            self._handle(ss.TaskFinishedEvent(worker=address, key=msg.key, nbytes=msg.nbytes, type_name=msg.type_name, start=msg.start, stop=msg.stop))
                            self.task_stream.append(msg.key, address, msg.start, msg.stop, msg.thread)
                        elif isinstance(msg, m.TaskErred):
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
                        elif isinstance(msg, m.Heartbeat):
                            metrics = attrs.asdict(msg)  # type: ignore[arg-type]
                            for peer, nbytes, start, stop, nkeys in metrics.pop("transfers"):
                                self._log_transfer(address, peer, nbytes, start, stop, nkeys)
                            self._handle(ss.HeartbeatEvent(worker=address, metrics=metrics))
                            batched.send(m.HeartbeatAck(heartbeat_interval=self._heartbeat_interval(), worker_ttl=self._worker_ttl()))
                        elif isinstance(msg, m.AddKeys):
                            self._handle(ss.AddKeysEvent(worker=address, nbytes=msg.nbytes))
                        elif isinstance(msg, m.MissingData):
                            self._handle(ss.MissingDataEvent(worker=address, key=msg.key, errant_worker=msg.worker))
                        elif isinstance(msg, m.StealResponse):
                            self._handle(ss.StealResponseEvent(worker=address, key=msg.key, stolen=msg.stolen))
                        elif isinstance(msg, m.Reschedule):
                            self._handle(ss.RescheduleEvent(worker=address, key=msg.key))
                        elif isinstance(msg, m.ReleaseWorkerData):
                            self._handle(ss.ReleaseWorkerDataEvent(worker=address, keys=msg.keys))
                        elif isinstance(msg, m.WorkerUnregister):
                            safe = True
                            logger.info("worker %s is closing: %s", address, msg.reason)
                            n.cancel_scope.cancel()
                            break
                        else:
                            logger.warning("worker %s sent unexpected %r; closing its connection", address, msg.op)
                            n.cancel_scope.cancel()
                            break
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
                safe = safe or address in self._closing_workers
                self._closing_workers.discard(address)
                if self.status == "running" or self.status == "closing":
                    self._handle(ss.RemoveWorker(address=address, reason="connection closed", safe=safe))
                logger.info("Remove worker %s", address)

    def _log_transfer(self, worker: str, peer: str, nbytes: int, start: float, stop: float, nkeys: int) -> None:
        self.bytes_transferred += max(nbytes, 0)
        ts = self.transfer_stream
        ts.append((worker, peer, nbytes, start, stop, nkeys))
        if len(ts) > 5_000:
            del ts[:2_500]

    async def _client_stream(self, comm: Comm, reg: m.RegisterClient) -> None:
        cid = reg.client_id
        try:
            self._handle(ss.AddClient(client=cid))
        except ss.InvalidEvent as exc:
            await comm.send(m.ErrorReply(message=str(exc)))
            return
        batched = BatchedSend(comm)
        self.client_streams[cid] = batched
        batched.send(m.ClientRegistered(scheduler_id=self.id, address=self.address))
        logger.info("Receive client connection: %s", cid)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(_run_batched, batched, n.cancel_scope)
                while True:
                    msg = await comm.recv()
                    try:
                        if isinstance(msg, m.UpdateGraph):
                            self._update_graph(cid, msg)
                        elif isinstance(msg, m.ReleaseKeys):
                            self._handle(ss.ReleaseKeysEvent(client=cid, keys=msg.keys))
                        elif isinstance(msg, m.CancelKeys):
                            self._handle(ss.CancelKeysEvent(client=cid, keys=msg.keys))
                        elif isinstance(msg, m.FireAndForget):
                            self._fire_and_forget(msg.keys)
                        elif isinstance(msg, m.UpdateData):
                            self._handle(ss.UpdateDataEvent(client=cid, who_has=msg.who_has, nbytes=msg.nbytes))
                        elif isinstance(msg, m.CloseClient):
                            n.cancel_scope.cancel()
                            break
                        else:
                            logger.warning("client %s sent unexpected %r; closing its connection", cid, msg.op)
                            n.cancel_scope.cancel()
                            break
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
                self._handle(ss.RemoveClient(client=cid))
                logger.info("Remove client %s", cid)

    def _update_graph(self, cid: str, msg: m.UpdateGraph) -> None:
        try:
            self._handle(ss.UpdateGraphEvent(client=cid, tasks=msg.tasks, keys=msg.keys))
        except ss.InvalidEvent as exc:
            # Tell the client: every future it asked for errs with the reason.
            err = ValueError(f"invalid graph: {exc}")
            ser = dumps(err)
            b = self.client_streams.get(cid)
            if b is not None:
                for key in msg.keys:
                    b.send(m.KeyErred(key=key, exception=ser, exception_text=str(err), traceback_text="", type_name="ValueError"))

    # ------------------------------------------------------------ requests

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
        """Copy the data only the retiring workers hold to the others, wait
        until the copies are registered, then close the workers.

        The wait is bounded by ``msg.timeout``; a worker still holding the
        only copy of some data by then is not closed (nor listed as
        retired): closing it would lose that data.
        """
        addrs = []
        for a in msg.workers:
            addr = a if a in self.state.workers else self.state.names.get(a)
            if addr is not None and addr not in addrs:
                addrs.append(addr)
        leaving = set(addrs)
        staying = [w for a, w in self.state.workers.items() if a not in leaving and w.status == "running"]
        # (Once each, even when several retiring workers hold it.)
        pending: dict[ss.TaskState, None] = {}
        if staying:
            plans: dict[str, tuple[dict[str, list[str]], dict[str, int]]] = {}
            load = {w.address: w.nbytes for w in staying}
            for a in addrs:
                for ts in list(self.state.workers[a].has_what):
                    if ts.state != "memory" or any(w.address not in leaving for w in ts.who_has) or ts in pending:
                        continue
                    target = min(load, key=load.__getitem__)
                    load[target] += max(ts.nbytes, 0)
                    who, nb = plans.setdefault(target, ({}, {}))
                    who[ts.key] = [w.address for w in ts.who_has]
                    nb[ts.key] = ts.nbytes
                    pending[ts] = None
            for target, (who, nb) in plans.items():
                b = self.worker_streams.get(target)
                if b is not None:
                    try:
                        b.send(m.AcquireReplicas(who_has=who, nbytes=nb))
                    except CommClosedError:
                        pass

        def only_on_leaving(ts: ss.TaskState) -> bool:
            return ts.state == "memory" and not any(w.address not in leaving for w in ts.who_has)

        with trio.move_on_after(max(msg.timeout, 0)):
            while any(only_on_leaving(ts) for ts in pending):
                await trio.sleep(0.02)
        stuck: dict[str, list[str]] = {}
        for ts in pending:
            if only_on_leaving(ts):
                for w in ts.who_has:
                    stuck.setdefault(w.address, []).append(ts.key)
        retired = []
        for addr in addrs:
            if addr not in self.state.workers:
                continue
            if addr in stuck:
                keys = stuck[addr]
                logger.warning(
                    "not retiring worker %s: %d keys only it holds (%s) were not copied elsewhere within %ss",
                    addr, len(keys), ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else ""), msg.timeout,
                )
                continue
            self._closing_workers.add(addr)
            b = self.worker_streams.get(addr)
            if b is not None:
                try:
                    b.send(m.CloseWorker(reason="retired"))
                except CommClosedError:
                    pass
            retired.append(addr)
        return m.RetireWorkersReply(retired=retired)

    async def _restart(self, msg: m.Restart) -> m.Message:
        """Forget every task, restart the workers through their nannies (and
        close those without one), and wait for the nannied ones to return."""
        for cid in list(self.state.clients):
            keys = [ts.key for ts in self.state.clients[cid].wants_what]
            if keys:
                self._handle(ss.CancelKeysEvent(client=cid, keys=keys))
        nannies = {a: w.nanny for a, w in self.state.workers.items() if w.nanny}
        for address in set(self.state.workers) - set(nannies):
            self._closing_workers.add(address)
            b = self.worker_streams.get(address)
            if b is not None:
                try:
                    b.send(m.CloseWorker(reason="restart (no nanny to restart it)"))
                except CommClosedError:
                    pass
        from ..comm import ConnectionPool

        pool = ConnectionPool(security=self.security, role="scheduler", name=self.name)
        failed: list[str] = []
        try:
            with trio.move_on_after(msg.timeout) as cs:

                async def one(nanny: str) -> None:
                    try:
                        await pool.rpc(nanny, m.NannyRestart(reason="client.restart()"), m.Ok, timeout=msg.timeout)
                    except Exception as exc:  # noqa: BLE001 - report, keep going
                        failed.append(f"{nanny}: {exc}")

                async with trio.open_nursery() as n:
                    for nanny in nannies.values():
                        n.start_soon(one, nanny)
                while len([w for w in self.state.workers.values() if w.nanny]) < len(nannies) - len(failed):
                    await trio.sleep(0.05)
        finally:
            await pool.aclose()
        if cs.cancelled_caught:
            return m.ErrorReply(message=f"restart: workers did not come back within {msg.timeout}s")
        if failed:
            return m.ErrorReply(message="restart failed for " + "; ".join(failed))
        return m.Ok()

    # ------------------------------------------------------------ liveness

    def _heartbeat_interval(self) -> float:
        n = len(self.state.workers)
        return min(max(n / 200, 0.5), 5.0)

    def _worker_ttl(self) -> float:
        """Seconds of silence after which a worker is dropped."""
        return self.worker_ttl if self.worker_ttl is not None else max(10.0, 10 * self._heartbeat_interval())

    async def _liveness_loop(self) -> None:
        peak_tasks = last_tasks = 0
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
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
            ttl = self._worker_ttl()
            for address, w in list(self.state.workers.items()):
                if now - w.last_seen > ttl:
                    logger.warning("worker %s silent for %.1fs (ttl %.1fs); removing it", address, now - w.last_seen, ttl)
                    comm = self.worker_comms.get(address)
                    if comm is not None:
                        await comm.aclose()
                    if address in self.state.workers:
                        self.worker_streams.pop(address, None)
                        self.worker_comms.pop(address, None)
                        self._handle(ss.RemoveWorker(address=address, reason="silent"))


async def _run_batched(batched: BatchedSend, scope: trio.CancelScope) -> None:
    try:
        await batched.run()
    except CommClosedError:
        scope.cancel()


def _contact(bound: str) -> str:
    addr = parse_address(bound)
    if addr.scheme != "inproc" and addr.host in ("0.0.0.0", "", "::"):
        return str(Address(addr.scheme, default_host(), addr.port))
    return bound


