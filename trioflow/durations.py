"""Durations as dask users write them: ``"10 ms"``, ``"2s"``, ``"1.5 minutes"``,
a number of seconds, or a :class:`datetime.timedelta`.

:func:`parse_timedelta` is the one place such values are read; every
``timeout=`` (and interval) the client accepts goes through it.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

__all__ = ["parse_timedelta"]

_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("us", "usec", "usecs", "microsecond", "microseconds", "µs"), 1e-6),
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 1e-3),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "wk", "wks", "week", "weeks"), 7 * 86400.0),
):
    for _n in _names:
        _UNITS[_n] = _seconds

_PATTERN = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)?\s*([a-zA-Zµ]*)\s*$")


def parse_timedelta(value: Any, default: str | None = "seconds") -> float | None:
    """Seconds in ``value``.

    Args:
        value: ``None`` (returned as is), a number (in ``default`` units), a
            string with an optional unit (``"10 ms"``, ``"2s"``, ``"3"``,
            ``"1h"``), or a :class:`datetime.timedelta`.
        default: the unit of bare numbers (``"seconds"``, ``"ms"``, ...).

    Returns:
        The duration in seconds (a float), or ``None`` for ``None``.

    Raises:
        ValueError: a string that is not a duration, or an unknown unit.
        TypeError: a value of another type.
    """
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise TypeError(f"a duration cannot be a bool: {value!r}")
    if isinstance(value, (int, float)):
        return float(value) * _unit(default or "seconds", value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None or (match.group(1) is None and not match.group(2)):
            raise ValueError(f"not a duration: {value!r} (expected e.g. '10 ms', '2s', 1.5)")
        number = float(match.group(1)) if match.group(1) is not None else 1.0
        unit = match.group(2) or default or "seconds"
        return number * _unit(unit, value)
    raise TypeError(f"a duration must be a number of seconds, a string like '2s' or a timedelta, not {type(value).__name__}")


def _unit(unit: str, value: Any) -> float:
    seconds = _UNITS.get(unit.lower() if unit != "µs" else unit)
    if seconds is None:
        raise ValueError(f"unknown time unit {unit!r} in {value!r} (use us, ms, s, m, h, d or w)")
    return seconds
