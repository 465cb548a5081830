"""SOCKS5 client (RFC 1928, RFC 1929): encoders, the handshake state machine fed one byte
at a time, Hypothesis over proxy replies, and the Twisted endpoint on in-memory transports
(tunnel, leftover bytes, failures, the handshake deadline)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mxd import socks5
from mxd.socks5 import (
    BoundAddress,
    ClientHandshake,
    Credentials,
    SOCKS5ClientEndpoint,
    SOCKSAuthError,
    SOCKSError,
    SOCKSProtocolError,
    SOCKSReplyError,
    SOCKSTimeoutError,
)

OK_V4 = bytes([5, 0, 0, 1, 10, 0, 0, 1]) + struct.pack("!H", 4444)


def test_connect_request_ipv4_and_ipv6() -> None:
    """CONNECT carries the address as ATYP 01 (4 octets) or 04 (16 octets), never a name."""
    assert socks5.connect_request("192.0.2.1", 25) == bytes([5, 1, 0, 1, 192, 0, 2, 1, 0, 25])
    v6 = socks5.connect_request("2001:db8::1", 587)
    assert v6[:4] == bytes([5, 1, 0, 4]) and len(v6) == 4 + 16 + 2 and v6[-2:] == b"\x02\x4b"
    with pytest.raises(ValueError):
        socks5.connect_request("mx.example.test", 25)  # names are resolved by mxd, not the proxy
    with pytest.raises(ValueError):
        socks5.connect_request("192.0.2.1", 0)


def test_method_and_auth_requests() -> None:
    """Without credentials only "no authentication" is offered; with them only RFC 1929."""
    assert socks5.method_request(None) == b"\x05\x01\x00"
    creds = Credentials("user", "pässword")
    assert socks5.method_request(creds) == b"\x05\x01\x02"
    pw = "pässword".encode()
    assert socks5.auth_request(creds) == b"\x01\x04user" + bytes([len(pw)]) + pw


@pytest.mark.parametrize(("user", "password"), [("", "x"), ("x", ""), ("u" * 256, "x"),
                                                ("x", "é" * 128)])
def test_credentials_length_limits(user: str, password: str) -> None:
    """RFC 1929 §2: username and password are 1 to 255 octets."""
    with pytest.raises(ValueError, match="1 to 255 octets"):
        Credentials(user, password)


def _run(h: ClientHandshake, answer: bytes) -> bytes:
    sent = b""
    for i in range(len(answer)):  # one byte at a time
        sent += h.receive(answer[i:i + 1])
        if h.state == "done":
            h.leftover += answer[i + 1:]
            break
    return sent


def test_handshake_without_auth_byte_by_byte() -> None:
    h = ClientHandshake("192.0.2.7", 25)
    assert h.start() == b"\x05\x01\x00"
    sent = _run(h, b"\x05\x00" + OK_V4 + b"220 hi")
    assert sent == socks5.connect_request("192.0.2.7", 25)
    assert h.state == "done" and h.bound == BoundAddress("10.0.0.1", 4444)
    assert h.leftover == b"220 hi"
    with pytest.raises(SOCKSProtocolError):
        h.receive(b"x")  # the tunnel's bytes are not the state machine's


def test_handshake_with_auth_keeps_leftover() -> None:
    """Bytes after the reply (a fast SMTP greeting) belong to the tunnelled stream."""
    h = ClientHandshake("192.0.2.7", 25, Credentials("u", "p"))
    h.start()
    out = h.receive(b"\x05\x02")
    assert out == b"\x01\x01u\x01p"
    out = h.receive(b"\x01\x00")
    assert out == socks5.connect_request("192.0.2.7", 25)
    h.receive(OK_V4 + b"220 mx ESMTP\r\n")
    assert h.leftover == b"220 mx ESMTP\r\n"


@pytest.mark.parametrize(("creds", "answer", "error", "text"), [
    (None, b"\x04\x00", SOCKSProtocolError, "version 4"),
    (None, b"\x05\xff", SOCKSAuthError, "no credentials configured"),
    (Credentials("u", "p"), b"\x05\xff", SOCKSAuthError, "username/password offered"),
    (None, b"\x05\x02", SOCKSProtocolError, "did not offer"),
    (Credentials("u", "p"), b"\x05\x00", SOCKSProtocolError, "did not offer"),
    (Credentials("u", "p"), b"\x05\x02\x01\x01", SOCKSAuthError, "refused the username"),
    (Credentials("u", "p"), b"\x05\x02\x05\x00", SOCKSProtocolError, "version 5, not 1"),
    (None, b"\x05\x00\x05\x05\x00\x01" + bytes(6), SOCKSReplyError, "connection refused"),
    (None, b"\x05\x00\x05\x02", SOCKSReplyError, "connection not allowed by ruleset"),
    (None, b"\x05\x00\x05\x01", SOCKSReplyError, "general SOCKS server failure"),
    (None, b"\x05\x00\x05\x09", SOCKSReplyError, "unassigned reply X'09'"),
    (None, b"\x05\x00\x05\x00\x01\x07", SOCKSProtocolError, "reserved"),
    (None, b"\x05\x00\x05\x00\x00\x09", SOCKSProtocolError, "unknown address type"),
])
def test_handshake_failures(creds: Credentials | None, answer: bytes, error: type,
                            text: str) -> None:
    """Each bad answer raises a typed error carrying the proxy's words."""
    h = ClientHandshake("192.0.2.7", 25, creds)
    h.start()
    with pytest.raises(error, match=text) as ei:
        _run(h, answer)
    assert isinstance(ei.value, SOCKSError) and not ei.value.permanent


def test_reply_with_domain_bound_address() -> None:
    """A proxy may report BND.ADDR as a name (ATYP 03); that is fine for the reply."""
    raw = b"\x05\x00\x00\x03\x05proxy\x00\x19"
    assert socks5.parse_reply(raw) == (BoundAddress("proxy", 25), len(raw))
    assert socks5.parse_reply(raw[:-1]) == (None, 0)


@given(st.binary(max_size=40))
def test_parse_reply_never_crashes(data: bytes) -> None:
    """Any bytes give a result, "need more", or a SOCKSError — nothing else."""
    try:
        bound, used = socks5.parse_reply(data)
    except SOCKSError:
        return
    assert (bound is None and used == 0) or (bound is not None and 0 < used <= len(data))


@given(st.binary(max_size=60), st.booleans())
def test_handshake_never_crashes(data: bytes, auth: bool) -> None:
    h = ClientHandshake("192.0.2.7", 25, Credentials("u", "p") if auth else None)
    h.start()
    try:
        h.receive(data)
    except SOCKSError:
        return
    assert h.state in ("method", "auth", "reply", "done")


# -- the endpoint ------------------------------------------------------------------------


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


class _FakeProxyEndpoint:
    """An endpoint whose connection is a StringTransport (or a refused connection)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.transport = StringTransport()
        self.proto: Any = None

    def connect(self, factory: Factory) -> Deferred[Any]:
        if self.refuse:
            d: Deferred[Any] = Deferred()
            d.errback(ConnectionRefusedError("127.0.0.1:1080"))
            return d
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        return succeed(self.proto)


def _endpoint(proxy: _FakeProxyEndpoint, clock: task.Clock, **kw: Any) -> SOCKS5ClientEndpoint:
    return SOCKS5ClientEndpoint(proxy, "192.0.2.7", 25, clock, **kw)  # type: ignore[arg-type]


def test_endpoint_tunnel_passes_data_both_ways() -> None:
    """After the handshake the caller's protocol owns the proxy connection's transport."""
    clock, proxy = task.Clock(), _FakeProxyEndpoint()
    inner = _Recorder()
    d = _endpoint(proxy, clock).connect(Factory.forProtocol(lambda: inner))
    assert proxy.transport.value() == b"\x05\x01\x00"
    proxy.transport.clear()
    proxy.proto.dataReceived(b"\x05\x00")
    assert proxy.transport.value() == socks5.connect_request("192.0.2.7", 25)
    assert not d.called and not inner.made
    proxy.proto.dataReceived(OK_V4 + b"220 greet")
    assert d.result is inner and inner.made and inner.transport is proxy.transport
    assert inner.data == b"220 greet"
    proxy.proto.dataReceived(b"\r\n")
    assert inner.data == b"220 greet\r\n"
    assert not clock.getDelayedCalls()  # the handshake deadline was cancelled
    proxy.proto.connectionLost(Failure(Exception("bye")))
    assert inner.lost is not None


def test_endpoint_reply_error_aborts() -> None:
    clock, proxy = task.Clock(), _FakeProxyEndpoint()
    d = _endpoint(proxy, clock).connect(Factory.forProtocol(_Recorder))
    proxy.proto.dataReceived(b"\x05\x00\x05\x05\x00\x01" + bytes(6))
    f = _failure(d)
    assert isinstance(f.value, SOCKSReplyError) and f.value.reply == 5
    assert proxy.transport.disconnecting or getattr(proxy.transport, "aborted", False)


def test_endpoint_deadline() -> None:
    """A proxy that never answers fails the connect after the timeout, on the clock."""
    clock, proxy = task.Clock(), _FakeProxyEndpoint()
    d = _endpoint(proxy, clock, timeout=5).connect(Factory.forProtocol(_Recorder))
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    assert isinstance(_failure(d).value, SOCKSTimeoutError)


def test_endpoint_proxy_closes_early() -> None:
    clock, proxy = task.Clock(), _FakeProxyEndpoint()
    d = _endpoint(proxy, clock).connect(Factory.forProtocol(_Recorder))
    proxy.proto.dataReceived(b"\x05")
    proxy.proto.connectionLost(Failure(Exception("gone")))
    f = _failure(d)
    assert isinstance(f.value, SOCKSProtocolError) and "during the handshake" in str(f.value)


def test_endpoint_proxy_refused() -> None:
    d = _endpoint(_FakeProxyEndpoint(refuse=True), task.Clock()).connect(
        Factory.forProtocol(_Recorder))
    f = _failure(d)
    assert isinstance(f.value, SOCKSError) and "cannot connect to the SOCKS proxy" in str(f.value)


def _failure(d: Deferred[Any]) -> Failure:
    out: list[Failure] = []
    d.addErrback(out.append)
    assert out, "expected the Deferred to have failed"
    return out[0]
