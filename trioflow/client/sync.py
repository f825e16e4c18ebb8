"""The blocking ``Client``: the Trio client run in a portal thread.

The :class:`AsyncClient` lives in a Trio loop that anyio's blocking portal
runs in a background thread; every method here is one ``portal.call`` into
it.  Futures made through this client block in ``result()``.  The portal and
its thread end in :meth:`Client.close` (also on ``with`` exit); no task is
left behind in the portal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import anyio.from_thread

from .core import AsyncClient, open_client
from .datasets import DatasetsMixin
from .futures import Future

__all__ = ["Client", "default_client"]

_current: list[Client] = []


def default_client() -> Client:
    """The most recently created blocking client that is still open."""
    for c in reversed(_current):
        if c.status == "running":
            return c
    raise ValueError("no trioflow Client is running")


class Client(DatasetsMixin):
    """Connect to a trioflow scheduler (blocking API, dask-compatible).

    ``Client("tcp://host:8786")``, ``Client(cluster)``, or
    ``Client(scheduler_file="scheduler.json")``.
    """

    def __init__(
        self,
        address: Any = None,
        *,
        security: Any = None,
        timeout: float = 10,
        name: str | None = None,
        scheduler_file: str | None = None,
        set_as_default: bool = True,
    ) -> None:
        self.cluster = None if isinstance(address, str) or address is None else address
        if security is None and self.cluster is not None:
            security = getattr(self.cluster, "security", None)
        self._portal_cm = anyio.from_thread.start_blocking_portal("trio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._client_cm = self._portal.wrap_async_context_manager(
                open_client(address, security=security, name=name, timeout=timeout, scheduler_file=scheduler_file)
            )
            self._core: AsyncClient = self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._core._portal = self._portal
        self._dask_config: Any = None
        _current.append(self)
        if set_as_default:
            self._set_dask_default()

    # ------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._core.status not in ("running",):
            raise RuntimeError(f"client is {self._core.status}")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    @property
    def status(self) -> str:
        return self._core.status

    @property
    def id(self) -> str:
        return self._core.id

    @property
    def scheduler_address(self) -> str:
        return self._core.scheduler_address

    @property
    def asynchronous(self) -> bool:
        return False

    def __repr__(self) -> str:
        try:
            info = self.scheduler_info() if self.status == "running" else None
        except Exception:  # noqa: BLE001
            info = None
        if info is None:
            return f"<Client: {self.scheduler_address} status={self.status}>"
        n = len(info["workers"])
        threads = sum(w["nthreads"] for w in info["workers"].values())
        mem = sum(w["memory_limit"] for w in info["workers"].values())
        return f"<Client: {self.scheduler_address} workers={n} threads={threads} memory={mem / 1e9:.2f} GB>"

    def _repr_html_(self) -> str:
        link = self.dashboard_link
        dash = f"<br>Dashboard: <a href='{link}' target='_blank'>{link}</a>" if link else ""
        return f"<h3>trioflow Client</h3>Scheduler: {self.scheduler_address}<br>Status: {self.status}{dash}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; the scheduler releases everything this client held."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._unset_dask_default()
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)
            if self in _current:
                _current.remove(self)

    def shutdown(self) -> None:
        """Close the scheduler and its workers, then this client."""
        if self._core.status == "running":
            self._portal.call(self._core.shutdown)
        if self.cluster is not None and hasattr(self.cluster, "close"):
            self.cluster.close()
        self.close()

    # ------------------------------------------------------------ API

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """See :meth:`AsyncClient.submit`."""
        if self._core.status != "running":
            raise RuntimeError(f"client is {self._core.status}")
        return self._core.submit_from_thread(func, *args, **kwargs)

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> list[Future]:
        """See :meth:`AsyncClient.map`."""
        iterables = tuple(list(it) for it in iterables)
        return self._call(self._core.map, func, *iterables, **kwargs)  # type: ignore[no-any-return]

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        return self._call(self._core.gather, futures, errors=errors)

    def scatter(self, data: Any, workers: Any = None, broadcast: bool = False, hash: bool = True) -> Any:
        return self._call(self._core.scatter, data, workers=workers, broadcast=broadcast, hash=hash)

    def cancel(self, futures: Any) -> None:
        self._call(self._core.cancel, futures)

    def restart(self, timeout: float = 60) -> None:
        """Forget all tasks and restart the workers (through their nannies)."""
        self._call(self._core.restart, timeout)

    def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        return self._call(self._core.who_has, futures)  # type: ignore[no-any-return]

    def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        return self._call(self._core.has_what, workers)  # type: ignore[no-any-return]

    def nthreads(self) -> dict[str, int]:
        return self._call(self._core.nthreads)  # type: ignore[no-any-return]

    ncores = nthreads

    def scheduler_info(self) -> dict[str, Any]:
        return self._call(self._core.scheduler_info)  # type: ignore[no-any-return]

    def run(self, function: Callable[..., Any], *args: Any, workers: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self._call(self._core.run, function, *args, workers=workers, **kwargs)  # type: ignore[no-any-return]

    def retire_workers(self, workers: Any, timeout: float = 60) -> list[str]:
        return self._call(self._core.retire_workers, workers, timeout)  # type: ignore[no-any-return]

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        self._call(self._core.wait_for_workers, n_workers, timeout)

    @property
    def dashboard_link(self) -> str | None:
        try:
            info = self.scheduler_info()
        except Exception:  # noqa: BLE001
            return None
        port = info["services"].get("dashboard")
        if not port:
            return None
        host = info["address"].split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        return f"http://{host}:{port}/status"

    # ------------------------------------------------------------ dask

    def get(self, dsk: Any, keys: Any, **options: Any) -> Any:
        """The dask scheduler protocol: ``dask.compute(x, scheduler=client.get)``."""
        return self._call(self._core.get, dsk, keys, **options)

    def compute(self, collections: Any, sync: bool = False, **options: Any) -> Any:
        """Futures for dask collections (their values with ``sync=True``)."""
        return self._call(self._core.compute, collections, sync=sync, **options)

    def persist(self, collections: Any, **options: Any) -> Any:
        """Dask collections of the same kind, backed by futures."""
        return self._call(self._core.persist, collections, **options)

    def _set_dask_default(self) -> None:
        """Make this client dask's scheduler while it lives (only if dask is
        installed; importing trioflow alone never imports dask)."""
        import importlib.util

        if importlib.util.find_spec("dask") is None:
            return
        import dask

        self._dask_config = dask.config.set(
            {
                "scheduler": self.get,
                # The single-machine defaults would shuffle through local disk
                # or expect dask.distributed's P2P extension.
                "dataframe.shuffle.method": "tasks",
                "array.rechunk.method": "tasks",
            }
        )

    def _unset_dask_default(self) -> None:
        cfg, self._dask_config = self._dask_config, None
        if cfg is not None:
            cfg.__exit__(None, None, None)
