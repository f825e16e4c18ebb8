"""Record classes: value semantics from one base instead of attrs' per-class methods."""

from __future__ import annotations

import linecache
import pickle

import attrs
import pytest

from trioflow.process.daemon import release_startup_memory
from trioflow.protocol import messages as m
from trioflow.records import Record, record
from trioflow.scheduler.state import ToWorker


@record(kw_only=True)
class Point(Record):
    x: int
    y: list[int] = attrs.field(factory=list)


@record
class Other(Record):
    x: int
    y: list[int]


def test_equality_hash_and_repr_follow_the_fields() -> None:
    a, b = Point(x=1, y=[2]), Point(x=1, y=[2])
    assert a == b and not a != b
    assert Point(x=1) != Point(x=2) and Point(x=1, y=[1]) != Point(x=1, y=[2])
    # Same fields, other class: never equal (as attrs), == falls back to identity.
    assert Other(1, [2]) != a and a != Other(1, [2])
    assert (a == 1) is False
    assert repr(a) == "Point(x=1, y=[2])"
    # Hashable when the values are (a list is not), equal values hash alike.
    assert hash(m.ReleaseKeys(keys=("a",))) == hash(m.ReleaseKeys(keys=("a",)))  # type: ignore[arg-type]
    assert len({m.Ok(), m.Ok()}) == 1
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


def test_records_stay_frozen_slotted_picklable_and_evolvable() -> None:
    p = Point(x=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    assert not hasattr(p, "__dict__")
    assert pickle.loads(pickle.dumps(p)) == p
    assert attrs.evolve(p, x=5) == Point(x=5)
    assert attrs.asdict(ToWorker("tcp://a", m.Ok())) == {"address": "tcp://a", "msg": {}}
    assert Other.__match_args__ == ("x", "y")


def test_repr_of_a_half_made_record_does_not_raise() -> None:
    half = object.__new__(m.FreeKeys)
    assert repr(half).startswith("FreeKeys(keys=NOTHING")


def test_a_record_must_subclass_record() -> None:
    with pytest.raises(TypeError, match="subclass Record"):

        @record
        class Loose:
            x: int


def test_daemons_drop_generated_source_at_start_up() -> None:
    @record
    class Fresh(Record):
        x: int

    assert any(k.startswith("<attrs generated") for k in linecache.cache)
    release_startup_memory()
    assert not any(k.startswith("<attrs generated") for k in linecache.cache)
    # Later classes still work; their source is kept again until the next call.
    assert Point(x=3) == Point(x=3)
