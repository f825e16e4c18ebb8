"""A bounded ring of this process's recent log lines (``get_worker_logs``,
``get_scheduler_logs``), and the worker side of ``forward_logging``.

The ring is a :class:`logging.Handler` on the ``trioflow`` logger, installed
once per process when :mod:`trioflow` is imported; it keeps the newest
:data:`RING_LENGTH` records as ``(level name, formatted message)`` pairs,
so memory stays bounded however chatty the process is.  Records reach it
only if the ``trioflow`` logger lets them through (its level decides).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

__all__ = ["RING_LENGTH", "LogRing", "install", "recent_logs"]

#: Log records kept per process.
RING_LENGTH = 10_000


class LogRing(logging.Handler):
    """Keep the newest ``maxlen`` records, formatted, in memory."""

    def __init__(self, maxlen: int = RING_LENGTH) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        self.records: collections.deque[tuple[str, str]] = collections.deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.levelname, self.format(record)))
        except Exception:  # noqa: BLE001 - a bad record must not break the logger
            self.handleError(record)
        # Being a handler, the ring would stop Python's "last resort" (the
        # warnings printed to stderr when logging is not configured): stand
        # in for it when no other handler sees the record.
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not self._others_handle(record):
            last.handle(record)

    def _others_handle(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False

    def tail(self, n: int | None = None) -> list[tuple[str, str]]:
        items = list(self.records)
        return items if n is None else items[-n:] if n > 0 else []


_ring: LogRing | None = None
_lock = threading.Lock()


def install() -> LogRing:
    """The process's ring, attached to the ``trioflow`` logger (once)."""
    global _ring
    with _lock:
        if _ring is None:
            _ring = LogRing()
            logging.getLogger("trioflow").addHandler(_ring)
        return _ring


def recent_logs(n: int | None = None) -> list[tuple[str, str]]:
    """The newest ``n`` (all if None) ``(level, line)`` pairs of this process."""
    return install().tail(n)


# ---------------------------------------------------------------- forward_logging (worker side)


class _Forwarder(logging.Handler):
    """Collects records of task code for the client to fetch and replay."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: collections.deque[dict[str, Any]] = collections.deque(maxlen=RING_LENGTH)

    def emit(self, record: logging.LogRecord) -> None:
        from .worker.executor import thread_state

        worker = getattr(thread_state, "worker", None)
        if worker is None:
            return  # not from a task
        self.pending.append(
            {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "created": record.created,
                "worker": getattr(worker, "address", ""),
            }
        )


_forwarders: dict[tuple[str | None, int], _Forwarder] = {}


def start_forwarding(logger_name: str | None, level: int) -> None:
    """Run on a worker: collect task log records of ``logger_name`` at ``level``."""
    with _lock:
        if (logger_name, level) in _forwarders:
            return
        h = _Forwarder()
        h.setLevel(level)
        _forwarders[(logger_name, level)] = h
    logging.getLogger(logger_name).addHandler(h)


def stop_forwarding(logger_name: str | None, level: int) -> None:
    with _lock:
        h = _forwarders.pop((logger_name, level), None)
    if h is not None:
        logging.getLogger(logger_name).removeHandler(h)


def take_forwarded(logger_name: str | None, level: int) -> list[dict[str, Any]]:
    """Run on a worker: the records collected since the last call."""
    h = _forwarders.get((logger_name, level))
    if h is None:
        return []
    out: list[dict[str, Any]] = []
    while h.pending:
        out.append(h.pending.popleft())
    return out
