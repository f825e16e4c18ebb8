"""Plugins: ``register_plugin`` and ``unregister_*_plugin`` (see
:mod:`trioflow.plugins` for where plugins run and how workers that join
later get them).  Mixed into :class:`~trioflow.client.core.AsyncClient`.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

from ..comm.pool import RemoteError
from ..errors import PluginError
from ..protocol import messages as m
from ..protocol.serialize import dumps_function
from ._parts import ClientParts

__all__ = ["PluginsMixin", "raise_plugin_failures"]

#: Seconds to wait for every worker to set a plugin up (a setup may install packages).
PLUGIN_TIMEOUT = 600.0


def raise_plugin_failures(name: str, failures: list[m.PluginFailure]) -> None:
    """Raise one :class:`~trioflow.errors.PluginError` naming the plugin and
    each place it failed, chained to the first original exception.

    Raises:
        PluginError: when ``failures`` is not empty.
    """
    if not failures:
        return
    first = failures[0]
    more = f" (and {len(failures) - 1} more: {', '.join(f.where for f in failures[1:4])})" if len(failures) > 1 else ""
    text = f"plugin {name!r} failed in {first.phase} on {first.where}: {first.type_name}: {first.message}{more}"
    err = PluginError(text, plugin=name, failures=[(f.where, f.phase, f"{f.type_name}: {f.message}") for f in failures])
    cause: BaseException | None = None
    if first.exception is not None:
        try:
            cause = pickle.loads(first.exception)
        except Exception:  # noqa: BLE001 - the text above still says what happened
            cause = None
    if isinstance(cause, BaseException):
        raise err from cause
    raise err


class PluginsMixin(ClientParts):
    """Plugin registration (see the module docstring)."""

    async def register_plugin(self, plugin: Any, name: str | None = None, idempotent: bool | None = None) -> dict[str, Any]:
        """Run ``plugin`` on every worker (a :class:`~trioflow.WorkerPlugin`),
        nanny (:class:`~trioflow.NannyPlugin`) or in the scheduler
        (:class:`~trioflow.SchedulerPlugin`), and on those that join later.

        Args:
            plugin: the plugin object (pickled with cloudpickle).
            name: registration name (default: ``plugin.name``, or the class
                name and a uuid); registering a name again replaces it.
            idempotent: do nothing if the name is registered already
                (default: ``plugin.idempotent``).

        Returns:
            Once every worker (or nanny) has it set up, ``{address:
            {"status": "OK"}}`` for each, as dask; ``{}`` for a scheduler
            plugin or an idempotent one already registered.

        Raises:
            PluginError: a hook raised; the message names the plugin, the hook
                and where (``setup`` on worker ``tcp://...``).
            TypeError: not a plugin.
        """
        from ..plugins import plugin_kind, plugin_name

        kind = plugin_kind(plugin)
        if name is None:
            name = plugin_name(plugin)
        if idempotent is None:
            idempotent = bool(getattr(plugin, "idempotent", False))
        msg = m.RegisterPlugin(kind=kind, name=name, plugin=dumps_function(plugin), idempotent=idempotent)
        reply = await self._plugin_rpc(msg)
        raise_plugin_failures(name, reply.failures)
        return {a: {"status": "OK"} for a in reply.done}

    async def register_worker_plugin(self, plugin: Any = None, name: str | None = None, nanny: bool | None = None) -> dict[str, Any]:
        """Deprecated (as in dask): use :meth:`register_plugin`."""
        warnings.warn("register_worker_plugin is deprecated; use register_plugin", DeprecationWarning, stacklevel=3)
        return await self.register_plugin(plugin, name=name)

    async def register_scheduler_plugin(self, plugin: Any, name: str | None = None, idempotent: bool | None = None) -> dict[str, Any]:
        """Deprecated (as in dask): use :meth:`register_plugin`."""
        warnings.warn("register_scheduler_plugin is deprecated; use register_plugin", DeprecationWarning, stacklevel=3)
        return await self.register_plugin(plugin, name=name, idempotent=idempotent)

    async def unregister_worker_plugin(self, name: str, nanny: bool | None = None) -> dict[str, Any]:
        """Tear the worker plugin ``name`` down on every worker (the nanny
        plugin with ``nanny=True``) and stop giving it to new ones.

        Raises:
            ValueError: no plugin of that name is registered.
            PluginError: a teardown raised.
        """
        return await self._unregister("nanny" if nanny else "worker", name)

    async def unregister_scheduler_plugin(self, name: str) -> dict[str, Any]:
        """Close and remove the scheduler plugin ``name``.

        Raises:
            ValueError: no plugin of that name is registered.
            PluginError: its ``close`` raised.
        """
        return await self._unregister("scheduler", name)

    async def _unregister(self, kind: str, name: str) -> dict[str, Any]:
        try:
            reply = await self._plugin_rpc(m.UnregisterPlugin(kind=kind, name=name))
        except RemoteError as exc:
            raise ValueError(str(exc)) from None
        raise_plugin_failures(name, reply.failures)
        return {a: {"status": "OK"} for a in reply.done}

    async def _plugin_rpc(self, msg: m.Message) -> m.PluginReply:
        return await self._rpc(msg, m.PluginReply, timeout=PLUGIN_TIMEOUT)  # type: ignore[no-any-return]
