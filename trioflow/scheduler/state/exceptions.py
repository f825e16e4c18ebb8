"""The state machine's exceptions, under the names its modules use.

They are defined, with every other trioflow exception, in
:mod:`trioflow.errors`; the state machine raises ``InvalidEvent`` (bad input
from a peer, nothing changed), ``InvalidTransition`` (a bug: a move not in
the table), and records ``KilledWorker`` and ``LostData`` as task errors.
"""

from __future__ import annotations

from ...errors import InvalidEvent, InvalidTransition, KilledWorker, LostData

__all__ = ["InvalidEvent", "InvalidTransition", "KilledWorker", "LostData"]
