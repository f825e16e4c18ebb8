"""A joblib backend that runs ``Parallel`` batches on a trioflow cluster.

::

    import joblib
    from trioflow import Client

    client = Client(n_workers=4, threads_per_worker=1)
    with joblib.parallel_backend("trioflow"):
        search.fit(X, y)          # scikit-learn's n_jobs work runs on the cluster

The backend is registered with joblib lazily (see :mod:`trioflow._joblib_hook`):
importing trioflow costs nothing here and never imports joblib.  Where
dask.distributed is not installed, the name ``"dask"`` means this backend too,
so code written for dask runs unchanged.

Each joblib batch is one task, submitted with ``pure=False``; a batch's
completion is handed to joblib from a thread of this backend's own (never from
the client's event loop, which joblib's callback would block by fetching the
result and dispatching the next batch).
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

__all__ = ["TrioflowBackend"]


def _batch_name(func: Any) -> str:
    items = getattr(func, "items", None)
    target = items[0][0] if items else func
    target = getattr(target, "func", target)  # functools.partial, delayed wrappers
    name = getattr(target, "__name__", None) or type(target).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "batch"


class TrioflowBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``ParallelBackendBase`` over a blocking :class:`~trioflow.Client`.

    Arguments (as for dask's backend): ``client`` (default: the current
    client), or ``scheduler_host`` to connect a new one;
    ``wait_for_workers_timeout``, how long ``Parallel`` waits for a first
    worker; other keywords go to every ``client.submit`` (``resources=``,
    ``workers=``, ``retries=``, ...).  ``n_jobs`` is the cluster's thread count,
    whatever was asked for, as with dask.
    """

    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0
    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(
        self,
        scheduler_host: str | None = None,
        client: Any = None,
        wait_for_workers_timeout: float = 10,
        **submit_kwargs: Any,
    ) -> None:
        super().__init__()
        if client is None:
            from .client import Client, default_client

            if scheduler_host:
                client = Client(scheduler_host, set_as_default=False)
            else:
                try:
                    client = default_client()
                except ValueError as exc:
                    raise ValueError(
                        "the trioflow joblib backend needs a client: create one first, e.g. "
                        "client = trioflow.Client() or Client('tcp://scheduler:8786')"
                    ) from exc
        self.client = client
        self.wait_for_workers_timeout = wait_for_workers_timeout
        self.submit_kwargs = submit_kwargs
        self._lock = threading.Lock()
        self._pending: set[Any] = set()
        self._callbacks: ThreadPoolExecutor | None = None

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # A nested Parallel inside a task finds its own client there.
        return (TrioflowBackend, ())

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        total = sum(self.client.nthreads().values())
        if total or not self.wait_for_workers_timeout:
            return max(total, 1)
        try:
            self.client.wait_for_workers(1, timeout=self.wait_for_workers_timeout)
        except TimeoutError as exc:
            raise TimeoutError(
                f"the trioflow joblib backend found no worker within {self.wait_for_workers_timeout}s; "
                "start workers or pass parallel_config(backend='trioflow', wait_for_workers_timeout=...)"
            ) from exc
        return max(sum(self.client.nthreads().values()), 1)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def start_call(self) -> None:
        if self._callbacks is None:
            self._callbacks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trioflow-joblib")

    def stop_call(self) -> None:
        pool, self._callbacks = self._callbacks, None
        if pool is not None:
            pool.shutdown(wait=False)

    def terminate(self) -> None:
        self.abort_everything(ensure_ready=False)
        pool, self._callbacks = self._callbacks, None
        if pool is not None:
            pool.shutdown(wait=True)

    def submit(self, func: Any, callback: Any = None) -> Any:
        key = f"{_batch_name(func)}-joblib-{uuid.uuid4().hex}"
        future = self.client.submit(func, key=key, pure=False, **self.submit_kwargs)
        with self._lock:
            self._pending.add(future)
        if self._callbacks is None:
            self.start_call()
        pool = self._callbacks

        def done(f: Any) -> None:
            with self._lock:
                self._pending.discard(f)
            if callback is not None and not f.cancelled():
                try:
                    pool.submit(callback, f)  # type: ignore[union-attr]
                except RuntimeError:  # the call ended and its pool with it
                    pass

        future.add_done_callback(done)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        # Raises the task's own exception, as joblib expects.
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        with self._lock:
            pending, self._pending = list(self._pending), set()
        if pending:
            try:
                self.client.cancel(pending)
            except RuntimeError:  # the client is already closed
                pass
