"""Helpers shared by the comm tests (plain and TLS)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from trioflow.comm import Comm, CommClosedError, Listener, listen
from trioflow.protocol import messages as m

Handler = Callable[[Comm], Awaitable[None]]


async def echo(comm: Comm) -> None:
    while True:
        try:
            msg = await comm.recv()
        except CommClosedError as exc:
            if exc.clean:
                return  # hung up between messages: fine
            raise  # cut short: let listen() log it
        await comm.send(msg)


async def start(nursery: trio.Nursery, address: str, handler: Handler = echo, **kwargs: Any) -> Listener:
    kwargs.setdefault("role", "scheduler")
    kwargs.setdefault("name", "sched")
    return await nursery.start(functools.partial(listen, address, handler, **kwargs))


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trioflow")]


async def echo_once(comm: Comm, msg: m.Message) -> m.Message:
    await comm.send(msg)
    return await comm.recv()
