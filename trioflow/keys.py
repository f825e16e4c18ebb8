"""Task keys: the prefix that groups a key with its kind (``inc-3f2a`` -> ``inc``).

Scheduler and workers both learn task durations per prefix; this module is
shared and imports nothing.
"""

from __future__ import annotations

__all__ = ["key_prefix"]


def key_prefix(key: str) -> str:
    """``'inc-123abc'`` -> ``'inc'``; ``"('x', 1)"``-style keys -> ``'x'``."""
    if key.startswith("("):
        head = key[1:].split(",", 1)[0].strip().strip("'\"")
        return head.rsplit("-", 1)[0] if "-" in head else head
    return key.rsplit("-", 1)[0] if "-" in key else key
