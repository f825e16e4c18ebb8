"""User-data serialization: pickle protocol 5 with out-of-band buffers.

Theory of operation
-------------------
Everything a user hands us (task results, scattered values, function
arguments, exceptions) becomes a :class:`Serialized`: one pickle stream plus
zero or more raw buffers.  Large contiguous buffers (numpy arrays, bytearrays,
anything exporting ``__reduce_ex__`` with ``PickleBuffer``) are *not* copied
into the pickle stream; they ride beside it as separate wire frames and are
written to the socket straight from the object's memory.  On the receiving
side the unpickler is handed views of the received frames, so a numpy array
comes back as a view of the receive buffer, again without a copy.

Top-level ``bytes``, ``bytearray`` and ``memoryview`` values skip pickle
altogether: the value *is* the frame.

We try the stdlib pickler first (fast, and enough for most data) and fall
back to cloudpickle for lambdas, closures and interactively defined classes.
An object neither can pickle raises :class:`SerializationError` naming its
type, so a user sees "cannot serialize object of type Lock" instead of a
deep pickle traceback.

Futures inside task arguments are handled with pickle's ``reducer_override``
hook: the client's pickler writes each future as a call ``_dep(key)``
(collecting the keys as dependencies on the way), and on the worker that call
returns the dependency's value from the map :func:`loads_with_deps` was given.
No walk over the arguments is needed and futures can sit at any depth, even
inside user objects.  The hook runs only for objects that are not numbers,
strings or builtin containers, and a pickler is reused per thread, so
pickling a graph's thousands of small tasks costs little more than plain
``pickle.dumps``.

cloudpickle is imported on first need (:func:`_cloudpickle`): a scheduler
never needs it, nor a worker until it pickles something pickle cannot (it
*unpickles* cloudpickle's output with plain pickle, which imports cloudpickle
by itself when the stream names it).

This module is sans-IO and imports no trio.
"""

from __future__ import annotations

import functools
import io
import pickle
import threading
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

import attrs

from ..errors import SerializationError

__all__ = [
    "Serialized",
    "SerializationError",
    "dumps",
    "loads",
    "dumps_function",
    "loads_function",
    "dumps_with_deps",
    "loads_with_deps",
]

#: Buffers smaller than this stay inside the pickle stream: a separate wire
#: frame costs more than copying a few kilobytes.
OUT_OF_BAND_THRESHOLD = 16 * 1024

_KIND_PICKLE = 0
_KIND_BYTES = 1
_KIND_BYTEARRAY = 2
_KIND_MEMORYVIEW = 3


@attrs.frozen(slots=True, eq=False)
class Serialized:
    """An opaque serialized value: a pickle stream and its out-of-band buffers.

    The scheduler only ever routes these; it never looks inside.
    """

    kind: int
    data: bytes | bytearray | memoryview
    buffers: tuple[Any, ...] = ()

    @property
    def nbytes(self) -> int:
        return memoryview(self.data).nbytes + sum(memoryview(b).nbytes for b in self.buffers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Serialized):
            return NotImplemented
        return (
            self.kind == other.kind
            and bytes(self.data) == bytes(other.data)
            and len(self.buffers) == len(other.buffers)
            and all(bytes(a) == bytes(b) for a, b in zip(self.buffers, other.buffers, strict=True))
        )

    def __hash__(self) -> int:  # pragma: no cover - not used as dict key, but keep hashable
        return hash((self.kind, bytes(self.data)))

    def __repr__(self) -> str:
        return f"<Serialized kind={self.kind} {self.nbytes} bytes, {len(self.buffers)} buffers>"


def _type_name(obj: object) -> str:
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod in ("builtins", None) else f"{mod}.{t.__qualname__}"


@functools.cache
def _cloudpickle() -> ModuleType:
    """cloudpickle, imported now (the one place trioflow imports it)."""
    import cloudpickle

    return cloudpickle


class _Collector:
    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[Any] = []

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < OUT_OF_BAND_THRESHOLD:
            return True  # keep in-band
        self.buffers.append(view)
        return False


def dumps(obj: object) -> Serialized:
    """Serialize a user value.

    Raises:
        SerializationError: neither pickle nor cloudpickle can serialize it.
    """
    t = type(obj)
    if t is bytes:
        return Serialized(kind=_KIND_BYTES, data=obj)  # type: ignore[arg-type]
    if t is bytearray:
        return Serialized(kind=_KIND_BYTEARRAY, data=obj)  # type: ignore[arg-type]
    if t is memoryview:
        mv: memoryview = obj  # type: ignore[assignment]
        if mv.c_contiguous:
            return Serialized(kind=_KIND_MEMORYVIEW, data=mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv)
        return Serialized(kind=_KIND_MEMORYVIEW, data=mv.tobytes())
    collector = _Collector()
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=collector)
        if b"__main__" in data:
            # Things defined in the user's script pickle by reference to
            # __main__, which is another module on the worker: go by value.
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        collector = _Collector()
        try:
            data = _cloudpickle().dumps(obj, protocol=5, buffer_callback=collector)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize object of type {_type_name(obj)}: {exc}"
            ) from exc
    return Serialized(kind=_KIND_PICKLE, data=data, buffers=tuple(collector.buffers))


def loads(s: Serialized) -> Any:
    """Deserialize a value made by :func:`dumps` (or :func:`dumps_with_deps`
    without dependencies).

    Raises:
        SerializationError: the stream could not be unpickled (for instance a
            module it names is not importable here).
    """
    kind = s.kind
    if kind == _KIND_PICKLE:
        try:
            return pickle.loads(s.data, buffers=s.buffers)
        except Exception as exc:
            raise SerializationError(f"cannot deserialize value: {type(exc).__name__}: {exc}") from exc
    if kind == _KIND_BYTES:
        return bytes(s.data)
    if kind == _KIND_BYTEARRAY:
        d = s.data
        return d if type(d) is bytearray else bytearray(d)
    if kind == _KIND_MEMORYVIEW:
        return memoryview(s.data)
    raise SerializationError(f"unknown serialized kind {kind!r}")


# --------------------------------------------------------------------------
# Functions: pickled once, cached by their bytes on the receiving side.

_function_cache: dict[bytes, Callable[..., Any]] = {}
_FUNCTION_CACHE_MAX = 1024


def dumps_function(func: Callable[..., Any]) -> bytes:
    """Pickle a callable: by reference when importable, by value (cloudpickle)
    when it lives in ``__main__``, is a lambda, or a closure."""
    try:
        return _cloudpickle().dumps(func, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot serialize function of type {_type_name(func)}: {exc}") from exc


def loads_function(data: bytes) -> Callable[..., Any]:
    """Unpickle a callable, caching the result by its bytes."""
    try:
        return _function_cache[data]
    except KeyError:
        pass
    try:
        func = pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialize function: {type(exc).__name__}: {exc}"
        ) from exc
    if len(_function_cache) >= _FUNCTION_CACHE_MAX:
        _function_cache.clear()
    _function_cache[data] = func
    return func


# --------------------------------------------------------------------------
# Task arguments: futures become references to their keys.


class _DepScope(threading.local):
    """The dependency values :func:`loads_with_deps` resolves references
    from, per thread (workers unpickle in their executor threads)."""

    data: Mapping[str, Any] | None = None


_dep_scope = _DepScope()


def _dep(key: str) -> Any:
    """What a pickled dependency reference calls when unpickled: the value."""
    data = _dep_scope.data
    if data is None:
        raise SerializationError(f"dependency {key!r} found outside task arguments")
    try:
        return data[key]
    except KeyError:
        raise SerializationError(f"dependency {key!r} is not available") from None


def _reduce_dep(pickler: Any, obj: object) -> tuple[Any, tuple[str]] | None:
    """A dependency pickles as the call ``_dep(key)`` (and its key is noted)."""
    if isinstance(obj, pickler.dep_type):
        key: str = obj.key  # type: ignore[attr-defined]
        pickler.deps[key] = None
        return _dep, (key,)
    return None


class _DepPickler(pickle.Pickler):
    # ``reducer_override`` (not ``persistent_id``): pickle calls it only for
    # objects that are not ints, floats, strings, bytes or builtin
    # containers, where ``persistent_id`` costs a Python call per object.
    dep_type: type | tuple[type, ...]
    deps: dict[str, None]

    def reducer_override(self, obj: object) -> Any:
        return _reduce_dep(self, obj) or NotImplemented


@functools.cache
def _dep_cloud_pickler() -> type[pickle.Pickler]:
    cloud = _cloudpickle().Pickler

    class _DepCloudPickler(cloud):  # type: ignore[misc,valid-type]
        dep_type: type | tuple[type, ...]
        deps: dict[str, None]

        def reducer_override(self, obj: object) -> Any:
            return _reduce_dep(self, obj) or super().reducer_override(obj)

    return _DepCloudPickler


class _Reusable(threading.local):
    """One stdlib dependency pickler per thread and dependency type.

    Making a pickler costs about as much as pickling a small task, and a
    graph pickles thousands; between uses its memo is cleared and its output
    buffer emptied, so it keeps nothing of the last value alive.
    """

    def __init__(self) -> None:
        self.picklers: dict[Any, tuple[_DepPickler, io.BytesIO, _Collector]] = {}


_reusable = _Reusable()
_REUSE_MAX_BYTES = 1 << 20  # a pickler that wrote more than this is dropped, not kept


def _dump_plain(obj: object, dep_type: type | tuple[type, ...]) -> tuple[Serialized, list[str]] | None:
    """Pickle with the stdlib; None if only cloudpickle will do."""
    picklers = _reusable.picklers
    entry = picklers.pop(dep_type, None)  # taken, so a nested call makes its own
    if entry is None:
        f = io.BytesIO()
        collector = _Collector()
        p = _DepPickler(f, protocol=5, buffer_callback=collector)
        p.dep_type = dep_type
        entry = (p, f, collector)
    p, f, collector = entry
    p.deps = {}
    try:
        p.dump(obj)
    except Exception:
        return None  # the pickler may be mid-frame: not reused
    finally:
        p.clear_memo()
    data = f.getvalue()
    buffers, deps = tuple(collector.buffers), list(p.deps)
    collector.buffers = []
    p.deps = {}
    if len(data) <= _REUSE_MAX_BYTES:
        f.seek(0)
        f.truncate()
        picklers[dep_type] = entry
    if b"__main__" in data:
        return None  # see dumps(): __main__ objects go by value
    return Serialized(kind=_KIND_PICKLE, data=data, buffers=buffers), deps


def dumps_with_deps(obj: object, dep_type: type | tuple[type, ...]) -> tuple[Serialized, list[str]]:
    """Serialize ``obj``, replacing each instance of ``dep_type`` (a future)
    by a reference to its ``.key``.

    Returns:
        The serialized value and the keys found, in first-seen order.
    """
    done = _dump_plain(obj, dep_type)
    if done is not None:
        return done
    collector = _Collector()
    f = io.BytesIO()
    p: Any = _dep_cloud_pickler()(f, protocol=5, buffer_callback=collector)
    p.dep_type = dep_type
    p.deps = {}
    try:
        p.dump(obj)
    except Exception as exc:
        raise SerializationError(f"cannot serialize task arguments: {_describe_unpicklable(obj, exc)}") from exc
    return (
        Serialized(kind=_KIND_PICKLE, data=f.getvalue(), buffers=tuple(collector.buffers)),
        list(p.deps),
    )


def _describe_unpicklable(obj: object, exc: Exception) -> str:
    """Find the innermost argument that fails to pickle, to name its type."""
    items: Iterable[object]
    if isinstance(obj, Mapping):
        items = obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    else:
        return f"object of type {_type_name(obj)}: {exc}"
    for item in items:
        try:
            _cloudpickle().dumps(item)
        except Exception as inner:
            return _describe_unpicklable(item, inner)
    return f"object of type {_type_name(obj)}: {exc}"


def loads_with_deps(s: Serialized, data: Mapping[str, Any]) -> Any:
    """Inverse of :func:`dumps_with_deps`: references resolve from ``data``."""
    if s.kind != _KIND_PICKLE:
        return loads(s)
    scope = _dep_scope
    outer, scope.data = scope.data, data
    try:
        return pickle.loads(s.data, buffers=s.buffers)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot deserialize task arguments: {type(exc).__name__}: {exc}") from exc
    finally:
        scope.data = outer
