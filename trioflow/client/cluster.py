"""More cluster administration: the dask ``Client`` methods that run code on
the scheduler, move data between workers, restart or report on them.

``run_on_scheduler``, ``processing``, ``nbytes``, ``replicate``,
``rebalance``, ``restart_workers``, ``upload_file``, ``get_versions``,
``write_scheduler_file``, ``dump_cluster_state``, ``retry``,
``recreate_error_locally`` and ``recreate_task_locally``.  The scheduler
side is :mod:`trioflow.scheduler.admin`.  Mixed into
:class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from typing import Any

import trio

from ..comm.pool import RemoteError
from ..durations import parse_timedelta
from ..protocol import messages as m
from ..protocol.serialize import dumps, dumps_function, loads, loads_function, loads_with_deps
from ..versions import REQUIRED, versions
from ._parts import ClientParts
from .futures import Future, FutureState, _flatten_futures

__all__ = ["ClusterMixin", "key_prefix"]


def key_prefix(key: str) -> str:
    """The name part of a key (``"inc-1f2e..."`` -> ``"inc"``), as dask groups them."""
    if key.startswith("(") and "," in key:  # a tuple key of a dask collection
        key = key[1:].split(",", 1)[0].strip(" '\"")
    head, sep, tail = key.rpartition("-")
    return head if sep and head and all(c in "0123456789abcdef" for c in tail) else key


def _to_plain(x: Any) -> Any:
    """``x`` with only msgpack/yaml-friendly values (dicts, lists, str, numbers)."""
    if isinstance(x, dict):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_to_plain(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, bytes):
        return f"<{len(x)} bytes>"
    return repr(x)


class ClusterMixin(ClientParts):
    """See the module docstring."""

    async def _query(self, what: str, *, keys: list[str] | None = None, workers: list[str] | None = None, n: int = -1) -> Any:
        reply = await self._rpc(m.SchedulerQuery(what=what, keys=keys, workers=workers, n=n), m.QueryReply)
        return loads(reply.result)

    # ------------------------------------------------------------ running code on the scheduler

    async def run_on_scheduler(self, function: Callable[..., Any], *args: Any, wait: bool = True, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in the scheduler's process and
        return its result.  A ``dask_scheduler`` parameter receives the
        scheduler object; a coroutine function runs to completion.

        Raises:
            Exception: what ``function`` raised.
        """
        reply = await self._rpc(m.RunOnScheduler(function=dumps_function(function), args=dumps((args, kwargs)), wait=wait), m.RunReply)
        if reply.result is None:
            st = FutureState()
            st.err(reply.exception, reply.exception_text, reply.traceback_text, reply.type_name)
            raise st.make_exception()
        return None if not wait else loads(reply.result)

    # ------------------------------------------------------------ what is where

    async def processing(self, workers: Any = None) -> dict[str, list[str]]:
        """``{worker: keys it is running or has queued}``."""
        ws = None if workers is None else ([workers] if isinstance(workers, str) else list(workers))
        return await self._query("processing", workers=ws)  # type: ignore[no-any-return]

    async def nbytes(self, keys: Any = None, summary: bool = True) -> dict[str, int]:
        """Bytes of each key in memory; ``summary=True`` sums them per key
        prefix (``{"inc": 168}``)."""
        ks = None if keys is None else [k.key if isinstance(k, Future) else str(k) for k in ([keys] if isinstance(keys, (str, Future)) else keys)]
        sizes: dict[str, int] = await self._query("nbytes", keys=ks)
        if not summary:
            return sizes
        out: dict[str, int] = {}
        for k, v in sizes.items():
            p = key_prefix(k)
            out[p] = out.get(p, 0) + v
        return out

    async def replicate(self, futures: Any, n: int | None = None, workers: Any = None, branching_factor: int = 2) -> None:
        """Copy each future's data to ``n`` workers (every worker, or every one
        of ``workers``, when ``n`` is None)."""
        keys = [f.key for f in _flatten_futures(futures)]
        ws = None if workers is None else ([workers] if isinstance(workers, str) else list(workers))
        try:
            await self._rpc(m.Replicate(keys=keys, n=n, workers=ws), m.Ok, timeout=max(self.timeout, 70))
        except RemoteError as exc:
            raise ValueError(str(exc)) from None

    async def rebalance(self, futures: Any = None, workers: Any = None, **kwargs: Any) -> None:
        """Even out the bytes held by the workers (only ``futures``' data, and
        only among ``workers``, when given)."""
        keys = None if futures is None else [f.key for f in _flatten_futures(futures)]
        ws = None if workers is None else ([workers] if isinstance(workers, str) else list(workers))
        await self._rpc(m.Rebalance(keys=keys, workers=ws), m.Ok, timeout=max(self.timeout, 70))

    async def restart_workers(self, workers: Any, timeout: Any = "default", raise_for_error: bool = True) -> dict[str, str]:
        """Restart these workers through their nannies; returns ``{worker:
        "OK" or what went wrong}``.

        Raises:
            ValueError: a worker that is unknown or has no nanny.
            TimeoutError: one did not come back in time (``raise_for_error``).
            RuntimeError: one could not be restarted (``raise_for_error``).
        """
        ws = [workers] if isinstance(workers, str) else list(workers)
        t = 2 * self.timeout if timeout == "default" else parse_timedelta(timeout)
        assert t is not None
        try:
            reply = await self._rpc(m.RestartWorkers(workers=ws, timeout=t), m.RestartWorkersReply, timeout=t + 10)
        except RemoteError as exc:
            raise ValueError(str(exc)) from None
        results = dict(reply.results)
        if raise_for_error:
            bad = {w: r for w, r in results.items() if r != "OK"}
            if any(r == "timed out" for r in bad.values()):
                raise TimeoutError(f"workers failed to restart within {t}s: {sorted(w for w, r in bad.items() if r == 'timed out')}")
            if bad:
                w, r = next(iter(bad.items()))
                raise RuntimeError(f"worker {w} failed to restart: {r}")
        return results

    # ------------------------------------------------------------ code and versions

    async def upload_file(self, filename: str, load: bool = True) -> None:
        """Send a local ``.py``, ``.zip`` or ``.egg`` file to every worker,
        now and joining later, and make it importable there (``.py`` files
        are imported at once with ``load=True``, so an error in them is
        raised here)."""
        with open(filename, "rb") as f:
            data = f.read()
        try:
            await self._rpc(m.UploadFile(filename=os.path.basename(filename), data=data, load=load), m.Ok, timeout=max(self.timeout, 70))
        except RemoteError as exc:
            raise RuntimeError(f"upload_file({filename!r}) failed on a worker: {exc}") from None

    async def get_versions(self, check: bool = False, packages: Any = None) -> dict[str, Any]:
        """Versions of Python and packages on the client, scheduler and workers.

        Raises:
            ValueError: with ``check=True``, a required package differs.
        """
        pkgs = tuple(packages or ())
        sched = await self._query("versions", keys=list(pkgs))
        workers = await self.run(versions, pkgs)
        result = {"scheduler": sched, "workers": workers, "client": versions(pkgs)}
        if check:
            mismatched = []
            for name in ("python", *REQUIRED, *pkgs):
                seen = {"client": result["client"]["packages"].get(name), "scheduler": sched["packages"].get(name)}
                seen.update({w: v["packages"].get(name) for w, v in workers.items()})
                if len(set(seen.values())) > 1:
                    mismatched.append(f"{name}: " + ", ".join(f"{who}={v}" for who, v in seen.items()))
            if mismatched:
                raise ValueError("Mismatched versions found\n" + "\n".join(mismatched))
        return result

    async def write_scheduler_file(self, scheduler_file: str) -> None:
        """Write the scheduler's contact information to ``scheduler_file``
        (JSON), for ``Client(scheduler_file=...)``."""
        if os.path.exists(scheduler_file):
            raise ValueError(f"scheduler file {scheduler_file!r} already exists")
        info = await self.scheduler_info(n_workers=0)
        with open(scheduler_file, "w") as f:
            json.dump({"type": "Scheduler", "id": info["id"], "address": info["address"], "services": info["services"]}, f, indent=2)

    async def dump_cluster_state(
        self,
        filename: str = "dump-cluster-state",
        write_from_scheduler: bool | None = None,
        exclude: Any = (),
        format: str = "msgpack",
        **storage_options: Any,
    ) -> None:
        """Write the scheduler's and the workers' state to
        ``filename.msgpack.gz`` (``format="msgpack"``) or ``filename.yaml``
        (``format="yaml"``), for debugging a stuck cluster.

        Raises:
            ValueError: an unknown ``format``.
        """
        if format not in ("msgpack", "yaml"):
            raise ValueError(f"Unsupported format {format!r}; expected 'msgpack' or 'yaml'")
        excluded = set(exclude)
        scheduler = await self._query("state")
        workers = await self.run(_worker_state, sorted(excluded))
        state = _to_plain({"scheduler": {k: v for k, v in scheduler.items() if k not in excluded}, "workers": workers, "versions": {"client": versions()}})
        path = f"{filename}.{'msgpack.gz' if format == 'msgpack' else 'yaml'}"
        if format == "msgpack":
            import msgpack

            data = gzip.compress(msgpack.packb(state))
            await trio.to_thread.run_sync(_write, path, data)
        else:
            import yaml

            text = yaml.safe_dump(state, sort_keys=True).encode()
            await trio.to_thread.run_sync(_write, path, text)

    # ------------------------------------------------------------ errors

    async def retry(self, futures: Any) -> None:
        """Run failed futures' tasks again (with the failures they were
        blamed on)."""
        flat = [f for f in _flatten_futures(futures) if f.status == "error"]
        if not flat:
            return
        for f in flat:
            f._state.reset()
        await self._rpc(m.RetryKeys(keys=list(dict.fromkeys(f.key for f in flat))), m.Ok)

    async def _task_to_recreate(self, future: Future, errored: bool) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        st = future._state
        if errored:
            await st.wait()
            if st.status != "error":
                raise ValueError(f"future {future.key!r} did not fail (status {st.status!r}); nothing to recreate")
        specs = await self._query("task", keys=[future.key])
        spec = specs.get(future.key)
        if errored and spec is not None and spec["exception_blame"] not in (None, future.key):
            # The task did not run: a dependency failed.  Recreate that one.
            blame = spec["exception_blame"]
            spec = (await self._query("task", keys=[blame])).get(blame)
        if spec is None or spec["function"] is None:
            raise ValueError(f"the scheduler has no run spec for {future.key!r}")
        deps = spec["dependencies"]
        values: dict[str, Any] = {}
        if deps:
            holders = [Future(k, self) for k in deps]
            got = await self.gather(holders)
            values = dict(zip(deps, got, strict=True))
        func = loads_function(spec["function"])
        args, kwargs = loads_with_deps(spec["args"], values)
        return func, args, kwargs


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _worker_state(exclude: list[str]) -> dict[str, Any]:
    """Run on a worker: its part of ``dump_cluster_state``."""
    from .. import logs
    from ..worker.executor import thread_state

    w = getattr(thread_state, "worker", None)
    if w is None:
        return {}
    out: dict[str, Any] = {
        "address": w.address,
        "name": w.name,
        "status": str(getattr(w, "status", "")),
        "local_directory": w.local_directory,
        "logs": logs.recent_logs(1000),
    }
    st = getattr(w, "state", None)
    tasks = getattr(st, "tasks", None)
    if isinstance(tasks, dict):
        out["tasks"] = {str(k): {"state": getattr(ts, "state", "?")} for k, ts in tasks.items()}
    return {k: v for k, v in out.items() if k not in exclude}
