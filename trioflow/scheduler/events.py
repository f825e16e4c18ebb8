"""The scheduler's event log: topics, their recent events, subscribers.

Sans-IO: :class:`EventLog` takes what workers and clients log
(:meth:`EventLog.log`) and returns which client gets which
:class:`~trioflow.protocol.messages.TopicEvent`; the server sends them.
Events are opaque (pickled by whoever logged them: the scheduler never
unpickles user data).  Each topic keeps its last :data:`KEEP_PER_TOPIC`
events for :meth:`EventLog.get` (``client.get_events``).

Every client subscribes to ``print`` and ``warn`` on arrival: that is how
:func:`trioflow.print` and :func:`trioflow.warn` in tasks reach the clients.
"""

from __future__ import annotations

import collections

from ..protocol.messages import LoggedEvent, TopicEvent
from ..protocol.serialize import Serialized

__all__ = ["DEFAULT_TOPICS", "KEEP_PER_TOPIC", "EventLog"]

#: Events kept per topic (oldest dropped first).
KEEP_PER_TOPIC = 10_000
#: Topics every client subscribes to on arrival.
DEFAULT_TOPICS = ("print", "warn")


class EventLog:
    def __init__(self, keep: int = KEEP_PER_TOPIC) -> None:
        self.keep = keep
        #: topic -> its recent events, oldest first.
        self.events: dict[str, collections.deque[LoggedEvent]] = {}
        #: topic -> the ids of the clients subscribed to it.
        self.subscribers: dict[str, set[str]] = {}

    def log(self, topics: list[str], time: float, msg: Serialized) -> list[tuple[str, TopicEvent]]:
        """Keep the event; return (client id, message) for each subscriber."""
        out: list[tuple[str, TopicEvent]] = []
        event = LoggedEvent(time=time, msg=msg)
        for topic in topics:
            log = self.events.get(topic)
            if log is None:
                log = self.events[topic] = collections.deque(maxlen=self.keep)
            log.append(event)
            for cid in sorted(self.subscribers.get(topic, ())):
                out.append((cid, TopicEvent(topic=topic, time=time, msg=msg)))
        return out

    def get(self, topic: str | None) -> dict[str, list[LoggedEvent]]:
        if topic is not None:
            return {topic: list(self.events.get(topic, ()))}
        return {t: list(evs) for t, evs in self.events.items()}

    def add_client(self, client: str) -> None:
        for topic in DEFAULT_TOPICS:
            self.subscribe(client, topic)

    def subscribe(self, client: str, topic: str) -> None:
        self.subscribers.setdefault(topic, set()).add(client)

    def unsubscribe(self, client: str, topic: str) -> None:
        subs = self.subscribers.get(topic)
        if subs is not None:
            subs.discard(client)
            if not subs:
                del self.subscribers[topic]

    def remove_client(self, client: str) -> None:
        for topic in list(self.subscribers):
            self.unsubscribe(client, topic)
