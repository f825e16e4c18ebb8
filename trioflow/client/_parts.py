"""What the parts of :class:`~trioflow.client.core.AsyncClient` (its mixins)
use from one another, declared for type checkers; nothing at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

    from ..comm import ConnectionPool
    from ..protocol import messages as m
    from .futures import FutureState

__all__ = ["ClientParts"]


class ClientParts:
    if TYPE_CHECKING:
        scheduler_address: str
        timeout: float
        status: str
        _states: dict[str, FutureState]
        _pool: ConnectionPool | None
        _scatter_acks: dict[str, trio.Event]
        _cancel_echoes: dict[str, int]
        _shutdown_requested: bool
        _token: trio.lowlevel.TrioToken | None
        _nursery: trio.Nursery | None
        _forwarding: dict[Any, trio.CancelScope]

        def _send(self, msg: m.Message) -> None: ...

        async def _rpc(self, msg: m.Message, reply_type: type[Any], timeout: float | None = None) -> Any: ...

        async def aclose(self) -> None: ...

        async def gather(self, futures: Any, errors: str = "raise") -> Any: ...

        async def _query(self, what: str, *, keys: list[str] | None = None, workers: list[str] | None = None, n: int = -1) -> Any: ...

        async def run(self, function: Any, *args: Any, workers: Any = None, wait: bool = True, nanny: bool = False, on_error: str = "raise", **kwargs: Any) -> Any: ...

        async def scheduler_info(self, n_workers: int = 5, **kwargs: Any) -> dict[str, Any]: ...

        def _send_graph(self, specs: list[m.TaskSpec], wanted: list[str]) -> None: ...

        def _send_graph_soon(self, specs: list[m.TaskSpec], wanted: list[str]) -> None: ...

        def _in_own_loop(self) -> bool: ...
