"""Why a message map does not structure: a strict cattrs converter with
detailed validation, to name the field that is wrong.

Only a peer that breaks the protocol gets here: :func:`trioflow.protocol.codec.from_dict`
checks and builds messages without cattrs, and imports this module (and with
it cattrs) the first time a map fails, to explain the failure as
``"expected int @ $.version"``.  The converter accepts exactly what the
codec's own hooks accept.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from typing import Any

import cattrs
import cattrs.cols

from .serialize import Serialized

__all__ = ["explain"]


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


@functools.cache
def _converter() -> cattrs.Converter:
    return _make_converter(detailed=True)


def explain(d: dict[str, Any], cls: type) -> str | None:
    """What is wrong with ``d`` as a ``cls``; None if nothing is."""
    try:
        _converter().structure(d, cls)
    except Exception as exc:
        try:
            if isinstance(exc, cattrs.BaseValidationError):
                return "; ".join(cattrs.transform_error(exc))
        except Exception:  # noqa: BLE001 - e.g. non-str extra keys confuse transform_error
            pass
        return f"{type(exc).__name__}: {exc}"
    return None
