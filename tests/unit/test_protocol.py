"""Properties of the wire codec: messages round trip, and any bad input at
all leaves as one ProtocolError that says what was wrong and where."""

from __future__ import annotations

import functools
import re
import struct
import typing
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioflow.protocol.codec import (
    PREFIX_HEAD,
    Limits,
    ProtocolError,
    check_count,
    check_prefix,
    decode,
    encode,
    pack_prefix,
)
from trioflow.protocol.messages import MESSAGES, Message
from trioflow.protocol.serialize import Serialized
from trioflow.testing import message_strategy, messages

ROUND_TRIP = settings(max_examples=150, deadline=None)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_CLASSES = sorted(MESSAGES.values(), key=lambda c: c.op)

INTS = st.integers(-(2**63), 2**64 - 1)

# Anything msgpack can carry.  Map keys are str only although the decoder
# also lets bytes keys through: a bytes key that ends up as an extra field of
# a message or nested structure currently escapes from_dict as a TypeError
# (cattrs.transform_error joins the extra field names as str).  Bytes keys
# under dict[str, ...] fields are covered by test_corrupted_field_names_op_and_path.
msgpack_values = st.recursive(
    st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


def _frame_copies(frames: list[Any], as_type: str) -> list[Any]:
    if as_type == "bytearray":
        return [bytearray(memoryview(f).cast("B")) for f in frames]
    return [memoryview(bytearray(memoryview(f).cast("B"))) for f in frames]


# ---------------------------------------------------------------- round trips


@ROUND_TRIP
@given(messages())
def test_round_trip(msg: Message) -> None:
    assert decode(encode(msg)) == msg


@ROUND_TRIP
@given(msg=messages(), as_type=st.sampled_from(["bytearray", "memoryview"]))
def test_round_trip_from_received_buffers(msg: Message, as_type: str) -> None:
    # The network layer hands frames over as fresh bytearrays or views of them.
    frames = encode(msg)
    assert decode(_frame_copies(frames, as_type)) == msg


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.op)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_round_trip_each_class(cls: type, data: st.DataObject) -> None:
    # messages() picks classes at random; make sure every class gets a turn.
    msg = data.draw(message_strategy(cls))
    decoded = decode(encode(msg))
    assert type(decoded) is cls
    assert decoded == msg


@ROUND_TRIP
@given(messages())
def test_missing_out_of_band_frame(msg: Message) -> None:
    frames = encode(msg)
    if len(frames) == 1:
        return
    with pytest.raises(ProtocolError, match="frame reference"):
        decode(frames[:-1])


def test_message_classes_are_frozen_slotted_keyword_only() -> None:
    assert MESSAGES
    for op, cls in MESSAGES.items():
        assert cls.op == op
        assert issubclass(cls, Message)
        assert attrs.has(cls)
        assert "__dict__" not in dir(cls), f"{cls.__name__} is not slotted"
        assert all(f.kw_only for f in attrs.fields(cls)), cls.__name__


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.op)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_message_instances_are_frozen_and_keyword_only(cls: type, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    assert msg.op == cls.op
    assert not hasattr(msg, "__dict__")
    names = [f.name for f in attrs.fields(cls)]
    for name in names or ["anything"]:
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(msg, name, None)
    positional = [getattr(msg, n) for n in names] or [None]
    with pytest.raises(TypeError):
        cls(*positional)


# ---------------------------------------------------------------- garbage in


@FUZZ
@given(st.binary(max_size=200))
def test_decode_arbitrary_header(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([header])


@FUZZ
@given(st.lists(st.binary(max_size=50), max_size=5))
def test_decode_arbitrary_frames(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


@FUZZ
@given(st.lists(st.integers() | st.none() | st.text(max_size=5), min_size=1, max_size=3))
def test_decode_non_buffer_frames(frames: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


def _decode_or_protocol_error(d: Any, extra_frames: list[bytes] | None = None) -> Message | None:
    """Decode the packed ``d``; a ProtocolError is fine, any other exception is a bug."""
    try:
        return decode([msgpack.packb(d, use_bin_type=True), *(extra_frames or [])])
    except ProtocolError:
        return None


@FUZZ
@given(
    op=st.sampled_from(sorted(MESSAGES)) | st.text(max_size=10) | msgpack_values,
    fields=st.dictionaries(st.text(max_size=12), msgpack_values, max_size=6),
    frames=st.lists(st.binary(max_size=10), max_size=2),
)
def test_decode_random_maps(op: Any, fields: dict[str, Any], frames: list[bytes]) -> None:
    d = {"op": op, **fields}
    result = _decode_or_protocol_error(d, frames)
    if result is not None:
        assert type(result) is MESSAGES[op]


@FUZZ
@given(
    op=st.sampled_from(sorted(MESSAGES)),
    data=st.data(),
)
def test_decode_random_maps_using_field_names(op: str, data: st.DataObject) -> None:
    # Random values under the real field names: far more likely to get past
    # the first checks than random keys.
    names = [f.name for f in attrs.fields(MESSAGES[op])]
    if not names:
        return
    fields = data.draw(st.dictionaries(st.sampled_from(names), msgpack_values, max_size=len(names)))
    result = _decode_or_protocol_error({"op": op, **fields})
    if result is not None:
        assert type(result) is MESSAGES[op]


@FUZZ
@given(st.text(max_size=20).filter(lambda s: s not in MESSAGES), msgpack_values)
def test_unknown_op(op: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown op"):
        decode([msgpack.packb({"op": op, "field": value}, use_bin_type=True)])


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ([1, 2], "must be a map"),
        ({"key": "k"}, "no 'op'"),
        ({"op": 3}, "'op' must be a string"),
        ({"op": "ok", "x": 1}, r"extra fields found \(x\)"),
        ({"op": "hello", "role": "r", "name": "n", "version": True}, r"expected int @ \$\.version"),
        ({"op": "hello", "role": "r", "name": "n", "version": 1.0}, r"expected int @ \$\.version"),
        ({"op": "hello", "role": 1, "name": "n", "version": 1}, r"expected str @ \$\.role"),
        ({"op": "hello", "role": "r", "name": "n"}, r"required field missing @ \$\.version"),
        ({"op": "close-worker", "reason": b"r"}, r"expected str @ \$\.reason"),
        ({"op": "run-function", "function": "f", "args": b""}, r"\$\.function"),
        ({"op": "who-has-reply", "who_has": {"a": [1]}}, r"@ \$\.who_has\['a'\]\[0\]"),
        (
            {
                "op": "heartbeat",
                "memory": 1,
                "managed": 1,
                "spilled": 1,
                "cpu": 1.0,
                "executing": 1,
                "ready": 1,
                "in_memory": 1,
                "bandwidth": 1.0,
                "paused": 0,
            },
            r"expected bool @ \$\.paused",
        ),
    ],
)
def test_bad_maps_are_explained(d: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode([msgpack.packb(d, use_bin_type=True)])


# Corrupting one spot of a valid message.  The error must name the op and the
# path to the spot, in cattrs.transform_error's "@ $.a[0]['k'].b" notation.


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is not None and type(None) in typing.get_args(tp)


def _wrong_value(tp: Any) -> st.SearchStrategy[Any]:
    """Values that are certainly not acceptable for ``tp`` as a whole."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_optional(tp):
        (inner,) = [a for a in args if a is not type(None)]
        return _wrong_value(inner).filter(lambda v: v is not None)
    nothing = st.none()
    if tp is int:
        return st.booleans() | st.floats() | st.text(max_size=3) | st.binary(max_size=3) | nothing
    if tp is bool:
        return st.integers(0, 1) | st.text(max_size=3) | nothing
    if tp is float:
        return st.booleans() | st.text(max_size=3) | st.binary(max_size=3) | nothing
    if tp is str:
        return (
            INTS
            | st.booleans()
            | st.binary(max_size=3)
            | st.lists(st.text(max_size=3), max_size=1)
            | nothing
        )
    if tp is bytes:
        return INTS | st.text(max_size=3) | st.booleans() | nothing
    if tp is Serialized:
        return INTS | st.text(max_size=3) | st.binary(max_size=3) | nothing
    scalars = INTS | st.booleans() | st.floats() | nothing
    if origin is list or origin is tuple:
        # Not text, bytes or maps: the codec currently accepts those for
        # list and tuple fields (cattrs iterates them: "ab" -> ["a", "b"]).
        if origin is tuple:
            n = len(args)
            bad_len = st.lists(st.integers(0, 9), max_size=5).filter(lambda v: len(v) != n)
            return scalars | bad_len
        return scalars
    if origin is dict:
        return scalars | st.text(max_size=3) | st.lists(INTS, max_size=2)
    if attrs.has(tp):
        return scalars | st.text(max_size=3) | st.lists(INTS, max_size=2)
    raise AssertionError(f"no wrong values for {tp!r}")


def _corrupt(
    data: st.DataObject, tp: Any, value: Any, path: str, *, top: bool = False
) -> tuple[Any, str, str]:
    """Return (new value, path of the fault, text the error must contain).

    ``top``: ``value`` is the message map itself, which must stay a map.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_optional(tp):
        if value is None:
            return data.draw(_wrong_value(tp)), path, ""
        # Still optional: None is the one wrong value of the inner type that
        # is right here.
        outer, (tp,) = tp, [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    else:
        outer = tp
    choices = [] if top else ["here"]
    if origin is list or origin is tuple:
        choices += ["element"] if value else []
        choices += ["new-element"] if origin is list else []
    elif origin is dict:
        choices += ["value", "key"] if value else []
        choices += ["new-value"]
    elif isinstance(tp, type) and attrs.has(tp) and isinstance(value, dict):
        choices += ["field", "extra"]
        if any(f.default is attrs.NOTHING for f in attrs.fields(tp)):
            choices += ["missing"]
    how = data.draw(st.sampled_from(choices))
    if how == "here":
        return data.draw(_wrong_value(outer)), path, ""
    if how == "element":
        i = data.draw(st.integers(0, len(value) - 1))
        elem_tp = args[i] if origin is tuple else args[0]
        new, p, text = _corrupt(data, elem_tp, value[i], f"{path}[{i}]")
        value = list(value)
        value[i] = new
        return value, p, text
    if how == "new-element":
        return [data.draw(_wrong_value(args[0]))], f"{path}[0]", ""
    if how == "value":
        k = data.draw(st.sampled_from(sorted(value)))
        new, p, text = _corrupt(data, args[1], value[k], f"{path}[{k!r}]")
        return {**value, k: new}, p, text
    if how == "key":
        k = data.draw(st.sampled_from(sorted(value)))
        bk = k.encode()
        rest = {kk: vv for kk, vv in value.items() if kk != k}
        return {**rest, bk: value[k]}, f"{path}[{bk!r}]", "expected str"
    if how == "new-value":
        return {"k": data.draw(_wrong_value(args[1]))}, f"{path}['k']", ""
    hints = typing.get_type_hints(tp)
    fields = attrs.fields(tp)
    if how == "field":
        f = data.draw(st.sampled_from(fields))
        new, p, text = _corrupt(data, hints[f.name], value[f.name], f"{path}.{f.name}")
        return {**value, f.name: new}, p, text
    if how == "extra":
        name = "extra_" + data.draw(st.text("abcxyz", max_size=4))
        extra = data.draw(msgpack_values)
        return {**value, name: extra}, path, f"extra fields found ({name})"
    assert how == "missing"
    f = data.draw(st.sampled_from([f for f in fields if f.default is attrs.NOTHING]))
    return (
        {k: v for k, v in value.items() if k != f.name},
        f"{path}.{f.name}",
        "required field missing",
    )


@FUZZ
@given(msg=messages(), data=st.data())
def test_corrupted_field_names_op_and_path(msg: Message, data: st.DataObject) -> None:
    frames = encode(msg)
    # ExtType (serialized values) stays opaque and packs back unchanged.
    d = msgpack.unpackb(frames[0], raw=False)
    op = d.pop("op")
    cls = MESSAGES[op]
    if not attrs.fields(cls):
        d["extra_x"] = 1
        path, text = "$", "extra fields found (extra_x)"
    else:
        d, path, text = _corrupt(data, cls, d, "$", top=True)
    header = msgpack.packb({"op": op, **d}, use_bin_type=True)
    with pytest.raises(ProtocolError) as info:
        decode([header, *frames[1:]])
    err = str(info.value)
    assert repr(op) in err
    assert re.search(re.escape(f"@ {path}") + "(;|$)", err), (path, err)
    assert text in err


# ---------------------------------------------------------------- frame prefix and limits


SMALL = Limits(max_header=100, max_message=1000, max_frames=4)


def test_check_count() -> None:
    check_count(1, SMALL)
    check_count(4, SMALL)
    with pytest.raises(ProtocolError, match="no frames"):
        check_count(0, SMALL)
    with pytest.raises(ProtocolError, match="5 frames exceeds the limit of 4"):
        check_count(5, SMALL)


def test_check_prefix_caps() -> None:
    def lengths(*ns: int) -> bytes:
        return struct.pack(f"<{len(ns)}Q", *ns)

    assert check_prefix(lengths(100, 900), 2, SMALL) == [100, 900]
    with pytest.raises(ProtocolError, match="header of 101 bytes exceeds the limit of 100"):
        check_prefix(lengths(101), 1, SMALL)
    with pytest.raises(ProtocolError, match="message of 1001 bytes exceeds the limit of 1000"):
        check_prefix(lengths(1, 500, 500), 3, SMALL)
    # A peer claiming absurd sizes is refused before anything is allocated.
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        check_prefix(lengths(2**64 - 1, 2**64 - 1), 2, SMALL)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.integers(0, 400),
    st.integers(0, 1200),
    st.integers(1, 8),
)
def test_check_prefix_property(
    frames: list[bytes], max_header: int, max_message: int, max_frames: int
) -> None:
    limits = Limits(max_header=max_header, max_message=max_message, max_frames=max_frames)
    prefix = pack_prefix(frames)
    (n,) = PREFIX_HEAD.unpack_from(prefix)
    assert n == len(frames)
    sizes = [len(f) for f in frames]
    if n > max_frames:
        with pytest.raises(ProtocolError):
            check_count(n, limits)
        return
    check_count(n, limits)
    rest = memoryview(prefix)[PREFIX_HEAD.size :]
    if sizes[0] > max_header or sum(sizes) > max_message:
        with pytest.raises(ProtocolError):
            check_prefix(rest, n, limits)
    else:
        assert check_prefix(rest, n, limits) == sizes


@ROUND_TRIP
@given(messages())
def test_pack_prefix_round_trip(msg: Message) -> None:
    frames = encode(msg)
    prefix = pack_prefix(frames)
    (n,) = PREFIX_HEAD.unpack_from(prefix)
    check_count(n)
    lengths = check_prefix(prefix[PREFIX_HEAD.size :], n)
    assert lengths == [memoryview(f).nbytes for f in frames]
    assert len(prefix) == PREFIX_HEAD.size + 8 * n
    # Reassemble as a receiver would: split one contiguous buffer by lengths.
    body = b"".join(bytes(memoryview(f).cast("B")) for f in frames)
    received, pos = [], 0
    for length in lengths:
        received.append(memoryview(body)[pos : pos + length])
        pos += length
    assert decode(received) == msg


# ---------------------------------------------------------------- the codec's structuring is cattrs'
#
# The codec checks and builds messages with functions of its own and loads
# cattrs only to explain a failure (so that daemons do without it).  Both
# must agree on every map: what one accepts the other accepts, with equal
# results of the same types, and what one refuses the other refuses.


@functools.cache
def _cattrs_reference() -> Any:
    from trioflow.protocol.explain import _make_converter

    return _make_converter(detailed=False)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float and a != a:
        return b != b
    return bool(a == b)


def _outcome(fn: Any) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception:
        return False, None


def _assert_structuring_agrees(cls: type, d: dict[str, Any]) -> None:
    from trioflow.protocol import codec

    hook = codec._structure_hook(cls.op)[1]  # type: ignore[attr-defined]
    ours = _outcome(lambda: hook(dict(d)))
    theirs = _outcome(lambda: _cattrs_reference().structure(dict(d), cls))
    assert ours[0] == theirs[0], (d, ours, theirs)
    if ours[0]:
        assert type(ours[1]) is cls
        assert _same(codec.to_dict(ours[1]), codec.to_dict(theirs[1]))  # == but nan == nan
        assert _same(codec.to_dict(ours[1]), {**_cattrs_reference().unstructure(theirs[1]), "op": cls.op})


@ROUND_TRIP
@given(messages())
def test_unstructuring_agrees_with_cattrs(msg: Message) -> None:
    from trioflow.protocol.codec import to_dict

    d = to_dict(msg)
    assert d.pop("op") == msg.op
    assert _same(d, _cattrs_reference().unstructure(msg)), (d, _cattrs_reference().unstructure(msg))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.op)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_structuring_agrees_with_cattrs(cls: type, data: st.DataObject) -> None:
    from trioflow.protocol.codec import to_dict

    d = to_dict(data.draw(message_strategy(cls)))
    del d["op"]
    _assert_structuring_agrees(cls, d)
    if not attrs.fields(cls):
        return
    # One spot made wrong, at any depth.
    bad, _, _ = _corrupt(data, cls, d, "$", top=True)
    _assert_structuring_agrees(cls, bad)
    # One field replaced by anything msgpack carries (True for a float, ...).
    name = data.draw(st.sampled_from([f.name for f in attrs.fields(cls)]))
    _assert_structuring_agrees(cls, {**d, name: data.draw(msgpack_values)})
    # Random values under the real names.
    names = [f.name for f in attrs.fields(cls)]
    _assert_structuring_agrees(
        cls, data.draw(st.dictionaries(st.sampled_from(names), msgpack_values, max_size=len(names)))
    )
