"""The scheduler's plugins: those it runs, and those it hands to workers and nannies.

Theory of operation
-------------------
Worker and nanny plugins stay opaque bytes here: kept by name, sent to every
worker (or nanny) the scheduler knows when registered, and to those that
join later (workers in their ``WorkerRegistered``; nannies when their worker
registers, each nanny setting a plugin up once).  Scheduler plugins are the
exception (with ``run_on_scheduler``) to "the scheduler never unpickles user
data": a plugin a client registers explicitly is unpickled and its hooks
run here, in the loop (a
hook that returns an awaitable is awaited in a task of its own).  The state
machine never sees them: the shell calls :meth:`SchedulerPlugins.notify`
from what it hands to the machine, and reports the transitions the machine
made from its ``transition_log`` after each event.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import pickle
from typing import Any

import trio

from .._plugin_host import failure, run_hook
from ..comm import ConnectionPool
from ..protocol import messages as m

logger = logging.getLogger("trioflow.scheduler")

__all__ = ["SchedulerPlugins"]

#: How long the scheduler waits for one worker or nanny to set a plugin up.
SETUP_TIMEOUT = 300.0


class SchedulerPlugins:
    """The plugins of one :class:`~trioflow.scheduler.Scheduler`."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        #: Worker and nanny plugins, pickled, by name.
        self.worker: dict[str, bytes] = {}
        self.nanny: dict[str, bytes] = {}
        #: Scheduler plugins, by name (also ``scheduler.plugins``).
        self.running: dict[str, Any] = {}
        self._watchers: list[Any] = []
        #: ``transition_counter`` of the machine when last reported.
        self._seen = 0

    # ------------------------------------------------------------ requests

    async def register(self, msg: m.RegisterPlugin) -> m.PluginReply:
        if msg.kind == "scheduler":
            return await self._register_scheduler_plugin(msg)
        if msg.kind not in ("worker", "nanny"):
            return m.PluginReply(failures=[failure(msg.name, "register", "scheduler", ValueError(f"unknown plugin kind {msg.kind!r}"))])
        store = self.worker if msg.kind == "worker" else self.nanny
        if msg.idempotent and msg.name in store:
            return m.PluginReply()
        store[msg.name] = msg.plugin
        return await self._fan_out(self._targets(msg.kind), m.PluginSetup(name=msg.name, plugin=msg.plugin))

    async def unregister(self, msg: m.UnregisterPlugin) -> m.Message:
        if msg.kind == "scheduler":
            plugin = self.running.pop(msg.name, None)
            if plugin is None:
                return m.ErrorReply(message=f"could not find scheduler plugin {msg.name!r}")
            self._refresh()
            try:
                await run_hook(plugin, "close", thread=False)
            except Exception as exc:  # noqa: BLE001 - reported to the client
                return m.PluginReply(failures=[failure(msg.name, "close", "scheduler", exc)])
            return m.PluginReply()
        store = self.worker if msg.kind == "worker" else self.nanny
        if store.pop(msg.name, None) is None:
            return m.ErrorReply(message=f"could not find {msg.kind} plugin {msg.name!r}")
        return await self._fan_out(self._targets(msg.kind), m.PluginTeardown(name=msg.name))

    async def _register_scheduler_plugin(self, msg: m.RegisterPlugin) -> m.PluginReply:
        if msg.idempotent and msg.name in self.running:
            return m.PluginReply()
        try:
            plugin = pickle.loads(msg.plugin)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            return m.PluginReply(failures=[failure(msg.name, "unpickle", "scheduler", exc)])
        old = self.running.pop(msg.name, None)
        if old is not None:
            with _logged(msg.name, "close"):
                await run_hook(old, "close", thread=False)
        try:
            await run_hook(plugin, "start", self.scheduler, thread=False)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            self._refresh()
            return m.PluginReply(failures=[failure(msg.name, "start", "scheduler", exc)])
        self.running[msg.name] = plugin
        self._refresh()
        return m.PluginReply()

    def _targets(self, kind: str) -> list[str]:
        workers = self.scheduler.state.workers
        if kind == "worker":
            return list(workers)
        return sorted({w.nanny for w in workers.values() if w.nanny})

    async def _fan_out(self, targets: list[str], msg: m.Message) -> m.PluginReply:
        failures: list[m.PluginFailure] = []
        done: list[str] = []
        if not targets:
            return m.PluginReply()
        pool = ConnectionPool(security=self.scheduler.security, role="scheduler", name=self.scheduler.name)
        name = getattr(msg, "name", "?")

        async def one(address: str) -> None:
            try:
                reply = await pool.rpc(address, msg, m.PluginReply, timeout=SETUP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - reported to the client
                failures.append(failure(name, "setup" if isinstance(msg, m.PluginSetup) else "teardown", address, exc))
                return
            failures.extend(reply.failures)
            if not reply.failures:
                done.append(address)

        try:
            async with trio.open_nursery() as n:
                for address in targets:
                    n.start_soon(one, address)
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
        return m.PluginReply(failures=failures, done=sorted(done))

    # ------------------------------------------------------------ later joiners

    def registered_message(self, msg: m.WorkerRegistered) -> m.WorkerRegistered:
        """The machine's ``WorkerRegistered`` with the worker plugins in it."""
        if not self.worker:
            return msg
        import attrs

        return attrs.evolve(msg, plugins=dict(self.worker))  # type: ignore[misc]

    def worker_joined(self, nanny: str) -> None:
        """Hand the nanny plugins to a joining worker's nanny (in the background)."""
        nursery = self.scheduler._nursery
        if not self.nanny or not nanny or nursery is None:
            return
        for name, data in list(self.nanny.items()):
            nursery.start_soon(self._late_nanny_setup, nanny, name, data)

    async def _late_nanny_setup(self, nanny: str, name: str, data: bytes) -> None:
        for f in (await self._fan_out([nanny], m.PluginSetup(name=name, plugin=data))).failures:
            logger.warning("nanny plugin %r failed in %s on %s: %s: %s", f.plugin, f.phase, f.where, f.type_name, f.message)

    # ------------------------------------------------------------ hooks

    @property
    def active(self) -> bool:
        return bool(self.running)

    @property
    def watch_transitions(self) -> bool:
        return bool(self._watchers)

    def _refresh(self) -> None:
        from ..plugins import SchedulerPlugin

        self.scheduler.plugins[:] = list(self.running.values())
        self._watchers = [
            p for p in self.running.values() if getattr(type(p), "transition", None) not in (None, SchedulerPlugin.transition)
        ]
        self._seen = self.scheduler.state.transition_counter

    def notify(self, hook: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook`` on every scheduler plugin; a failure is logged, an
        awaitable result awaited in a task of its own."""
        for name, plugin in list(self.running.items()):
            fn = getattr(plugin, hook, None)
            if fn is None:
                continue
            with _logged(name, hook):
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result) and self.scheduler._nursery is not None:
                    self.scheduler._nursery.start_soon(_await_logged, name, hook, result)

    def report_transitions(self) -> None:
        """Tell the watching plugins of the transitions the machine made since
        the last call (the newest entries of its ``transition_log``)."""
        state = self.scheduler.state
        count = state.transition_counter
        new = count - self._seen
        self._seen = count
        if new <= 0 or not self._watchers:
            return
        log = state.transition_log
        new = min(new, len(log))
        for key, start, finish, _worker, _when in itertools.islice(log, len(log) - new, None):
            self._report(key, start, finish)

    def _report(self, key: str, start: str, finish: str) -> None:
        for p in self._watchers:
            with _logged(getattr(p, "name", type(p).__name__), "transition"):
                p.transition(key, start, finish, stimulus_id="")

    async def close(self) -> None:
        """The scheduler is closing: ``before_close``, then ``close``, on each plugin."""
        for hook in ("before_close", "close"):
            for name, plugin in list(self.running.items()):
                with _logged(name, hook):
                    await run_hook(plugin, hook, thread=False)


class _logged:
    """Log (not raise) what a plugin's hook raises."""

    def __init__(self, name: str, hook: str) -> None:
        self.name = name
        self.hook = hook

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            logger.error("scheduler plugin %r failed in %s: %r", self.name, self.hook, exc, exc_info=(typ, exc, tb))
            return True
        return False


async def _await_logged(name: str, hook: str, awaitable: Any) -> None:
    with _logged(name, hook):
        await awaitable
