"""Moving data: results, ``gather`` and ``scatter``.

Data never passes through the scheduler: ``gather`` asks the scheduler who
holds each key (or trusts the holders announced when the key finished) and
fetches from those workers directly, in batches of bounded size; ``scatter``
puts values on workers directly and then tells the scheduler where they are.
Mixed into :class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import trio

from ..comm import CommError
from ..comm.pool import RemoteError
from ..protocol import messages as m
from ..protocol.serialize import SerializationError, Serialized, dumps, loads
from ._parts import ClientParts
from .futures import Future, FutureLostError, _flatten_futures
from .submit import _ser_token, _tokenize

logger = logging.getLogger("trioflow.client")

__all__ = ["DataMixin"]

#: A gather asks each worker for at most about this many bytes at a time.
GATHER_BATCH_BYTES = 64 * 1024 * 1024


def _batches(keys: list[str], nbytes: dict[str, int], limit: int) -> list[list[str]]:
    """``keys`` in order, cut into runs of at most ``limit`` bytes (a bigger
    key goes alone; unknown sizes count as nothing)."""
    out: list[list[str]] = []
    batch: list[str] = []
    total = 0
    for k in keys:
        size = max(nbytes.get(k, 0), 0)
        if batch and total + size > limit:
            out.append(batch)
            batch, total = [], 0
        batch.append(k)
        total += size
    if batch:
        out.append(batch)
    return out


def _rebuild(structure: Any, data: dict[str, Any], skip: set[str]) -> Any:
    if isinstance(structure, Future):
        return data.get(structure.key)
    if isinstance(structure, dict):
        return {k: _rebuild(v, data, skip) for k, v in structure.items() if not (isinstance(v, Future) and v.key in skip)}
    if isinstance(structure, (list, tuple, set, frozenset)):
        items = [_rebuild(v, data, skip) for v in structure if not (isinstance(v, Future) and v.key in skip)]
        if isinstance(structure, list):
            return items
        if isinstance(structure, tuple):
            return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
        return type(structure)(items)
    return structure


class DataMixin(ClientParts):
    """Results, gather, scatter (see the module docstring)."""

    # ------------------------------------------------------------ results

    async def _result_async(self, future: Future, timeout: float | None) -> Any:
        st = future._state
        if st.status == "pending":
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    await st.wait()
            except trio.TooSlowError:
                raise TimeoutError(f"future {future.key!r} not done after {timeout}s") from None
        if st.status != "finished":
            raise st.make_exception()
        data = await self._gather_keys([future.key])
        return data[future.key]

    async def gather(self, futures: Any, errors: str = "raise") -> Any:
        """Wait for futures (in any nesting of lists, tuples, sets and dicts)
        and return their results in the same structure.

        ``errors="raise"`` raises the first task exception; ``"skip"``
        leaves out the futures that failed.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        flat = _flatten_futures(futures) if not isinstance(futures, Future) else [futures]
        for f in flat:
            if f.client is not self:
                raise ValueError(f"future {f.key!r} belongs to another client")
            await f._state.wait()
        bad = [f for f in flat if f.status != "finished"]
        if bad and errors == "raise":
            raise bad[0]._state.make_exception()
        keys = list(dict.fromkeys(f.key for f in flat if f.status == "finished"))
        data = await self._gather_keys(keys) if keys else {}
        skip = {f.key for f in bad}
        return _rebuild(futures, data, skip)

    def _announced_holders(self, keys: list[str]) -> m.WhoHasReply | None:
        """Holders from the keys' KeyInMemory, if every key has some."""
        who_has: dict[str, list[str]] = {}
        nbytes: dict[str, int] = {}
        for k in keys:
            st = self._states.get(k)
            if st is None or not st.who_has:
                return None
            who_has[k] = st.who_has
            nbytes[k] = st.nbytes
        return m.WhoHasReply(who_has=who_has, nbytes=nbytes)

    async def _gather_keys(self, keys: list[str]) -> dict[str, Any]:
        """Fetch keys from the workers that hold them, retrying on moves."""
        assert self._pool is not None
        out: dict[str, Any] = {}
        remaining = list(keys)
        for attempt in range(20):
            # First try where the scheduler said the values were when they
            # finished; ask it again only for what has moved since.
            hinted = self._announced_holders(remaining) if attempt == 0 else None
            who = hinted or await self._rpc(m.WhoHas(keys=remaining), m.WhoHasReply)
            by_worker: dict[str, list[str]] = {}
            lost = []
            for k in remaining:
                holders = who.who_has.get(k) or []
                if not holders:
                    lost.append(k)
                else:
                    by_worker.setdefault(holders[attempt % len(holders)], []).append(k)
            results: dict[str, Serialized] = {}
            failed: list[BaseException] = []

            async def fetch(addr: str, ks: list[str], sizes: dict[str, int]) -> None:
                # In batches of about GATHER_BATCH_BYTES: a worker that holds
                # more than its memory (spilled to disk) need not load it all
                # at once to answer.
                for batch in _batches(ks, sizes, GATHER_BATCH_BYTES):
                    try:
                        reply = await self._pool.rpc(addr, m.GetData(keys=batch), m.DataReply, timeout=max(self.timeout, 300))  # type: ignore[union-attr]
                    except RemoteError as exc:
                        # Kept, not raised here: out of the nursery it would be an ExceptionGroup.
                        failed.append(SerializationError(str(exc)))  # noqa: B023 - runs within this iteration
                        return
                    except (CommError, OSError, trio.TooSlowError) as exc:
                        logger.info("gather: %s unreachable: %s", addr, exc)
                        self._pool.drop(addr)  # type: ignore[union-attr]
                        return
                    results.update(reply.data)  # noqa: B023 - runs within this iteration

            async with trio.open_nursery() as n:
                for addr, ks in by_worker.items():
                    n.start_soon(fetch, addr, ks, who.nbytes)
            if failed:
                raise failed[0]
            for k, ser in results.items():
                out[k] = loads(ser)
            remaining = [k for k in remaining if k not in out]
            if not remaining:
                return out
            for k in lost:
                st = self._states.get(k)
                if st is not None and st.status in ("error", "lost", "cancelled"):
                    raise st.make_exception()
            if hinted is None:  # a stale hint is retried at once, with the scheduler's answer
                await trio.sleep(min(0.01 * 2**attempt, 1.0))
        raise FutureLostError(f"could not gather {len(remaining)} keys (first: {remaining[0]!r}): no worker holds them")

    # ------------------------------------------------------------ scatter

    async def scatter(self, data: Any, workers: Any = None, broadcast: bool = False, hash: bool = True) -> Any:
        """Put data on workers; returns Futures in the same shape (one value,
        a list, or a dict whose keys become the keys)."""
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, v) for v in data]  # type: ignore[misc]
        else:
            items = [(None, data)]  # type: ignore[list-item]
        sers: list[tuple[str, Serialized]] = []
        for k, v in items:
            ser = dumps(v)
            if k is None:
                name = type(v).__name__
                k = f"{name}-{_tokenize(*_ser_token(ser))}" if hash else f"{name}-{uuid.uuid4().hex}"
            sers.append((k, ser))
        ident = await self._rpc(m.IdentityRequest(), m.IdentityReply)
        targets = list(ident.workers)
        if workers is not None:
            wanted = [workers] if isinstance(workers, str) else list(workers)
            names = {w.name: a for a, w in ident.workers.items()}
            targets = [names.get(w, w) for w in wanted if w in ident.workers or w in names]
        if not targets:
            raise ValueError("no workers to scatter to" + (f" (asked for {workers!r})" if workers is not None else ""))
        placement: dict[str, dict[str, Serialized]] = {}
        who_has: dict[str, list[str]] = {}
        # A repeated value (same hash, same key) is stored once: a second
        # copy on another worker would be unknown to the scheduler, which
        # could then never free it.
        unique = dict(sers)
        for i, (k, ser) in enumerate(unique.items()):
            chosen = targets if broadcast else [targets[i % len(targets)]]
            for a in chosen:
                placement.setdefault(a, {})[k] = ser
            who_has[k] = list(chosen)

        failures: dict[str, BaseException] = {}

        async def put(addr: str, d: dict[str, Serialized]) -> None:
            # Failures are collected, not raised: raised in the nursery they
            # would reach the caller as an ExceptionGroup.
            assert self._pool is not None
            try:
                await self._pool.rpc(addr, m.PutData(data=d), m.Ok, timeout=max(self.timeout, 300))
            except RemoteError as exc:  # the worker could not unpickle it
                failures[addr] = SerializationError(f"{addr}: {exc}")
            except (CommError, OSError, trio.TooSlowError) as exc:
                failures[addr] = CommError(f"could not scatter to {addr}: {exc!r}")

        async with trio.open_nursery() as n:
            for addr, d in placement.items():
                n.start_soon(put, addr, d)
        nbytes = {k: ser.nbytes for k, ser in unique.items()}
        if failures:
            # Copies that did land are registered and then released at once
            # (their futures die here), so no worker keeps data that the
            # scheduler does not know of and so could never free.
            landed = {k: [a for a in addrs if a not in failures] for k, addrs in who_has.items()}
            landed = {k: addrs for k, addrs in landed.items() if addrs}
            if landed:
                doomed = [Future(k, self) for k in landed]
                self._send(m.UpdateData(who_has=landed, nbytes={k: nbytes[k] for k in landed}))
                del doomed
            raise next(iter(failures.values()))
        futures = [Future(k, self) for k, _ in sers]
        # The scheduler answers every scattered key with KeyInMemory on our
        # stream.  Wait for that, so that once scatter returns the scheduler
        # knows the data: who_has, has_what and other clients see it.  (Sent
        # on the stream, not as a request, to stay in order with releases.)
        acks = [self._scatter_acks.setdefault(k, trio.Event()) for k in who_has]
        self._send(m.UpdateData(who_has=who_has, nbytes=nbytes))
        with trio.move_on_after(self.timeout):
            for ack in acks:
                await ack.wait()
        if self.status != "running":
            raise FutureLostError(f"client is {self.status}; scatter did not complete")
        if not all(ack.is_set() for ack in acks):
            raise TimeoutError(f"the scheduler did not acknowledge the scattered data within {self.timeout}s")
        if isinstance(data, dict):
            return dict(zip(data.keys(), futures, strict=True))
        if isinstance(data, (list, tuple, set, frozenset)):
            return type(data)(futures) if not isinstance(data, (set, frozenset)) else list(futures)
        return futures[0]
