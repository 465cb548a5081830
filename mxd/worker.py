"""A worker process of ``[server] workers = N`` (started by ``mxd.supervisor``, never by
hand): ``python -m mxd.worker --config PATH --index I --listener NAME=FD:FAMILY ...``.

It reads the same config as the main process, builds the worker's part of the service
tree (``mxd.tap.build_service`` with a worker role: store, directory, SASL, the queue
runner, and the SMTP, submission and IMAP listeners on the inherited sockets) and runs
its own reactor.  Every log line carries ``worker=I``.  Once it serves it says so to the
main process, which may ask it to accept on another slot's sockets for a while (``--spare``,
``Covers``: that slot's worker is down).

SIGTERM drains: the worker logs how many connections it accepted on each listener
(``accepted N connection(s) since the start: NAME=N ...``), the listeners stop accepting
at once (in a full shutdown the main process has closed its copies of the sockets, so
new connections are refused); SMTP sessions between transactions get
``421 4.3.2`` (RFC 5321 §3.8) and IMAP sessions without a running command get ``BYE``
(RFC 9051 §7.1.5) as soon as they are idle; after ``drain_timeout`` seconds whatever is
left is closed and the process exits.  The worker is killed when its main process dies
(it would otherwise keep serving on sockets nobody supervises, see ``die_with_parent``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner

log = Logger(namespace="mxd.worker")

DRAIN_POLL = 0.1  # seconds between looks at the sessions left while draining
CLOSE_GRACE = 2.0  # seconds for told sessions' clients to close before the exit


def parse_listener(text: str) -> tuple[str, int, int]:
    """``NAME=FD:FAMILY`` -> (name, fd, family)."""
    name, sep, rest = text.rpartition("=")
    fd, sep2, family = rest.partition(":")
    if not sep or not sep2 or not fd.isdigit() or not family.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=FD:FAMILY, got {text!r}")
    return name, int(fd), int(family)


def parse_spare(text: str) -> tuple[int, str, int, int]:
    """``SLOT@NAME=FD:FAMILY`` -> (slot, name, fd, family): another slot's socket."""
    slot, sep, rest = text.partition("@")
    if not sep or not slot.isdigit():
        raise argparse.ArgumentTypeError(f"expected SLOT@NAME=FD:FAMILY, got {text!r}")
    return (int(slot), *parse_listener(rest))


class Covers:
    """The other slots' sockets this worker inherited, and accepting on them while the
    main process asks (``cover``/``uncover`` of a slot whose worker does not serve, see
    mxd.supervisor): each as an ``AdoptedListener`` named ``NAME@SLOT`` among the
    process's listeners, on a duplicate of the descriptor (stopping it closes only that)."""

    def __init__(self, reactor: Any, top: Any, index: int,
                 spares: Iterable[tuple[int, str, int, int]]) -> None:
        self._reactor = reactor
        self._top = top
        self._index = index
        self.spares: dict[int, list[tuple[str, int, int]]] = {}
        for slot, name, fd, family in spares:
            self.spares.setdefault(slot, []).append((name, fd, family))
        self.draining = False

    def drain(self) -> None:
        """Cover nothing from now on, and close the inherited descriptors: while this
        worker kept them open, the other slots' sockets went on listening after the
        main process and their own workers closed theirs, so connections made during
        a full shutdown's drain waited in their queues instead of being refused."""
        self.draining = True
        for entries in self.spares.values():
            for _, fd, _ in entries:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.spares = {}

    def control(self, kind: str, slot: int) -> None:
        from mxd.listeners import AdoptedListener

        accepted = 0
        for name, fd, family in self.spares.get(slot, []):
            key = f"{name}@{slot}"
            current = self._top.listeners.get(key)
            if kind == "cover" and current is None and not self.draining:
                own = self._top.listeners.get(name)
                if own is None:
                    continue
                li = AdoptedListener(self._reactor, key, os.dup(fd), family, own.factory,
                                     self._top.metrics, worker=self._index)
                li.setServiceParent(self._top)  # starts it: the parent runs
                self._top.listeners[key] = li
            elif kind == "uncover" and current is not None:
                del self._top.listeners[key]
                current.disownServiceParent()  # stops listening on the duplicate
                accepted += current.accepted
        if kind == "cover" and self.spares.get(slot):
            log.info("covering slot {slot}", slot=slot)
        elif kind == "uncover" and self.spares.get(slot):
            log.info("no longer covering slot {slot} (accepted {n} connection(s) on its "
                     "sockets)", slot=slot, n=accepted)


def session_sets(factories: Iterable[Any]) -> list[set[Any]]:
    """The distinct sets of open sessions behind listener factories (a TLS wrapper's
    wrapped factory; the IMAP listeners of one process share one set)."""
    out: dict[int, set[Any]] = {}
    for f in factories:
        while getattr(f, "sessions", None) is None and hasattr(f, "wrappedFactory"):
            f = f.wrappedFactory
        sessions = getattr(f, "sessions", None)
        if isinstance(sessions, set):
            out[id(sessions)] = sessions
    return list(out.values())


def accepted_counts(listeners: Iterable[Any]) -> dict[str, Any]:
    """How many connections this process accepted, in all (``total``) and per listener
    (``by_listener``: ``name=N`` words), for the line logged when the drain begins: how
    the kernel spread connections over the workers (``mxd.listeners.HandedDownSocket``)."""
    counts = {li.name: li.accepted for li in listeners if hasattr(li, "accepted")}
    return {"total": sum(counts.values()),
            "by_listener": " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"}


class Drain:
    """Stop accepting, close sessions as they become idle, give up after ``timeout``."""

    def __init__(self, reactor: Any, top: Any, timeout: float) -> None:
        self._reactor = reactor
        self._top = top
        self._timeout = timeout
        self.done: defer.Deferred[None] | None = None

    def start(self) -> defer.Deferred[None]:
        if self.done is not None:
            return self.done
        self.done = defer.Deferred()
        listeners = list(self._top.listeners.values())
        sets = session_sets(li.factory for li in listeners)
        left = sum(len(s) for s in sets)
        log.info("draining: no longer accepting; {n} session(s) open", n=left)
        log.info("accepted {total} connection(s) since the start: {by_listener}",
                 **accepted_counts(listeners))
        for li in listeners:
            li.stopService()
        deadline = self._reactor.seconds() + self._timeout

        closed_at: list[float] = []

        def look() -> None:
            busy = left = 0
            for sessions in sets:
                for s in list(sessions):
                    shutdown = getattr(s, "shutdown_when_idle", None)
                    if shutdown is None or not shutdown():
                        busy += 1
                left += len(sessions)
            now = self._reactor.seconds()
            if busy == 0 and not closed_at:
                closed_at.append(now)
            # Every session has been told (421/BYE): a moment for that to reach the
            # clients and for them to close, then go.
            told = bool(closed_at) and (left == 0 or now - closed_at[0] >= CLOSE_GRACE)
            if told or now >= deadline:
                if busy and now >= deadline:
                    log.warn("drain timeout: closing {n} session(s)", n=busy)
                loop.stop()

        loop = task.LoopingCall(look)
        loop.clock = self._reactor
        done = self.done

        def finished(_: object) -> None:
            done.callback(None)

        loop.start(DRAIN_POLL, now=True).addBoth(finished)
        return done


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the main process dies.  Its sockets must not
    outlive it (a restarted server could not bind them), and what a killed worker had in
    flight is recovered as after any crash.  Elsewhere the once-a-second look at the
    parent pid below ends the worker instead."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def affinity_cpu(mode: str, index: int, workers: int,
                 usable: Iterable[int] | None = None) -> int | None:
    """The CPU core worker ``index`` (1-based) of ``workers`` is to run on, or None (the
    scheduler decides): ``[server] cpu_affinity = "auto"`` gives each of several workers a
    core of its own when there are at least as many usable cores as workers."""
    if mode != "auto" or workers < 2 or not 1 <= index <= workers:
        return None
    if usable is None:
        try:
            usable = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return None
    cores = sorted(usable)
    if len(cores) < workers:
        return None
    return cores[index - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mxd.worker")
    p.add_argument("--config", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--owner", default=None, help="the name on this worker's queue leases")
    p.add_argument("--parent", type=int, default=None, help="the main process's pid")
    p.add_argument("--listener", type=parse_listener, action="append", default=[])
    p.add_argument("--spare", type=parse_spare, action="append", default=[],
                   help="another slot's socket, accepted on while covering that slot")
    args = p.parse_args(argv)

    from twisted.internet import reactor as _reactor

    from mxd import log as mxdlog
    from mxd.config import ConfigError, load_config
    from mxd.tap import ProcessRole, build_service

    reactor: Any = _reactor
    mxdlog.PROCESS_FIELDS["worker"] = args.index
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"mxd worker {args.index}: {e}", file=sys.stderr, flush=True)
        return 2
    # Before any thread starts: threads inherit the CPU set of the thread that makes them.
    cpu = affinity_cpu(cfg.server.cpu_affinity, args.index, cfg.server.worker_count())
    pinned: str | None = None
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            pinned = str(cpu)
        except OSError as e:
            pinned = f"not pinned ({e})"
    level, fmt = mxdlog.with_env(cfg.log.level, cfg.log.format)
    globalLogBeginner.beginLoggingTo(
        [mxdlog.make_observer(level, fmt, cfg.log.levels, sys.stdout)],
        redirectStandardIO=False, discardBuffer=True)
    if pinned is not None:
        log.info("worker {worker} on CPU {cpu}", worker=args.index, cpu=pinned)
    role = ProcessRole(kind="worker", index=args.index,
                       inherited={name: (fd, fam) for name, fd, fam in args.listener},
                       lease_owner=args.owner or f"worker-{args.index}-{os.getpid()}")
    parent = args.parent if args.parent is not None else os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # gone before the line above took effect
        return 1
    status = {"code": 0}
    top: Any = None
    drain: Drain | None = None
    covers: Covers | None = None

    def stop_reactor() -> None:
        if reactor.running:
            reactor.stop()

    def begin_drain(reason: str) -> None:
        nonlocal drain
        if drain is not None:
            return
        log.info("stopping ({reason})", reason=reason)
        if covers is not None:
            covers.drain()
        if top is None:
            stop_reactor()
            return
        drain = Drain(reactor, top, cfg.server.drain_timeout)
        drain.start().addBoth(lambda _: stop_reactor())

    def on_sigterm(*_: Any) -> None:
        reactor.callFromThread(begin_drain, "SIGTERM")

    def check_parent() -> None:
        if os.getppid() != parent:
            begin_drain("the main process is gone")

    def start() -> None:
        nonlocal top, covers
        try:
            top = build_service(cfg, reactor, role=role)
            top.privilegedStartService()
            top.startService()
        except Exception as e:  # noqa: BLE001 - reported, then the worker exits 1
            log.error("worker {worker} cannot start: {error}", worker=args.index, error=str(e))
            status["code"] = 1
            stop_reactor()
            return
        covers = Covers(reactor, top, args.index, args.spare)
        sasl = top.components.get("sasl")
        from mxd.limitsync import connect_worker

        link = connect_worker(sasl.limiter if sasl is not None else None, reactor,
                              covers.control)
        link.send_control("serving")
        reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
        watch = task.LoopingCall(check_parent)
        watch.clock = reactor
        watch.start(1.0, now=False)
        log.info("worker {worker} serving {n} listener(s)", worker=args.index,
                 n=len(top.listeners))

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process too
    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
