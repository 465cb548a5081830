"""SOCKS version 5 client (RFC 1928) with username/password authentication (RFC 1929).

Only what outbound mail needs: the CONNECT command to an IP address.  The proxy is never
asked to resolve a name (no ATYP 03 DOMAINNAME): mxd's own resolver does all name
resolution, so the DNSSEC status of every answer stays known (DANE, MTA-STS) and the
proxy's resolver is not trusted with it.

Two layers:

* ``ClientHandshake``: the pure state machine (bytes in, bytes out, no I/O), used by
* ``SOCKS5ClientEndpoint``: an ``IStreamClientEndpoint`` that connects to the proxy through
  another endpoint, runs the handshake under a deadline, then hands the stream to the
  caller's protocol.  The caller's protocol gets the proxy connection's own transport, so
  ``startTLS`` (SMTP STARTTLS) and ``wrapClientTLS`` (implicit TLS) run on top of the
  proxied stream: TLS is end to end with the destination, the proxy sees ciphertext.

Errors (``SOCKSError`` and below) carry the proxy's words: a reply code from RFC 1928 §6
(``SOCKSReplyError.reply``), a refused authentication (RFC 1929 §2), or a malformed answer.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from mxd.errors import MxdError

VERSION = 5  # RFC 1928 §3
AUTH_VERSION = 1  # RFC 1929 §2: "the current version of the subnegotiation is X'01'"


class Method(enum.IntEnum):
    """Authentication methods, RFC 1928 §3."""

    NO_AUTHENTICATION_REQUIRED = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02  # RFC 1929
    NO_ACCEPTABLE_METHODS = 0xFF


class Reply(enum.IntEnum):
    """The REP field of a reply, RFC 1928 §6, in the RFC's words."""

    SUCCEEDED = 0x00
    GENERAL_SOCKS_SERVER_FAILURE = 0x01
    CONNECTION_NOT_ALLOWED_BY_RULESET = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08

    @property
    def words(self) -> str:
        return self.name.lower().replace("_", " ").replace("socks", "SOCKS")


CMD_CONNECT = 0x01  # RFC 1928 §4
ATYP_IPV4 = 0x01
ATYP_DOMAINNAME = 0x03
ATYP_IPV6 = 0x04


class SOCKSError(MxdError):
    """The proxy did not give us a connection; always temporary for mail delivery."""

    permanent = False
    enhanced = "4.4.1"  # RFC 3463 §3.5: no answer from host (through the proxy)


class SOCKSProtocolError(SOCKSError):
    """The proxy's answer is not valid SOCKS5 (malformed, wrong version, closed early)."""


class SOCKSAuthError(SOCKSError):
    """The proxy refused our authentication, or offered no method we can use."""

    enhanced = "4.7.0"


class SOCKSReplyError(SOCKSError):
    """The proxy answered CONNECT with a failure reply (RFC 1928 §6)."""

    def __init__(self, reply: int) -> None:
        self.reply = reply
        try:
            words = Reply(reply).words
        except ValueError:
            words = f"unassigned reply X'{reply:02X}'"
        super().__init__(f"SOCKS proxy: {words}")


class SOCKSTimeoutError(SOCKSError):
    """The proxy did not complete the handshake in time."""


@attrs.frozen
class Credentials:
    """RFC 1929 username and password; each 1 to 255 octets."""

    username: str
    password: str = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        for what, v in (("username", self.username), ("password", self.password)):
            n = len(v.encode("utf-8"))
            if not 1 <= n <= 255:
                raise ValueError(f"SOCKS {what} must be 1 to 255 octets (RFC 1929 §2), got {n}")


# -- pure encoders / decoders ------------------------------------------------------------


def method_request(credentials: Credentials | None) -> bytes:
    """RFC 1928 §3: VER, NMETHODS, METHODS.  With credentials we offer only
    username/password, so a proxy cannot downgrade us to an unauthenticated session
    that its operator did not intend to allow."""
    methods = [Method.USERNAME_PASSWORD] if credentials else [Method.NO_AUTHENTICATION_REQUIRED]
    return bytes([VERSION, len(methods), *methods])


def auth_request(credentials: Credentials) -> bytes:
    """RFC 1929 §2: VER=1, ULEN, UNAME, PLEN, PASSWD."""
    u = credentials.username.encode("utf-8")
    p = credentials.password.encode("utf-8")
    return bytes([AUTH_VERSION, len(u)]) + u + bytes([len(p)]) + p


def connect_request(ip: str, port: int) -> bytes:
    """RFC 1928 §4: VER, CMD=CONNECT, RSV, ATYP, DST.ADDR, DST.PORT (IP addresses only)."""
    addr = ipaddress.ip_address(ip)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    atyp = ATYP_IPV4 if addr.version == 4 else ATYP_IPV6
    return bytes([VERSION, CMD_CONNECT, 0, atyp]) + addr.packed + struct.pack("!H", port)


@attrs.frozen
class BoundAddress:
    """BND.ADDR and BND.PORT of a successful reply (the proxy's side of the connection)."""

    host: str
    port: int


def parse_reply(buf: bytes) -> tuple[BoundAddress | None, int]:
    """Parse the reply to CONNECT (RFC 1928 §6) from the start of ``buf``.

    Returns (address, bytes consumed); (None, 0) when more bytes are needed.  Raises
    SOCKSReplyError for a failure reply, SOCKSProtocolError for a malformed one.
    """
    if len(buf) < 2:
        return None, 0
    if buf[0] != VERSION:
        raise SOCKSProtocolError(f"SOCKS proxy answered with version {buf[0]}, not 5")
    if buf[1] != Reply.SUCCEEDED:
        # A failure reply still has the full layout, but we need no more of it.
        raise SOCKSReplyError(buf[1])
    if len(buf) >= 3 and buf[2] != 0:
        raise SOCKSProtocolError("SOCKS reply with a non-zero reserved octet")
    if len(buf) < 4:
        return None, 0
    atyp = buf[3]
    if atyp == ATYP_DOMAINNAME and len(buf) < 5:
        return None, 0
    if atyp == ATYP_IPV4:
        n, start = 4, 4
    elif atyp == ATYP_IPV6:
        n, start = 16, 4
    elif atyp == ATYP_DOMAINNAME:
        n, start = buf[4], 5
    else:
        raise SOCKSProtocolError(f"SOCKS reply with unknown address type {atyp}")
    end = start + n + 2
    if len(buf) < end:
        return None, 0
    raw = buf[start:start + n]
    if atyp == ATYP_DOMAINNAME:
        host = raw.decode("ascii", "replace")
    else:
        host = str(ipaddress.ip_address(raw))
    (port,) = struct.unpack("!H", buf[start + n:end])
    return BoundAddress(host, port), end


class ClientHandshake:
    """The client side of the SOCKS5 negotiation as a state machine (no I/O).

    ``start()`` gives the first bytes to send; ``receive(data)`` gives bytes to send next
    (possibly b"").  When ``bound`` is set the tunnel is up and ``leftover`` holds bytes
    that already belong to the tunnelled stream.  Errors raise ``SOCKSError``.
    """

    def __init__(self, ip: str, port: int, credentials: Credentials | None = None) -> None:
        self._request = connect_request(ip, port)  # validates before anything is sent
        self.credentials = credentials
        self.state = "method"
        self.bound: BoundAddress | None = None
        self.leftover = b""
        self._buf = b""

    def start(self) -> bytes:
        return method_request(self.credentials)

    def receive(self, data: bytes) -> bytes:
        if self.state == "done":
            raise SOCKSProtocolError("handshake already complete")
        self._buf += data
        out = b""
        while True:
            step = self._step()
            if step is None:
                return out
            out += step
            if self.state == "done":
                return out

    def _step(self) -> bytes | None:
        buf = self._buf
        if self.state == "method":
            if len(buf) < 2:
                return None
            self._buf = buf[2:]
            if buf[0] != VERSION:
                raise SOCKSProtocolError(f"SOCKS proxy answered with version {buf[0]}, not 5")
            method = buf[1]
            if method == Method.NO_ACCEPTABLE_METHODS:
                raise SOCKSAuthError("SOCKS proxy accepts none of our authentication methods"
                                     + (" (username/password offered)" if self.credentials
                                        else " (no credentials configured)"))
            if self.credentials is not None and method == Method.USERNAME_PASSWORD:
                self.state = "auth"
                return auth_request(self.credentials)
            if self.credentials is None and method == Method.NO_AUTHENTICATION_REQUIRED:
                self.state = "reply"
                return self._request
            # RFC 1928 §3: the server selects one of the methods the client offered.
            raise SOCKSProtocolError(f"SOCKS proxy chose method X'{method:02X}', "
                                     "which we did not offer")
        if self.state == "auth":
            if len(buf) < 2:
                return None
            self._buf = buf[2:]
            if buf[0] != AUTH_VERSION:
                raise SOCKSProtocolError(
                    f"SOCKS proxy answered authentication with version {buf[0]}, not 1")
            if buf[1] != 0:
                # RFC 1929 §2: a STATUS other than X'00' is failure; the server closes.
                raise SOCKSAuthError("SOCKS proxy refused the username/password "
                                     f"(status X'{buf[1]:02X}')")
            self.state = "reply"
            return self._request
        if self.state == "reply":
            bound, used = parse_reply(buf)
            if bound is None:
                return None
            self.bound = bound
            self.leftover = buf[used:]
            self._buf = b""
            self.state = "done"
            return b""
        return None  # pragma: no cover


# -- Twisted adapter ---------------------------------------------------------------------


class _TunnelProtocol(Protocol):
    """Runs the handshake on the proxy connection, then becomes a pass-through to the
    caller's protocol (which gets this connection's transport)."""

    def __init__(self, handshake: ClientHandshake, inner: Any, clock: Any,
                 timeout: float, done: Deferred[Any]) -> None:
        self.handshake = handshake
        self.inner = inner
        self.clock = clock
        self.timeout = timeout
        self.done = done
        self._timer: Any = None
        self._tunnel = False

    @property
    def _t(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        self._timer = self.clock.callLater(self.timeout, self._expired)
        self._t.write(self.handshake.start())

    def _expired(self) -> None:
        self._timer = None
        self._fail(SOCKSTimeoutError(f"SOCKS proxy did not answer within {self.timeout:g}s"))

    def _fail(self, err: SOCKSError) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.done.called:
            self.done.errback(Failure(err))
        if self.transport is not None:
            self._t.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel:
            self.inner.dataReceived(data)
            return
        try:
            out = self.handshake.receive(data)
        except SOCKSError as e:
            self._fail(e)
            return
        if out:
            self._t.write(out)
        if self.handshake.state == "done":
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._tunnel = True
            self.inner.makeConnection(self.transport)
            if not self.done.called:
                self.done.callback(self.inner)
            if self.handshake.leftover:
                self.inner.dataReceived(self.handshake.leftover)

    def connectionLost(self, reason: Failure = Failure(Exception("closed"))) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._tunnel:
            self.inner.connectionLost(reason)
        elif not self.done.called:
            self.done.errback(Failure(SOCKSProtocolError(
                "SOCKS proxy closed the connection during the handshake"
                f" ({self.handshake.state}): {reason.getErrorMessage()}")))


class _TunnelFactory(Factory):
    def __init__(self, proto: _TunnelProtocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> _TunnelProtocol:
        return self.proto


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """Connect to ``ip``:``port`` through the SOCKS5 proxy reached by ``proxy``.

    ``proxy`` is any ``IStreamClientEndpoint`` (e.g. ``TCP4ClientEndpoint`` of the proxy);
    ``clock`` times the handshake.  ``connect(factory)`` fires with the caller's
    protocol once the proxy reports success, or errbacks with a ``SOCKSError`` (a
    refused or unreachable proxy errbacks with the underlying connect error).
    """

    def __init__(self, proxy: Any, ip: str, port: int, clock: Any, *,
                 credentials: Credentials | None = None, timeout: float = 30.0) -> None:
        connect_request(ip, port)  # IP address and port are valid, or ValueError now
        self.proxy = proxy
        self.ip = ip
        self.port = port
        self.clock = clock
        self.credentials = credentials
        self.timeout = timeout

    def connect(self, factory: Any) -> Deferred[Any]:
        from twisted.internet.address import IPv4Address, IPv6Address

        addr: Any = (IPv6Address if ":" in self.ip else IPv4Address)("TCP", self.ip, self.port)
        inner = factory.buildProtocol(addr)
        if inner is None:
            raise ValueError("the factory built no protocol")
        done: Deferred[Any] = Deferred()
        proto = _TunnelProtocol(ClientHandshake(self.ip, self.port, self.credentials), inner,
                                self.clock, self.timeout, done)
        d = self.proxy.connect(_TunnelFactory(proto))

        def proxy_failed(f: Failure) -> None:
            if not done.called:
                done.errback(Failure(SOCKSError(
                    f"cannot connect to the SOCKS proxy: {f.getErrorMessage()}")))

        d.addErrback(proxy_failed)
        return done
