"""DNS over UDP and TCP on Twisted sockets (RFC 1035 §4.2, RFC 7766, RFC 5452).

One exchange sends one query to one nameserver:

* UDP first, from a fresh socket (a kernel-chosen ephemeral source port) connected to the
  server so datagrams from other addresses never reach us; the answer must carry the query's
  random ID and question (RFC 5452 §9.1). Anything else (spoofed, mismatched, malformed) is
  counted and ignored while we keep waiting.
* A truncated answer (TC, RFC 1035 §4.2.1) is asked again over TCP (RFC 7766 §5).

Errbacks: ``ExchangeTimeout`` when no acceptable answer arrived in time, ``ExchangeFailed``
when the server cannot be reached (ICMP refused, TCP refused/reset, bad TCP answer).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.flags
import dns.message
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, DatagramProtocol
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from mxd.dns.errors import DNSError
from mxd.dns.message import MalformedResponse, answers_question
from mxd.dns.metrics import Metrics, NoMetrics

Reactor = Any
"""A reactor providing IReactorTime, IReactorUDP and IReactorTCP."""


class ExchangeError(DNSError):
    """One exchange with one nameserver failed (the resolver tries the next one)."""


class ExchangeTimeout(ExchangeError):
    """No acceptable answer before the timeout."""


class ExchangeFailed(ExchangeError):
    """The nameserver could not be reached or answered nonsense over TCP."""


class ExchangeMalformed(ExchangeFailed):
    """The nameserver's answer to our question could not be decoded."""


def _bind_address(host: str) -> str:
    return "::" if ipaddress.ip_address(host).version == 6 else "0.0.0.0"


class _UDPExchange(DatagramProtocol):
    noisy = False  # no "Starting protocol" log line per query
    def __init__(
        self,
        reactor: Reactor,
        host: str,
        port: int,
        query: dns.message.Message,
        timeout: float,
        metrics: Metrics,
    ) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._query = query
        self._metrics = metrics
        self.deferred: Deferred[dns.message.Message] = Deferred()
        self._timer = reactor.callLater(timeout, self._timed_out)

    def startProtocol(self) -> None:
        try:
            transport: Any = self.transport
            transport.connect(self._host, self._port)
            transport.write(self._query.to_wire())
        except OSError as e:
            self._finish(Failure(ExchangeFailed(f"udp {self._host}:{self._port}: {e}")))

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            response = answers_question(self._query, datagram)
        except MalformedResponse as e:
            self._finish(Failure(ExchangeMalformed(f"udp {self._host}:{self._port}: {e}")))
            return
        if response is None:
            # RFC 5452 §9.1: not an answer to our question; keep waiting for the real one.
            self._metrics.inc("dns_ignored_responses_total", transport="udp")
            return
        self._finish(response)

    def connectionRefused(self) -> None:
        self._finish(Failure(ExchangeFailed(f"udp {self._host}:{self._port}: refused")))

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(Failure(ExchangeTimeout(f"udp {self._host}:{self._port}: timeout")))

    def _finish(self, result: dns.message.Message | Failure) -> None:
        if self.deferred.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        transport: Any = self.transport
        if transport is not None:
            transport.stopListening()
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
    metrics: Metrics | None = None,
) -> Deferred[dns.message.Message]:
    """Send ``query`` over UDP; fire with the first response that answers it."""
    proto = _UDPExchange(reactor, host, port, query, timeout, metrics or NoMetrics())
    try:
        reactor.listenUDP(0, proto, interface=_bind_address(host))
    except Exception as e:  # noqa: BLE001 - CannotListenError, OSError
        proto._finish(Failure(ExchangeFailed(f"udp {host}:{port}: {e}")))
    return proto.deferred


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
                 metrics: Metrics) -> None:
        self.query = query
        self.metrics = metrics
        self.deferred: Deferred[dns.message.Message] = Deferred()
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
    metrics: Metrics | None = None,
) -> Deferred[dns.message.Message]:
    """Send ``query`` over TCP (RFC 7766, 2-octet length prefix); fire with the answer."""
    factory = _TCPFactory(reactor, query, timeout, metrics or NoMetrics())
    factory.connector = reactor.connectTCP(host, port, factory, timeout=timeout)
    return factory.deferred


async def exchange(
    reactor: Reactor,
    host: str,
    port: int,
    query: dns.message.Message,
    timeout: float,
    metrics: Metrics | None = None,
) -> dns.message.Message:
    """UDP, then TCP when the UDP answer is truncated (RFC 7766 §5)."""
    metrics = metrics or NoMetrics()
    response = await query_udp(reactor, host, port, query, timeout, metrics)
    if response.flags & dns.flags.TC:
        metrics.inc("dns_tcp_fallbacks_total")
        response = await query_tcp(reactor, host, port, query, timeout, metrics)
    return response
