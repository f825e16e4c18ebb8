"""Running dask graphs and collections on trioflow.

Theory of operation
-------------------
dask describes work as a graph ``{key: task}``.  Classic graphs use tuples
``(func, arg, ...)``; current dask uses task-spec objects (``Task``,
``DataNode``, ``Alias`` from ``dask._task_spec``).  ``convert_legacy_graph``
turns either kind into task-spec nodes, each of which knows its dependency
keys and can run itself given their values: ``node({dep_key: value})``.

The client materializes the graph (dask.distributed ships the expression to
its scheduler and materializes it there; our scheduler never unpickles user
objects, so the client does it) and submits one trioflow task per node:

* the key is the dask key made a string (``"x"`` stays ``"x"``; a tuple key
  ``("x", 0, 1)`` becomes ``"('x', 0, 1)"``);
* the function is :func:`execute_node`; its arguments are the node and a map
  from each dependency's dask key to a reference that the worker's unpickler
  resolves to the dependency's value (see ``dumps_with_deps``);
* tasks are sent in ``dask.order`` order, which becomes the tie-breaking
  priority on the scheduler and the workers;
* ``dask.annotate(priority=, retries=, resources=, workers=,
  allow_other_workers=)`` is honoured: the annotations of the graph's layers
  (per key, from ``__dask_annotations__`` of the expression) win over those
  in effect where ``compute``/``persist``/``get`` was called
  (``dask.get_annotations()``, which the client captures in the caller's
  thread), which win over the call's own keyword options.  Other
  annotations are ignored.  (``client.submit`` and ``client.map`` take the
  annotations in effect for the options they are not given.)

Graph values that are trioflow futures (a persisted collection) are not
tasks: they become dependencies on the existing keys.

dask is an optional extra: this module is only imported when a dask graph is
computed, and ``import trioflow`` never imports dask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .protocol import messages as m
from .protocol.serialize import dumps_with_deps

__all__ = ["execute_node", "graph_to_specs", "stringify", "flatten_keys", "pack_results"]


def stringify(key: Any) -> str:
    """The trioflow key (a string) for a dask key."""
    return key if isinstance(key, str) else str(key)


class KeyRef:
    """A placeholder for a dependency's value in pickled task arguments."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def execute_node(node: Any, values: Mapping[Any, Any]) -> Any:
    """Run one dask task-spec node on a worker, given its dependencies' values."""
    return node(values)


def execute_finalize(func: Any, results: Any, extra: tuple[Any, ...]) -> Any:
    return func(results, *extra)


def flatten_keys(keys: Any) -> list[Any]:
    """Flatten dask's nested key lists (tuple keys are leaves)."""
    out: list[Any] = []

    def walk(k: Any) -> None:
        if isinstance(k, list):
            for x in k:
                walk(x)
        else:
            out.append(k)

    walk(keys)
    return out


def pack_results(keys: Any, values: Mapping[Any, Any]) -> Any:
    """Rebuild dask's nested key structure with values."""
    if isinstance(keys, list):
        return [pack_results(k, values) for k in keys]
    return values[keys]


def graph_to_specs(
    dsk: Mapping[Any, Any],
    future_type: type,
    *,
    known_keys: Iterable[str] = (),
    priority: int = 0,
    workers: list[str] | None = None,
    allow_other_workers: bool = False,
    resources: dict[str, float] | None = None,
    retries: int = 0,
    function_bytes: bytes,
    annotations: Mapping[str, Any] | None = None,
) -> list[m.TaskSpec]:
    """Turn a dask graph into trioflow task specs, in dask's execution order.

    Args:
        annotations: the dask annotations in effect for the whole graph
            (values may be callables of the key); the graph's own per-key
            annotations win over them.

    Raises:
        SerializationError: a task cannot be pickled (names the type).
    """
    from dask._task_spec import Alias, DataNode, convert_legacy_graph
    from dask.order import order

    per_key: dict[str, dict[Any, Any]] = {}
    if hasattr(dsk, "__dask_graph__"):  # dask.compute hands schedulers an expression
        get_annotations = getattr(dsk, "__dask_annotations__", None)
        if get_annotations is not None:
            per_key = {a: v for a, v in get_annotations().items() if a in _ANNOTATIONS}
        dsk = dsk.__dask_graph__()
    defaults: dict[str, Any] = {"priority": priority, "workers": workers, "allow_other_workers": allow_other_workers, "resources": resources, "retries": retries}
    overall = {a: v for a, v in (annotations or {}).items() if a in _ANNOTATIONS}
    raw = dict(dsk)
    # Persisted pieces: the value is a trioflow future for that key (or an alias of one).
    existing: dict[Any, Any] = {}
    for k, v in list(raw.items()):
        if isinstance(v, future_type):
            existing[k] = v
            del raw[k]
    nodes = convert_legacy_graph(raw, all_keys=set(raw) | set(existing)) if raw else {}
    try:
        priorities = order(nodes) if nodes else {}
    except Exception:  # noqa: BLE001 - ordering is an optimisation only
        priorities = {}
    ordered = sorted(nodes.items(), key=lambda kv: priorities.get(kv[0], 0))
    specs: list[m.TaskSpec] = []
    dep_types = (KeyRef, future_type)
    for k, node in ordered:
        value: Any = getattr(node, "value", None)
        if isinstance(node, DataNode) and isinstance(value, future_type) and stringify(k) == getattr(value, "key", None):
            continue
        refs: dict[Any, Any] = {}
        deps: list[str] = []
        for d in node.dependencies:
            if d in existing:
                refs[d] = existing[d]
                deps.append(existing[d].key)
            else:
                sd = stringify(d)
                refs[d] = KeyRef(sd)
                deps.append(sd)
        if isinstance(node, Alias) and node.target in existing and stringify(k) == existing[node.target].key:
            continue
        ser, found = dumps_with_deps(((node, refs), {}), dep_types)
        for f in found:
            if f not in deps:
                deps.append(f)
        opts = _options_for(k, defaults, overall, per_key) if overall or per_key else defaults
        w = opts["workers"]
        specs.append(
            m.TaskSpec(
                key=stringify(k),
                function=function_bytes,
                args=ser,
                dependencies=deps,
                priority=int(opts["priority"] or 0),
                workers=[w] if isinstance(w, str) else list(w or ()),
                allow_other_workers=bool(opts["allow_other_workers"]),
                resources={r: float(n) for r, n in (opts["resources"] or {}).items()},
                retries=int(opts["retries"] or 0),
            )
        )
    return specs


#: The dask annotations a trioflow task honours.
_ANNOTATIONS = ("priority", "workers", "allow_other_workers", "resources", "retries")


def _options_for(key: Any, defaults: dict[str, Any], overall: Mapping[str, Any], per_key: Mapping[str, Mapping[Any, Any]]) -> dict[str, Any]:
    opts = dict(defaults)
    for name, value in overall.items():
        if not opts[name]:  # options given to the call itself win
            opts[name] = value(key) if callable(value) else value
    for name, values in per_key.items():
        value = values.get(key)
        if value is not None:
            opts[name] = value
    return opts


def current_annotations() -> dict[str, Any]:
    """``dask.get_annotations()`` here (in this thread and context), or {}
    when dask was never imported."""
    import sys

    if "dask" not in sys.modules:
        return {}
    import dask

    return dict(dask.get_annotations())


def collections_graph(collections: list[Any], *, optimize_graph: bool, finalize: bool) -> tuple[Any, Any]:
    """Dask collections as one optimized expression: (expression, keys) —
    for ``compute`` with ``finalize=True`` the keys are one finalize key per
    collection.  :func:`graph_to_specs` takes the expression (its graph and
    its annotations)."""
    from dask.base import collections_to_expr

    expr = collections_to_expr(collections, optimize_graph)
    if finalize:
        from dask._expr import FinalizeCompute

        expr = FinalizeCompute(expr)
    expr = expr.optimize()
    keys = expr.__dask_keys__()
    return expr, keys
