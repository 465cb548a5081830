"""Building SMTP listeners: the protocol factory with connection limits, and implicit TLS.

``smtp_factory`` is what the composition layer (``mxd.tap``) calls for each SMTP
listener: port 25 (``smtp``), 587 (``submission``, STARTTLS) and 465 (``submissions``,
implicit TLS, RFC 8314 §3).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mxd.clientnet import network_key
from mxd.metrics import IMetrics, NoopMetrics
from mxd.sasl.api import ISASLServer
from mxd.smtp import replies
from mxd.smtp.interfaces import IDirectory, IMessageChecker, IOutbound
from mxd.smtp.lookup import CachingDirectory
from mxd.smtp.server import (
    ChannelBindingsFn,
    Role,
    RunBlocking,
    SMTPServerProtocol,
    SMTPServerSettings,
)
from mxd.store.interfaces import IMailStore

ROLES: tuple[Role, ...] = ("smtp", "submission", "submissions")
__all__ = ["ROLES", "SMTPFactory", "network_key", "smtp_factory"]


class _Refuse(Protocol):
    """Answers 421 and hangs up (connection limits, RFC 5321 §3.8)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def connectionMade(self) -> None:
        reply = replies.TOO_MANY_CONNECTIONS
        t: Any = self.transport
        t.write(b"".join(line + b"\r\n" for line in reply.wire()))
        t.loseConnection()


class SMTPFactory(ServerFactory):
    """Creates ``SMTPServerProtocol`` sessions and enforces connection limits."""

    log = Logger()
    noisy = False

    def __init__(self, *, role: Role, settings: SMTPServerSettings, store: IMailStore,
                 directory: IDirectory, sasl: ISASLServer | None, outbound: IOutbound | None,
                 tls: Any | None, clock: IReactorTime, hostname: str,
                 checker: IMessageChecker | None = None, metrics: IMetrics | None = None,
                 channel_bindings: ChannelBindingsFn | None = None,
                 run_blocking: RunBlocking | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown SMTP role {role!r}")
        if role == "submissions" and tls is None:
            raise ValueError("the submissions role needs TLS settings")
        self.role = role
        self.settings = settings
        self.store = store
        self.directory: IDirectory = (
            CachingDirectory(directory, clock, settings.recipient_cache_ttl)
            if settings.recipient_cache_ttl > 0 else directory)
        self.sasl = sasl
        self.outbound = outbound
        self.tls = tls
        self.clock = clock
        self.hostname = hostname
        self.checker = checker
        self.metrics: IMetrics = metrics if metrics is not None else NoopMetrics()
        self.channel_bindings = channel_bindings
        self.run_blocking = run_blocking
        self.forwarder: Any = None  # mxd.forwarding.Forwarder (set by smtp_factory)
        self.per_ip: Counter[str] = Counter()
        self.per_network: Counter[str] = Counter()
        self.sessions: set[SMTPServerProtocol] = set()
        self.total = 0

    def busy(self) -> bool:
        """Is the listener under load (``busy_fraction`` of its connections in use)?"""
        return self.total >= self.settings.busy_fraction * self.settings.max_connections

    def _refusal(self, ip: str, net: str) -> str | None:
        s = self.settings
        if self.total >= s.max_connections:
            return "total"
        if self.per_ip[ip] >= s.max_connections_per_ip:
            return "ip"
        if self.per_network[net] >= s.max_connections_per_network:
            return "network"
        return None

    def _make_room(self, net: str) -> bool:
        """At max_connections: close the idlest evictable session of the network holding
        the most connections, when that is more than the newcomer's network holds.  A
        flood from many networks then cannot keep a client from a quieter one out."""
        if not self.per_network:
            return False
        biggest, count = self.per_network.most_common(1)[0]
        if count <= self.per_network[net] + 1:
            return False
        candidates = [p for p in self.sessions if p.network == biggest and p.evictable()]
        if not candidates:
            return False
        victim = min(candidates, key=lambda p: p.last_line_at)
        self.metrics.inc("smtp_connections_evicted_total", role=self.role)
        victim.evict()
        return True

    def buildProtocol(self, addr: Any) -> Protocol | None:
        ip = str(getattr(addr, "host", "unknown"))
        net = network_key(ip)
        why = self._refusal(ip, net)
        if why == "total" and self._make_room(net):
            why = self._refusal(ip, net)
        if why is not None:
            self.log.warn("smtp connection from {remote_ip} refused: {limit} limit reached "
                          "(total={total}, from this address={per_ip}, from {network}="
                          "{per_network})", remote_ip=ip, limit=why, total=self.total,
                          per_ip=self.per_ip[ip], network=net,
                          per_network=self.per_network[net])
            self.metrics.inc("smtp_connections_refused_total", role=self.role, limit=why)
            refuse = _Refuse(self.hostname)
            refuse.factory = self
            return refuse
        was_busy = self.busy()
        self.total += 1
        self.per_ip[ip] += 1
        self.per_network[net] += 1
        if self.busy() and not was_busy:
            # Entering the busy state: sessions idling towards the long deadline get
            # the short one (Postfix's stress-dependent smtpd_timeout).
            self.log.warn("smtp {role} listener busy ({total} connections): command "
                          "deadline now {seconds}s", role=self.role, total=self.total,
                          seconds=self.settings.command_timeout_busy)
            for other in self.sessions:
                other.shorten_deadline(self.settings.command_timeout_busy)

        def closed(p: SMTPServerProtocol) -> None:
            self.total -= 1
            self.sessions.discard(p)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
            self.per_network[net] -= 1
            if self.per_network[net] <= 0:
                del self.per_network[net]

        # On 587 STARTTLS is offered; on 25 too (opportunistic, RFC 3207).  On 465 the
        # TLS layer wraps this factory and the session starts inside TLS.
        p = SMTPServerProtocol(
            role=self.role, settings=self.settings, store=self.store,
            directory=self.directory, sasl=self.sasl, outbound=self.outbound,
            tls=None if self.role == "submissions" else self.tls, clock=self.clock,
            hostname=self.hostname, checker=self.checker, metrics=self.metrics,
            channel_bindings=self.channel_bindings, on_close=closed,
            run_blocking=self.run_blocking, busy=self.busy, forwarder=self.forwarder,
        )
        p.factory = self
        p.network = net
        self.sessions.add(p)
        return p


def smtp_factory(*, role: Role, settings: SMTPServerSettings, store: IMailStore,
                 directory: IDirectory, sasl: ISASLServer | None, outbound: IOutbound | None,
                 tls: Any | None, clock: IReactorTime, hostname: str,
                 checker: IMessageChecker | None = None, metrics: IMetrics | None = None,
                 channel_bindings: ChannelBindingsFn | None = None,
                 run_blocking: RunBlocking | None = None,
                 forwarder: Any = None) -> IProtocolFactory:
    """The protocol factory of one SMTP listener.

    ``tls`` is a ``twisted.internet.ssl.CertificateOptions`` (``mxd.tls.load_server_tls``)
    or None (then no STARTTLS; ``submissions`` requires it).  ``run_blocking`` (e.g.
    ``deferToThread``) creates message body files off the reactor thread.  For ``submissions`` the
    factory returned wraps the sessions in TLS from the first byte (listen with TCP)."""
    factory: Any = SMTPFactory(
        role=role, settings=settings, store=store, directory=directory, sasl=sasl,
        outbound=outbound, tls=tls, clock=clock, hostname=hostname, checker=checker,
        metrics=metrics, channel_bindings=channel_bindings, run_blocking=run_blocking,
    )
    factory.forwarder = forwarder  # mxd.forwarding.Forwarder or None
    if role == "submissions":
        tls_any: Any = tls
        wrapped: Any = TLSMemoryBIOFactory(tls_any, False, factory)
        return wrapped
    return factory
