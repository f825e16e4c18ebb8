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
from ..protocol import messages as m
from ..protocol.serialize import SerializationError, dumps, dumps_function, loads
from ._parts import ClientParts
from .futures import FutureState, _flatten_futures

logger = logging.getLogger("trioflow.client")

__all__ = ["AdminMixin"]


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

    async def restart(self, timeout: float = 60) -> None:
        """Forget all tasks (futures are cancelled) and restart every worker
        through its nanny; waits until they are back."""
        from ..comm.pool import RemoteError as _RemoteError

        try:
            await self._rpc(m.Restart(timeout=timeout), m.Ok, timeout=timeout + 5)
        except _RemoteError as exc:
            raise RuntimeError(str(exc)) from None

    async def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        keys = None if futures is None else [f.key for f in _flatten_futures(futures)]
        reply = await self._rpc(m.WhoHas(keys=keys), m.WhoHasReply)
        return reply.who_has  # type: ignore[no-any-return]

    async def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        ws = [workers] if isinstance(workers, str) else (list(workers) if workers is not None else None)
        reply = await self._rpc(m.HasWhat(workers=ws), m.HasWhatReply)
        return reply.has_what  # type: ignore[no-any-return]

    async def scheduler_info(self) -> dict[str, Any]:
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        return {
            "type": "Scheduler",
            "id": ident.scheduler_id,
            "address": ident.address,
            "services": dict(ident.services),
            "started": ident.started,
            "n_tasks": ident.n_tasks,
            "n_clients": ident.n_clients,
            "workers": {
                a: {
                    "name": w.name,
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
                for a, w in ident.workers.items()
            },
        }

    async def nthreads(self) -> dict[str, int]:
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        return {a: w.nthreads for a, w in ident.workers.items()}

    ncores = nthreads

    async def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Wait until at least ``n_workers`` workers are connected."""
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

    async def run(self, function: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Run ``function(*args, **kwargs)`` once on each worker (outside the
        task system); returns ``{worker address: result}``."""
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        targets = list(ident.workers)
        if workers is not None:
            wanted = [workers] if isinstance(workers, str) else list(workers)
            names = {w.name: a for a, w in ident.workers.items()}
            unknown = [w for w in wanted if w not in ident.workers and w not in names]
            if unknown:
                raise ValueError(f"run(): no worker with address or name {unknown[0]!r}")
            targets = [names.get(w, w) for w in wanted]
        fbytes = dumps_function(function)
        args_ser = dumps((args, kwargs))
        results: dict[str, Any] = {}
        errors: list[BaseException] = []

        async def one(addr: str) -> None:
            # Errors are collected, not raised: raised in the nursery they
            # would reach the caller as an ExceptionGroup.
            assert self._pool is not None
            try:
                reply = await self._pool.rpc(addr, m.RunFunction(function=fbytes, args=args_ser), m.RunReply)
            except (CommError, OSError, RemoteError, trio.TooSlowError) as exc:
                errors.append(exc)
                return
            if reply.result is not None:
                try:
                    results[addr] = loads(reply.result)
                except SerializationError as exc:
                    errors.append(exc)
            else:
                st = FutureState()
                st.err(reply.exception, reply.exception_text, reply.traceback_text, reply.type_name)
                errors.append(st.make_exception())

        async with trio.open_nursery() as n:
            for a in targets:
                n.start_soon(one, a)
        if errors:
            raise errors[0]
        return {a: results[a] for a in targets if a in results}

    async def retire_workers(self, workers: Any, timeout: float = 60) -> list[str]:
        """Close ``workers`` once the data only they hold has a copy on the
        other workers; returns those retired.  A worker whose data could
        not be copied within ``timeout`` seconds stays (not listed)."""
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
