"""Every exception trioflow raises, and the one rule for exception groups.

All of them are :class:`TrioflowError`, so ``except trioflow.TrioflowError``
catches anything trioflow itself reports.  Each also keeps the standard base
that code already catches: a :class:`CommError` is a ``ConnectionError``
(so an ``OSError``), a :class:`SecurityError` or :class:`AddressError` a
``ValueError``, a :class:`SerializationError` a ``TypeError``, and
:class:`CancelledError` is ``concurrent.futures.CancelledError`` (what
``distributed.CancelledError`` is).  Timeouts are the builtin
``TimeoutError``, re-exported here under that name.

This module imports nothing heavy (no Trio): the sans-IO state machines use it.
"""

from __future__ import annotations

import builtins
import concurrent.futures
from collections.abc import Callable, Iterator

__all__ = [
    "AddressError",
    "CancelledError",
    "CommClosedError",
    "CommError",
    "FutureLostError",
    "HandshakeError",
    "InvalidEvent",
    "InvalidTransition",
    "InvalidWorkerEvent",
    "KilledWorker",
    "LeakError",
    "LostData",
    "NannyStartError",
    "PluginError",
    "ProtocolError",
    "RegistrationRefused",
    "RemoteError",
    "RemoteException",
    "Reschedule",
    "SecurityError",
    "SerializationError",
    "TimeoutError",
    "TrioflowError",
    "UserError",
    "find_leaf",
    "leaves",
    "walk",
]

#: The builtin (``asyncio.TimeoutError`` and ``concurrent.futures.TimeoutError``
#: are the same class); ``distributed.TimeoutError`` is it too.
TimeoutError = builtins.TimeoutError


class TrioflowError(Exception):
    """Base of every exception trioflow defines."""


# ---------------------------------------------------------------- futures and tasks


class CancelledError(TrioflowError, concurrent.futures.CancelledError):
    """The future was cancelled.

    A ``concurrent.futures.CancelledError`` (an ``Exception``), like
    ``distributed.CancelledError``; not an ``asyncio.CancelledError``, which
    is a ``BaseException`` that means "this task is being cancelled".
    """


class FutureLostError(TrioflowError):
    """The scheduler was lost, or the data was lost and cannot be recomputed."""


class KilledWorker(TrioflowError):
    """A task was running on workers that died too many times."""

    def __init__(self, key: str, workers: list[str], allowed_failures: int) -> None:
        super().__init__(key, workers, allowed_failures)
        self.key = key
        self.workers = list(workers)
        self.allowed_failures = allowed_failures

    @property
    def task(self) -> str:
        """The key, under dask's name for it."""
        return self.key

    @property
    def last_worker(self) -> str:
        """The address of the last worker that died running it (dask gives its WorkerState)."""
        return self.workers[-1] if self.workers else ""

    def __str__(self) -> str:
        return (
            f"task {self.key!r} was running on workers that died {len(self.workers)} times "
            f"({', '.join(self.workers)}); it may be what kills them"
        )


class LostData(TrioflowError):
    """Scattered data was lost with the worker that held it."""


class RemoteError(TrioflowError, RuntimeError):
    """An error on the other side that cannot be rebuilt here as itself.

    A peer answered a request with an error message, or a task raised an
    exception whose type cannot be unpickled here.  ``str(exc)`` is the
    remote message; ``type_name`` the remote exception's type name when
    known (a task's), else ``""``.
    """

    def __init__(self, message: str, *, type_name: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name


#: The name ``trioflow.client.futures`` used for a task's exception that
#: could not travel; the same class.
RemoteException = RemoteError


# ---------------------------------------------------------------- the wire


class Reschedule(TrioflowError):
    """Raised in a task: do not fail, run the task again, where the
    scheduler places it now (dask's ``distributed.Reschedule``)."""


class CommError(TrioflowError, ConnectionError):
    """Could not connect, or the connection failed, for a stated reason."""


class CommClosedError(CommError):
    """The peer closed the connection or it broke.

    Attributes:
        clean: the peer hung up between two messages (or we closed the comm
            ourselves); nothing was cut short.  False when the connection
            broke (reset, TLS error) or closed in the middle of a message.
        partial: part of an incoming message had been read when it happened.
    """

    def __init__(self, message: str, *, clean: bool = False, partial: bool = False) -> None:
        super().__init__(message)
        self.clean = clean
        self.partial = partial


class RegistrationRefused(CommError):
    """The scheduler answered our registration with an error."""


class AddressError(TrioflowError, ValueError):
    """An address string is malformed."""


class ProtocolError(TrioflowError):
    """A peer broke the wire protocol: bad bytes, bad schema, limits, handshake."""


class HandshakeError(ProtocolError):
    """The peer refused our handshake, or we refused theirs."""


class SerializationError(TrioflowError, TypeError):
    """A value could not be pickled or unpickled."""


class SecurityError(TrioflowError, ValueError):
    """A TLS configuration problem; the message names the option and the cause."""


# ---------------------------------------------------------------- state machines


class InvalidEvent(TrioflowError, ValueError):
    """An event (from a peer) does not fit the state machine's current state; nothing changed."""


#: The worker state machine's name for :class:`InvalidEvent`; the same class.
InvalidWorkerEvent = InvalidEvent


class InvalidTransition(TrioflowError, RuntimeError):
    """An internal transition not in the table was asked for (a bug)."""


# ---------------------------------------------------------------- processes and tools


class NannyStartError(TrioflowError, RuntimeError):
    """The nanny's first worker process could not start; the message says why in one line."""


class PluginError(TrioflowError, RuntimeError):
    """A plugin registered with ``Client.register_plugin`` raised.

    The message names the plugin, the hook and where it failed (``setup``
    on worker ``tcp://...``); ``failures`` lists every place as
    ``(where, phase, "Type: message")``, and ``__cause__`` is the first
    original exception when it could be sent back.
    """

    def __init__(self, message: str, *, plugin: str = "", failures: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.failures = list(failures or [])

    def __reduce__(self) -> tuple[Callable[..., PluginError], tuple[str, str, list[tuple[str, str, str]]]]:
        return _plugin_error, (str(self), self.plugin, self.failures)


def _plugin_error(message: str, plugin: str, failures: list[tuple[str, str, str]]) -> PluginError:
    return PluginError(message, plugin=plugin, failures=failures)


class UserError(TrioflowError):
    """A failure the user can fix; the command-line programs print it as one line, exit 1."""


class LeakError(TrioflowError, AssertionError):
    """Something outlived the test that made it."""


class _EncryptedKey(TrioflowError):
    """Internal to :mod:`trioflow.security`: the private key wants a passphrase."""


class _BadRequest(TrioflowError):
    """Internal to the dashboard: answer the HTTP request with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- exception groups

_Tier = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def walk(exc: BaseException, *, chained: bool = False) -> Iterator[BaseException]:
    """``exc`` and everything inside it, depth first, in order.

    An exception comes before its contents: the members of an exception
    group in order, then (with ``chained``) its ``__cause__`` and then its
    ``__context__``.  Each exception is visited once (context chains can
    loop).
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner: list[BaseException] = []
        if isinstance(e, BaseExceptionGroup):
            inner.extend(e.exceptions)
        if chained:
            inner.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        stack.extend(reversed(inner))


def leaves(exc: BaseException, *, chained: bool = False) -> list[BaseException]:
    """The exceptions in ``exc`` that are not groups, in :func:`walk` order."""
    return [e for e in walk(exc, chained=chained) if not isinstance(e, BaseExceptionGroup)]


def find_leaf(exc: BaseException, *tiers: _Tier, chained: bool = False) -> BaseException | None:
    """The real error in ``exc`` (maybe a nested exception group), or None.

    The rule: the first of :func:`leaves` that matches the first tier any
    leaf matches.  A tier is an exception type, a tuple of them, or a
    predicate; later tiers are fallbacks (``find_leaf(exc, UserError,
    OSError)`` prefers a ``UserError`` anywhere over an earlier
    ``OSError``).  With no tiers, the first leaf of any kind.  A group
    itself never matches; ``trio.Cancelled`` and ``KeyboardInterrupt`` are
    ``BaseException`` only, so a tier of ``Exception`` types passes over them.
    """
    found = leaves(exc, chained=chained)
    if not tiers:
        return found[0] if found else None
    for tier in tiers:
        for leaf in found:
            if isinstance(leaf, tier) if isinstance(tier, (type, tuple)) else tier(leaf):
                return leaf
    return None
