"""The profiler's call trees: counts add up, the node cap holds, merging is a sum."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow.worker.profile import create, merge, process

# Real frames of a few distinct functions, to build stacks from.


def _f0() -> FrameType:
    return sys._getframe()


def _f1() -> FrameType:
    return sys._getframe()


def _f2() -> FrameType:
    return sys._getframe()


def _f3() -> FrameType:
    return sys._getframe()


FRAMES = [_f0(), _f1(), _f2(), _f3()]

stacks = st.lists(st.lists(st.sampled_from(range(len(FRAMES))), max_size=6), max_size=40)


def _nodes(tree: dict[str, Any]) -> int:
    return 1 + sum(_nodes(c) for c in tree["children"].values())


def _consistent(tree: dict[str, Any]) -> None:
    """A node counts at least what its children count together."""
    assert tree["count"] >= sum(c["count"] for c in tree["children"].values())
    for c in tree["children"].values():
        _consistent(c)


def _build(samples: list[list[int]], budget: int) -> dict[str, Any]:
    tree = create()
    left = [budget]
    for s in samples:
        process(tree, [FRAMES[i] for i in s], left)
    return tree


@settings(max_examples=100, deadline=None)
@given(samples=stacks, budget=st.integers(0, 12))
def test_every_sample_counts_and_the_cap_holds(samples: list[list[int]], budget: int) -> None:
    tree = _build(samples, budget)
    assert tree["count"] == len(samples)
    assert _nodes(tree) <= budget + 1
    _consistent(tree)


@settings(max_examples=100, deadline=None)
@given(a=stacks, b=stacks)
def test_merge_is_the_tree_of_all_samples(a: list[list[int]], b: list[list[int]]) -> None:
    ta, tb = _build(a, 10_000), _build(b, 10_000)
    both = merge(ta, tb)
    assert both == merge(_build(a + b, 10_000))
    assert both["count"] == len(a) + len(b)
    assert ta == _build(a, 10_000)  # inputs untouched
    assert merge(ta, merge(tb, ta)) == merge(merge(ta, tb), ta)
