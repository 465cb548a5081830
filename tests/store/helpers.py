"""Running a real SQLiteStore in tests without running the reactor.

Two ways, both deterministic:

* **threaded** (the default, as in production): the store keeps its writer thread; its
  results come back through ``ThreadCalls.callFromThread`` into a queue, and
  ``harness.run(d)`` pumps that queue until ``d`` has fired (bounded by a timeout).
  ``harness.settle()`` pumps until the store is idle, for code that fires store calls
  itself (a protocol under StringTransport) and does not hand you the Deferred.
* **inline** (``open_store(..., inline=True)``): the "thread pool" runs work immediately
  in the calling thread and ``callFromThread`` calls at once, so every store Deferred has
  already fired when the call returns.  Handy with StringTransport/task.Clock protocol
  tests: the SMTP 250 after DATA is in the transport right after ``dataReceived``.

Usage::

    from tests.store.helpers import open_store

    def test_x(data_dir):
        h = open_store(data_dir)            # or inline=True; pass clock=task.Clock()
        try:
            acct = h.run(h.store.add_account("alice", "{}", ["alice@example.test"]))
            ...
        finally:
            h.close()

or the ``store`` fixture of tests/store/conftest.py (import it into your conftest with
``from tests.store.conftest import store  # noqa: F401``).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mxd.store.sqlite import SQLiteStore, StoreSettings

T = TypeVar("T")


class ThreadCalls:
    """A minimal IReactorFromThreads (+ ``seconds``) whose calls wait in a queue."""

    def __init__(self, clock: Any = None) -> None:
        self._q: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = queue.Queue()
        self._clock = clock

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self._q.put((f, args, kw))

    def seconds(self) -> float:
        return float(self._clock.seconds()) if self._clock is not None else time.time()

    def pump_once(self, timeout: float) -> bool:
        """Run one queued call, waiting up to ``timeout``; False if none came."""
        try:
            f, args, kw = self._q.get(timeout=timeout)
        except queue.Empty:
            return False
        f(*args, **kw)
        return True


class InlineReactor(ThreadCalls):
    """callFromThread runs the call at once (use with InlinePool)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class InlinePool:
    """A stand-in for ThreadPool(1, 1) that runs each call in the calling thread."""

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any, **kw: Any,
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            onResult(False, Failure())
            return
        onResult(True, result)


def result_of(d: Deferred[T]) -> tuple[bool, Any]:
    """(fired, result-or-Failure) of a Deferred, without consuming its result."""
    box: list[Any] = []

    def grab(r: Any) -> Any:
        box.append(r)
        return r

    d.addBoth(grab)
    if not box:
        return False, None
    return True, box[0]


class StoreHarness:
    """A store plus the means to wait for its Deferreds; see the module docstring."""

    def __init__(self, store: SQLiteStore, calls: ThreadCalls, inline: bool) -> None:
        self.store = store
        self.calls = calls
        self.inline = inline

    def run(self, d: Deferred[T], timeout: float = 10.0) -> T:
        """Wait for ``d`` (pumping the store's results); return its result or raise."""
        box: list[Any] = []

        def grab(r: Any) -> None:
            box.append(r)

        d.addBoth(grab)
        deadline = time.monotonic() + timeout
        while not box:
            if self.inline:
                raise AssertionError("inline store Deferred did not fire at once")
            if time.monotonic() > deadline:
                raise AssertionError(f"store Deferred did not fire within {timeout}s")
            self.calls.pump_once(0.05)
        r = box[0]
        if isinstance(r, Failure):
            r.raiseException()
        return r  # type: ignore[no-any-return]

    def fail(self, d: Deferred[Any], timeout: float = 10.0) -> BaseException:
        """Wait for ``d`` and return the exception it failed with (AssertionError if it
        succeeded)."""
        try:
            value = self.run(d, timeout)
        except AssertionError:
            raise
        except BaseException as e:
            return e
        raise AssertionError(f"expected a failure, got {value!r}")

    def settle(self, timeout: float = 10.0) -> None:
        """Pump until the store has no queued or running work."""
        deadline = time.monotonic() + timeout
        while not self.store.idle:
            if time.monotonic() > deadline:
                raise AssertionError(f"store still busy after {timeout}s")
            self.calls.pump_once(0.05)
        while self.calls.pump_once(0):
            pass

    def close(self) -> None:
        self.run(self.store.close())

    def reopen(self, **kw: Any) -> StoreHarness:
        """Close this store and open a new one on the same data directory."""
        self.close()
        return open_store(self.store.data_dir, inline=self.inline, **kw)

    def body_files(self) -> list[Path]:
        """The body files under blobs/, leaving out the store's pre-created, unused ones
        (its file pool: empty files that belong to no message yet)."""
        pooled = self.store._files.pooled_ids()
        return sorted(p for p in (self.store.data_dir / "blobs").rglob("*")
                      if p.is_file() and p.name not in pooled)

    def deliver_bytes(self, body: bytes, targets: Any, props: Any = None) -> list[int]:
        """Write ``body`` to a new blob and deliver it (a shortcut for tests)."""
        from mxd.store.interfaces import MessageProps

        w = self.store.new_blob()
        w.write(body)
        return self.run(self.store.deliver(w, targets, props or MessageProps()))


def open_store(
    data_dir: Path, *, inline: bool = False, settings: StoreSettings = StoreSettings(),
    schemas: dict[str, list[str]] | None = None, clock: Any = None,
) -> StoreHarness:
    """Open a SQLiteStore on ``data_dir``; ``schemas`` are registered before open.  A
    built-in component named there ("queue") gets those steps instead, as an older mxd
    had them (upgrade tests)."""
    calls: ThreadCalls = InlineReactor(clock) if inline else ThreadCalls(clock)
    store = SQLiteStore(data_dir, calls, settings=settings,  # type: ignore[arg-type]
                        threadpool=InlinePool() if inline else None)
    for name, steps in (schemas or {}).items():
        if name in store._schemas:
            store._schemas[name] = list(steps)
        else:
            store.register_schema(name, steps)
    h = StoreHarness(store, calls, inline)
    h.run(store.open())
    return h


def open_pg_store(
    dsn: str, blob_dir: Path, *, inline: bool = False,
    settings: StoreSettings = StoreSettings(), listen: bool = False, clock: Any = None,
) -> StoreHarness:
    """Open a PostgresStore on database ``dsn`` with bodies under ``blob_dir`` (created);
    ``inline`` runs its operations in the calling thread (Deferreds fire at once)."""
    from mxd.store.postgres import PostgresSettings, PostgresStore

    blob_dir.mkdir(parents=True, exist_ok=True)
    calls: ThreadCalls = InlineReactor(clock) if inline else ThreadCalls(clock)
    store = PostgresStore(dsn, blob_dir, calls, settings=settings,  # type: ignore[arg-type]
                          pg=PostgresSettings(pool_size=4, listen=listen, connect_timeout=2.0),
                          threadpool=InlinePool() if inline else None)
    h = StoreHarness(store, calls, inline)
    h.run(store.open())
    return h
