"""Scheduler-side answers to the client's administration requests.

Theory of operation
-------------------
:class:`SchedulerAdmin` belongs to one :class:`~trioflow.scheduler.server.Scheduler`
and answers the requests of :mod:`trioflow.client.cluster`: running a
function here (``run_on_scheduler``), read-only questions
(:class:`~trioflow.protocol.messages.SchedulerQuery`: processing, nbytes,
the state dump, logs, versions, a task's run spec), and actions that change
where data lives or what runs (retry, replicate, rebalance,
restart_workers, upload_file).

Actions on the state are events of the state machine, which decides what
they do (retry, replicate and rebalance included: which copies go where);
what it returns is dispatched like any other instruction, and this module
only waits for the answers.  Files
uploaded are kept (in memory) and installed on each worker before the
state machine hears that it joined, so no task can run on a new worker
before its uploads are importable.

Only ``run_on_scheduler`` unpickles user code here; everything else
answers with plain data.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from typing import Any

import trio

from .. import logs
from ..comm import ConnectionPool
from ..protocol import messages as m
from ..protocol.serialize import (
    SerializationError,
    Serialized,
    dumps,
    dumps_function,
    loads,
    loads_function,
)
from ..uploads import install_upload
from ..versions import versions
from . import state as ss

logger = logging.getLogger("trioflow.scheduler")

__all__ = ["SchedulerAdmin", "error_reply"]

#: Seconds replicate and rebalance wait for the workers' copies.
COPY_TIMEOUT = 60.0


def error_reply(exc: BaseException) -> m.RunReply:
    """A :class:`RunReply` carrying ``exc`` (pickled when it pickles)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        ser: Serialized | None = dumps(exc)
    except SerializationError:
        ser = None
    return m.RunReply(result=None, exception=ser, exception_text=f"{type(exc).__name__}: {exc}", traceback_text=tb, type_name=type(exc).__name__)


async def call_maybe_async(func: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)``; a coroutine it returns (dask users write
    asyncio ones) runs to completion in an asyncio loop in a thread."""
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await trio.to_thread.run_sync(run_awaitable, result)
    return result


def run_awaitable(awaitable: Any) -> Any:
    """Run an (asyncio) awaitable to completion in a new event loop."""

    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


class SchedulerAdmin:
    """See the module docstring."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        #: (filename, data, load) in upload order, for workers yet to join.
        self.uploads: list[tuple[str, bytes, bool]] = []
        logs.install()

    def handlers(self) -> dict[type, Any]:
        return {
            m.RunOnScheduler: self.run_on_scheduler,
            m.SchedulerQuery: self.query,
            m.RetryKeys: self.retry,
            m.Replicate: self.replicate,
            m.Rebalance: self.rebalance,
            m.RestartWorkers: self.restart_workers,
            m.UploadFile: self.upload_file,
        }

    @property
    def state(self) -> ss.SchedulerState:
        return self.scheduler.state  # type: ignore[no-any-return]

    def _address(self, worker: str) -> str | None:
        return worker if worker in self.state.workers else self.state.names.get(worker)

    # ------------------------------------------------------------ run_on_scheduler

    async def run_on_scheduler(self, msg: m.RunOnScheduler) -> m.Message:
        try:
            func = loads_function(msg.function)
            args, kwargs = loads(msg.args)
            params = _parameters(func)
            if "dask_scheduler" in params:
                kwargs["dask_scheduler"] = self.scheduler
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            return error_reply(exc)
        if not msg.wait:
            nursery = self.scheduler._nursery

            async def background() -> None:
                try:
                    await call_maybe_async(func, *args, **kwargs)
                except Exception:  # noqa: BLE001 - nobody waits for it: log
                    logger.exception("run_on_scheduler(wait=False) function failed")

            nursery.start_soon(background)
            return m.RunReply(result=dumps(None))
        try:
            result = await call_maybe_async(func, *args, **kwargs)
            return m.RunReply(result=dumps(result))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return error_reply(exc)

    # ------------------------------------------------------------ queries

    async def query(self, msg: m.SchedulerQuery) -> m.Message:
        if msg.what not in m.QUERIES:
            return m.ErrorReply(message=f"unknown query {msg.what!r} (one of {', '.join(m.QUERIES)})")
        result = getattr(self, "_q_" + msg.what)(msg)
        return m.QueryReply(result=dumps(result))

    def _q_processing(self, msg: m.SchedulerQuery) -> dict[str, list[str]]:
        addrs = list(self.state.workers) if msg.workers is None else [a for w in msg.workers if (a := self._address(w))]
        return {a: [ts.key for ts in self.state.workers[a].processing] for a in addrs}

    def _q_nbytes(self, msg: m.SchedulerQuery) -> dict[str, int]:
        tasks = self.state.tasks
        keys = list(tasks) if msg.keys is None else [k for k in msg.keys if k in tasks]
        return {k: tasks[k].nbytes for k in keys if tasks[k].state == "memory" and tasks[k].nbytes >= 0}

    def _q_logs(self, msg: m.SchedulerQuery) -> list[tuple[str, str]]:
        return logs.recent_logs(None if msg.n < 0 else msg.n)

    def _q_versions(self, msg: m.SchedulerQuery) -> dict[str, Any]:
        return versions(tuple(msg.keys or ()))

    def _q_task(self, msg: m.SchedulerQuery) -> dict[str, Any]:
        """Run specs of ``keys`` (for ``recreate_*_locally``)."""
        out: dict[str, Any] = {}
        for k in msg.keys or ():
            ts = self.state.tasks.get(k)
            if ts is None:
                continue
            out[k] = {
                "function": ts.function,
                "args": ts.args,
                "dependencies": [d.key for d in ts.dependencies],
                "state": ts.state,
                "exception_blame": ts.exception_blame.key if ts.exception_blame is not None else None,
            }
        return out

    def _q_state(self, msg: m.SchedulerQuery) -> dict[str, Any]:
        """The scheduler's part of ``dump_cluster_state``: plain data only."""
        st = self.state
        tasks = {}
        for k, ts in st.tasks.items():
            tasks[k] = {
                "state": ts.state,
                "priority": ts.priority,
                "dependencies": sorted(d.key for d in ts.dependencies),
                "dependents": sorted(d.key for d in ts.dependents),
                "who_has": sorted(w.address for w in ts.who_has),
                "processing_on": ts.processing_on.address if ts.processing_on is not None else None,
                "who_wants": sorted(c.client_id for c in ts.who_wants),
                "nbytes": ts.nbytes,
                "retries": ts.retries,
                "type_name": ts.type_name,
                "exception_text": ts.exception_text,
            }
        workers = {}
        for a, w in st.workers.items():
            workers[a] = {
                "name": w.name,
                "nthreads": w.nthreads,
                "memory_limit": w.memory_limit,
                "status": w.status,
                "nanny": w.nanny,
                "processing": sorted(ts.key for ts in w.processing),
                "has_what": sorted(ts.key for ts in w.has_what),
                "nbytes": w.nbytes,
                "metrics": dict(w.metrics),
                "last_seen": w.last_seen,
            }
        s = self.scheduler
        return {
            "id": s.id,
            "address": s.address,
            "status": str(s.status),
            "started": s.started,
            "tasks": tasks,
            "workers": workers,
            "clients": {cid: sorted(ts.key for ts in c.wants_what) for cid, c in st.clients.items()},
            "task_counts": dict(st.task_counts),
            "events_handled": s.events_handled,
            "logs": logs.recent_logs(1000),
        }

    # ------------------------------------------------------------ retry, replicate, rebalance

    # The machine decides (see :mod:`trioflow.scheduler.state.data_movement`);
    # these only wait for it to say the copies are made.

    async def retry(self, msg: m.RetryKeys) -> m.Message:
        """Erred tasks (and the errors they were blamed on) back to work."""
        self.scheduler._handle(ss.RetryKeysEvent(keys=msg.keys))
        return m.Ok()

    async def replicate(self, msg: m.Replicate) -> m.Message:
        """Copy each key to ``n`` workers (all of ``workers`` if None)."""
        event = ss.ReplicateEvent(request=self.scheduler._new_request(), keys=msg.keys, n=msg.n, workers=msg.workers, timeout=COPY_TIMEOUT)
        await self.scheduler._run_request(event)
        return m.Ok()

    async def rebalance(self, msg: m.Rebalance) -> m.Message:
        """Move keys from the workers holding the most bytes to those holding
        the least, until each is within one key of the mean."""
        event = ss.RebalanceEvent(request=self.scheduler._new_request(), keys=msg.keys, workers=msg.workers, timeout=COPY_TIMEOUT)
        await self.scheduler._run_request(event)
        return m.Ok()

    # ------------------------------------------------------------ restart_workers

    async def restart_workers(self, msg: m.RestartWorkers) -> m.Message:
        st = self.state
        targets: dict[str, str] = {}
        for name in msg.workers:
            a = self._address(name)
            if a is None:
                return m.ErrorReply(message=f"restart_workers: no worker with address or name {name!r}")
            if not st.workers[a].nanny:
                return m.ErrorReply(message=f"restart_workers: worker {name!r} has no nanny and cannot be restarted")
            targets[a] = st.workers[a].nanny
        old_pids = {st.workers[a].nanny: st.workers[a].pid for a in targets}
        results: dict[str, str] = {}
        pool = ConnectionPool(security=self.scheduler.security, role="scheduler", name=self.scheduler.name)
        try:

            async def one(addr: str, nanny: str) -> None:
                try:
                    with trio.fail_after(msg.timeout):
                        await pool.rpc(nanny, m.NannyRestart(reason="client.restart_workers()"), m.Ok, timeout=msg.timeout)
                        # Back when a worker of this nanny runs in a new process.
                        while not any(w.nanny == nanny and w.pid != old_pids[nanny] for w in st.workers.values()):
                            await trio.sleep(0.02)
                    results[addr] = "OK"
                except trio.TooSlowError:
                    results[addr] = "timed out"
                except Exception as exc:  # noqa: BLE001 - per worker, reported
                    results[addr] = f"{type(exc).__name__}: {exc}"

            async with trio.open_nursery() as n:
                for addr, nanny in targets.items():
                    n.start_soon(one, addr, nanny)
        finally:
            await pool.aclose()
        return m.RestartWorkersReply(results=results)

    # ------------------------------------------------------------ upload_file

    async def upload_file(self, msg: m.UploadFile) -> m.Message:
        self.uploads = [u for u in self.uploads if u[0] != msg.filename]
        self.uploads.append((msg.filename, msg.data, msg.load))
        errors: list[str] = []
        pool = ConnectionPool(security=self.scheduler.security, role="scheduler", name=self.scheduler.name)
        try:

            async def one(addr: str) -> None:
                err = await self._install(pool, addr, msg.filename, msg.data, msg.load)
                if err:
                    errors.append(err)

            async with trio.open_nursery() as n:
                for addr in list(self.state.workers):
                    n.start_soon(one, addr)
        finally:
            await pool.aclose()
        if errors:
            self.uploads = [u for u in self.uploads if u[0] != msg.filename]
            return m.ErrorReply(message=errors[0])
        return m.Ok()

    async def _install(self, pool: ConnectionPool, addr: str, filename: str, data: bytes, load: bool) -> str:
        request = m.RunFunction(function=dumps_function(install_upload), args=dumps(((filename, data, load), {})))
        try:
            reply = await pool.rpc(addr, request, m.RunReply, timeout=60)
        except Exception as exc:  # noqa: BLE001 - reported
            return f"upload_file to {addr}: {exc}"
        if reply.result is None:
            return reply.exception_text or f"upload_file to {addr} failed"
        return ""

    async def worker_joining(self, address: str) -> None:
        """Install the uploads on a worker before it is told of any task."""
        if not self.uploads:
            return
        pool = ConnectionPool(security=self.scheduler.security, role="scheduler", name=self.scheduler.name)
        try:
            for filename, data, load in self.uploads:
                err = await self._install(pool, address, filename, data, load)
                if err:
                    logger.warning("%s", err)
        finally:
            await pool.aclose()


def _parameters(func: Any) -> set[str]:
    try:
        return set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return set()
