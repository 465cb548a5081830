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

from mxd.sasl.api import ISASLServer
from mxd.smtp import replies
from mxd.smtp.interfaces import IDirectory, IMessageChecker, IMetrics, IOutbound, NoMetrics
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


class _Refuse(Protocol):
    """Answers 421 and hangs up (connection limits, RFC 5321 §3.8)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def connectionMade(self) -> None:
        reply = replies.TOO_MANY_CONNECTIONS
        t: Any = self.transport
        t.write(b"".join(line + b"\r\n" for line in reply.lines()))
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
        self.metrics: IMetrics = metrics if metrics is not None else NoMetrics()
        self.channel_bindings = channel_bindings
        self.run_blocking = run_blocking
        self.per_ip: Counter[str] = Counter()
        self.total = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:
        ip = str(getattr(addr, "host", "unknown"))
        if (self.total >= self.settings.max_connections
                or self.per_ip[ip] >= self.settings.max_connections_per_ip):
            self.log.warn("smtp connection from {remote_ip} refused: limit reached "
                          "(total={total}, from this address={per_ip})",
                          remote_ip=ip, total=self.total, per_ip=self.per_ip[ip])
            self.metrics.inc("smtp_connections_refused_total", role=self.role)
            refuse = _Refuse(self.hostname)
            refuse.factory = self
            return refuse
        self.total += 1
        self.per_ip[ip] += 1

        def closed(_: SMTPServerProtocol) -> None:
            self.total -= 1
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]

        # On 587 STARTTLS is offered; on 25 too (opportunistic, RFC 3207).  On 465 the
        # TLS layer wraps this factory and the session starts inside TLS.
        p = SMTPServerProtocol(
            role=self.role, settings=self.settings, store=self.store,
            directory=self.directory, sasl=self.sasl, outbound=self.outbound,
            tls=None if self.role == "submissions" else self.tls, clock=self.clock,
            hostname=self.hostname, checker=self.checker, metrics=self.metrics,
            channel_bindings=self.channel_bindings, on_close=closed,
            run_blocking=self.run_blocking,
        )
        p.factory = self
        return p


def smtp_factory(*, role: Role, settings: SMTPServerSettings, store: IMailStore,
                 directory: IDirectory, sasl: ISASLServer | None, outbound: IOutbound | None,
                 tls: Any | None, clock: IReactorTime, hostname: str,
                 checker: IMessageChecker | None = None, metrics: IMetrics | None = None,
                 channel_bindings: ChannelBindingsFn | None = None,
                 run_blocking: RunBlocking | None = None) -> IProtocolFactory:
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
    if role == "submissions":
        tls_any: Any = tls
        wrapped: Any = TLSMemoryBIOFactory(tls_any, False, factory)
        return wrapped  # type: ignore[no-any-return]
    return factory  # type: ignore[no-any-return]
