"""mxd.listeners: the main process's per-worker listening sockets (SO_REUSEPORT) and the
worker's count of what it accepted, with real sockets on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol

from mxd.listeners import AdoptedListener, HandedDownSocket, ListenError, _CountingFactory


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def handed() -> Iterator[list[HandedDownSocket]]:
    made: list[HandedDownSocket] = []
    yield made
    for h in made:
        h.close()


def _bound(made: list[HandedDownSocket], address: str, slots: int,
           port: int = 0) -> HandedDownSocket:
    h = HandedDownSocket("imaps#0", address, port, slots=slots)
    made.append(h)
    h.privilegedStartService()
    return h


def _accepted_per_socket(h: HandedDownSocket, connections: int) -> list[int]:
    """Open ``connections`` connections one after another; how many each socket got."""
    clients = [socket.create_connection((h.address, h.port), timeout=5)
               for _ in range(connections)]
    counts = []
    for s in h.socks:
        n = 0
        while True:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                break
            conn.close()
            n += 1
        counts.append(n)
    for c in clients:
        c.close()
    return counts


@pytest.mark.parametrize("address", [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")),
])
def test_one_socket_per_slot_on_one_port_sharing_connections(
        handed: list[HandedDownSocket], address: str) -> None:
    """Port 0: the first socket's port is taken by the others; every socket has
    SO_REUSEPORT; 40 connections made one after another reach every socket (the kernel
    hashes each to one: all 40 on one socket has odds of 2 in 2**40)."""
    h = _bound(handed, address, slots=2)
    assert len(h.socks) == 2
    assert {s.getsockname()[1] for s in h.socks} == {h.port} and h.port != 0
    assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in h.socks)
    assert h.fileno(0) != h.fileno(1)
    counts = _accepted_per_socket(h, 40)
    assert sum(counts) == 40 and min(counts) >= 1, counts


def test_one_slot_is_one_plain_socket(handed: list[HandedDownSocket]) -> None:
    """workers = 1 never gets here, but one slot stays today's single socket."""
    h = _bound(handed, "127.0.0.1", slots=1)
    [s] = h.socks
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    assert _accepted_per_socket(h, 3) == [3]


def test_a_port_held_by_another_reuseport_listener_is_refused(
        handed: list[HandedDownSocket]) -> None:
    """Another program's SO_REUSEPORT listener on the port: start-up fails with a
    clear error instead of silently sharing the port's connections with it."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        with pytest.raises(ListenError, match=rf"imaps#0 on 127.0.0.1 port {port}: "):
            _bound(handed, "127.0.0.1", slots=2, port=port)
        assert handed[0].socks == []


def test_close_refuses_new_connections(handed: list[HandedDownSocket]) -> None:
    h = _bound(handed, "127.0.0.1", slots=2)
    port = h.port
    h.close()
    assert h.socks == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_counting_factory_counts_each_accepted_connection() -> None:
    """``buildProtocol`` (once per accepted connection) counts; the rest is the
    wrapped factory's."""
    inner = Factory.forProtocol(Protocol)
    seen: list[int] = []
    f = _CountingFactory(inner, lambda: seen.append(1))
    assert isinstance(f.buildProtocol(None), Protocol)
    assert isinstance(f.buildProtocol(None), Protocol)
    assert len(seen) == 2
    assert f.protocol is Protocol  # delegated
    assert f.logPrefix() == "Factory"


class _Metrics:
    def __init__(self) -> None:
        self.incs: list[tuple[str, dict[str, Any]]] = []

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.incs.append((name, labels))


def test_adopted_listener_counts_per_worker(handed: list[HandedDownSocket]) -> None:
    """A worker's listener on an inherited socket counts what it accepts, also as a
    metric labelled with the listener and the worker (seen on a real reactor)."""
    from twisted.internet import reactor

    h = _bound(handed, "127.0.0.1", slots=2)
    m = _Metrics()
    li = AdoptedListener(reactor, "imaps#0", os.dup(h.fileno(1)), socket.AF_INET,
                         Factory.forProtocol(Protocol), m, worker=2)
    li.privilegedStartService()
    try:
        p = li.listening.factory
        p.buildProtocol(None)
        assert li.accepted == 1
        assert m.incs == [("worker_connections_accepted",
                           {"listener": "imaps#0", "worker": "2"})]
        assert li.port == h.port
    finally:
        li.stopService()


def test_parse_spare() -> None:
    from mxd.worker import parse_spare

    assert parse_spare("2@imaps:993=7:10") == (2, "imaps:993", 7, 10)
    with pytest.raises(Exception, match="SLOT@NAME"):
        parse_spare("imaps:993=7:10")


def test_covering_another_slot_accepts_on_a_duplicate_of_its_socket(
        handed: list[HandedDownSocket]) -> None:
    """``cover`` adds a listener on another slot's inherited socket (a duplicate), which
    ``uncover`` stops again while the inherited descriptor stays open for the next time;
    nothing is covered once the worker drains."""
    from twisted.application import service
    from twisted.internet import reactor

    from mxd.worker import Covers

    h = _bound(handed, "127.0.0.1", slots=2)
    top: Any = service.MultiService()
    top.metrics = _Metrics()
    own = AdoptedListener(reactor, "imaps#0", os.dup(h.fileno(0)), socket.AF_INET,
                          Factory.forProtocol(Protocol), top.metrics, worker=1)
    own.setServiceParent(top)
    top.listeners = {"imaps#0": own}
    top.privilegedStartService()
    top.startService()
    spare_fd = os.dup(h.fileno(1))
    try:
        covers = Covers(reactor, top, 1, [(2, "imaps#0", spare_fd, socket.AF_INET)])
        covers.control("cover", 2)
        li = top.listeners["imaps#0@2"]
        assert li.running and li.port == h.port and li.factory is own.factory
        covers.control("cover", 2)  # again: nothing more
        assert sorted(top.listeners) == ["imaps#0", "imaps#0@2"]
        covers.control("uncover", 2)
        assert sorted(top.listeners) == ["imaps#0"] and not li.running
        os.fstat(spare_fd)  # still open
        covers.draining = True
        covers.control("cover", 2)
        assert sorted(top.listeners) == ["imaps#0"]
    finally:
        top.stopService()
        os.close(spare_fd)
