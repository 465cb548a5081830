"""send_now: SMTP replies on a plain TCP connection go to the socket at once when nothing
is buffered, else (and on any other transport) through Twisted's buffer, in order."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from mxd.smtp.session import send_now


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Server, socket.socket, MemoryReactor]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = MemoryReactor()
    port = SimpleNamespace(_realPortNumber=25)  # what Server reads of its listening port
    server = tcp.Server(ours, Protocol(), ("127.0.0.1", 2525), port, 1, reactor)
    yield server, peer, reactor
    ours.close()
    peer.close()


def _recv_exactly(peer: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = peer.recv(n - len(out))
        assert chunk
        out += chunk
    return out


def test_reply_goes_out_at_once(pair: tuple[tcp.Server, socket.socket, MemoryReactor]) -> None:
    """Nothing buffered: the reply is on the socket before the reactor turns, and the
    reactor is not asked to watch for writability."""
    server, peer, reactor = pair
    send_now(server, b"250 2.0.0 OK\r\n")
    assert _recv_exactly(peer, 14) == b"250 2.0.0 OK\r\n"
    assert server not in reactor.getWriters()


def test_buffered_data_keeps_its_place(pair: tuple[tcp.Server, socket.socket,
                                                   MemoryReactor]) -> None:
    """Octets already waiting in Twisted's buffer go first: the reply queues behind them."""
    server, peer, reactor = pair
    server.write(b"220 first\r\n")
    send_now(server, b"250 second\r\n")
    assert server in reactor.getWriters()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    peer.settimeout(5)
    server.doWrite()
    assert _recv_exactly(peer, 23) == b"220 first\r\n250 second\r\n"


def test_what_the_socket_does_not_take_is_buffered(
        pair: tuple[tcp.Server, socket.socket, MemoryReactor]) -> None:
    """A reply bigger than the socket buffer: the rest waits in Twisted's buffer and
    arrives whole and in order."""
    server, peer, reactor = pair
    data = bytes(range(256)) * 40000  # 10 MB, more than any socket buffer
    send_now(server, data)
    assert server in reactor.getWriters()
    got = b""
    while len(got) < len(data):
        if server in reactor.getWriters():
            server.doWrite()
        got += peer.recv(1 << 20)
    assert got == data


def test_other_transports_use_write() -> None:
    """A transport that is not a plain TCP connection (TLS, a test transport) gets the
    octets through its own write."""
    t = StringTransport()
    send_now(t, b"250 OK\r\n")
    assert t.value() == b"250 OK\r\n"


def test_after_starttls_through_the_tls_layer(
        pair: tuple[tcp.Server, socket.socket, MemoryReactor]) -> None:
    """Once TLS has started on the connection (STARTTLS keeps the transport object and
    sets ``TLS``), a reply goes through the transport's write, never as plain text to
    the socket."""
    server, peer, reactor = pair
    written: list[bytes] = []
    server.TLS = True
    server.write = written.append  # type: ignore[method-assign]
    send_now(server, b"250 OK\r\n")
    assert written == [b"250 OK\r\n"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
