"""Message <-> frames, and the frame-group prefix, with strict checking.

Theory of operation
-------------------
One message is one *frame group* on a stream::

    u32 n_frames | u64 length x n_frames | frame 0 (header) | frame 1 ... n-1

Frame 0 is the message, unstructured into a map with an ``"op"`` entry and
packed with msgpack.  Frames 1.. are the out-of-band parts of every
:class:`Serialized` value inside the message: msgpack carries a small
extension record in the header ("frames 3 to 5 are a pickle stream and its
buffers") and the frames themselves go to the socket untouched.  Small
serialized values travel inline in the header instead; a frame per
20-byte pickle would cost more than it saves.

Decoding is strict.  cattrs is lenient by default (it happily turns ``3`` into
``"3"``); the structuring here refuses any type that is not exactly the
declared one, refuses unknown fields, and looks the ``op`` up in the closed set
of messages before structuring anything.  Every failure, whatever its cause,
leaves as one :class:`ProtocolError` whose text says what was wrong and where:
a map that fails is structured again by a strict cattrs converter with
detailed validation (:mod:`.explain`, loaded on that first failure) to name
the field.  The fast path needs no cattrs, so neither does a daemon.

:func:`check_prefix` validates the prefix against :class:`Limits` *before*
anything is allocated, so a peer claiming a 1 TB frame costs us nothing.

Sans-IO: no trio import, no sockets; :mod:`trioflow.comm` does the IO.
"""

from __future__ import annotations

import struct
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import msgpack

from ..errors import ProtocolError
from .messages import MESSAGES, STRUCTURES, Message
from .serialize import Serialized

__all__ = [
    "ProtocolError",
    "Limits",
    "encode",
    "decode",
    "pack_prefix",
    "check_prefix",
    "PREFIX_HEAD",
]


@attrs.frozen(kw_only=True)
class Limits:
    """Caps checked before reading anything a peer claims to send."""

    max_header: int = 16 * 1024 * 1024
    max_message: int = 4 * 1024**3
    max_frames: int = 1_000_000


DEFAULT_LIMITS = Limits()

PREFIX_HEAD = struct.Struct("<I")
_EXT_INLINE = 1
_EXT_FRAMES = 2
_EXT_FRAMES_REF = struct.Struct("<BII")
#: Serialized values at most this big with no buffers travel inside the header.
INLINE_LIMIT = 64 * 1024


# ---------------------------------------------------------------- structuring
#
# Each message class gets a pair of functions, made on first use from its
# fields' declared types (a process uses only some of the ~50 messages):
# one checks a decoded map strictly and builds the message, the other turns
# a message into a plain map.  What they accept and produce is what a
# cattrs converter with the strict hooks of :mod:`.explain` does; cattrs
# itself is only loaded to explain a map that fails.

_Hook = Callable[[Any], Any]
_EXACT = (str, int, bool, bytes, Serialized)


def _exact(t: type) -> _Hook:
    name = "serialized data" if t is Serialized else t.__name__

    def check(value: Any) -> Any:
        if type(value) is not t:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return check


def _structure_float(value: Any) -> float:
    tv = type(value)
    if tv is float:
        return value  # type: ignore[no-any-return]
    if tv is int:
        return float(value)
    raise TypeError(f"expected float, got {tv.__name__}")


def _optional_arg(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            return rest[0]
    return None


def _structurer(tp: Any) -> _Hook:
    """A function that checks a decoded value against ``tp`` and converts it."""
    if tp is float:
        return _structure_float
    if tp in _EXACT:
        return _exact(tp)
    inner = _optional_arg(tp)
    if inner is not None:
        hook = _structurer(inner)
        return lambda value: None if value is None else hook(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        item = _structurer(args[0])

        def structure_list(value: Any) -> list[Any]:
            if type(value) is not list:
                raise TypeError(f"expected list, got {type(value).__name__}")
            return [item(v) for v in value]

        return structure_list
    if origin is dict:
        key, val = _structurer(args[0]), _structurer(args[1])
        return lambda value: {key(k): val(v) for k, v in value.items()}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            each = _structurer(args[0])
            items = None
        else:
            items = [_structurer(a) for a in args]

        def structure_tuple(value: Any) -> tuple[Any, ...]:
            if type(value) is not list and type(value) is not tuple:
                raise TypeError(f"expected list, got {type(value).__name__}")
            if items is None:
                return tuple([each(v) for v in value])
            if len(value) != len(items):
                raise TypeError(f"expected {len(items)} items, got {len(value)}")
            return tuple([h(v) for h, v in zip(items, value, strict=True)])

        return structure_tuple
    if isinstance(tp, type) and attrs.has(tp):
        return _class_structurer(tp)
    raise TypeError(f"no structure hook for {tp!r}")


def _compile(name: str, lines: list[str], namespace: dict[str, Any], label: str) -> Any:
    """Define function ``name`` from ``lines`` (straight-line code per class,
    as attrs and cattrs make theirs: a loop over the fields costs a third more)."""
    exec(compile("\n".join(lines), f"<trioflow {label}>", "exec"), namespace)
    return namespace[name]


def _class_structurer(cls: type) -> _Hook:
    fields = attrs.fields(attrs.resolve_types(cls))
    ns: dict[str, Any] = {"cls": cls, "names": frozenset(a.name for a in fields), "extra": _extra_fields}
    lines = [
        "def structure(value):",
        "    if type(value) is not dict or not names.issuperset(value):",
        "        extra(value, names)",
    ]
    args = []
    for i, a in enumerate(fields):
        ns[f"h{i}"] = _structurer(a.type)
        alias = a.alias or a.name
        if a.default is attrs.NOTHING:
            args.append(f"{alias}=h{i}(value[{a.name!r}])")  # KeyError: missing
        else:
            if "**kw" not in args:
                lines.append("    kw = {}")
                args.append("**kw")
            lines.append(f"    if {a.name!r} in value:")
            lines.append(f"        kw[{alias!r}] = h{i}(value[{a.name!r}])")
    lines.append(f"    return cls({', '.join(args)})")
    return _compile("structure", lines, ns, f"structure {cls.__qualname__}")  # type: ignore[no-any-return]


def _extra_fields(value: Any, names: frozenset[str]) -> None:
    if type(value) is not dict:
        raise TypeError(f"expected a map, got {type(value).__name__}")
    raise ValueError(f"extra fields: {sorted(map(str, set(value) - names))}")


def _unstructurer(tp: Any) -> _Hook | None:
    """A function that turns a value of ``tp`` into plain data; None: the value is."""
    if tp is float or tp in _EXACT:
        return None
    inner = _optional_arg(tp)
    if inner is not None:
        hook = _unstructurer(inner)
        if hook is None:
            return None
        return lambda value: None if value is None else hook(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        item = _unstructurer(args[0])
        if item is None:
            return list
        return lambda value: [item(v) for v in value]
    if origin is dict:
        key, val = _unstructurer(args[0]), _unstructurer(args[1])
        if key is None and val is None:
            return dict
        k = key or _same
        v = val or _same
        return lambda value: {k(a): v(b) for a, b in value.items()}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            each = _unstructurer(args[0])
            if each is None:
                return tuple
            return lambda value: tuple(each(v) for v in value)
        items = [_unstructurer(a) for a in args]
        if all(h is None for h in items):
            return tuple
        hooks = [h or _same for h in items]
        return lambda value: tuple(h(v) for h, v in zip(hooks, value, strict=False))
    if isinstance(tp, type) and attrs.has(tp):
        return _class_unstructurer(tp)
    raise TypeError(f"no unstructure hook for {tp!r}")


def _same(value: Any) -> Any:
    return value


def _class_unstructurer(cls: type) -> Callable[[Any], dict[str, Any]]:
    ns: dict[str, Any] = {}
    items = []
    for i, a in enumerate(attrs.fields(attrs.resolve_types(cls))):
        hook = ns[f"h{i}"] = _unstructurer(a.type)
        items.append(f"{a.name!r}: msg.{a.name}" if hook is None else f"{a.name!r}: h{i}(msg.{a.name})")
    lines = ["def unstructure(msg):", f"    return {{{', '.join(items)}}}"]
    return _compile("unstructure", lines, ns, f"unstructure {cls.__qualname__}")  # type: ignore[no-any-return]


_unstructure: dict[type, Callable[[Any], dict[str, Any]]] = {}
_structure: dict[str, tuple[type, _Hook]] = {}
_ = STRUCTURES


def _unstructure_hook(cls: type) -> Callable[[Any], dict[str, Any]]:
    hook = _unstructure.get(cls)
    if hook is None:
        if MESSAGES.get(getattr(cls, "op", None)) is not cls:  # type: ignore[arg-type]
            raise KeyError(cls)
        hook = _unstructure[cls] = _class_unstructurer(cls)
    return hook


def _structure_hook(op: str) -> tuple[type, _Hook]:
    entry = _structure.get(op)
    if entry is None:
        cls = MESSAGES[op]
        entry = _structure[op] = (cls, _class_structurer(cls))
    return entry


def to_dict(msg: Message) -> dict[str, Any]:
    """Unstructure a message into a plain map with its ``op`` (used by
    :func:`encode`; also handy for logs and JSON views)."""
    try:
        d = _unstructure_hook(type(msg))(msg)
    except KeyError:
        raise ProtocolError(f"{type(msg).__name__} is not a registered message") from None
    d["op"] = msg.op
    return d


def from_dict(d: Any) -> Message:
    """Structure a decoded map into its message class, strictly.

    Raises:
        ProtocolError: unknown op, missing or extra fields, wrong types.
    """
    if type(d) is not dict:
        raise ProtocolError(f"message must be a map, got {type(d).__name__}")
    op = d.pop("op", None)
    if op is None:
        raise ProtocolError("message has no 'op'")
    if type(op) is not str:
        raise ProtocolError(f"message 'op' must be a string, got {type(op).__name__}")
    try:
        cls, hook = _structure_hook(op)
    except KeyError:
        raise ProtocolError(f"unknown op {op[:64]!r}") from None
    try:
        return hook(d)  # type: ignore[no-any-return]
    except Exception:
        pass
    # Slow path, only on failure: say exactly which field was wrong.
    from .explain import explain

    detail = explain(d, cls)
    if detail is not None:
        raise ProtocolError(f"invalid {op!r} message: {detail}") from None
    raise ProtocolError(f"invalid {op!r} message")  # pragma: no cover


# ---------------------------------------------------------------- encode / decode


def encode(msg: Message) -> list[Any]:
    """Encode ``msg`` as a list of frames (header first).

    Raises:
        ProtocolError: ``msg`` is not a registered message.
    """
    frames: list[Any] = [b""]

    def default(obj: Any) -> Any:
        if type(obj) is Serialized:
            if not obj.buffers and len(obj.data) <= INLINE_LIMIT:
                return msgpack.ExtType(_EXT_INLINE, bytes((obj.kind,)) + bytes(obj.data))
            first = len(frames)
            frames.append(obj.data)
            frames.extend(obj.buffers)
            return msgpack.ExtType(
                _EXT_FRAMES, _EXT_FRAMES_REF.pack(obj.kind, first, 1 + len(obj.buffers))
            )
        if isinstance(obj, (tuple, set, frozenset)):
            return list(obj)
        raise TypeError(f"cannot encode {type(obj).__name__}")

    frames[0] = msgpack.packb(to_dict(msg), default=default, use_bin_type=True)
    return frames


def decode(frames: Sequence[Any]) -> Message:
    """Decode the frames of one message.

    Raises:
        ProtocolError: for any malformed input whatsoever.
    """
    if not frames:
        raise ProtocolError("empty frame group")
    n = len(frames)
    used: set[int] = set()

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _EXT_INLINE:
            if not data:
                raise ProtocolError("empty inline serialized value")
            return Serialized(kind=data[0], data=data[1:])
        if code == _EXT_FRAMES:
            if len(data) != _EXT_FRAMES_REF.size:
                raise ProtocolError("bad frame reference")
            kind, first, count = _EXT_FRAMES_REF.unpack(data)
            if first < 1 or count < 1 or first + count > n:
                raise ProtocolError(f"frame reference {first}+{count} outside 1..{n - 1}")
            span = range(first, first + count)
            if used.intersection(span):
                raise ProtocolError("frame referenced twice")
            used.update(span)
            return Serialized(kind=kind, data=frames[first], buffers=tuple(frames[first + 1 : first + count]))
        raise ProtocolError(f"unknown msgpack extension {code}")

    try:
        d = msgpack.unpackb(
            frames[0], ext_hook=ext_hook, raw=False, strict_map_key=True, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable message header: {type(exc).__name__}: {exc}") from None
    msg = from_dict(d)
    if len(used) != n - 1:
        raise ProtocolError(f"{msg.op!r} message has {n - 1 - len(used)} frames that nothing refers to")
    return msg


# ---------------------------------------------------------------- frame-group prefix


def pack_prefix(frames: Sequence[Any]) -> bytes:
    """The ``u32 n | u64 length x n`` prefix of a frame group."""
    lengths = [memoryview(f).nbytes for f in frames]
    return struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)


def check_count(n_frames: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check the frame count before reading the lengths."""
    if n_frames < 1:
        raise ProtocolError("frame group with no frames")
    if n_frames > limits.max_frames:
        raise ProtocolError(f"frame group of {n_frames} frames exceeds the limit of {limits.max_frames}")


def check_prefix(lengths_bytes: bytes | bytearray | memoryview, n_frames: int, limits: Limits = DEFAULT_LIMITS) -> list[int]:
    """Parse and check the frame lengths; nothing is allocated for the frames yet.

    Raises:
        ProtocolError: the header or the whole message would break ``limits``.
    """
    if n_frames < 1 or len(lengths_bytes) != 8 * n_frames:
        raise ProtocolError(f"frame prefix of {len(lengths_bytes)} bytes does not describe {n_frames} frames")
    lengths = list(struct.unpack(f"<{n_frames}Q", lengths_bytes))
    if lengths[0] > limits.max_header:
        raise ProtocolError(f"message header of {lengths[0]} bytes exceeds the limit of {limits.max_header}")
    total = sum(lengths)
    if total > limits.max_message:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {limits.max_message}")
    return lengths
