"""What a setting may hold, and how text from a file or the environment
becomes that value.

Each kind is a callable: ``kind(value)`` returns the typed value or raises
``ValueError`` whose message says what was expected (``expected a fraction
0-1``), never naming the key: the caller adds the key and where the value
came from.  Calling a kind on a value it returned gives the same value, so
records can use kinds as attrs converters.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ._records import parse_bytes

__all__ = [
    "Bool",
    "Bytes",
    "Count",
    "Fraction",
    "Kind",
    "PositiveFloat",
    "PositiveInt",
    "Seconds",
    "Text",
    "parse_seconds",
]

_NONE_WORDS = {"none", "null", "false", "off", "no", ""}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}

_TIME_UNITS = {
    "": 1.0,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "us": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}


def parse_seconds(value: Any) -> float:
    """``"30s"`` -> 30.0; ``"100 ms"`` -> 0.1; ``"5 minutes"`` -> 300.0; ``2`` -> 2.0.

    Raises:
        ValueError: not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, 500ms or 2.5")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if match and match.group(2).lower() in _TIME_UNITS:
            return float(match.group(1)) * _TIME_UNITS[match.group(2).lower()]
    raise ValueError("expected a duration like 10s, 500ms or 2.5")


class Kind:
    """Base: ``describe`` is the text for the docs table and errors."""

    describe = ""
    optional = False

    def __call__(self, value: Any) -> Any:
        if self.optional and (value is None or value is False or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        try:
            return self.parse(value)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"expected {self.describe}") from None

    def parse(self, value: Any) -> Any:
        raise NotImplementedError


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value.strip())
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError
    return float(value)


class Fraction(Kind):
    def __init__(self, optional: bool = False) -> None:
        self.optional = optional
        self.describe = "a fraction 0-1" + (" (or false: never)" if optional else "")

    def parse(self, value: Any) -> float:
        v = _number(value)
        if not 0 < v <= 1:
            raise ValueError
        return v


class PositiveFloat(Kind):
    describe = "a positive number (or inf)"

    def parse(self, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError
        v = float(value.strip() if isinstance(value, str) else value)
        if not v > 0:  # also rejects nan
            raise ValueError
        return v


class Seconds(Kind):
    def __init__(self, optional: bool = False) -> None:
        self.optional = optional
        self.describe = "a duration like 10s, 500ms or 2.5" + (" (or false: never)" if optional else "")

    def parse(self, value: Any) -> float:
        v = parse_seconds(value)
        if not (v > 0 and math.isfinite(v)):
            raise ValueError
        return v


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = value.strip().replace("_", "")
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not int:
        raise ValueError
    return value


class PositiveInt(Kind):
    describe = "a whole number of at least 1"

    def parse(self, value: Any) -> int:
        v = _whole(value)
        if v < 1:
            raise ValueError
        return v


class Count(Kind):
    describe = "a whole number of at least 0"

    def parse(self, value: Any) -> int:
        v = _whole(value)
        if v < 0:
            raise ValueError
        return v


class Bytes(Kind):
    describe = "a size like 4MiB, 64kB or 1000000"

    def parse(self, value: Any) -> int:
        v = parse_bytes(value)
        if v < 1:
            raise ValueError
        return v


class Bool(Kind):
    describe = "true or false"

    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
        raise ValueError


class Text(Kind):
    def __init__(self, optional: bool = False) -> None:
        self.optional = optional
        self.describe = "a string" + (" (or empty: none)" if optional else "")

    def __call__(self, value: Any) -> Any:
        if self.optional and (value is None or value == ""):
            return None
        if type(value) is not str:
            raise ValueError(f"expected {self.describe}")
        return value

    def parse(self, value: Any) -> Any:  # pragma: no cover - __call__ does it
        return value
