"""HashPool: password hashing on a bounded pool of its own threads."""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from mxd.sasl.hashpool import HashPool
from mxd.sasl.server import HashingBusy


def _fire(d: Deferred[object], timeout: float = 10.0) -> object:
    """Wait for a Deferred by iterating the (real) reactor, bounded."""
    import time

    out: list[object] = []
    d.addBoth(out.append)
    end = time.monotonic() + timeout
    while not out and time.monotonic() < end:
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    assert out, "the pool did not answer in time"
    return out[0]


def test_runs_off_the_calling_thread_and_bounds_waiting_calls() -> None:
    """Calls run on the pool's threads; beyond max_pending a call fails at once with
    HashingBusy instead of queueing."""
    pool = HashPool(reactor, threads=1, max_pending=2)
    pool.start()
    try:
        gate = threading.Event()
        main = threading.get_ident()
        first = pool(lambda: (gate.wait(10), threading.get_ident())[1])
        second = pool(lambda: threading.get_ident())
        third = pool(lambda: 0)
        errors: list[object] = []
        third.addErrback(lambda f: errors.append(f.value))
        assert errors and isinstance(errors[0], HashingBusy)
        assert pool.pending == 2
        gate.set()
        assert _fire(first) != main
        assert _fire(second) != main
        assert pool.pending == 0
    finally:
        pool.stop()


def test_default_threads_are_bounded() -> None:
    """One thread per CPU, at least 2 and at most 8."""
    pool = HashPool(reactor)
    assert 2 <= pool.threads <= 8
