"""The main process's side of ``[server] workers = N``: start N worker processes on the
listening sockets it bound, start again a worker that exits, and drain them at shutdown.

The main process (``twistd mxd``) binds every listener in ``privilegedStartService``,
before twistd drops privileges, and never accepts on the sockets served by workers: one
socket per listener and worker slot, joined with ``SO_REUSEPORT``
(``mxd.listeners.HandedDownSocket``).  Worker ``I`` (``python -m mxd.worker``, see
``mxd.worker``) inherits slot ``I``'s sockets as descriptors 5, 6, ... and accepts on
them with ``adoptStreamPort``; the kernel hashes each new connection to one socket, so
to one worker, and wakes only that one.  A restarted worker gets its slot's sockets
back (the main process keeps them open): what was queued on them meanwhile is served
then.  Workers inherit the main process's stdout and stderr, so their log lines (each
carrying ``worker=N``) go where the main process's go.

* Every worker also inherits the other slots' sockets, without accepting on them.  While
  a slot has no worker that serves (its worker died, and the replacement has not said
  ``serving`` yet), the main process tells one serving worker to ``cover`` it: that
  worker accepts on the slot's sockets too, so connections the kernel hashes to them
  are served at once instead of waiting for the restart; ``uncover`` when the slot's
  own worker serves again.  Each slot is covered by at most one worker, the one that
  covers the fewest slots (mxd.limitsync control lines on the outcome pipes).

* A worker that exits while the server runs is started again after a back-off that
  doubles with each exit that came soon after a start (``backoff_min`` up to
  ``backoff_max``) and falls back to ``backoff_min`` once a worker has run for
  ``stable_after`` seconds.  The dead worker's clients reconnect; the other workers keep
  accepting meanwhile, so nobody waits for the restart.
* ``stopService`` (SIGTERM to twistd) first calls ``release`` (the main process closes
  its copies of the listening sockets, so that connections made during the drain are
  refused at once instead of waiting in a queue nobody accepts from), then sends SIGTERM
  to every worker: each stops accepting, lets its sessions finish for up to ``drain_timeout`` seconds and exits.
  A worker still alive ``kill_grace`` seconds after that is killed.
* When a worker exits while the server runs, ``lost`` gets its lease owner (its queue
  recipients are due again) and ``reaped`` its pid (the files it was writing are
  removed: mxd.store.blobs ``clean_dead``), before it is started again.
* Authentication outcomes a worker reports (mxd.limitsync) go to every other worker and
  to ``outcome`` (the main process's own limiter); ``broadcast`` sends one to all.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxd import limitsync

log = Logger(namespace="mxd.supervisor")

# A worker's descriptors: 1 and 2 are the main process's; 3 and 4 carry authentication
# outcomes (mxd.limitsync); the listening sockets follow.
FIRST_INHERITED_FD = 5


@attrs.frozen
class SupervisorSettings:
    count: int
    drain_timeout: float = 30.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 10.0  # a worker that ran this long resets the back-off
    kill_grace: float = 5.0


@attrs.frozen
class InheritedSocket:
    """One listening socket as a worker receives it."""

    name: str
    fileno: int  # in the main process
    family: int


def worker_argv(config_path: str, index: int, owner: str,
                sockets: Sequence[InheritedSocket],
                spares: Sequence[tuple[int, InheritedSocket]] = ()) -> list[str]:
    """The command line of worker ``index``: its sockets are descriptors 5, 6, ...,
    the other slots' (``spares``: (slot, socket)) follow; ``owner`` names its queue
    leases."""
    argv = [sys.executable, "-m", "mxd.worker", "--config", config_path, "--index", str(index),
            "--owner", owner, "--parent", str(os.getpid())]
    for k, s in enumerate(sockets):
        argv += ["--listener", f"{s.name}={FIRST_INHERITED_FD + k}:{s.family}"]
    for k, (slot, s) in enumerate(spares, len(sockets)):
        argv += ["--spare", f"{slot}@{s.name}={FIRST_INHERITED_FD + k}:{s.family}"]
    return argv


class _WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int, owner: str,
                 started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.owner = owner
        self.started = started
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None
        self.serving = False  # it said so: it accepts on its sockets
        self.splitter = limitsync.LineSplitter(lambda line: supervisor._outcome(self, line))

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == limitsync.EVENTS_OUT_FD:
            self.splitter.feed(data)

    def send(self, line: bytes) -> None:
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.writeToChild(limitsync.EVENTS_IN_FD, line + b"\n")
            except (KeyError, OSError):  # the pipe is gone: the worker is ending
                pass

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(service.Service):
    """Runs ``settings.count`` worker processes on ``sockets`` (see the module doc)."""

    name = "workers"

    def __init__(self, reactor: Any, settings: SupervisorSettings,
                 sockets: Callable[[int], Sequence[InheritedSocket]],
                 argv: Callable[[int, str, Sequence[InheritedSocket],
                                 Sequence[tuple[int, InheritedSocket]]], list[str]],
                 env: dict[str, str] | None = None,
                 ready: Callable[[], Deferred[Any] | None] | None = None,
                 lost: Callable[[str], None] | None = None,
                 reaped: Callable[[int], None] | None = None,
                 release: Callable[[], None] | None = None) -> None:
        self._reactor = reactor
        self._ready = ready  # workers start once this fires (the store is open)
        self._lost = lost  # called with the lease owner of a worker that exited
        self._reaped = reaped  # called with the pid of a worker that exited (and is reaped)
        self._release = release  # called when the drain begins: close the listening sockets
        self.outcome: Callable[[bytes], None] | None = None  # the main process's limiter
        self.settings = settings
        self._sockets = sockets  # worker index -> its sockets; bound when called
        self._argv = argv
        self._env = env
        self.workers: dict[int, _WorkerProcess] = {}
        self._covers: dict[int, _WorkerProcess] = {}  # slot -> the worker covering it
        self._backoff: dict[int, float] = {}
        self._timers: dict[int, Any] = {}
        self._stopping = False
        self.restarts = 0  # for tests and the admin status

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        d = self._ready() if self._ready is not None else None
        if d is None:
            self._spawn_all()
            return

        def go(_: object) -> None:
            self._spawn_all()

        def failed(f: Failure) -> None:
            log.error("workers not started: {error}", error=f.getErrorMessage())

        d.addCallbacks(go, failed)

    def _spawn_all(self) -> None:
        for index in range(1, self.settings.count + 1):
            self._spawn(index)

    def pids(self) -> dict[int, int]:
        """Worker index -> process id of the workers running now."""
        return {i: w.pid for i, w in self.workers.items() if w.pid is not None}

    def _spawn(self, index: int) -> None:
        self._timers.pop(index, None)
        if self._stopping:
            return
        sockets = list(self._sockets(index))
        spares = [(slot, s) for slot in range(1, self.settings.count + 1) if slot != index
                  for s in self._sockets(slot)]
        child_fds: dict[int, Any] = {1: 1, 2: 2, limitsync.EVENTS_OUT_FD: "r",
                                     limitsync.EVENTS_IN_FD: "w"}
        for k, s in enumerate([*sockets, *(s for _, s in spares)]):
            child_fds[FIRST_INHERITED_FD + k] = s.fileno
        # A fresh name for each start: leases of a dead worker are never mistaken for
        # those of the worker started in its place.
        owner = f"worker-{index}-{os.getpid()}-{os.urandom(4).hex()}"
        proto = _WorkerProcess(self, index, owner, self._reactor.seconds())
        env = dict(os.environ if self._env is None else self._env)
        try:
            self._reactor.spawnProcess(proto, sys.executable,
                                       self._argv(index, owner, sockets, spares),
                                       env=env, childFDs=child_fds)
        except OSError as e:
            log.error("cannot start worker {worker}: {error}", worker=index, error=str(e))
            self._schedule(index)
            return
        self.workers[index] = proto
        log.info("worker {worker} started as pid {pid}", worker=index, pid=proto.pid)

    def _outcome(self, source: _WorkerProcess, line: bytes) -> None:
        control = limitsync.decode_control(line)
        if control is not None:
            if control[0] == "serving" and not source.serving:
                source.serving = True
                self._arrange_covers()
            return
        if limitsync.decode(line) is None:
            log.warn("worker {worker} sent a malformed line; dropped", worker=source.index)
            return
        for w in list(self.workers.values()):
            if w is not source:
                w.send(line)
        if self.outcome is not None:
            self.outcome(line)

    def broadcast(self, line: bytes) -> None:
        """Send an outcome the main process saw to every worker."""
        for w in list(self.workers.values()):
            w.send(line)

    def _ended(self, proto: _WorkerProcess, reason: Failure) -> None:
        if proto.pid is not None:
            from mxd.metrics import process_ended

            process_ended(proto.pid)
        if self.workers.get(proto.index) is proto:
            del self.workers[proto.index]
        for slot in [k for k, w in self._covers.items() if w is proto]:
            del self._covers[slot]
        if not self._stopping:
            self._arrange_covers()
        how = ("exited normally" if isinstance(reason.value, ProcessDone)
               else reason.getErrorMessage())
        if self._lost is not None and not self._stopping:
            try:
                self._lost(proto.owner)
            except Exception:  # noqa: BLE001 - the restart must happen regardless
                log.failure("handling the exit of worker {worker} failed", worker=proto.index)
        if self._reaped is not None and not self._stopping and proto.pid is not None:
            try:  # its files in the store's tmp/ and pool (mxd.store.blobs.clean_dead)
                self._reaped(proto.pid)
            except Exception:  # noqa: BLE001 - the restart must happen regardless
                log.failure("cleaning up after worker {worker} failed", worker=proto.index)
        if self._stopping:
            log.info("worker {worker} (pid {pid}) stopped: {how}", worker=proto.index,
                     pid=proto.pid, how=how)
            return
        ran = self._reactor.seconds() - proto.started
        if ran >= self.settings.stable_after:
            self._backoff[proto.index] = self.settings.backoff_min
        delay = self._backoff.get(proto.index, self.settings.backoff_min)
        self._backoff[proto.index] = min(self.settings.backoff_max, delay * 2)
        log.warn("worker {worker} (pid {pid}) {how} after {ran:.1f}s; starting it again in "
                 "{delay:.1f}s", worker=proto.index, pid=proto.pid, how=how, ran=ran,
                 delay=delay)
        self._schedule(proto.index, delay)

    def _arrange_covers(self) -> None:
        """Each slot without a serving worker covered by one serving worker (the one
        covering the fewest slots), each slot with one uncovered."""
        if self._stopping or self.settings.count < 2:
            return
        for slot in range(1, self.settings.count + 1):
            own = self.workers.get(slot)
            cover = self._covers.get(slot)
            if own is not None and own.serving:
                if cover is not None:
                    del self._covers[slot]
                    cover.send(limitsync.encode_control("uncover", slot))
                    log.info("worker {worker} no longer covers slot {slot}",
                             worker=cover.index, slot=slot)
                continue
            if cover is not None:
                continue
            load = {w.index: 0 for w in self.workers.values() if w.serving}
            for w in self._covers.values():
                load[w.index] = load.get(w.index, 0) + 1
            if not load:
                return  # nobody serves: connections wait in the queues
            index = min((n, i) for i, n in load.items())[1]
            self._covers[slot] = self.workers[index]
            self.workers[index].send(limitsync.encode_control("cover", slot))
            log.info("worker {worker} covers slot {slot} (its worker does not serve)",
                     worker=index, slot=slot)

    def _schedule(self, index: int, delay: float | None = None) -> None:
        if delay is None:
            delay = self._backoff.get(index, self.settings.backoff_min)
            self._backoff[index] = min(self.settings.backoff_max, delay * 2)
        self.restarts += 1
        self._timers[index] = self._reactor.callLater(delay, self._spawn, index)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        for t in self._timers.values():
            if t.active():
                t.cancel()
        self._timers.clear()
        if self._release is not None:
            self._release()
        live = list(self.workers.values())
        if not live:
            return succeed(None)
        log.info("draining {n} worker(s) for up to {timeout:.0f}s", n=len(live),
                 timeout=self.settings.drain_timeout)
        for w in live:
            self._signal(w, signal.SIGTERM)

        def kill_late() -> None:
            for w in live:
                if not w.ended.called:
                    log.warn("worker {worker} (pid {pid}) did not stop; killing it",
                             worker=w.index, pid=w.pid)
                    self._signal(w, signal.SIGKILL)

        timer = self._reactor.callLater(self.settings.drain_timeout + self.settings.kill_grace,
                                        kill_late)
        done: Deferred[Any] = DeferredList([w.ended for w in live])

        def cancel(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(cancel)

    @staticmethod
    def _signal(w: _WorkerProcess, sig: int) -> None:
        try:
            w.transport.signalProcess(sig)  # type: ignore[union-attr]
        except (ProcessExitedAlready, OSError):
            pass


__all__ = ["InheritedSocket", "SupervisorSettings", "WorkerSupervisor", "worker_argv"]
