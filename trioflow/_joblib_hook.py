"""Tell joblib about the ``"trioflow"`` backend without importing joblib.

joblib looks a backend name it does not know up in
``joblib.parallel.EXTERNAL_BACKENDS`` (name -> a function that registers it),
which is how it knows ``"dask"``.  :func:`install` adds our entries there:
at once if joblib is already imported, otherwise the moment it is (a finder
at the front of ``sys.meta_path`` that answers only for ``joblib.parallel``,
wraps its loader to add the entries after the module runs, and removes
itself).  The backend module, and its import of joblib's internals, load only
when a ``Parallel`` asks for the name.
"""

import sys
from typing import Any

__all__ = ["install"]

_TARGET = "joblib.parallel"


def _register(name: str) -> None:
    from joblib.parallel import register_parallel_backend

    from .joblib import TrioflowBackend

    register_parallel_backend(name, TrioflowBackend)


def _add_entries(parallel: Any) -> None:
    external = getattr(parallel, "EXTERNAL_BACKENDS", None)
    if not isinstance(external, dict) or "trioflow" in external:
        return
    external["trioflow"] = lambda: _register("trioflow")
    joblibs_dask = external.get("dask")

    def dask() -> None:
        # dask.distributed's own backend when it is installed; ours otherwise.
        import importlib.util

        if joblibs_dask is not None and importlib.util.find_spec("distributed") is not None:
            joblibs_dask()
        else:
            _register("dask")

    external["dask"] = dask


class _JoblibFinder:
    """Finds nothing itself; lends a hand when ``joblib.parallel`` loads."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        _uninstall_finder()
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _add_entries(module)

        loader.exec_module = exec_module
        return spec


_finder = _JoblibFinder()


def _uninstall_finder() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install() -> None:
    """Make ``joblib.parallel_backend("trioflow")`` work, now or once joblib loads."""
    parallel = sys.modules.get(_TARGET)
    if parallel is not None:
        _add_entries(parallel)
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
