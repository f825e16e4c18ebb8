"""What every scheduler extension shares: events in, instructions out.

Theory of operation
-------------------
A coordination primitive (variable, queue, lock, ...) is a small state machine
with no IO, no clock and no Trio: the shell (:mod:`.serve`) turns each request
into an event, calls ``handle(event, now)`` and carries out the instructions it
gets back.  Time only enters as ``now``; a waiting request stores an absolute
deadline, and the shell calls ``tick(now)`` at ``next_deadline()`` so expired
waits are answered with :data:`TIMED_OUT`.

Requests that may wait carry a ``request`` number the shell chose; the answer
is a :class:`Reply` naming it, at once or later.  A request the shell gives up
on (its connection closed) is withdrawn with ``cancel(request)``.

Values are :class:`Item`: opaque user bytes plus the keys of the futures they
reference.  While an extension keeps an item it *holds* those keys (the
:class:`Hold` / :class:`Unhold` instructions, counted per key in
:class:`KeyHolds`), so the scheduler does not forget them when the client that
made the futures goes away.

Rules: ``handle`` either raises :class:`ExtensionError` and leaves the state
unchanged, or applies the event whole; ``validate()`` checks every invariant
(the hypothesis machines call it after each step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...records import Record, record

__all__ = ["TIMED_OUT", "ExtensionError", "Hold", "Item", "KeyHolds", "Reply", "Unhold", "Waiters"]


class ExtensionError(Exception):
    """A request does not fit the extension's state (answered as an error)."""


class _TimedOut:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TIMED_OUT"

    def __reduce__(self) -> str:
        return "TIMED_OUT"


#: The value of a :class:`Reply` to a wait that reached its deadline.
TIMED_OUT: Any = _TimedOut()


@record(kw_only=True)
class Item(Record):
    """A user value as the scheduler keeps it: opaque bytes (a
    :class:`~trioflow.protocol.serialize.Serialized`) and the future keys
    it references."""

    data: Any
    keys: tuple[str, ...] = ()


@record
class Reply(Record):
    """Answer request ``request`` with ``value`` (the extension's own value;
    the shell turns it into a message)."""

    request: int
    value: Any


@record
class Hold(Record):
    """Keep these keys alive for an extension (each once more)."""

    keys: tuple[str, ...]


@record
class Unhold(Record):
    """An extension no longer needs these keys (each once less)."""

    keys: tuple[str, ...]


class KeyHolds:
    """Count of holds per key, shared by all extensions of one scheduler;
    turns item additions and removals into :class:`Hold` / :class:`Unhold`
    instructions for keys whose count leaves or reaches zero."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def hold(self, keys: Iterable[str], out: list[Any]) -> None:
        new = []
        for k in keys:
            n = self.counts.get(k, 0)
            self.counts[k] = n + 1
            if n == 0:
                new.append(k)
        if new:
            out.append(Hold(tuple(new)))

    def unhold(self, keys: Iterable[str], out: list[Any]) -> None:
        gone = []
        for k in keys:
            n = self.counts[k] - 1
            if n:
                self.counts[k] = n
            else:
                del self.counts[k]
                gone.append(k)
        if gone:
            out.append(Unhold(tuple(gone)))


@record
class Waiter(Record):
    """A request waiting for something, until ``deadline`` (None: forever)."""

    request: int
    client: str
    deadline: float | None
    data: Any = None


def deadline(now: float, timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout != timeout or timeout < 0:
        raise ExtensionError(f"timeout must be a non-negative number or None, not {timeout!r}")
    return now + timeout


class Waiters:
    """Waiting requests of one extension, FIFO per name, findable by request
    number (for ``cancel`` and deadlines)."""

    def __init__(self) -> None:
        self.by_name: dict[Any, list[Waiter]] = {}
        self.names: dict[int, Any] = {}

    def add(self, name: Any, w: Waiter) -> None:
        if w.request in self.names:
            raise ExtensionError(f"request {w.request} is already waiting")
        self.by_name.setdefault(name, []).append(w)
        self.names[w.request] = name

    def queue(self, name: Any) -> list[Waiter]:
        return self.by_name.get(name, [])

    def remove(self, request: int) -> tuple[Any, Waiter] | None:
        name = self.names.pop(request, None)
        if name is None:
            return None
        q = self.by_name[name]
        for i, w in enumerate(q):
            if w.request == request:
                del q[i]
                break
        if not q:
            del self.by_name[name]
        return name, w

    def pop_first(self, name: Any) -> Waiter:
        q = self.by_name[name]
        w = q.pop(0)
        del self.names[w.request]
        if not q:
            del self.by_name[name]
        return w

    def expired(self, now: float) -> list[int]:
        return [w.request for q in self.by_name.values() for w in q if w.deadline is not None and w.deadline <= now]

    def of_client(self, client: str) -> list[int]:
        return [w.request for q in self.by_name.values() for w in q if w.client == client]

    def next_deadline(self) -> float | None:
        ds = [w.deadline for q in self.by_name.values() for w in q if w.deadline is not None]
        return min(ds) if ds else None

    def validate(self) -> None:
        seen = {w.request: name for name, q in self.by_name.items() for w in q}
        assert seen == self.names, (seen, self.names)
        assert all(self.by_name.values()), "empty waiter queue kept"


class Extension:
    """Base of the primitives' state machines.

    Subclasses define ``_on_<EventClass>`` methods (looked up by the event's
    class name) and may override :meth:`_expire`, :meth:`_withdraw` and
    :meth:`_client_gone`.
    """

    def __init__(self, holds: KeyHolds | None = None) -> None:
        self.holds = holds if holds is not None else KeyHolds()
        self.waiters = Waiters()

    def handle(self, event: Any, now: float) -> list[Any]:
        """Apply ``event`` at time ``now``; the instructions to carry out.

        Raises:
            ExtensionError: the event does not fit; nothing changed.
        """
        method = getattr(self, "_on_" + type(event).__name__, None)
        if method is None:
            raise ExtensionError(f"{type(self).__name__} does not handle {type(event).__name__}")
        # Checked before anything changes: a bad timeout must not be granted.
        deadline(now, getattr(event, "timeout", None))
        out: list[Any] = []
        method(event, now, out)
        return out

    def tick(self, now: float) -> list[Any]:
        """Answer the waits whose deadline has come (and expire whatever else
        is due)."""
        out: list[Any] = []
        for request in self.waiters.expired(now):
            if request not in self.waiters.names:
                continue  # granted as an earlier one was withdrawn
            self._withdraw(request, out)
            out.append(Reply(request, TIMED_OUT))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing)."""
        return self.waiters.next_deadline()

    def cancel(self, request: int) -> list[Any]:
        """Withdraw a waiting request nobody will read the answer of."""
        out: list[Any] = []
        self._withdraw(request, out)
        return out

    def remove_client(self, client: str, now: float) -> list[Any]:
        """The client left: drop its waits and whatever it held."""
        out: list[Any] = []
        for request in self.waiters.of_client(client):
            self._withdraw(request, out)
        self._client_gone(client, now, out)
        return out

    def remove_worker(self, worker: str, now: float) -> list[Any]:
        """The worker left (a client inside it is removed on its own)."""
        return []

    def abandon(self, event: Any, now: float) -> list[Any]:
        """The answer to ``event`` could not be delivered (the asker hung up
        as it was sent): undo what it granted, if anything."""
        out: list[Any] = []
        self._abandon(event, now, out)
        return out

    def _abandon(self, event: Any, now: float, out: list[Any]) -> None:
        pass

    def _withdraw(self, request: int, out: list[Any]) -> None:
        self.waiters.remove(request)

    def _client_gone(self, client: str, now: float, out: list[Any]) -> None:
        pass

    def validate(self) -> None:
        self.waiters.validate()
