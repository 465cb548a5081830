"""DNS over UDP and TCP on Twisted sockets (RFC 1035 §4.2, RFC 7766, RFC 5452).

One exchange sends one query to one nameserver:

* UDP first, from a fresh socket (a kernel-chosen random ephemeral source port) connected to
  the server so datagrams from other addresses never reach us; the answer must carry the query's
  random ID and question (RFC 5452 §9.1). Anything else (spoofed, mismatched, malformed) is
  counted and ignored while we keep waiting.
* A truncated answer (TC, RFC 1035 §4.2.1) is asked again over TCP (RFC 7766 §5).

Errbacks: ``ExchangeTimeout`` when no acceptable answer arrived in time, ``ExchangeFailed``
when the server cannot be reached (ICMP refused, TCP refused/reset, bad TCP answer).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import dns.flags
import dns.message
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ClientFactory
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from mxd.dns.errors import DNSError
from mxd.dns.message import MalformedResponse, answers_question
from mxd.metrics import IMetrics, NoopMetrics

Reactor = Any
"""A reactor providing IReactorTime, IReactorFDSet and IReactorTCP."""


class ExchangeError(DNSError):
    """One exchange with one nameserver failed (the resolver tries the next one)."""


class ExchangeTimeout(ExchangeError):
    """No acceptable answer before the timeout."""


class ExchangeFailed(ExchangeError):
    """The nameserver could not be reached or answered nonsense over TCP."""


class ExchangeMalformed(ExchangeFailed):
    """The nameserver's answer to our question could not be decoded."""


@implementer(IReadDescriptor)
class _UDPExchange:
    """One query over a connected UDP socket registered with the reactor (IReactorFDSet).

    Twisted's ``listenUDP`` logs two lines per port; one port per query would flood the log,
    so the socket is handled here directly. ``connect`` makes the kernel pick a random
    ephemeral source port and drop datagrams from any other address (RFC 5452 §9.2, §4.5).
    """

    def __init__(
        self,
        reactor: Reactor,
        host: str,
        port: int,
        query: dns.message.Message,
        timeout: float,
        metrics: IMetrics,
    ) -> None:
        self._reactor = reactor
        self._where = f"udp {host}:{port}"
        self._query = query
        self._metrics = metrics
        # Cancelling the Deferred closes the socket at once (then fires CancelledError).
        self.deferred: Deferred[dns.message.Message] = Deferred(lambda d: self._close())
        self._sock: socket.socket | None = None
        self._timer: Any = None
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as e:
            self._finish(Failure(ExchangeFailed(f"{self._where}: {e}")))
            return
        self._sock = sock
        try:
            sock.setblocking(False)
            sock.connect((host, port))
            sock.send(query.to_wire())
        except OSError as e:
            self._finish(Failure(ExchangeFailed(f"{self._where}: {e}")))
            return
        self._timer = reactor.callLater(timeout, self._timed_out)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def logPrefix(self) -> str:
        return "dns-udp"

    def doRead(self) -> None:
        while self._sock is not None:
            try:
                datagram = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                # ICMP port unreachable on the connected socket: nobody serves DNS there.
                self._finish(Failure(ExchangeFailed(f"{self._where}: refused")))
                return
            except OSError as e:
                self._finish(Failure(ExchangeFailed(f"{self._where}: {e}")))
                return
            try:
                response = answers_question(self._query, datagram)
            except MalformedResponse as e:
                self._finish(Failure(ExchangeMalformed(f"{self._where}: {e}")))
                return
            if response is None:
                # RFC 5452 §9.1: not an answer to our question; keep waiting for the real one.
                self._metrics.inc("dns_ignored_responses_total", transport="udp")
                continue
            self._finish(response)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor is shutting down (removeAll): give up."""
        self._finish(Failure(ExchangeFailed(f"{self._where}: reactor stopped")))

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(Failure(ExchangeTimeout(f"{self._where}: timeout")))

    def _close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._sock is not None:
            self._reactor.removeReader(self)
            self._sock.close()
            self._sock = None

    def _finish(self, result: dns.message.Message | Failure) -> None:
        self._close()
        if self.deferred.called:
            return
        if isinstance(result, Failure):
            self.deferred.errback(result)
        else:
            self.deferred.callback(result)


def query_udp(
    reactor: Reactor,
    host: str,
    port: int,
    query: dns.message.Message,
    timeout: float,
    metrics: IMetrics | None = None,
) -> Deferred[dns.message.Message]:
    """Send ``query`` over UDP; fire with the first response that answers it."""
    return _UDPExchange(reactor, host, port, query, timeout, metrics or NoopMetrics()).deferred


class _TCPExchange(Int16StringReceiver):
    MAX_LENGTH = 65535

    def __init__(self, factory: _TCPFactory) -> None:
        self._factory = factory

    def connectionMade(self) -> None:
        self.sendString(self._factory.query.to_wire())

    def stringReceived(self, data: bytes) -> None:
        try:
            response = answers_question(self._factory.query, data)
        except MalformedResponse as e:
            self._factory.finish(Failure(ExchangeMalformed(f"tcp: {e}")))
            response = None
        if response is None:
            self._factory.metrics.inc("dns_ignored_responses_total", transport="tcp")
            self._factory.finish(Failure(ExchangeFailed("tcp: answer does not match query")))
        else:
            self._factory.finish(response)
        transport: Any = self.transport
        transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._factory.finish(Failure(ExchangeFailed(f"tcp: connection lost: {reason.value}")))


class _TCPFactory(ClientFactory):
    noisy = False
    def __init__(self, reactor: Reactor, query: dns.message.Message, timeout: float,
                 metrics: IMetrics) -> None:
        self.query = query
        self.metrics = metrics
        self.deferred: Deferred[dns.message.Message] = Deferred(lambda d: self._abort())
        self._timer = reactor.callLater(timeout, self._timed_out)
        self.connector: Any = None
        self.proto: _TCPExchange | None = None

    def buildProtocol(self, addr: Any) -> _TCPExchange:
        self.proto = _TCPExchange(self)
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.finish(Failure(ExchangeFailed(f"tcp: {reason.value}")))

    def _timed_out(self) -> None:
        self._timer = None
        self.finish(Failure(ExchangeTimeout("tcp: timeout")))
        self._abort()

    def _abort(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abortConnection()  # type: ignore[attr-defined]
        elif self.connector is not None:
            self.connector.stopConnecting()

    def finish(self, result: dns.message.Message | Failure) -> None:
        if self.deferred.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if isinstance(result, Failure):
            self.deferred.errback(result)
        else:
            self.deferred.callback(result)


def query_tcp(
    reactor: Reactor,
    host: str,
    port: int,
    query: dns.message.Message,
    timeout: float,
    metrics: IMetrics | None = None,
) -> Deferred[dns.message.Message]:
    """Send ``query`` over TCP (RFC 7766, 2-octet length prefix); fire with the answer."""
    factory = _TCPFactory(reactor, query, timeout, metrics or NoopMetrics())
    factory.connector = reactor.connectTCP(host, port, factory, timeout=timeout)
    return factory.deferred


async def exchange(
    reactor: Reactor,
    host: str,
    port: int,
    query: dns.message.Message,
    timeout: float,
    metrics: IMetrics | None = None,
) -> dns.message.Message:
    """UDP, then TCP when the UDP answer is truncated (RFC 7766 §5)."""
    metrics = metrics or NoopMetrics()
    response = await query_udp(reactor, host, port, query, timeout, metrics)
    if response.flags & dns.flags.TC:
        metrics.inc("dns_tcp_fallbacks_total")
        response = await query_tcp(reactor, host, port, query, timeout, metrics)
    return response
