"""The worker side of ``Client.upload_file``: store a file in the worker's
directory and make it importable (``.py`` modules are imported, so a broken
one fails the upload; ``.zip`` and ``.egg`` archives go on ``sys.path``).

Called through ``RunFunction`` by reference, for the workers present at the
upload and (from the scheduler, see :mod:`trioflow.scheduler.admin`) for
every worker that registers later.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

__all__ = ["install_upload"]


def _directory() -> str:
    from .worker.executor import thread_state

    worker = getattr(thread_state, "worker", None)
    base = getattr(worker, "local_directory", "") or tempfile.gettempdir()
    path = os.path.join(base, "uploads")
    os.makedirs(path, exist_ok=True)
    return path


def install_upload(filename: str, data: bytes, load: bool = True, directory: str | None = None) -> str:
    """Write ``data`` as ``filename`` (in ``directory``, by default the
    current worker's ``uploads``) and make it importable; returns its path.
    :class:`~trioflow.UploadFile` uses it too.

    Raises:
        ValueError: a name with a directory part.
        Exception: what importing the module raised (``load=True``).
    """
    if os.path.basename(filename) != filename or filename in ("", ".", ".."):
        raise ValueError(f"upload_file: expected a bare file name, got {filename!r}")
    if directory is None:
        directory = _directory()
    else:
        os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    root, ext = os.path.splitext(filename)
    if ext in (".zip", ".egg"):
        if path not in sys.path:
            sys.path.insert(0, path)
        names = []
    else:
        if directory not in sys.path:
            sys.path.insert(0, directory)
        names = [root] if ext == ".py" else []
    importlib.invalidate_caches()
    if load:
        for name in names:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
    return path
