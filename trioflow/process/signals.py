"""SIGINT and SIGTERM in a daemon: the first asks it to close, a second is fatal."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

__all__ = ["close_on_signals"]

logger = logging.getLogger("trioflow.cli")


async def close_on_signals(close: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``close()`` on the first SIGINT/SIGTERM; a second one is fatal
    (raises :class:`KeyboardInterrupt`)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                logger.info("received %s, closing", signal.Signals(signum).name)
                close()
            else:
                raise KeyboardInterrupt
