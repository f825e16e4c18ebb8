"""Helpers for testing trioflow and code that talks to it.

* hypothesis strategies for every protocol message (:func:`messages`,
  :func:`message_strategy`, :func:`serialized`), to test your own peers;
* :class:`LeakChecker`, which finds threads, sockets and child processes a
  test left behind;
* pytest fixtures ``trioflow_cluster``, ``trioflow_client`` and
  ``trioflow_no_leaks`` (see :mod:`trioflow.testing.plugin`), available as
  soon as trioflow is installed.
"""

from .leaks import LeakChecker, LeakError
from .strategies import message_strategy, messages, serialized

__all__ = ["LeakChecker", "LeakError", "message_strategy", "messages", "serialized"]
