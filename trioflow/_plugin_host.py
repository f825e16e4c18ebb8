"""The plugins a worker or nanny runs: set up, torn down, told of transitions.

Shared by :class:`~trioflow.worker.Worker` and
:class:`~trioflow.process.nanny.Nanny` (see :mod:`trioflow.plugins` for the
whole design).  A plain hook runs in a thread (a ``setup`` may install
packages or write files); a hook that returns an awaitable is awaited in
the host's Trio loop.  Failures become
:class:`~trioflow.protocol.messages.PluginFailure` records for the client.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import traceback
from typing import Any

import trio

from .protocol import messages as m
from .protocol.serialize import SerializationError, dumps_function

logger = logging.getLogger("trioflow.plugins")

__all__ = ["PluginHost", "failure", "run_hook"]


def failure(plugin: str, phase: str, where: str, exc: BaseException) -> m.PluginFailure:
    """``exc``, raised by ``plugin``'s ``phase`` hook at ``where``, as data."""
    try:
        ser: bytes | None = dumps_function(exc)  # type: ignore[arg-type]
    except (SerializationError, Exception):  # noqa: BLE001 - an unpicklable exception still travels as text
        ser = None
    return m.PluginFailure(
        plugin=plugin,
        phase=phase,
        where=where,
        type_name=type(exc).__name__,
        message=str(exc),
        traceback_text="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        exception=ser,
    )


async def run_hook(plugin: Any, hook: str, *args: Any, thread: bool = True, **kwargs: Any) -> None:
    """Call ``plugin.hook(*args, **kwargs)`` (in a thread when ``thread``)
    and await what it returns if that is awaitable; missing hooks are skipped."""
    fn = getattr(plugin, hook, None)
    if fn is None:
        await trio.lowlevel.checkpoint()
        return
    if inspect.iscoroutinefunction(fn) or not thread:
        result = fn(*args, **kwargs)
    else:
        result = await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
    if inspect.isawaitable(result):
        await result


class PluginHost:
    """The plugins of one worker or nanny, by name (``host.plugins``)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.plugins: dict[str, Any] = {}
        self._pickled: dict[str, bytes] = {}
        #: Plugins that override ``transition`` (the worker checks this
        #: before deriving transitions: nothing to do in the common case).
        self.watchers: list[Any] = []

    def where(self) -> str:
        return str(getattr(self.owner, "address", "") or "?")

    def has(self, name: str, data: bytes) -> bool:
        """This very plugin (same name, same bytes) is already set up."""
        return self._pickled.get(name) == data

    async def setup(self, name: str, data: bytes) -> list[m.PluginFailure]:
        """Set up the plugin pickled in ``data`` under ``name`` (tearing down
        one of that name first); returns the failures (empty: it went well)."""
        role = type(self.owner).__name__.lower()
        try:
            plugin = pickle.loads(data)  # not loads_function: its cache would share one object between hosts
        except Exception as exc:  # noqa: BLE001 - reported to the client
            return [failure(name, "unpickle", f"{role} {self.where()}", exc)]
        failures = await self.teardown(name)
        try:
            await run_hook(plugin, "setup", self.owner)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            logger.warning("plugin %r failed in setup on %s %s: %r", name, role, self.where(), exc)
            return [*failures, failure(name, "setup", f"{role} {self.where()}", exc)]
        self.plugins[name] = plugin
        self._pickled[name] = data
        self._refresh_watchers()
        return failures

    async def teardown(self, name: str) -> list[m.PluginFailure]:
        """Tear down and forget the plugin ``name`` (nothing if unknown)."""
        plugin = self.plugins.pop(name, None)
        self._pickled.pop(name, None)
        if plugin is None:
            return []
        self._refresh_watchers()
        try:
            await run_hook(plugin, "teardown", self.owner)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            role = type(self.owner).__name__.lower()
            logger.warning("plugin %r failed in teardown on %s %s: %r", name, role, self.where(), exc)
            return [failure(name, "teardown", f"{role} {self.where()}", exc)]
        return []

    async def teardown_all(self) -> None:
        for name in list(self.plugins):
            await self.teardown(name)

    def _refresh_watchers(self) -> None:
        from .plugins import WorkerPlugin

        self.watchers = [
            p for p in self.plugins.values() if getattr(type(p), "transition", None) not in (None, WorkerPlugin.transition)
        ]

    def transition(self, key: str, start: str, finish: str) -> None:
        """Tell the watching plugins (in the loop: keep ``transition`` short)."""
        for p in self.watchers:
            try:
                p.transition(key, start, finish)
            except Exception:  # noqa: BLE001 - a plugin must not break the worker
                logger.exception("plugin %r failed in transition", getattr(p, "name", type(p).__name__))
