"""Events: ``log_event``, ``get_events``, ``subscribe_topic`` (the client's part).

Workers and clients log events under topics at the scheduler
(:mod:`trioflow.scheduler.events`); the scheduler keeps recent ones per
topic and sends new ones to the clients subscribed.  A subscriber's handler
is called with ``(time, msg)`` in the client's loop (a coroutine handler is
started there).  Every client gets the ``print`` and ``warn`` topics: with no
handler of the user's, events there are printed or warned here, which is
how :func:`trioflow.print` and :func:`trioflow.warn` in tasks show up on the
client.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..protocol import messages as m
from ..protocol.serialize import SerializationError, dumps, loads
from ._parts import ClientParts

logger = logging.getLogger("trioflow.client")

__all__ = ["EventsMixin"]


def _topics(topic: str | list[str] | tuple[str, ...]) -> list[str]:
    return [topic] if isinstance(topic, str) else list(topic)


class EventsMixin(ClientParts):
    """log_event, get_events, subscribe_topic, unsubscribe_topic."""

    def _handlers(self) -> dict[str, Callable[[Any], Any]]:
        handlers: dict[str, Callable[[Any], Any]] | None = self.__dict__.get("_topic_handlers")
        if handlers is None:
            handlers = self.__dict__["_topic_handlers"] = {}
        return handlers

    async def log_event(self, topic: str | list[str], msg: Any) -> None:
        """Log ``msg`` (any picklable value) under ``topic`` (or each of a
        list of topics) at the scheduler."""
        self._send(m.LogEvent(topics=_topics(topic), time=time.time(), msg=dumps(msg)))

    async def get_events(self, topic: str | None = None) -> Any:
        """The events logged under ``topic``: a tuple of ``(time, msg)``;
        for ``topic=None`` a dict of every topic's."""
        reply = await self._rpc(m.GetEvents(topic=topic), m.EventsReply)
        events = {t: tuple((e.time, loads(e.msg)) for e in evs) for t, evs in reply.events.items()}
        return events.get(topic, ()) if topic is not None else events

    async def subscribe_topic(self, topic: str, handler: Callable[[Any], Any]) -> None:
        """Call ``handler((time, msg))`` for every event logged under
        ``topic`` from now on (replacing any handler of this topic)."""
        self._handlers()[topic] = handler
        self._send(m.SubscribeTopic(topic=topic))

    async def unsubscribe_topic(self, topic: str) -> None:
        """Stop calling the handler of ``topic``."""
        self._handlers().pop(topic, None)
        if topic not in _DEFAULT_HANDLERS:  # those stay, handled here
            self._send(m.UnsubscribeTopic(topic=topic))

    def _resubscribe(self) -> None:
        """After (re)registering: a new scheduler knows no subscription of ours."""
        for topic in self._handlers():
            self._send(m.SubscribeTopic(topic=topic))

    def _topic_event(self, msg: m.TopicEvent) -> None:
        """An event of a subscribed topic arrived (in the client's loop)."""
        handler = self._handlers().get(msg.topic) or _DEFAULT_HANDLERS.get(msg.topic)
        if handler is None:
            return
        try:
            event = (msg.time, loads(msg.msg))
        except SerializationError as exc:
            logger.warning("could not read an event of topic %r: %s", msg.topic, exc)
            return
        try:
            result = handler(event)
            if inspect.iscoroutine(result):
                nursery = getattr(self, "_nursery", None)
                if nursery is not None:
                    nursery.start_soon(_run_handler, result, msg.topic)
                else:
                    result.close()
        except Exception:  # noqa: BLE001 - a handler's bug must not end the client
            logger.exception("handler of topic %r failed", msg.topic)


async def _run_handler(coro: Any, topic: str) -> None:
    try:
        await coro
    except Exception:  # noqa: BLE001
        logger.exception("handler of topic %r failed", topic)


def _print_event(event: tuple[float, Any]) -> None:
    _, msg = event
    if not isinstance(msg, dict):
        builtins.print(msg)
        return
    file = {1: sys.stdout, 2: sys.stderr}.get(msg.get("file") or 1, sys.stdout)
    builtins.print(*msg.get("args", ()), sep=msg.get("sep", " "), end=msg.get("end", "\n"), file=file, flush=bool(msg.get("flush")))


def _warn_event(event: tuple[float, Any]) -> None:
    _, msg = event
    if not isinstance(msg, dict):
        warnings.warn(str(msg), stacklevel=1)
        return
    warnings.warn(msg.get("message", ""), category=msg.get("category") or UserWarning, stacklevel=1)


_DEFAULT_HANDLERS: dict[str, Callable[[Any], Any]] = {"print": _print_event, "warn": _warn_event}
