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

Actions on the state go through the state machine's own transitions and
events; what they return is dispatched like any other instruction.  Files
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
from ..comm import CommClosedError, ConnectionPool
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

    def _flush(self) -> None:
        """Dispatch what transitions made outside ``handle`` queued."""
        out, self.state._out = self.state._out, []
        if out:
            self.scheduler._dispatch(out)

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

    # ------------------------------------------------------------ retry

    async def retry(self, msg: m.RetryKeys) -> m.Message:
        """Erred tasks (and the errors they were blamed on) back to work."""
        recs: dict[ss.TaskState, ss.TaskStateName] = {}
        for k in msg.keys:
            ts = self.state.tasks.get(k)
            if ts is None or ts.state != "erred":
                continue
            root = ts.exception_blame or ts
            if root.state == "erred":
                recs[root] = "released"
            recs[ts] = "released"
        if recs:
            self.state._transitions(recs)
            self._flush()
        return m.Ok()

    # ------------------------------------------------------------ where data lives

    def _targets(self, workers: list[str] | None) -> list[Any]:
        st = self.state
        if workers is None:
            return [w for w in st.workers.values() if w.status == "running"]
        out = []
        for name in workers:
            a = self._address(name)
            if a is not None and st.workers[a] not in out:
                out.append(st.workers[a])
        return out

    def _acquire(self, plans: dict[str, dict[str, Any]]) -> None:
        for addr, keys in plans.items():
            b = self.scheduler.worker_streams.get(addr)
            if b is None:
                continue
            who = {k: [w.address for w in ts.who_has] for k, ts in keys.items()}
            nb = {k: ts.nbytes for k, ts in keys.items()}
            try:
                b.send(m.AcquireReplicas(who_has=who, nbytes=nb))
            except CommClosedError:
                pass

    async def _wait_copies(self, wanted: dict[Any, set[Any]], timeout: float) -> None:
        with trio.move_on_after(timeout):
            while any(ts.state == "memory" and not targets <= ts.who_has for ts, targets in wanted.items()):
                await trio.sleep(0.01)

    async def replicate(self, msg: m.Replicate) -> m.Message:
        """Copy each key to ``n`` workers (all of ``workers`` if None)."""
        pool = self._targets(msg.workers)
        if not pool:
            return m.ErrorReply(message="replicate: no workers to copy to")
        n = len(pool) if msg.n is None else msg.n
        if n < 1:
            return m.ErrorReply(message=f"replicate: n must be at least 1, got {n}")
        plans: dict[str, dict[str, Any]] = {}
        wanted: dict[Any, set[Any]] = {}
        for k in msg.keys:
            ts = self.state.tasks.get(k)
            if ts is None or ts.state != "memory":
                continue
            have = [w for w in pool if w in ts.who_has]
            missing = max(0, n - len(have))
            new = sorted((w for w in pool if w not in ts.who_has), key=lambda w: w.nbytes)[:missing]
            for w in new:
                plans.setdefault(w.address, {})[k] = ts
            if new:
                wanted[ts] = set(new)
        self._acquire(plans)
        await self._wait_copies(wanted, 60)
        return m.Ok()

    async def rebalance(self, msg: m.Rebalance) -> m.Message:
        """Move keys from the workers holding the most bytes to those holding
        the least, until each is within one key of the mean."""
        pool = self._targets(msg.workers)
        if len(pool) < 2:
            return m.Ok()
        keys = None if msg.keys is None else set(msg.keys)
        load = {w: sum(max(ts.nbytes, 0) for ts in w.has_what if keys is None or ts.key in keys) for w in pool}
        mean = sum(load.values()) / len(pool)
        moves: list[tuple[Any, Any, Any]] = []  # (task, from, to)
        for sender in sorted(pool, key=load.__getitem__, reverse=True):
            for ts in sorted(sender.has_what, key=lambda t: -max(t.nbytes, 0)):
                if load[sender] <= mean:
                    break
                if (keys is not None and ts.key not in keys) or ts.state != "memory":
                    continue
                size = max(ts.nbytes, 0)
                receiver = min(pool, key=load.__getitem__)
                if receiver is sender or receiver in ts.who_has or load[receiver] + size > mean + size / 2 or size == 0:
                    continue
                load[sender] -= size
                load[receiver] += size
                moves.append((ts, sender, receiver))
        if not moves:
            return m.Ok()
        plans: dict[str, dict[str, Any]] = {}
        wanted: dict[Any, set[Any]] = {}
        for ts, _, receiver in moves:
            plans.setdefault(receiver.address, {})[ts.key] = ts
            wanted.setdefault(ts, set()).add(receiver)
        self._acquire(plans)
        await self._wait_copies(wanted, 60)
        drop: dict[str, list[str]] = {}
        for ts, sender, receiver in moves:
            if receiver in ts.who_has and sender in ts.who_has:
                drop.setdefault(sender.address, []).append(ts.key)
        for addr, ks in drop.items():
            self.scheduler._handle(ss.ReleaseWorkerDataEvent(worker=addr, keys=ks))
            b = self.scheduler.worker_streams.get(addr)
            if b is not None:
                try:
                    b.send(m.FreeKeys(keys=ks))
                except CommClosedError:
                    pass
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
