"""Message <-> frames, and the frame-group prefix, with strict checking.

Theory of operation
-------------------
One message is one *frame group* on a stream::

    u32 n_frames | u64 length x n_frames | frame 0 (header) | frame 1 ... n-1

Frame 0 is the message, unstructured by cattrs into a map with an ``"op"``
entry and packed with msgpack.  Frames 1.. are the out-of-band parts of every
:class:`Serialized` value inside the message: msgpack carries a small
extension record in the header ("frames 3 to 5 are a pickle stream and its
buffers") and the frames themselves go to the socket untouched.  Small
serialized values travel inline in the header instead; a frame per
20-byte pickle would cost more than it saves.

Decoding is strict.  cattrs is lenient by default (it happily turns ``3`` into
``"3"``); the converter here refuses any type that is not exactly the declared
one, refuses unknown fields, and looks the ``op`` up in the closed set of
messages before structuring anything.  Every failure, whatever its cause,
leaves as one :class:`ProtocolError` whose text says what was wrong and where.

:func:`check_prefix` validates the prefix against :class:`Limits` *before*
anything is allocated, so a peer claiming a 1 TB frame costs us nothing.

Sans-IO: no trio import, no sockets; :mod:`trioflow.comm` does the IO.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import cattrs
import cattrs.cols
import msgpack

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


class ProtocolError(Exception):
    """A peer broke the wire protocol: bad bytes, bad schema, limits, handshake."""


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


# ---------------------------------------------------------------- converter


def _strict(t: type) -> Callable[[Any, Any], Any]:
    name = t.__name__

    def hook(value: Any, _: Any) -> Any:
        if type(value) is not t:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return hook


def _float_hook(value: Any, _: Any) -> float:
    tv = type(value)
    if tv is float:
        return value  # type: ignore[no-any-return]
    if tv is int:
        return float(value)
    raise TypeError(f"expected float, got {tv.__name__}")


def _serialized_hook(value: Any, _: Any) -> Serialized:
    if type(value) is not Serialized:
        raise TypeError(f"expected serialized data, got {type(value).__name__}")
    return value


def _is_tuple(t: Any) -> bool:
    return typing.get_origin(t) is tuple


def _register_primitives(conv: cattrs.Converter) -> None:
    for t in (str, int, bool, bytes):
        conv.register_structure_hook(t, _strict(t))
    conv.register_structure_hook(float, _float_hook)


def _strict_list_factory(t: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    # cattrs would iterate anything (a string becomes a list of characters);
    # msgpack arrays always decode to lists, so demand exactly that.
    inner = cattrs.cols.list_structure_factory(t, conv)

    def hook(value: Any, typ: Any) -> Any:
        if type(value) is not list:
            raise TypeError(f"expected list, got {type(value).__name__}")
        return inner(value, typ)

    return hook


def _strict_tuple_factory(t: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    plain = cattrs.Converter(detailed_validation=conv.detailed_validation)
    _register_primitives(plain)
    inner = plain.get_structure_hook(t)
    args = typing.get_args(t)
    fixed = None if (len(args) == 2 and args[1] is Ellipsis) else len(args)

    def hook(value: Any, typ: Any) -> Any:
        if type(value) is not list and type(value) is not tuple:
            raise TypeError(f"expected list, got {type(value).__name__}")
        if fixed is not None and len(value) != fixed:
            raise TypeError(f"expected {fixed} items, got {len(value)}")
        return inner(value, typ)

    return hook


def _make_converter(detailed: bool) -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=detailed)
    _register_primitives(conv)
    conv.register_structure_hook(Serialized, _serialized_hook)
    conv.register_unstructure_hook(Serialized, lambda s: s)
    conv.register_structure_hook_factory(cattrs.cols.is_mutable_sequence, _strict_list_factory)
    conv.register_structure_hook_factory(_is_tuple, _strict_tuple_factory)
    return conv


_fast = _make_converter(detailed=False)
_detailed = _make_converter(detailed=True)

# Hooks are generated on first use of each message class: cattrs compiles
# one function per class, and a process uses only some of the ~50 messages.
_unstructure: dict[type, Callable[[Any], dict[str, Any]]] = {}
_structure: dict[str, tuple[type, Callable[[Any, Any], Any]]] = {}
_ = STRUCTURES


def _unstructure_hook(cls: type) -> Callable[[Any], dict[str, Any]]:
    hook = _unstructure.get(cls)
    if hook is None:
        if MESSAGES.get(getattr(cls, "op", None)) is not cls:  # type: ignore[arg-type]
            raise KeyError(cls)
        hook = _unstructure[cls] = _fast.get_unstructure_hook(cls)
    return hook


def _structure_hook(op: str) -> tuple[type, Callable[[Any, Any], Any]]:
    entry = _structure.get(op)
    if entry is None:
        cls = MESSAGES[op]
        entry = _structure[op] = (cls, _fast.get_structure_hook(cls))
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
        return hook(d, cls)  # type: ignore[no-any-return]
    except Exception:
        pass
    # Slow path, only on failure: structure again with detailed validation to
    # say exactly which field was wrong.
    try:
        _detailed.structure(d, cls)
    except Exception as exc:
        try:
            detail = "; ".join(cattrs.transform_error(exc)) if isinstance(exc, cattrs.BaseValidationError) else f"{type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001 - e.g. non-str extra keys confuse transform_error
            detail = f"{type(exc).__name__}: {exc}"
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
