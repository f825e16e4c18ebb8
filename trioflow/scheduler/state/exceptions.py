"""The scheduler state machine's exceptions (all of them are defined here)."""

from __future__ import annotations

__all__ = ["InvalidEvent", "InvalidTransition", "KilledWorker", "LostData"]

class InvalidTransition(RuntimeError):
    """An internal transition not in the table was asked for (a bug)."""


class InvalidEvent(ValueError):
    """An event from a peer does not fit the current state (bad input)."""


class KilledWorker(Exception):
    """A task was running on workers that died too many times."""

    def __init__(self, key: str, workers: list[str], allowed_failures: int) -> None:
        super().__init__(key, workers, allowed_failures)
        self.key = key
        self.workers = list(workers)
        self.allowed_failures = allowed_failures

    @property
    def last_worker(self) -> str:
        return self.workers[-1] if self.workers else ""

    def __str__(self) -> str:
        return (
            f"task {self.key!r} was running on workers that died {len(self.workers)} times "
            f"({', '.join(self.workers)}); it may be what kills them"
        )


class LostData(Exception):
    """Scattered data was lost with the worker that held it."""
