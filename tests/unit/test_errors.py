"""trioflow.errors: one base for every exception, standard bases kept, one rule for groups."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import ssl
import subprocess
import sys

import pytest
import trio

import trioflow
from trioflow import errors

# Every exception class trioflow defines, with the standard base code catches.
BASES: dict[type[BaseException], type[BaseException]] = {
    errors.CancelledError: concurrent.futures.CancelledError,
    errors.FutureLostError: Exception,
    errors.KilledWorker: Exception,
    errors.LostData: Exception,
    errors.Reschedule: Exception,
    errors.RemoteError: RuntimeError,
    errors.CommError: ConnectionError,
    errors.CommClosedError: errors.CommError,
    errors.RegistrationRefused: errors.CommError,
    errors.AddressError: ValueError,
    errors.ProtocolError: Exception,
    errors.HandshakeError: errors.ProtocolError,
    errors.SerializationError: TypeError,
    errors.SecurityError: ValueError,
    errors.InvalidEvent: ValueError,
    errors.InvalidTransition: RuntimeError,
    errors.NannyStartError: RuntimeError,
    errors.PluginError: RuntimeError,
    errors.UserError: Exception,
    errors.LeakError: AssertionError,
    errors._EncryptedKey: Exception,
    errors._BadRequest: Exception,
}


def _make(cls: type[BaseException]) -> BaseException:
    if cls is errors.KilledWorker:
        return errors.KilledWorker("k", ["tcp://a:1"], 0)
    if cls is errors._BadRequest:
        return errors._BadRequest(404, "no such page")
    return cls("message")


def test_the_table_lists_every_exception_class() -> None:
    defined = {
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == errors.__name__
    }
    assert defined - {errors.TrioflowError} == set(BASES)


@pytest.mark.parametrize("cls", list(BASES), ids=lambda c: c.__name__)
def test_trioflow_error_catches_each_and_the_standard_base_holds(cls: type[BaseException]) -> None:
    exc = _make(cls)
    with pytest.raises(trioflow.TrioflowError):
        raise exc
    with pytest.raises(BASES[cls]):
        raise exc
    if not cls.__name__.startswith("_"):  # the private ones never leave their module
        # Task errors and replies travel: each survives pickling, as itself.
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and str(back) == str(exc)


def test_public_names_are_the_classes_in_trioflow_errors() -> None:
    for name in ["CancelledError", "CommClosedError", "CommError", "FutureLostError", "KilledWorker",
                 "PluginError", "ProtocolError", "SecurityError", "SerializationError", "TrioflowError"]:
        assert getattr(trioflow, name) is getattr(errors, name), name
        assert name in trioflow.__all__
    assert trioflow.TimeoutError is TimeoutError is asyncio.TimeoutError
    assert not issubclass(TimeoutError, trioflow.TrioflowError)


def test_old_import_paths_still_give_the_same_classes() -> None:
    from trioflow.client import CancelledError, FutureLostError
    from trioflow.client.futures import RemoteException
    from trioflow.comm import AddressError, CommClosedError, CommError, HandshakeError, RemoteError
    from trioflow.process.nanny import NannyStartError
    from trioflow.protocol import ProtocolError, SerializationError
    from trioflow.scheduler import KilledWorker
    from trioflow.scheduler.state import InvalidEvent, InvalidTransition
    from trioflow.security import SecurityError
    from trioflow.testing import LeakError
    from trioflow.worker.state import InvalidWorkerEvent

    assert CancelledError is errors.CancelledError and FutureLostError is errors.FutureLostError
    assert AddressError is errors.AddressError and HandshakeError is errors.HandshakeError
    assert CommError is errors.CommError and CommClosedError is errors.CommClosedError
    assert NannyStartError is errors.NannyStartError and KilledWorker is errors.KilledWorker
    assert ProtocolError is errors.ProtocolError and SerializationError is errors.SerializationError
    assert SecurityError is errors.SecurityError and LeakError is errors.LeakError
    assert InvalidTransition is errors.InvalidTransition
    # The two pairs are one concept each now.
    assert InvalidEvent is InvalidWorkerEvent is errors.InvalidEvent
    assert RemoteError is RemoteException is errors.RemoteError


def test_cancelled_error_is_caught_as_dask_s_is_and_not_as_a_task_cancellation() -> None:
    exc = errors.CancelledError("cancelled")
    with pytest.raises(concurrent.futures.CancelledError):
        raise exc
    assert isinstance(exc, Exception)
    assert not isinstance(exc, asyncio.CancelledError)


def test_attributes_survive_pickling() -> None:
    kw = pickle.loads(pickle.dumps(errors.KilledWorker("k", ["tcp://a:1", "tcp://b:2"], 1)))
    assert (kw.key, kw.workers, kw.allowed_failures, kw.last_worker) == ("k", ["tcp://a:1", "tcp://b:2"], 1, "tcp://b:2")
    assert kw.task == "k"  # dask's name for the key
    re = pickle.loads(pickle.dumps(errors.RemoteError("boom", type_name="Odd")))
    assert (str(re), re.type_name) == ("boom", "Odd")
    assert errors.RemoteError("boom").type_name == ""
    cc = pickle.loads(pickle.dumps(errors.CommClosedError("gone", clean=True, partial=True)))
    assert (str(cc), cc.clean, cc.partial) == ("gone", True, True)


def test_importing_trioflow_errors_loads_no_trio() -> None:
    code = "import sys, trioflow.errors; assert 'trio' not in sys.modules, 'trio imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the group rule


async def _cancelled(n: int) -> list[trio.Cancelled]:
    """``n`` real ``trio.Cancelled`` exceptions (it has no public constructor)."""
    out: list[trio.Cancelled] = []
    for _ in range(n):
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                out.append(exc)
                raise
    return out


def test_leaves_of_nested_groups_are_in_depth_first_order() -> None:
    a, b, c, d = ValueError("a"), OSError("b"), KeyError("c"), TypeError("d")
    group = ExceptionGroup("outer", [a, ExceptionGroup("mid", [b, ExceptionGroup("in", [c])]), d])
    assert errors.leaves(group) == [a, b, c, d]
    assert errors.leaves(a) == [a]  # not a group: itself
    assert errors.find_leaf(group) is a  # no tiers: the first leaf
    assert errors.find_leaf(group, KeyError) is c
    assert errors.find_leaf(group, ZeroDivisionError) is None


def test_a_later_tier_is_a_fallback_and_order_decides_within_a_tier() -> None:
    first_os, user, second_os = OSError("1"), errors.UserError("u"), ConnectionError("2")
    group = ExceptionGroup("g", [first_os, ExceptionGroup("g2", [user, second_os])])
    # The first tier wins even when a later tier's match comes earlier.
    assert errors.find_leaf(group, errors.UserError, OSError) is user
    assert errors.find_leaf(group, (errors.UserError, OSError)) is first_os
    assert errors.find_leaf(group, ZeroDivisionError, OSError) is first_os
    # A predicate is a tier too.
    assert errors.find_leaf(group, lambda e: str(e) == "2") is second_os


async def test_a_group_of_only_cancelled_has_no_real_error() -> None:
    cancels = await _cancelled(3)
    group = BaseExceptionGroup("g", [cancels[0], BaseExceptionGroup("g2", cancels[1:])])
    assert errors.leaves(group) == cancels
    assert errors.find_leaf(group, Exception) is None
    assert errors.find_leaf(group, trio.Cancelled) is cancels[0]
    # Mixed with a real error: the error, wherever it is.
    boom = RuntimeError("boom")
    mixed = BaseExceptionGroup("m", [*cancels[:2], BaseExceptionGroup("m2", [cancels[2], boom])])
    assert errors.find_leaf(mixed, Exception) is boom


def test_keyboard_interrupt_inside_is_found_only_when_asked_for() -> None:
    ki, err = KeyboardInterrupt(), errors.CommError("no route")
    group = BaseExceptionGroup("g", [ki, ExceptionGroup("g2", [err])])
    assert errors.find_leaf(group, Exception) is err
    assert errors.find_leaf(group, KeyboardInterrupt) is ki
    assert errors.find_leaf(group) is ki
    assert not all(isinstance(e, KeyboardInterrupt) for e in errors.leaves(group))
    only = BaseExceptionGroup("g", [ki, BaseExceptionGroup("g2", [KeyboardInterrupt()])])
    assert all(isinstance(e, KeyboardInterrupt) for e in errors.leaves(only))


def test_chained_follows_cause_then_context_and_survives_loops() -> None:
    tls = ssl.SSLError(1, "bad record")
    broken = trio.BrokenResourceError("broken")
    broken.__cause__ = tls
    group = ExceptionGroup("g", [ValueError("v"), broken])
    assert errors.find_leaf(group, ssl.SSLError) is None  # not without chained
    assert errors.find_leaf(group, ssl.SSLError, chained=True) is tls
    # The leaves of a chain come after the exception they hang from.
    assert errors.leaves(group, chained=True)[1:] == [broken, tls]
    # A context loop: each exception is visited once.
    x, y = ValueError("x"), ValueError("y")
    x.__context__, y.__context__ = y, x
    assert errors.leaves(x, chained=True) == [x, y]
    # A cause before a context.
    z, cause, context = OSError("z"), OSError("cause"), OSError("context")
    z.__cause__, z.__context__ = cause, context
    assert errors.leaves(z, chained=True) == [z, cause, context]
