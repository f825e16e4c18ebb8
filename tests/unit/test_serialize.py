"""User-data serialization: round trips, zero-copy buffers, cloudpickle
fallback, errors that name the culprit, and futures as dependencies."""

from __future__ import annotations

import importlib
import pickle
import sys
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow.protocol import serialize
from trioflow.protocol.codec import decode, encode
from trioflow.protocol.messages import PutData
from trioflow.protocol.serialize import (
    OUT_OF_BAND_THRESHOLD,
    SerializationError,
    Serialized,
    dumps,
    dumps_function,
    dumps_with_deps,
    loads,
    loads_function,
    loads_with_deps,
)
from trioflow.testing import serialized

ROUND_TRIP = settings(max_examples=150, deadline=None)

plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.complex_numbers(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
        | st.frozensets(st.integers() | st.text(max_size=4), max_size=4)
    ),
    max_leaves=15,
)


@ROUND_TRIP
@given(plain_values)
def test_round_trip(value: Any) -> None:
    s = dumps(value)
    assert loads(s) == value
    assert type(loads(s)) is type(value)


@ROUND_TRIP
@given(st.binary(max_size=100), st.sampled_from([bytes, bytearray, memoryview]))
def test_top_level_buffers_skip_pickle(raw: bytes, kind: type) -> None:
    value = kind(raw)
    s = dumps(value)
    assert s.kind != serialize._KIND_PICKLE
    assert s.buffers == ()
    assert bytes(s.data) == raw
    if kind is not bytes:
        # No copy: the frame is the caller's own memory.
        assert np.shares_memory(np.frombuffer(s.data, "u1"), np.frombuffer(value, "u1")) or not raw
    if kind is bytes:
        assert s.data is value
    back = loads(s)
    assert type(back) is kind
    assert bytes(back) == raw


def test_top_level_memoryview_of_array() -> None:
    a = np.arange(12, dtype="i4").reshape(3, 4)
    s = dumps(memoryview(a))
    assert s.kind == serialize._KIND_MEMORYVIEW
    assert bytes(loads(s)) == a.tobytes()
    strided = memoryview(a)[::2]
    assert bytes(loads(dumps(strided))) == a[::2].tobytes()


@settings(max_examples=100, deadline=None)
@given(serialized())
def test_strategy_values_survive_the_wire(s: Serialized) -> None:
    msg = PutData(data={"k": s})
    back = decode([bytearray(memoryview(f).cast("B")) for f in encode(msg)])
    assert back == msg
    # Loading must not fail, whatever the frames are.
    loads(back.data["k"])


# ---------------------------------------------------------------- numpy, zero copy


@pytest.mark.parametrize("dtype", ["u1", "f8", "i4"])
def test_large_array_goes_out_of_band(dtype: str) -> None:
    a = np.arange(OUT_OF_BAND_THRESHOLD, dtype=dtype)  # >= 16 KiB whatever the dtype
    s = dumps(a)
    assert len(s.buffers) >= 1
    assert len(s.data) < 1024  # the pickle stream holds only the metadata
    np.testing.assert_array_equal(loads(s), a)


def test_small_array_stays_in_band() -> None:
    a = np.arange(10)
    s = dumps(a)
    assert s.buffers == ()
    np.testing.assert_array_equal(loads(s), a)


def test_loaded_array_is_a_view_of_the_received_frame() -> None:
    a = np.arange(8192, dtype="f8")
    frames = encode(PutData(data={"a": dumps(a)}))
    assert len(frames) >= 3  # header, pickle stream, buffer
    received = [bytearray(memoryview(f).cast("B")) for f in frames]
    msg = decode(received)
    b = loads(msg.data["a"])
    np.testing.assert_array_equal(a, b)
    buffer_frame = received[-1]
    assert np.shares_memory(b, np.frombuffer(buffer_frame, dtype="u1"))
    # Mutating the frame shows through the array: not a copy.
    buffer_frame[:8] = np.float64(-1.5).tobytes()
    assert b[0] == -1.5
    assert a[0] == 0


def test_loaded_array_from_read_only_frames_is_read_only() -> None:
    a = np.arange(8192, dtype="f8")
    frames = [bytes(memoryview(f).cast("B")) for f in encode(PutData(data={"a": dumps(a)}))]
    b = loads(decode(frames).data["a"])
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable


def test_non_contiguous_array() -> None:
    a = np.arange(40000, dtype="i4").reshape(200, 200)[:, ::3]
    np.testing.assert_array_equal(loads(dumps(a)), a)
    f = np.asfortranarray(np.arange(40000, dtype="f8").reshape(200, 200))
    back = loads(dumps(f))
    np.testing.assert_array_equal(back, f)


# ---------------------------------------------------------------- cloudpickle fallback


def test_lambda_round_trips() -> None:
    f = lambda x: x * 2 + 1  # noqa: E731
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(f)  # so dumps must have fallen back to cloudpickle
    assert loads(dumps(f))(20) == 41


def test_closure_round_trips() -> None:
    def make_adder(n: int) -> Any:
        def add(x: int) -> int:
            return x + n

        return add

    add3 = make_adder(3)
    assert loads(dumps(add3))(4) == 7
    assert loads(dumps([add3, {"f": add3}]))[1]["f"](1) == 4


def test_local_class_instance_round_trips() -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

    p = loads(dumps(Point(1, 2)))
    assert (p.x, p.y) == (1, 2)


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (threading.Lock, "lock"),
        (lambda: (i for i in range(3)), "generator"),
        (lambda: [1, {"x": threading.Lock()}], "list: .*_thread.lock"),
    ],
    ids=["lock", "generator", "nested-lock"],
)
def test_unpicklable_raises_serialization_error(make: Any, type_name: str) -> None:
    with pytest.raises(SerializationError, match=f"cannot serialize object of type .*{type_name}"):
        dumps(make())


def test_serialization_error_is_a_type_error() -> None:
    # Callers that catch TypeError from pickle keep working.
    assert issubclass(SerializationError, TypeError)


def test_corrupt_stream() -> None:
    with pytest.raises(SerializationError, match="cannot deserialize"):
        loads(Serialized(kind=serialize._KIND_PICKLE, data=b"\x80\x05garbage"))
    with pytest.raises(SerializationError, match="unknown serialized kind"):
        loads(Serialized(kind=99, data=b""))


@pytest.fixture
def vanishing_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A module that can be imported now and is gone after ``vanish()``."""
    name = f"trioflow_vanishing_{id(tmp_path)}"
    path = tmp_path / f"{name}.py"
    path.write_text("class Thing:\n    def __init__(self):\n        self.x = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)

    def vanish() -> None:
        del sys.modules[name]
        path.unlink()
        sys.path.remove(str(tmp_path))
        importlib.invalidate_caches()

    module.vanish = vanish
    yield module
    sys.modules.pop(name, None)


def test_loads_missing_module(vanishing_module: Any) -> None:
    s = dumps(vanishing_module.Thing())
    assert loads(s).x == 42
    vanishing_module.vanish()
    with pytest.raises(SerializationError, match=vanishing_module.__name__) as info:
        loads(s)
    assert "ModuleNotFoundError" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


# ---------------------------------------------------------------- functions


def double(x: int) -> int:
    return 2 * x


def test_dumps_function_by_reference_and_cache() -> None:
    data = dumps_function(double)
    assert len(data) < 200  # by reference, not by value
    f = loads_function(data)
    assert f is double
    assert loads_function(data) is f


def test_loads_function_caches_by_value_functions() -> None:
    data = dumps_function(lambda x: x + 1)
    f = loads_function(data)
    assert f(1) == 2
    assert loads_function(data) is f
    assert loads_function(bytes(data)) is f  # keyed by content, not identity


def test_function_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialize, "_function_cache", {})
    monkeypatch.setattr(serialize, "_FUNCTION_CACHE_MAX", 3)
    blobs = [dumps_function(lambda x, i=i: x + i) for i in range(10)]
    for b in blobs:
        loads_function(b)
        assert len(serialize._function_cache) <= 3


def test_function_errors() -> None:
    with pytest.raises(SerializationError, match="cannot serialize function of type .*lock"):
        dumps_function(threading.Lock())
    with pytest.raises(SerializationError, match="cannot deserialize function"):
        loads_function(b"not a pickle")


# ---------------------------------------------------------------- dependencies


class Fut:
    """Stands in for a client future: only ``.key`` matters."""

    def __init__(self, key: str) -> None:
        self.key = key


class SubFut(Fut):
    pass


class Box:
    def __init__(self, content: Any) -> None:
        self.content = content

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and self.content == other.content


def test_dependencies_found_at_any_depth() -> None:
    a, b, c, d = Fut("a"), Fut("b"), SubFut("c"), Fut("d")
    args = ([a, {"x": (b, a)}], Box([c, {"k": Box(d)}]), 5)
    s, deps = dumps_with_deps(args, Fut)
    assert deps == ["a", "b", "c", "d"]  # first-seen order, no duplicates
    out = loads_with_deps(s, {"a": 1, "b": 2, "c": 3, "d": 4})
    assert out == ([1, {"x": (2, 1)}], Box([3, {"k": Box(4)}]), 5)


def test_dependencies_through_cloudpickle() -> None:
    # A local class and a closure force the cloudpickle path.
    class LocalBox:
        def __init__(self, content: Any) -> None:
            self.content = content

    fut = Fut("x")
    fn = lambda: fut  # noqa: E731
    s, deps = dumps_with_deps([LocalBox(Fut("y")), fn, fut], Fut)
    assert set(deps) == {"x", "y"}
    box, fn_back, x = loads_with_deps(s, {"x": "X", "y": "Y"})
    assert box.content == "Y"
    assert x == "X"
    assert fn_back() == "X"


def test_dependencies_with_large_buffers() -> None:
    a = np.arange(8192, dtype="f8")
    s, deps = dumps_with_deps({"arr": a, "f": Fut("k")}, Fut)
    assert deps == ["k"]
    assert len(s.buffers) == 1
    out = loads_with_deps(s, {"k": "v"})
    assert out["f"] == "v"
    np.testing.assert_array_equal(out["arr"], a)


def test_no_dependencies() -> None:
    s, deps = dumps_with_deps({"x": [1, 2]}, Fut)
    assert deps == []
    assert loads(s) == {"x": [1, 2]}
    assert loads_with_deps(s, {}) == {"x": [1, 2]}
    assert loads_with_deps(dumps(b"raw"), {}) == b"raw"


def test_missing_dependency() -> None:
    s, _ = dumps_with_deps([Fut("here"), Fut("gone")], Fut)
    with pytest.raises(SerializationError, match="'gone'"):
        loads_with_deps(s, {"here": 1})


def test_unpicklable_argument_is_named() -> None:
    with pytest.raises(SerializationError, match="lock"):
        dumps_with_deps([Fut("a"), {"k": threading.Lock()}], Fut)


@ROUND_TRIP
@given(plain_values, st.lists(st.text(max_size=5), max_size=5))
def test_dependencies_round_trip(value: Any, keys: list[str]) -> None:
    args = [value, [Fut(k) for k in keys]]
    s, deps = dumps_with_deps(args, Fut)
    assert deps == list(dict.fromkeys(keys))
    assert loads_with_deps(s, {k: k.upper() for k in keys}) == [value, [k.upper() for k in keys]]


def test_reused_pickler_keeps_nothing_alive() -> None:
    # The per-thread pickler is reused across calls; its memo and buffer must
    # not hold the last arguments (a worker frees results as soon as released).
    import gc
    import weakref

    box = Box([Fut("a"), np.arange(10)])
    ref = weakref.ref(box)
    s, deps = dumps_with_deps(box, Fut)
    assert deps == ["a"]
    del box
    gc.collect()
    assert ref() is None
    # ... and the next call starts clean: no keys or buffers from the last one.
    s2, deps2 = dumps_with_deps([1, 2], Fut)
    assert deps2 == [] and s2.buffers == () and loads(s2) == [1, 2]


def test_pickler_not_reused_after_a_failure() -> None:
    with pytest.raises(SerializationError):
        dumps_with_deps([Fut("x"), threading.Lock()], Fut)
    s, deps = dumps_with_deps([Fut("y"), 3], Fut)
    assert deps == ["y"]
    assert loads_with_deps(s, {"y": "Y"}) == ["Y", 3]


class _PicklesItsOwnArgs:
    """A value whose reduction itself pickles task arguments (nested use)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __reduce__(self) -> Any:
        s, deps = dumps_with_deps(self.inner, Fut)
        return (_load_own, (bytes(s.data), deps))


def _load_own(data: bytes, deps: list[str]) -> Any:
    return ("own", deps, loads_with_deps(Serialized(kind=0, data=data), {k: k * 2 for k in deps}))


def test_nested_dependency_pickling_and_unpickling() -> None:
    s, deps = dumps_with_deps([Fut("outer"), _PicklesItsOwnArgs([Fut("in")])], Fut)
    assert deps == ["outer"]  # the inner call kept its own keys
    assert loads_with_deps(s, {"outer": 1}) == [1, ("own", ["in"], ["inin"])]


def test_reference_outside_task_arguments_is_an_error() -> None:
    s, _ = dumps_with_deps([Fut("k")], Fut)
    with pytest.raises(SerializationError, match="'k'"):
        loads(s)


def test_dependencies_in_threads() -> None:
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        for j in range(200):
            s, deps = dumps_with_deps([Fut(f"k{i}"), j], Fut)
            assert deps == [f"k{i}"]
            results[i] = loads_with_deps(s, {f"k{i}": i})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: [i, 199] for i in range(4)}
