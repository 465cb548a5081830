"""The worker supervisor (mxd.supervisor), the outcome pipe format (mxd.limitsync) and
the worker's helpers (mxd.worker), on a fake reactor: no processes are started here
(tests/integration/test_workers.py runs real ones)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from mxd import limitsync
from mxd.sasl.ratelimit import AuthLimiter, AuthLimiterSettings
from mxd.supervisor import InheritedSocket, SupervisorSettings, WorkerSupervisor, worker_argv
from mxd.worker import parse_listener, session_sets


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[Any] = []
        self.written: list[tuple[int, bytes]] = []

    def signalProcess(self, sig: Any) -> None:
        self.signals.append(sig)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append((fd, data))


class FakeReactor(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []

    def spawnProcess(self, proto: Any, exe: str, args: list[str], env: Any = None,
                     childFDs: Any = None) -> Any:
        t = FakeTransport(1000 + len(self.spawned))
        proto.transport = t
        proto.makeConnection(t)
        self.spawned.append((proto, args, childFDs))
        return t


def _supervisor(count: int = 2, **kw: Any) -> tuple[FakeReactor, WorkerSupervisor]:
    r = FakeReactor()
    def socks(index: int) -> list[InheritedSocket]:  # each slot its own sockets
        return [InheritedSocket("smtp:25", 6 + index, 2),
                InheritedSocket("imap:143", 16 + index, 10)]

    sup = WorkerSupervisor(r, SupervisorSettings(count=count, **kw), socks,
                           lambda i, owner, s, spares: worker_argv("/etc/mxd.toml", i, owner,
                                                                   s, spares))
    return r, sup


def _exit(proto: Any, reason: Any) -> None:
    proto.processEnded(Failure(reason))


def test_starts_workers_with_sockets_and_pipes() -> None:
    """Each worker gets its index, a lease owner of its own, the outcome pipes on 3/4
    and its slot's sockets from descriptor 5 on, named on its command line."""
    r, sup = _supervisor()
    sup.startService()
    assert sorted(sup.pids()) == [1, 2]
    (p1, args1, fds1), (p2, args2, fds2) = r.spawned
    # Then the other slot's sockets (accepted on only while covering that slot).
    assert fds1 == {1: 1, 2: 2, 3: "r", 4: "w", 5: 7, 6: 17, 7: 8, 8: 18}
    assert fds2 == {1: 1, 2: 2, 3: "r", 4: "w", 5: 8, 6: 18, 7: 7, 8: 17}
    assert args1[args1.index("--index") + 1] == "1"
    assert args1[-8:] == ["--listener", "smtp:25=5:2", "--listener", "imap:143=6:10",
                          "--spare", "2@smtp:25=7:2", "--spare", "2@imap:143=8:10"]
    assert args1[args1.index("--owner") + 1] != args2[args2.index("--owner") + 1]


@pytest.mark.parametrize(("ran", "delays"), [
    (0.1, [0.5, 1.0, 2.0, 4.0, 4.0]),  # quick exits: doubling up to the cap
    (20.0, [0.5, 0.5, 0.5, 0.5, 0.5]),  # each ran long enough: back to the minimum
])
def test_restart_backoff(ran: float, delays: list[float]) -> None:
    r, sup = _supervisor(count=1, backoff_max=4.0, stable_after=10.0)
    lost: list[str] = []
    reaped: list[int] = []
    sup._lost = lost.append
    sup._reaped = reaped.append
    sup.startService()
    seen = []
    for _ in delays:
        r.advance(ran)
        proto = r.spawned[-1][0]
        _exit(proto, ProcessTerminated(signal=signal.SIGKILL))
        assert sup.pids() == {}
        call = r.getDelayedCalls()[0]
        seen.append(round(call.getTime() - r.seconds(), 3))
        r.advance(call.getTime() - r.seconds())
        assert sup.pids() == {1: r.spawned[-1][0].pid}
    assert seen == delays
    assert lost == [p.owner for p, _, _ in r.spawned[:-1]]  # each dead one's leases
    assert reaped == [p.pid for p, _, _ in r.spawned[:-1]]  # and its files


def test_a_restarted_worker_gets_its_slots_sockets_back() -> None:
    """Worker 2 dies: its replacement inherits worker 2's sockets again (whatever was
    queued on them meanwhile is served by it), not worker 1's."""
    r, sup = _supervisor()
    sup.startService()
    _exit(r.spawned[1][0], ProcessTerminated(signal=signal.SIGKILL))
    r.advance(0.5)
    proto, args, fds = r.spawned[-1]
    assert proto.index == 2 and fds[5] == 8 and fds[6] == 18
    assert args[args.index("--index") + 1] == "2"


def _says_serving(proto: Any) -> None:
    proto.childDataReceived(limitsync.EVENTS_OUT_FD, limitsync.encode_control("serving") + b"\n")


def _controls(proto: Any) -> list[tuple[str, int]]:
    out = []
    for fd, data in proto.transport.written:
        assert fd == limitsync.EVENTS_IN_FD
        got = limitsync.decode_control(data.rstrip(b"\n"))
        if got is not None:
            out.append(got)
    return out


def test_a_slot_without_a_serving_worker_is_covered_by_a_serving_one() -> None:
    """Worker 2 dies: worker 1 (serving) is told to cover slot 2 at once, and to stop
    once worker 2's replacement says it serves; a cover that dies hands its slots on;
    nobody covers while nobody serves."""
    r, sup = _supervisor(count=3)
    sup.startService()
    w1, w2, w3 = (p for p, _, _ in r.spawned)
    _says_serving(w1)  # the others have not said so yet: w1 covers them meanwhile
    assert _controls(w1) == [("cover", 2), ("cover", 3)]
    _says_serving(w2)
    _says_serving(w3)
    assert _controls(w1)[2:] == [("uncover", 2), ("uncover", 3)]
    _exit(w2, ProcessTerminated(signal=signal.SIGKILL))
    # The one covering the fewest slots (a tie: the lowest index).
    assert _controls(w1)[4:] == [("cover", 2)] and _controls(w3) == []
    _exit(w1, ProcessTerminated(signal=signal.SIGKILL))  # the cover dies too
    assert _controls(w3) == [("cover", 1), ("cover", 2)]
    r.advance(0.5)
    new2, new1 = (p for p, _, _ in r.spawned[3:])  # in the order they died
    assert (new1.index, new2.index) == (1, 2)
    assert _controls(w3)[2:] == []  # not serving yet: still covered
    _says_serving(new2)
    assert _controls(w3)[2:] == [("uncover", 2)]
    _exit(w3, ProcessTerminated(signal=signal.SIGKILL))
    assert _controls(new2)[-2:] == [("cover", 1), ("cover", 3)]  # new1 does not serve yet


def test_nobody_covers_when_nobody_serves_or_the_server_stops() -> None:
    r, sup = _supervisor(count=2)
    sup.startService()
    w1, w2 = (p for p, _, _ in r.spawned)
    _exit(w2, ProcessTerminated(signal=signal.SIGKILL))
    assert _controls(w1) == []  # w1 has not said it serves
    _says_serving(w1)
    assert _controls(w1) == [("cover", 2)]
    sup.stopService()
    _exit(w1, ProcessDone(0))
    assert _controls(w1) == [("cover", 2)]


def test_stop_releases_the_sockets_before_the_workers_drain() -> None:
    """The main process closes its listening sockets when the drain begins (new
    connections are refused, not queued), before it signals the workers."""
    r, sup = _supervisor()
    at_release: list[list[list[Any]]] = []
    sup._release = lambda: at_release.append([list(p.transport.signals)
                                              for p, _, _ in r.spawned])
    sup.startService()
    sup.stopService()
    assert at_release == [[[], []]]  # once, before any worker was signalled
    assert [p.transport.signals for p, _, _ in r.spawned] == [[signal.SIGTERM]] * 2


def test_stop_drains_then_kills_late_workers() -> None:
    """SIGTERM to every worker; one that has not exited after drain_timeout + grace is
    killed; the stop completes when all have exited, and nothing is restarted."""
    r, sup = _supervisor(drain_timeout=10.0, kill_grace=5.0)
    sup.startService()
    (p1, _, _), (p2, _, _) = r.spawned
    d = sup.stopService()
    assert p1.transport.signals == [signal.SIGTERM] == p2.transport.signals
    _exit(p1, ProcessDone(0))
    r.advance(14.9)
    assert p2.transport.signals == [signal.SIGTERM]
    r.advance(0.2)
    assert p2.transport.signals == [signal.SIGTERM, signal.SIGKILL]
    assert not d.called
    _exit(p2, ProcessTerminated(signal=signal.SIGKILL))
    assert d.called
    assert len(r.spawned) == 2 and r.getDelayedCalls() == []


def test_outcomes_go_to_the_other_workers_and_the_main_process() -> None:
    r, sup = _supervisor(count=3)
    main: list[bytes] = []
    sup.outcome = main.append
    sup.startService()
    p1, p2, p3 = (x[0] for x in r.spawned)
    line = limitsync.encode("failure", "192.0.2.1", "alice")
    p1.childDataReceived(3, line[:10])
    p1.childDataReceived(3, line[10:] + b"\n" + b"not json\n")
    assert p1.transport.written == []
    assert p2.transport.written == p3.transport.written == [(4, line + b"\n")]
    assert main == [line]
    sup.broadcast(line)
    assert p1.transport.written == [(4, line + b"\n")]


@pytest.mark.parametrize(("line", "expected"), [
    (b'{"k":"failure","ip":"192.0.2.1","a":"alice"}', ("failure", "192.0.2.1", "alice")),
    (b'{"k":"success","ip":"2001:db8::1","a":null}', ("success", "2001:db8::1", None)),
    (b'{"k":"delete","ip":"192.0.2.1","a":null}', None),
    (b'{"k":"failure","ip":1,"a":null}', None),
    (b'["failure"]', None),
    (b"{", None),
    (b'{"k":"failure","ip":"' + b"1" * 3000 + b'"}', None),
])
def test_decode(line: bytes, expected: Any) -> None:
    assert limitsync.decode(line) == expected


def test_outcomes_from_another_process_count_here() -> None:
    """Failures reported by another worker block here as if seen here; ``apply`` does
    not echo them back."""
    clock = task.Clock()
    here = AuthLimiter(clock, AuthLimiterSettings(ip_free_failures=2))
    sent: list[tuple[str, str, str | None]] = []
    here.on_outcome = lambda *a: sent.append(a)
    for _ in range(3):
        assert limitsync.apply_line(here, limitsync.encode("failure", "192.0.2.9", None))
    assert sent == []
    assert not here.check("192.0.2.9").allowed
    here.failure("192.0.2.10", "bob")
    assert sent == [("failure", "192.0.2.10", "bob")]


def test_parse_listener() -> None:
    assert parse_listener("smtp:25=5:2") == ("smtp:25", 5, 2)
    assert parse_listener("imap:::1:143=6:10") == ("imap:::1:143", 6, 10)
    for bad in ("smtp", "smtp=5", "smtp=x:2"):
        with pytest.raises(Exception, match="NAME=FD:FAMILY"):
            parse_listener(bad)


def test_session_sets_look_through_tls_wrappers() -> None:
    class F:
        def __init__(self, sessions: set[Any]) -> None:
            self.sessions = sessions

    class Wrapper:
        def __init__(self, inner: Any) -> None:
            self.wrappedFactory = inner

    smtp, imap = {1, 2}, {3}
    sets = session_sets([F(smtp), Wrapper(F(imap)), F(imap), object()])
    assert sorted(map(len, sets)) == [1, 2]
