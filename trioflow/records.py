"""Frozen, slotted attrs records that share one ``repr``, ``==`` and ``hash``.

attrs writes, compiles and keeps (with its source text, for tracebacks) a
``__repr__``, ``__eq__`` and ``__hash__`` for every class it makes.  trioflow
has about eighty such classes (protocol messages, state-machine events and
instructions) that are built on hot paths but compared and printed only in
tests and logs, so they get these three methods from :class:`Record`
instead: one generic implementation reading the fields attrs recorded.  A
daemon keeps about 0.5 MiB less at idle; ``__init__`` stays generated, as
it is the part that runs per message.

Use::

    @record(kw_only=True)
    class TaskDone(Record):
        key: str
        nbytes: int = 0
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, overload

import attrs

__all__ = ["Record", "record"]

_T = TypeVar("_T")


class Record:
    """Base of every :func:`record` class: value equality, hash and repr over
    the fields, in declaration order."""

    __slots__ = ()
    __attrs_attrs__: ClassVar[tuple[Any, ...]]

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, a.name) for a in self.__attrs_attrs__])

    def __repr__(self) -> str:
        fields = ", ".join([f"{a.name}={getattr(self, a.name, attrs.NOTHING)!r}" for a in self.__attrs_attrs__])
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((self.__class__, *self._values()))


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@typing.dataclass_transform(frozen_default=True, field_specifiers=(attrs.field,))
def record(cls: type[_T] | None = None, /, *, kw_only: bool = False) -> Any:
    """Class decorator: a frozen, slotted attrs class taking ``repr``, ``==``
    and ``hash`` from its :class:`Record` base."""

    def wrap(cls: type[_T]) -> type[_T]:
        if not issubclass(cls, Record):
            raise TypeError(f"{cls.__qualname__} must subclass Record")
        return attrs.frozen(cls, slots=True, kw_only=kw_only, repr=False, eq=False)

    return wrap if cls is None else wrap(cls)
