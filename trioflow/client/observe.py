"""Looking inside a running cluster: profile, task stream, call stacks, story.

The workers keep what these read (their profiler's trees, a ring of finished
runs and a story log per key; see :class:`~trioflow.worker.Worker`), and the
scheduler its transition log.  The worker side is asked through
:meth:`~.admin.AdminMixin.run` with the small functions at the end of this
module, so no new message is needed for them; the scheduler never runs user
code, so its story comes from a :class:`~trioflow.protocol.messages.StoryRequest`.

Mixed into :class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import trio

from ..comm import CommError
from ..comm.pool import RemoteError
from ..keys import key_prefix
from ..protocol import messages as m
from ..worker.profile import create, merge
from ._parts import ClientParts
from .futures import _flatten_futures

logger = logging.getLogger("trioflow.client")

__all__ = ["ObserveMixin"]


def _keys_of(keys: Any) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    out: list[str] = []
    for k in keys if isinstance(keys, (list, tuple, set, frozenset)) else [keys]:
        out.append(k if isinstance(k, str) else _flatten_futures(k)[0].key)
    return out


def _window(value: Any) -> float | None:
    """A time bound: seconds since the epoch, or a negative / small number of
    seconds ago ("-10" or 10 both mean 10 s ago when under a year)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = float(value.rstrip("s"))
    value = float(value)
    if value < 0:
        return time.time() + value
    if value < 365 * 86400:
        return time.time() - value
    return value


class ObserveMixin(ClientParts):
    """Profile, task stream, call stacks and story (see the module docstring)."""

    async def _on_workers(self, function: Any, *args: Any, workers: Any = None) -> dict[str, Any]:
        """``run(function, *args)`` on the workers, except that a worker that
        cannot answer (it died meanwhile, say) is left out with a log line:
        what the others saw is still worth showing."""
        try:
            return await self.run(function, *args, workers=workers)  # the usual case: one round
        except (CommError, OSError, RemoteError, trio.TooSlowError) as exc:
            logger.info("%s: a worker did not answer (%s); asking one by one", function.__name__, exc)
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        targets = list(ident.workers) if workers is None else ([workers] if isinstance(workers, str) else list(workers))
        out: dict[str, Any] = {}

        async def one(addr: str) -> None:
            try:
                out.update(await self.run(function, *args, workers=[addr]))
            except (CommError, OSError, RemoteError, trio.TooSlowError, ValueError) as exc:
                logger.info("%s: worker %s did not answer: %s", function.__name__, addr, exc)

        async with trio.open_nursery() as n:
            for a in targets:
                n.start_soon(one, a)
        return out

    async def profile(
        self,
        key: str | None = None,
        start: Any = None,
        stop: Any = None,
        workers: Any = None,
        filename: str | None = None,
        merge_workers: bool = True,
    ) -> Any:
        """The statistical profile of the workers' tasks, merged (dask's dict shape).

        Args:
            key: a task prefix (``"inc"``) or a key (its prefix is used);
                None: every task.
            start, stop: the time window, seconds since the epoch (or a
                number of seconds ago); None: open-ended.
            workers: addresses or names to ask (None: all).
            filename: also write the profile as a self-contained HTML flame
                graph there.
            merge_workers: False returns ``{worker: tree}`` instead.
        """
        prefix = None if key is None else key_prefix(key)
        trees = await self._on_workers(_worker_profile, prefix, _window(start), _window(stop), workers=workers)
        if not merge_workers:
            return trees
        tree = merge(*trees.values()) if trees else create()
        if filename is not None:
            from ..diagnostics.report import profile_html

            with open(os.fspath(filename), "w", encoding="utf-8") as f:
                f.write(profile_html(tree, title=f"trioflow profile: {prefix or 'all tasks'}"))
        return tree

    async def call_stack(self, futures: Any = None, keys: Any = None) -> dict[str, dict[str, list[str]]]:
        """What running tasks are doing now: ``{worker: {key: [stack lines]}}``
        (outermost frame first), for ``keys`` (or the futures' keys; None: all)."""
        wanted = _keys_of(keys) + ([f.key for f in _flatten_futures(futures)] if futures is not None else [])
        stacks = await self._on_workers(_worker_call_stack, wanted or None)
        return {w: s for w, s in stacks.items() if s}

    async def get_task_stream(self, start: Any = None, stop: Any = None, count: int | None = None) -> list[dict[str, Any]]:
        """Finished runs and transfers, in dask's record shape, oldest first.

        Each record: ``key``, ``worker``, ``thread``, ``startstops`` (a tuple of
        ``{"action": "compute" | "transfer" | "disk-write" | "disk-read",
        "start", "stop", ...}``; a transfer has ``source``, the peer),
        ``status`` ("OK" or "error"), ``nbytes``, ``type``.
        """
        per_worker = await self._on_workers(_worker_task_stream, _window(start), _window(stop))
        records = [r for rs in per_worker.values() for r in rs]
        records.sort(key=lambda r: r["startstops"][0]["start"])
        if count is not None:
            records = records[-count:] if count else []
        for r in records:
            r["startstops"] = tuple(r["startstops"])
        return records

    async def story(self, *keys_or_futures: Any) -> list[tuple[Any, ...]]:
        """Everything the scheduler and the workers logged about these keys,
        in time order: ``(key, from, to, where, time, detail)`` for the
        scheduler's transitions (``where`` is "scheduler"), ``(key, what,
        "", worker, time, detail)`` for the workers' events.  A key that ran
        twice (its worker died) shows both runs."""
        wanted: list[str] = []
        for k in keys_or_futures:
            wanted.extend(_keys_of(k))
        reply = await self._rpc(m.StoryRequest(keys=wanted), m.StoryReply)
        out: list[tuple[Any, ...]] = [(k, a, b, "scheduler", t, w) for k, a, b, w, t in reply.events]
        for worker, events in (await self._on_workers(_worker_story, wanted)).items():
            out.extend((k, what, "", worker, t, detail) for k, what, t, detail in events)
        out.sort(key=lambda e: e[4])
        return out


# ------------------------------------------------------------ run on the workers


def _worker_profile(prefix: str | None, start: float | None, stop: float | None) -> dict[str, Any]:
    from ..worker import get_worker

    profiler = get_worker().profiler
    return create() if profiler is None else profiler.get(prefix, start, stop)


def _worker_call_stack(keys: list[str] | None) -> dict[str, list[str]]:
    from ..worker import get_worker

    return get_worker().call_stacks(keys)


def _worker_task_stream(start: float | None, stop: float | None) -> list[dict[str, Any]]:
    from ..worker import get_worker

    w = get_worker()
    lo = -float("inf") if start is None else start
    hi = float("inf") if stop is None else stop
    out: list[dict[str, Any]] = []
    for key, thread, a, b, status, nbytes, type_name in list(w.task_records):
        if b >= lo and a <= hi:
            out.append(
                {
                    "key": key,
                    "worker": w.address,
                    "thread": thread,
                    "startstops": [{"action": "compute", "start": a, "stop": b}],
                    "status": status,
                    "nbytes": nbytes,
                    "type": type_name,
                }
            )
    for t in list(w.transfer_log):
        if t["stop"] >= lo and t["start"] <= hi and t["keys"]:
            out.append(
                {
                    "key": t["keys"][0] if len(t["keys"]) == 1 else json.dumps(t["keys"][:3])[1:-1],
                    "worker": w.address,
                    "thread": None,
                    "startstops": [{"action": "transfer", "start": t["start"], "stop": t["stop"], "source": t["who"]}],
                    "status": "OK",
                    "nbytes": t["bytes"],
                    "type": None,
                }
            )
    disk_log = getattr(w.data, "disk_log", ())
    for key, action, a, b, nbytes in list(disk_log):
        if b >= lo and a <= hi:
            out.append(
                {"key": key, "worker": w.address, "thread": None, "startstops": [{"action": action, "start": a, "stop": b}], "status": "OK", "nbytes": nbytes, "type": None}
            )
    return out


def _worker_story(keys: list[str]) -> list[tuple[str, str, float, str]]:
    from ..worker import get_worker

    wanted = set(keys)
    return [e for e in list(get_worker().story_log) if e[0] in wanted]
