"""Hypothesis strategies for trioflow's wire protocol.

Use them to test your own protocol peer, or anything that consumes or
produces trioflow messages::

    from hypothesis import given
    from trioflow.protocol.codec import decode, encode
    from trioflow.testing import messages, message_strategy
    from trioflow.protocol.messages import Heartbeat

    @given(messages())
    def test_round_trip(msg):
        assert decode(encode(msg)) == msg

    @given(message_strategy(Heartbeat))
    def test_my_peer_handles_heartbeats(msg):
        my_peer.receive(msg)

:func:`messages` covers every class in
:data:`trioflow.protocol.messages.MESSAGES` at the time it is called, so a
newly registered message is tested without touching this module.  Field
strategies are derived from the resolved type annotations; a field whose type
has no mapping here raises :class:`TypeError` when the strategy is built,
rather than being silently skipped.

Generated values always survive an encode/decode round trip with ``==``:
floats are finite and not NaN, integers fit msgpack (``-2**63 .. 2**64-1``),
and text has no lone surrogates.  Sizes are kept small for speed, except
that :func:`serialized` sometimes yields values over 64 KiB (or with numpy
buffers over 16 KiB) so the out-of-band frame path gets exercised too.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import attrs
from hypothesis import strategies as st

from trioflow.protocol.messages import MESSAGES
from trioflow.protocol.serialize import Serialized, dumps

try:
    import numpy as np
    from hypothesis.extra import numpy as hnp
except ImportError:  # pragma: no cover - numpy is optional
    np = None  # type: ignore[assignment]
    hnp = None  # type: ignore[assignment]

__all__ = ["messages", "message_strategy", "serialized"]

MSGPACK_MIN_INT = -(2**63)
MSGPACK_MAX_INT = 2**64 - 1

# Above the codec's inline limit (64 KiB): the value travels as its own frame.
_LARGE = st.integers(64 * 1024 + 1, 80 * 1024)
# Above the pickle out-of-band threshold (16 KiB) but below the inline limit.
_MEDIUM = st.integers(16 * 1024, 64 * 1024)
_FILL = st.integers(0, 255)


def _plain_values() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=16)
        | st.binary(max_size=16)
    )
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.tuples(children, children)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=8,
    )


def _user_values() -> st.SearchStrategy[Any]:
    small = [
        _plain_values(),
        st.binary(max_size=64).map(bytearray),
        st.binary(max_size=64).map(lambda b: memoryview(b)),
    ]
    large = [
        st.builds(lambda n, b: bytes([b]) * n, _LARGE, _FILL),
        st.builds(lambda n, b: bytearray([b]) * n, _LARGE, _FILL),
        # A big bytearray inside a container: pickled with an out-of-band buffer.
        st.builds(lambda n, b: [bytearray([b]) * n], _MEDIUM, _FILL),
    ]
    if np is not None:
        small.append(
            hnp.arrays(
                dtype=st.sampled_from(["u1", "i4", "f8", "?"]),
                shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
            )
        )
        large.append(st.builds(lambda n, b: np.full(n, b, dtype="u1"), _MEDIUM, _FILL))
    return st.one_of(*small, *large)


def serialized(values: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Serialized]:
    """Strategy for :class:`~trioflow.protocol.serialize.Serialized` values.

    Args:
        values: strategy for the plain values to pass through
            :func:`~trioflow.protocol.serialize.dumps`.  By default: nested
            ints, floats, text, bytes, lists, tuples and dicts; bytearrays and
            memoryviews; small numpy arrays when numpy is installed; and
            sometimes large values that travel as out-of-band frames.
    """
    return (values if values is not None else _user_values()).map(dumps)


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Strategy for instances of one attrs message class (or structure such as
    :class:`~trioflow.protocol.messages.TaskSpec`), with every field drawn from
    a strategy for its declared type.

    Raises:
        TypeError: ``cls`` is not an attrs class, or a field has a type this
            module has no strategy for.
    """
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: _for_type(hints[f.name], f"{cls.__name__}.{f.name}") for f in attrs.fields(cls)
    }
    return st.builds(cls, **fields)


def messages() -> st.SearchStrategy[Any]:
    """Strategy for any registered message (one of every class in
    :data:`~trioflow.protocol.messages.MESSAGES`)."""
    return st.one_of([message_strategy(cls) for cls in MESSAGES.values()])


def _worker_configs() -> st.SearchStrategy[Any]:
    """Valid :class:`~trioflow.config.WorkerConfig` records (the record
    refuses bad values itself, so random field values would not do)."""
    from trioflow.config import WorkerConfig

    text = st.text(max_size=16)
    fraction = st.none() | st.floats(0.01, 1.0)
    seconds = st.floats(0.001, 1e6)
    return st.builds(
        WorkerConfig,
        scheduler_address=text,
        name=text,
        nthreads=st.integers(1, 1024),
        memory_limit=st.integers(0, MSGPACK_MAX_INT),
        resources=st.dictionaries(text, st.floats(0, 1e12), max_size=3),
        listen_address=st.none() | text,
        contact_address=st.none() | text,
        local_directory=st.none() | text,
        reconnect=st.booleans(),
        death_timeout=st.none() | seconds,
        heartbeat_interval=seconds,
        connect_timeout=seconds,
        validate=st.booleans(),
        dashboard_address=st.none() | text,
        dashboard_prefix=text,
        memory_target_fraction=fraction,
        memory_pause_fraction=fraction,
        preload=st.lists(text, max_size=3),
    )


def _for_type(tp: Any, where: str) -> st.SearchStrategy[Any]:
    if tp is Serialized:
        return serialized()
    if getattr(tp, "__qualname__", None) == "WorkerConfig" and tp.__module__ == "trioflow.config":
        return _worker_configs()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(MSGPACK_MIN_INT, MSGPACK_MAX_INT)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=16)
    if tp is bytes:
        return st.binary(max_size=32)
    if tp is type(None):
        return st.none()
    if isinstance(tp, type) and attrs.has(tp):
        return message_strategy(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return st.one_of([_for_type(a, where) for a in args])
    if origin is list and len(args) == 1:
        return st.lists(_for_type(args[0], where), max_size=3)
    if origin is dict and len(args) == 2:
        return st.dictionaries(_for_type(args[0], where), _for_type(args[1], where), max_size=3)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_for_type(args[0], where), max_size=3).map(tuple)
        return st.tuples(*(_for_type(a, where) for a in args))
    raise TypeError(f"no strategy for type {tp!r} of field {where}")
