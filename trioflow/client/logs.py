"""Logs: ``get_worker_logs``, ``get_scheduler_logs`` and ``forward_logging``.

Each process keeps a bounded ring of its recent log lines
(:mod:`trioflow.logs`); these methods read the scheduler's and the workers'.
``forward_logging`` makes the workers collect what task code logs and the
client replay each record into its own logger of the same name, polling
while forwarding is on.  Mixed into :class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .. import logs
from ._parts import ClientParts

__all__ = ["LogsMixin"]

#: How often the client asks the workers for forwarded records.
FORWARD_INTERVAL = 0.1


class LogsMixin(ClientParts):
    """See the module docstring."""

    async def get_scheduler_logs(self, n: int | None = None) -> list[tuple[str, str]]:
        """The scheduler's newest ``n`` (all kept if None) log lines, as
        ``(level, line)`` pairs, oldest first."""
        return [tuple(x) for x in await self._query("logs", n=-1 if n is None else n)]

    async def get_worker_logs(self, n: int | None = None, workers: Any = None, nanny: bool = False) -> dict[str, list[tuple[str, str]]]:
        """``{worker: its newest n log lines}`` (see :meth:`get_scheduler_logs`)."""
        out = await self.run(logs.recent_logs, n, workers=workers)
        return {a: [tuple(x) for x in v] for a, v in out.items()}

    async def forward_logging(self, logger_name: str | None = None, level: int = logging.NOTSET) -> None:
        """Replay here what tasks log on the workers to ``logger_name`` (the
        root logger if None) at ``level`` or above, until
        :meth:`unforward_logging` or the client closes."""
        key = (logger_name, level)
        forwarding = self._forwarding
        if key in forwarding:
            return
        await self.run(logs.start_forwarding, logger_name, level)
        scope = trio.CancelScope()
        forwarding[key] = scope
        assert self._nursery is not None
        self._nursery.start_soon(self._forward_loop, logger_name, level, scope)

    async def unforward_logging(self, logger_name: str | None = None, level: int = logging.NOTSET) -> None:
        scope = self._forwarding.pop((logger_name, level), None)
        if scope is None:
            return
        await self._forward_once(logger_name, level)
        scope.cancel()
        await self.run(logs.stop_forwarding, logger_name, level)

    async def _forward_once(self, logger_name: str | None, level: int) -> None:
        try:
            batches = await self.run(logs.take_forwarded, logger_name, level)
        except Exception as exc:  # noqa: BLE001 - a worker going away: try again later
            logging.getLogger("trioflow.client").debug("forward_logging: %s", exc)
            return
        for records in batches.values():
            for r in records:
                record = logging.makeLogRecord(
                    {"name": r["name"], "levelno": r["levelno"], "levelname": r["levelname"], "msg": r["msg"], "created": r["created"], "worker": r["worker"]}
                )
                logging.getLogger(r["name"]).handle(record)

    async def _forward_loop(self, logger_name: str | None, level: int, scope: trio.CancelScope) -> None:
        with scope:
            while self.status == "running":
                await self._forward_once(logger_name, level)
                await trio.sleep(FORWARD_INTERVAL)
