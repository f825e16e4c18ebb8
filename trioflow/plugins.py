"""Plugins: user code that runs in the workers, the nannies or the scheduler.

Theory of operation
-------------------
A client hands a plugin object to :meth:`Client.register_plugin`; its class
decides where it runs: a :class:`WorkerPlugin` in every worker, a
:class:`NannyPlugin` in every nanny, a :class:`SchedulerPlugin` in the
scheduler.  The client cloudpickles it; the scheduler keeps worker and nanny
plugins as opaque bytes, sends them to every worker (or nanny) it has, and
hands them to every worker that registers later (in its
``WorkerRegistered``, set up before the worker takes work) and to the nanny
of every worker that registers later.  A nanny plugin with ``restart = True``
restarts its nanny's worker the first time it is set up there, so that what
it changed in the nanny's process (environment variables, files) reaches a
fresh worker process.

Scheduler plugins are one of the two places where the scheduler unpickles
and runs user code (with ``Client.run_on_scheduler``): only what a client
sends for that explicitly, never task data.  Their
hooks are called by the scheduler's shell, from what its state machine
emits (the machine itself never sees a plugin): ``transition`` for every
transition in the machine's transition log, after each event.  A worker
reports ``ready -> executing``, ``executing -> memory`` and
``executing -> error``, from its machine's instructions.

A hook that raises during setup (or in the scheduler's ``start``) fails the
client's ``register_plugin`` with a :class:`~trioflow.errors.PluginError`
naming the plugin, the hook and where it failed.  Hooks may be plain
functions or coroutine functions (awaited in the host's Trio loop; plain
hooks of workers and nannies run in a thread, so that a ``setup`` that
installs packages does not stall the host).

The names, hooks and arguments are dask.distributed's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger("trioflow.plugins")

__all__ = [
    "Environ",
    "NannyPlugin",
    "PipInstall",
    "SchedulerPlugin",
    "UploadDirectory",
    "UploadFile",
    "WorkerPlugin",
]


class SchedulerPlugin:
    """Runs in the scheduler; override the hooks you need.

    Attributes:
        name: the registration name (default: the class name and a uuid).
        idempotent: registering again under the same name does nothing.
    """

    idempotent: bool = False

    async def start(self, scheduler: Any) -> None:
        """Called when the plugin is registered (the scheduler is running)."""

    async def before_close(self) -> None:
        """Called when the scheduler starts closing."""

    async def close(self) -> None:
        """Called when the scheduler closes or the plugin is unregistered."""

    def update_graph(self, scheduler: Any, *, client: str, keys: set[str], tasks: list[str], **kwargs: Any) -> None:
        """A client submitted tasks (``tasks``: their keys; ``keys``: those it wants)."""

    def restart(self, scheduler: Any) -> None:
        """A client restarted the cluster."""

    def transition(self, key: str, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """A task went from ``start`` to ``finish`` (see the module docstring)."""

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """A worker registered."""

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """A worker left."""

    def add_client(self, scheduler: Any, client: str) -> None:
        """A client connected."""

    def remove_client(self, scheduler: Any, client: str) -> None:
        """A client left."""

    def log_event(self, topic: str, msg: Any) -> None:
        """An event was logged (not reported yet by trioflow's scheduler)."""


class WorkerPlugin:
    """Runs in every worker, including those that join later.

    Attributes:
        name: the registration name (default: the class name and a uuid).
        idempotent: registering again under the same name does nothing.
    """

    idempotent: bool = False

    def setup(self, worker: Any) -> None:
        """Called when the plugin reaches the worker (before it takes work,
        for a worker that joins later)."""

    def teardown(self, worker: Any) -> None:
        """Called when the worker closes or the plugin is unregistered."""

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        """A task of this worker went from ``start`` to ``finish``."""


class NannyPlugin:
    """Runs in every nanny (process workers only), including those that
    join later.

    Attributes:
        restart: restart the nanny's worker once the plugin is set up, so
            that a fresh worker process sees what ``setup`` changed.
        name: the registration name (default: the class name and a uuid).
        idempotent: registering again under the same name does nothing.
    """

    restart: bool = False
    idempotent: bool = False

    def setup(self, nanny: Any) -> None:
        """Called when the plugin reaches the nanny."""

    def teardown(self, nanny: Any) -> None:
        """Called when the nanny closes or the plugin is unregistered."""


# ---------------------------------------------------------------- built-ins


def _host_directory(host: Any) -> str:
    """Where a worker (or nanny) keeps files: its local directory."""
    return getattr(host, "local_directory", "") or tempfile.gettempdir()


class UploadFile(WorkerPlugin):
    """Send a local file (``.py``, ``.egg`` or ``.zip``) to every worker,
    into ``uploads`` in its local directory (where ``Client.upload_file``
    puts files, with the same code), and import it there (``load=True``).

    The file is read when the plugin is made.  It works standalone too:
    ``UploadFile(path).setup(worker)`` writes and loads it on ``worker``
    (anything with a ``local_directory``).
    """

    name = "upload_file"

    def __init__(self, filepath: str, load: bool = True) -> None:
        self.filename = os.path.basename(filepath)
        self.load = load
        with open(filepath, "rb") as f:
            self.data = f.read()

    def setup(self, worker: Any) -> None:
        from .uploads import install_upload  # the code of Client.upload_file

        install_upload(self.filename, self.data, self.load, directory=os.path.join(_host_directory(worker), "uploads"))


class Environ(NannyPlugin):
    """Set environment variables in every nanny, then restart its worker so
    that the worker process starts with them (process workers only)."""

    restart = True

    def __init__(self, environ: dict[str, Any] | None = None) -> None:
        self.environ = {k: str(v) for k, v in (environ or {}).items()}

    def setup(self, nanny: Any) -> None:
        os.environ.update(self.environ)


class _WorkersOrNannies:
    """A built-in that runs in the workers, or in the nannies (restarting
    their workers) with ``restart_workers=True``, as dask's do."""

    restart_workers: bool = False

    @property
    def _trioflow_kind(self) -> str:
        return "nanny" if self.restart_workers else "worker"

    @property
    def restart(self) -> bool:  # read by the nanny
        return self.restart_workers


class UploadDirectory(_WorkersOrNannies, WorkerPlugin, NannyPlugin):  # type: ignore[misc,override]
    """Send a local directory to every worker (zipped, unpacked into the
    worker's local directory); ``update_path`` puts it on ``sys.path``.
    With ``restart_workers=True`` it goes to the nannies, which restart their
    workers afterwards.

    ``mode`` is dask's: ``"workers"`` (the default) only; ``"scheduler"`` and
    ``"all"`` are refused, trioflow's scheduler does not run user code for
    this.
    """

    def __init__(
        self,
        path: str,
        restart_workers: bool = False,
        update_path: bool = False,
        skip_words: tuple[str, ...] = (".git", ".github", ".pytest_cache", "tests", "docs"),
        skip: tuple[Callable[[str], bool], ...] = (lambda fn: os.path.splitext(fn)[1] == ".pyc",),
        mode: str = "workers",
    ) -> None:
        if mode != "workers":
            raise ValueError(f"UploadDirectory(mode={mode!r}): trioflow uploads to the workers only (mode='workers')")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(path):
            raise ValueError(f"UploadDirectory: {path!r} is not a directory")
        self.path = os.path.basename(path)
        self.restart_workers = restart_workers
        self.update_path = update_path
        self.mode = mode
        self.name = f"upload-directory-{self.path}"
        buf = io.BytesIO()
        parent = os.path.dirname(path)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for root, _dirs, files in os.walk(path):
                for file in files:
                    full = os.path.join(root, file)
                    if any(pred(full) for pred in skip):
                        continue
                    if any(word in full.split(os.sep) for word in skip_words):
                        continue
                    z.write(full, os.path.relpath(full, parent))
        self.data = buf.getvalue()

    def setup(self, host: Any) -> None:
        base = _host_directory(host)
        with zipfile.ZipFile(io.BytesIO(self.data)) as z:
            z.extractall(base)
        if self.update_path:
            where = os.path.join(base, self.path)
            if where not in sys.path:
                sys.path.insert(0, where)
            importlib.invalidate_caches()


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """One installer at a time per Python environment on this machine (the
    workers of a host share it)."""
    import fcntl

    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]
    with open(os.path.join(tempfile.gettempdir(), f"trioflow-install-{tag}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class PipInstall(_WorkersOrNannies, WorkerPlugin, NannyPlugin):  # type: ignore[misc,override]
    """``pip install`` packages in every worker's environment (one install
    at a time per environment and machine).  ``restart_workers=True`` installs
    from the nannies and restarts their workers, so new versions of modules
    already imported take effect.

    ``packages`` are requirement lines (environment variables expand, as in a
    requirements file); ``pip_options`` go before them
    (``["--no-index", "--find-links", "/wheels"]``).
    """

    idempotent = True

    def __init__(self, packages: list[str], pip_options: list[str] | None = None, restart_workers: bool = False) -> None:
        import uuid

        self.packages = list(packages)
        self.pip_options = list(pip_options or [])
        self.restart_workers = restart_workers
        self.name = f"PipInstall-{uuid.uuid4()}"

    def setup(self, host: Any) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as req, _install_lock():
            req.write("\n".join(self.packages))
            req.flush()
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *self.pip_options, "-r", req.name],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"pip install failed: {proc.stderr.strip() or proc.stdout.strip()}")
        importlib.invalidate_caches()
        logger.info("pip installed %s", ", ".join(self.packages))


def plugin_kind(plugin: object) -> str:
    """``"worker"``, ``"nanny"`` or ``"scheduler"``: where ``plugin`` runs.

    Raises:
        TypeError: it is none of the three plugin kinds.
    """
    kind = getattr(plugin, "_trioflow_kind", None)
    if isinstance(kind, str):
        return kind
    if isinstance(plugin, SchedulerPlugin):
        return "scheduler"
    if isinstance(plugin, NannyPlugin):
        return "nanny"
    if isinstance(plugin, WorkerPlugin):
        return "worker"
    raise TypeError(f"register_plugin(): {type(plugin).__name__} is not a WorkerPlugin, NannyPlugin or SchedulerPlugin")


def plugin_name(plugin: object) -> str:
    """The name a plugin registers under: its ``name``, or its class name and a uuid."""
    import uuid

    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    return f"{type(plugin).__name__}-{uuid.uuid4()}"
