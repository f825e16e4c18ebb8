"""Cluster administration and diagnostics: cancel, restart, who_has,
scheduler_info, run, retire_workers, shutdown, ...

Requests go on pooled connections to the scheduler (or, for ``run``, to each
worker); nothing here touches the futures' stream except cancellations and
fire-and-forget.  Mixed into :class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ..comm import CommError
from ..comm.pool import RemoteError
from ..durations import parse_timedelta
from ..protocol import messages as m
from ..protocol.serialize import SerializationError, dumps, dumps_function, loads
from ._parts import ClientParts
from .futures import FutureState, _flatten_futures

logger = logging.getLogger("trioflow.client")

__all__ = ["AdminMixin"]


def _seconds(value: Any, default: float) -> float:
    t = parse_timedelta(value)
    return default if t is None else t


def _call_on_worker(function: Callable[..., Any] | bytes, *args: Any, **kwargs: Any) -> Any:
    """Run on a worker for ``Client.run``: pass the worker as ``dask_worker``
    if the function takes it, and run a coroutine it returns to completion."""
    import inspect

    from ..protocol.serialize import loads_function
    from ..worker.executor import thread_state

    if isinstance(function, bytes):  # pickled as a task's function (by value where it must be)
        function = loads_function(function)
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "dask_worker" in params:
        kwargs["dask_worker"] = getattr(thread_state, "worker", None)
    result = function(*args, **kwargs)
    if inspect.isawaitable(result):
        import asyncio

        async def main() -> Any:
            return await result

        result = asyncio.run(main())
    return result


class AdminMixin(ClientParts):
    """Cluster administration (see the module docstring)."""

    # ------------------------------------------------------------ control

    async def _cancel_async(self, futures: Any) -> None:
        flat = _flatten_futures(futures)
        keys = list(dict.fromkeys(f.key for f in flat))
        self._send(m.CancelKeys(keys=keys))
        for k in keys:
            # Forget the state, so that submitting the same key again makes a
            # fresh future instead of one that is already cancelled.  The
            # scheduler will echo KeyCancelled for each key we still held.
            if self._states.pop(k, None) is not None:
                self._cancel_echoes[k] = self._cancel_echoes.get(k, 0) + 1
        for f in flat:
            # Finished ones too: the scheduler drops their data.
            if f.status != "cancelled":
                f._state.cancel()
        await trio.lowlevel.checkpoint()

    async def cancel(self, futures: Any) -> None:
        await self._cancel_async(futures)

    async def fire_and_forget(self, futures: Any) -> None:
        """Let these tasks run to completion even after the futures are dropped."""
        keys = [f.key for f in _flatten_futures(futures)]
        self._send(m.FireAndForget(keys=keys))
        await trio.lowlevel.checkpoint()

    async def restart(self, timeout: Any = 60) -> None:
        """Forget all tasks (futures are cancelled) and restart every worker
        through its nanny; waits until they are back."""
        timeout = _seconds(timeout, 60)
        from ..comm.pool import RemoteError as _RemoteError

        try:
            await self._rpc(m.Restart(timeout=timeout), m.Ok, timeout=timeout + 5)
        except _RemoteError as exc:
            raise RuntimeError(str(exc)) from None

    async def who_has(self, futures: Any = None, workers: Any = None) -> dict[str, list[str]]:
        """``{key: workers holding it}`` for ``futures`` (all keys if None);
        only holders among ``workers`` when given."""
        keys = None if futures is None else [f.key for f in _flatten_futures(futures)]
        reply = await self._rpc(m.WhoHas(keys=keys), m.WhoHasReply)
        if workers is None:
            return dict(reply.who_has)
        wanted = await self._worker_addresses(workers)
        return {k: [a for a in v if a in wanted] for k, v in reply.who_has.items()}

    async def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        """``{worker: keys it holds}`` (every worker, or ``workers``)."""
        ws = [workers] if isinstance(workers, str) else (list(workers) if workers is not None else None)
        reply = await self._rpc(m.HasWhat(workers=ws), m.HasWhatReply)
        return dict(reply.has_what)

    async def _worker_addresses(self, workers: Any) -> set[str]:
        """The addresses of ``workers`` (addresses or names)."""
        ws = [workers] if isinstance(workers, str) else list(workers)
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        names = {w.name: a for a, w in ident.workers.items()}
        return {names.get(w, w) for w in ws}

    async def scheduler_info(self, n_workers: int = 5, **kwargs: Any) -> dict[str, Any]:
        """The scheduler's identity and its workers (the first ``n_workers``
        of them; all with ``n_workers=-1``)."""
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        if not isinstance(n_workers, int) or isinstance(n_workers, bool):
            raise TypeError(f"n_workers must be an int, got {type(n_workers).__name__}")
        items = list(ident.workers.items())
        if n_workers >= 0:
            items = items[:n_workers]
        return {
            "type": "Scheduler",
            "id": ident.scheduler_id,
            "address": ident.address,
            "services": dict(ident.services),
            "started": ident.started,
            "n_workers": len(ident.workers),
            "total_threads": sum(w.nthreads for w in ident.workers.values()),
            "total_memory": sum(w.memory_limit for w in ident.workers.values()),
            "n_tasks": ident.n_tasks,
            "n_clients": ident.n_clients,
            "workers": {
                a: {
                    "type": "Worker",
                    "id": w.name,
                    "name": w.name,
                    "host": a.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]"),
                    "nthreads": w.nthreads,
                    "memory_limit": w.memory_limit,
                    "resources": dict(w.resources),
                    "nanny": w.nanny,
                    "pid": w.pid,
                    "local_directory": w.local_directory,
                    "metrics": {"memory": w.memory, "managed": w.managed, "spilled": w.spilled, "cpu": w.cpu, "executing": w.executing, "in_memory": w.in_memory},
                    "status": "paused" if w.paused else "running",
                    "last_seen": w.last_seen,
                    "services": dict(w.services),
                }
                for a, w in items
            },
        }

    async def nthreads(self, workers: Any = None) -> dict[str, int]:
        """``{worker: threads}`` (every worker, or ``workers``)."""
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        out = {a: w.nthreads for a, w in ident.workers.items()}
        if workers is None:
            return out
        names = {w.name: a for a, w in ident.workers.items()}
        ws = [workers] if isinstance(workers, str) else list(workers)
        return {a: out[a] for a in (names.get(w, w) for w in ws) if a in out}

    ncores = nthreads

    async def wait_for_workers(self, n_workers: int, timeout: Any = None) -> None:
        """Wait until at least ``n_workers`` workers are connected (``timeout``:
        seconds or a duration string like ``"10s"``)."""
        timeout = parse_timedelta(timeout)
        # Asked often at first (a cluster starting up is usually a few
        # milliseconds from ready), then every 0.1 s.
        delay = 0.005
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
                if len(ident.workers) >= n_workers:
                    return
                await trio.sleep(delay)
                delay = min(delay * 1.5, 0.1)

    async def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        workers: Any = None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """Run ``function(*args, **kwargs)`` once on each worker (outside the
        task system); returns ``{worker address: result}``.

        A coroutine function runs to completion on the worker; a
        ``dask_worker`` parameter receives the worker.  ``wait=False``
        returns None at once and lets the calls run.  ``on_error``:
        ``"raise"`` the first error, ``"return"`` it as that worker's result,
        or ``"ignore"`` (leave that worker out).

        Raises:
            ValueError: an unknown worker or ``on_error`` value.
        """
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'ignore', got {on_error!r}")
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        targets = list(ident.workers)
        if workers is not None:
            wanted = [workers] if isinstance(workers, str) else list(workers)
            names = {w.name: a for a, w in ident.workers.items()}
            unknown = [w for w in wanted if w not in ident.workers and w not in names]
            if unknown:
                raise ValueError(f"run(): no worker with address or name {unknown[0]!r}")
            targets = [names.get(w, w) for w in wanted]
        fbytes = dumps_function(_call_on_worker)
        # The function travels as a task's function does (cloudpickle: by value
        # for __main__, lambdas and modules registered by value), not with
        # the arguments (plain pickle, by reference).
        args_ser = dumps(((dumps_function(function), *args), kwargs))
        results: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}

        async def one(addr: str) -> None:
            # Errors are collected, not raised: raised in the nursery they
            # would reach the caller as an ExceptionGroup.
            assert self._pool is not None
            try:
                reply = await self._pool.rpc(addr, m.RunFunction(function=fbytes, args=args_ser), m.RunReply)
            except (CommError, OSError, RemoteError, trio.TooSlowError) as exc:
                errors[addr] = exc
                return
            if reply.result is not None:
                try:
                    results[addr] = loads(reply.result)
                except SerializationError as exc:
                    errors[addr] = exc
            else:
                st = FutureState()
                st.err(reply.exception, reply.exception_text, reply.traceback_text, reply.type_name)
                errors[addr] = st.make_exception()

        if not wait:
            assert self._nursery is not None
            for a in targets:
                self._nursery.start_soon(one, a)
            return None
        async with trio.open_nursery() as n:
            for a in targets:
                n.start_soon(one, a)
        if errors and on_error == "raise":
            raise next(iter(errors[a] for a in targets if a in errors))
        if on_error == "return":
            results.update(errors)
        return {a: results[a] for a in targets if a in results}

    async def retire_workers(self, workers: Any, timeout: Any = 60) -> list[str]:
        """Close ``workers`` once the data only they hold has a copy on the
        other workers; returns those retired.  A worker whose data could
        not be copied within ``timeout`` seconds stays (not listed)."""
        timeout = _seconds(timeout, 60)
        ws = [workers] if isinstance(workers, str) else list(workers)
        # The scheduler answers within ``timeout``: wait a little longer.
        reply = await self._rpc(m.RetireWorkers(workers=ws, timeout=timeout), m.RetireWorkersReply, timeout=timeout + 10)
        return list(reply.retired)

    async def shutdown(self) -> None:
        """Close the scheduler (and with it the workers), then this client."""
        self._shutdown_requested = True
        try:
            await self._rpc(m.Shutdown(), m.Ok, timeout=self.timeout)
        except (CommError, RemoteError, trio.TooSlowError) as exc:
            logger.info("shutdown: %s", exc)
        await self.aclose()
