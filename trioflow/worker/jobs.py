"""What runs in an executor thread for a task: its job and result records.

A job unpickles the task's function and arguments (in the thread, not on the
event loop), runs it, and checks the result for picklability there (cheaply:
known types are trusted, anything else is serialized once and the bytes
cached for the transfer that will follow).  It returns a plain tuple:

- ``("ok", key, result, nbytes, type_name, start, stop, thread, serialized)``
- ``("err", key, exception, exception_text, traceback_text, type_name,
  start, stop, thread)``
- ``("reschedule", key, start, stop, thread)``: the task raised
  :class:`~trioflow.errors.Reschedule`

which the server turns into ExecuteSuccessEvent / ExecuteFailureEvent.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import Reschedule
from ..protocol.serialize import (
    SerializationError,
    Serialized,
    dumps,
    loads_function,
    loads_with_deps,
)
from ..sizeof import sizeof
from .executor import thread_state

__all__ = ["error_record", "make_job"]

_TRUSTED_TYPES = (int, float, complex, bool, str, bytes, bytearray, type(None))


def _type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _trusted(result: Any) -> bool:
    t = type(result)
    if t in _TRUSTED_TYPES:
        return True
    mod = t.__module__
    if mod.startswith(("numpy", "pandas")):
        return t.__name__ != "object" and getattr(result, "dtype", None) != object  # noqa: E721 - numpy dtype equality
    if t in (list, tuple) and len(result) <= 64:
        return all(type(x) in _TRUSTED_TYPES for x in result)
    if t is dict and len(result) <= 64:
        return all(type(k) in _TRUSTED_TYPES and type(v) in _TRUSTED_TYPES for k, v in result.items())
    return False


def error_record(key: str, exc: BaseException, start: float, stop: float, index: int) -> tuple[Any, ...]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        ser: Serialized | None = dumps(exc)
    except SerializationError:
        ser = None
    return ("err", key, ser, f"{type(exc).__name__}: {exc}", tb, type(exc).__name__, start, stop, index)


def _load_task(function: bytes, args: Serialized, deps: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Unpickle a task's function and arguments.

    Raises:
        Exception: what unpickling raised (a module missing on this worker is
            an ImportError the user can act on), not our SerializationError
            around it.
    """
    try:
        func = loads_function(function)
        a, kw = loads_with_deps(args, deps)
    except SerializationError as exc:
        cause = exc.__cause__
        if not isinstance(cause, Exception):
            raise
    else:
        return func, a, kw
    # Raised outside the except block: inside it, the cause would get the
    # wrapper as its __context__, a cycle (the wrapper's __cause__ is the
    # cause) that recursive exception picklers never finish (tblib's, which
    # importing dask installs), and the error could not travel.
    raise cause


def make_job(key: str, function: bytes, args: Serialized, deps: dict[str, Any]) -> Callable[[], tuple[Any, ...]]:
    def job() -> tuple[Any, ...]:
        index = getattr(thread_state, "thread_index", 0)
        running = getattr(thread_state, "running", None)
        ident = threading.get_ident()
        start = time.time()
        try:
            if running is not None:
                running[ident] = key
            func, a, kw = _load_task(function, args, deps)
            thread_state.key = key
            result = func(*a, **kw)
        except Reschedule:
            return ("reschedule", key, start, time.time(), index)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            return error_record(key, exc, start, time.time(), index)
        finally:
            thread_state.key = None
            if running is not None:
                running.pop(ident, None)
        stop = time.time()
        serialized = None
        if not _trusted(result):
            try:
                serialized = dumps(result)
            except SerializationError as exc:
                return error_record(key, exc, start, stop, index)
        return ("ok", key, result, sizeof(result), _type_name(result), start, stop, index, serialized)

    return job
