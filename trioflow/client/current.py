"""The client of the current context: :func:`get_client` and :func:`worker_client`.

Theory of operation
-------------------
Inside a task, ``get_client()`` returns the client of the worker running it:
one per worker, made on first use, hosted in the worker's own Trio loop (no
thread of its own, no configuration: it reaches the worker's scheduler with
the worker's security, ``inproc://`` addresses included), and closed with
the worker.  Task threads call into it the way a blocking client's caller
calls into its portal thread, here through the worker loop's Trio token
(:class:`_LoopPortal`).  Futures it makes are released when collected, as
any client's: a task's local futures go when the task returns.

Outside a task, ``get_client()`` is the default client (the last blocking
client made and still open), or a new one for the address given.

A task that waits on futures holds a worker thread while it waits; on a
worker with few threads the tasks it waits for may then never run.
:func:`worker_client` (or :func:`~trioflow.secede` / :func:`~trioflow.rejoin`
around the wait) gives the thread's slot back for the wait.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from .sync import Client

__all__ = ["WorkerClient", "get_client", "worker_client"]


class _LoopPortal:
    """Calls from a task thread into the worker's loop (the part of anyio's
    blocking portal that :class:`Client` uses)."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

        return trio.from_thread.run(run, trio_token=self._token)


class WorkerClient(Client):
    """The blocking client that tasks on one worker share (see the module
    docstring).  Closing it is left to its worker: :meth:`close` does
    nothing."""

    def __init__(self, core: Any, token: trio.lowlevel.TrioToken) -> None:
        # (asynchronous=True: the base class then connects nothing itself.)
        super().__init__(core.scheduler_address, set_as_default=False, asynchronous=True)
        self._asynchronous = False
        portal = _LoopPortal(token)
        self._core = core
        self._portal = portal
        core._portal = portal
        core.asynchronous = False

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<Client (of a worker): scheduler={self.scheduler_address!r}>"


def get_client(address: str | None = None, timeout: float | None = None, resolve_address: bool = True) -> Client:
    """The client of the current context (dask's ``get_client``).

    In a task, the client of the worker running it (for the worker's own
    scheduler); elsewhere, the default client, or a new client for
    ``address``.

    Raises:
        ValueError: outside a task, no address given and no client running.
    """
    from ..worker.executor import thread_state

    worker = getattr(thread_state, "worker", None)
    if worker is not None and getattr(thread_state, "key", None) is not None:
        if address is None or address == worker.scheduler_address:
            return worker._client_for_tasks()  # type: ignore[no-any-return]
    try:
        client = Client.current()  # the innermost as_current(), else the default
    except ValueError:
        if address is None:
            raise ValueError("No global client found and no address provided") from None
        return Client(address, timeout=timeout if timeout is not None else 10)
    if address is None or client.scheduler_address == address:
        return client
    return Client(address, timeout=timeout if timeout is not None else 10)


@contextmanager
def worker_client(timeout: float | None = None, separate_thread: bool = True) -> Iterator[Client]:
    """In a task: the worker's client, with the task's thread out of the
    worker's pool while the block runs (``secede()`` on entry, ``rejoin()``
    on exit, unless ``separate_thread=False``)::

        def fib(n):
            if n < 2:
                return n
            with worker_client() as client:
                a, b = client.submit(fib, n - 1), client.submit(fib, n - 2)
                return a.result() + b.result()

    Raises:
        ValueError: not called from inside a task.
    """
    from ..worker.executor import thread_state
    from ..worker.threads import rejoin, secede

    if getattr(thread_state, "key", None) is None:
        raise ValueError("worker_client() called outside of a task running on a worker")
    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()
