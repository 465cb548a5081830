"""A bounded thread pool for password hashing (scrypt, PBKDF2), off the reactor thread.

scrypt at the accounts' cost takes ~70 ms of CPU and 32 MiB; on the reactor thread it
would stall every session for that long per login (DESIGN.md: nothing CPU-heavy on the
reactor thread).  ``HashPool`` runs such calls on a few threads of its own (hashlib's
scrypt and PBKDF2 release the GIL), so the reactor's shared pool stays free for the
store, and bounds both the threads (memory: 32 MiB each) and the calls waiting for one:
past ``max_pending`` a call errbacks at once with ``HashingBusy`` (the SASL server answers
"temporarily unavailable") instead of queueing without limit during a login flood.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mxd.sasl.server import HashingBusy

T = TypeVar("T")


def default_threads() -> int:
    """One hashing thread per CPU, at least 2, at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


class HashPool:
    """``run_blocking`` for ``SASLServer``: ``pool(f)`` fires with ``f()`` from a thread.

    ``start()`` once the reactor runs (``reactor.callWhenRunning``); ``stop()`` at
    shutdown.  Calls made before ``start`` wait in the pool and run when it starts."""

    def __init__(self, reactor: Any, *, threads: int | None = None,
                 max_pending: int = 256) -> None:
        self._reactor = reactor
        self.threads = threads if threads is not None else default_threads()
        self.max_pending = max_pending
        # All threads from the start: the first login after start finds them running.
        self._pool = ThreadPool(minthreads=self.threads, maxthreads=self.threads,
                                name="mxd-hash")
        self.pending = 0  # calls submitted and not yet answered

    def start(self) -> None:
        if not self._pool.started:
            self._pool.start()

    def stop(self) -> None:
        if self._pool.started:
            self._pool.stop()

    def install(self) -> None:
        """Start with the reactor (and warm up) and stop at its shutdown."""
        self._reactor.callWhenRunning(self._start_and_warm)
        self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def _start_and_warm(self) -> None:
        self.start()
        # The first password check imports SASLprep's tables; do it now, on the pool,
        # so that the first login after start costs what every other one does.
        from mxd.sasl.credentials import saslprep_password

        self(lambda: saslprep_password("warm-up"))

    def __call__(self, f: Callable[[], T]) -> Deferred[T]:
        if self.pending >= self.max_pending:
            return fail(HashingBusy(f"{self.pending} hashing calls waiting"))
        self.pending += 1
        d: Deferred[T] = deferToThreadPool(self._reactor, self._pool, f)

        def done(result: object) -> object:
            self.pending -= 1
            return result

        d.addBoth(done)
        return d
