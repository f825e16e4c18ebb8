"""The pytest plugin's option resolution for ``trioflow_cluster``: defaults,
then the closest ``trioflow_cluster`` marker, then an indirect parameter."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from trioflow.testing.plugin import DEFAULT_CLUSTER_OPTIONS, cluster_options


def request(marker: Any = None, **param: Any) -> Any:
    node = SimpleNamespace(get_closest_marker=lambda name: marker.mark if marker is not None and name == "trioflow_cluster" else None)
    if "param" in param:
        return SimpleNamespace(node=node, param=param["param"])
    return SimpleNamespace(node=node)


def test_defaults() -> None:
    assert cluster_options(request()) == {"n_workers": 2, "threads_per_worker": 1, "validate": True}
    assert cluster_options(request()) is not DEFAULT_CLUSTER_OPTIONS  # a copy: tests cannot change the defaults


def test_marker_then_parameter() -> None:
    marker = pytest.mark.trioflow_cluster(n_workers=1, resources={"GPU": 1})
    assert cluster_options(request(marker)) == {"n_workers": 1, "threads_per_worker": 1, "validate": True, "resources": {"GPU": 1}}
    both = cluster_options(request(marker, param={"n_workers": 3, "validate": False}))
    assert both == {"n_workers": 3, "threads_per_worker": 1, "validate": False, "resources": {"GPU": 1}}


def test_wrong_shapes_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="keyword arguments only"):
        cluster_options(request(pytest.mark.trioflow_cluster(3)))
    with pytest.raises(TypeError, match="dict of open_cluster options"):
        cluster_options(request(param=3))

