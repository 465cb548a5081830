"""The admin listener's bounds: a connection cap and a hard per-connection deadline."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mxd.admin.web import BoundedFactory


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def _connect(f: BoundedFactory, port: int) -> tuple[object, _AbortableTransport]:
    p = f.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    t = _AbortableTransport()
    if p is not None:
        p.makeConnection(t)
    return p, t


def test_deadline_closes_even_a_busy_connection() -> None:
    """Bytes trickling in do not keep an admin connection open past its lifetime."""
    clock = Clock()
    f = BoundedFactory(Factory.forProtocol(_Echo), clock, lifetime=60.0)
    p, t = _connect(f, 1)
    for _ in range(5):
        clock.advance(10)
        p.dataReceived(b"x")  # type: ignore[attr-defined]
    assert not t.aborted
    clock.advance(11)
    assert t.aborted


def test_connection_cap() -> None:
    """Beyond max_connections new connections are refused; a closed one frees its slot."""
    clock = Clock()
    f = BoundedFactory(Factory.forProtocol(_Echo), clock, max_connections=2)
    first, _ = _connect(f, 1)
    _connect(f, 2)
    assert _connect(f, 3)[0] is None
    first.connectionLost(None)  # type: ignore[attr-defined]
    assert _connect(f, 4)[0] is not None
