"""Direct delivery (RFC 5321 §5.1): a message's recipients at one domain, to its MX hosts.

MX hosts in order (``mxd.queue.mx``), each host's addresses in order; a connection-level
failure (refused, timeout, TLS, 4xx/5xx greeting) moves on to the next address/host; once
a transaction ran its per-recipient replies are final for this attempt.

Transport security: ``tls_policy_factory`` (``mxd.queue.tlspolicy.make_policy_factory``)
decides each MX host's TLS policy and may refuse a host with ``HostRefused``: the refusal
is an attempt of its own (result ``refused``, with its RFC 8460 result type) and the next
MX is tried.  When every host was refused for good (REQUIRETLS cannot be met, 5.7.30;
also a connected host that does not offer REQUIRETLS, RFC 8689 §4.1) the recipients fail;
otherwise refusals defer them (4.7.5: bogus TLSA, an MX outside an enforced MTA-STS
policy).  Finished connections wait in ``IdleConnections`` for the next message.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, BinaryIO

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.dns.interfaces import IResolver
from mxd.errors import MxdError
from mxd.metrics import IMetrics, NoopMetrics
from mxd.queue import mx
from mxd.queue.connections import IdleConnections
from mxd.queue.outcome import (
    RcptKind,
    RcptOutcome,
    for_all,
    from_transaction,
    reply_fields,
    temporary,
)
from mxd.queue.records import Attempt
from mxd.queue.settings import QueueSettings
from mxd.queue.tlspolicy import HostRefused
from mxd.queue.transports import Via
from mxd.smtp.client import (
    ClientMessage,
    ClientRecipient,
    SMTPClient,
    SMTPClientError,
    SMTPConnectionError,
    SMTPLocalError,
    SMTPNoAnswerError,
    SMTPReplyError,
    SMTPTLSError,
    TLSMode,
    TLSPolicy,
)
from mxd.store import queuedb as qs

log = Logger()

Connector = Callable[[str, int, SMTPClient], Deferred[Any]]
# tls_policy_factory(domain, plan, host, *, addresses, requiretls, tls_required_no)
#   -> Deferred[TLSPolicy];
# it may errback (e.g. mxd.queue.tlspolicy.HostRefused, with ``permanent`` and ``enhanced``)
# to refuse a host: the next MX is tried.
TLSPolicyFactory = Callable[..., Deferred[TLSPolicy]]


class RequireTLSUnavailable(MxdError):
    """A REQUIRETLS message and no way to verify a host (RFC 8689 §4.1): 5.7.30."""

    permanent = True
    enhanced = "5.7.30"


class DirectDelivery:
    """Delivers one claimed message (recipients at one domain) to that domain's MX hosts."""

    def __init__(
        self, *, resolver: IResolver, reactor: Any, settings: QueueSettings,
        open_blob: Callable[[str], BinaryIO], hostname: str,
        metrics: IMetrics | None = None, random: Callable[[], float] | None = None,
        connector: Connector | None = None, tls_policy_factory: TLSPolicyFactory | None = None,
        tls_client_options_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.settings = settings
        self.open_blob = open_blob
        self.metrics: IMetrics = metrics or NoopMetrics()
        self.random = random or _random.SystemRandom().random
        self.connector = connector or self._tcp_connect
        self.tls_policy_factory = tls_policy_factory
        self.tls_client_options_factory = tls_client_options_factory
        self.client_settings = attrs.evolve(settings.client, helo_name=hostname)
        self.idle = IdleConnections(reactor, settings.idle_timeout, settings.max_idle_per_host,
                                    settings.max_messages_per_connection)

    def close(self) -> None:
        """Close the idle connections (at stop)."""
        self.idle.close_all()

    async def deliver(self, m: qs.QueuedMessage, via: Via | None = None,
                      ) -> tuple[list[RcptOutcome], list[Attempt]]:
        """Each recipient's outcome, and the attempts made (for the attempt log).

        ``via``: the transport's connection details (socks5: a proxied connector and its
        EHLO name); None: plain direct delivery."""
        domain = m.recipients[0].domain
        try:
            plan = await mx.find_mx_hosts(self.resolver, domain, self.random,
                                          self.settings.own_names)
        except mx.MXError as e:
            kind = RcptKind.PERMANENT if e.permanent else RcptKind.TEMPORARY
            return for_all(m, kind, *reply_fields(e)), []
        attempts: list[Attempt] = []
        refused: list[Exception] = []
        refused_for_good: set[str] = set()  # hosts that can never take this message
        refused_host: dict[int, str] = {}  # id(error) -> the host it refused
        last: Exception = SMTPConnectionError(f"no usable host for {domain}")
        for host in plan.hosts:
            try:
                addrs = await mx.resolve_host(self.resolver, host.name, self.settings.ipv6,
                                              self.settings.ipv4, self.settings.prefer_ipv6)
            except mx.MXError as e:
                last = e
                if host.implicit and e.permanent:
                    return for_all(m, RcptKind.PERMANENT, *reply_fields(e)), attempts
                continue
            if not addrs:
                last = mx.NoSuchDomain(host.name, "the host has no address")
                if host.implicit:
                    return for_all(m, RcptKind.PERMANENT, *reply_fields(last)), attempts
                continue
            try:
                policy = await self._policy(m, plan, host, addrs)
            except Exception as e:  # noqa: BLE001 - the policy refuses this host
                # mxd.queue.tlspolicy.HostRefused: a DANE/MTA-STS/REQUIRETLS verdict against
                # this host (4.7.5 temporary, 5.7.30 permanent); try the next one.  Any other
                # error deciding the policy is a temporary refusal of the host.
                log.info("not using {host} for {domain}: {why}", host=host.name, domain=domain,
                         why=str(e))
                attempts.append(Attempt(host.name, "", error=e,
                                        refusal=e.refusal if isinstance(e, HostRefused) else None))
                refused.append(e)
                refused_host[id(e)] = host.name
                if getattr(e, "permanent", False):
                    refused_for_good.add(host.name)
                last = e
                continue
            for addr in addrs:
                if mx.is_own_address(addr.ip, self.settings.own_addresses):
                    last = mx.MailLoop(domain, f"{host.name} [{addr.ip}] is this server")
                    continue
                attempt = await self._attempt(m, host, addr.ip, policy, via)
                attempts.append(attempt)
                if attempt.result is not None:
                    return from_transaction(m, attempt.result, attempt.host,
                                            attempt.peer_dsn), attempts
                err = attempt.error or last
                if isinstance(err, SMTPLocalError) and err.enhanced == "5.7.30":
                    # RFC 8689 §4.1: the host does not offer REQUIRETLS: it cannot take this
                    # message; another MX host may.
                    refused.append(err)
                    refused_host[id(err)] = host.name
                    refused_for_good.add(host.name)
                    last = err
                    break
                if isinstance(err, SMTPLocalError) or (
                        isinstance(err, SMTPReplyError) and err.command == "MAIL FROM"
                        and err.code != 421):
                    # (RFC 5321 §3.8: a 421 is the server closing, no verdict on the
                    # message: the next host is tried.)
                    kind = RcptKind.PERMANENT if err.permanent else RcptKind.TEMPORARY
                    return for_all(m, kind, *reply_fields(err), host=host.name), attempts
                last = err
        if refused_for_good and len(refused_for_good) == len({h.name for h in plan.hosts}):
            # Every host was refused for good (RFC 8689 §4.1: REQUIRETLS cannot be met): a
            # failure DSN (5.7.30), itself sent without REQUIRETLS.
            final = next(e for e in reversed(refused) if getattr(e, "permanent", False))
            _code, enhanced, text = reply_fields(final)
            host_name = refused_host[id(final)]
            if not text.startswith(host_name):
                text = f"{host_name}: {text}"
            return for_all(m, RcptKind.PERMANENT, 550, enhanced or "5.7.30", text), attempts
        code, enhanced, text = reply_fields(last)
        if refused and last is refused[-1]:
            code, enhanced = 451, temporary(getattr(last, "enhanced", "4.7.5"))
        if code is not None and code >= 500:
            # A 5xx greeting from one host, or our own address among the MX's (a loop
            # through one host), is no verdict on the message: it is deferred, with a 4yz.
            code = 451
        return for_all(m, RcptKind.TEMPORARY, code or 451, temporary(enhanced), text), attempts

    async def _policy(self, m: qs.QueuedMessage, plan: mx.MXPlan, host: mx.MXHost,
                      addresses: list[mx.HostAddress]) -> TLSPolicy:
        if self.tls_policy_factory is not None:
            return await self.tls_policy_factory(
                m.recipients[0].domain, plan, host, addresses=tuple(addresses),
                requiretls=m.requiretls, tls_required_no=m.tls_required_no)
        if m.requiretls:
            # RFC 8689 §4.1: REQUIRETLS needs a host verified by DANE or MTA-STS; with both
            # off (no policy factory) no host can be.
            raise RequireTLSUnavailable(
                f"{host.name}: REQUIRETLS needs DANE or MTA-STS verification, which is off")
        options = (self.tls_client_options_factory(host.name)
                   if self.tls_client_options_factory is not None else None)
        return TLSPolicy(mode=TLSMode.OPPORTUNISTIC, client_options=options)

    async def _attempt(self, m: qs.QueuedMessage, host: mx.MXHost, ip: str,
                       policy: TLSPolicy, via: Via | None) -> Attempt:
        attempt = await self.connect_and_send(m, host.name, ip, policy, via)
        if (isinstance(attempt.error, SMTPTLSError) and policy.mode is TLSMode.OPPORTUNISTIC
                and self.settings.plaintext_fallback and not m.requiretls):
            # RFC 7435 §4: opportunistic TLS that fails falls back to cleartext.
            log.info("TLS with {host} [{ip}] failed; retrying without TLS", host=host.name, ip=ip)
            retry = await self.connect_and_send(m, host.name, ip,
                                                attrs.evolve(policy, mode=TLSMode.NONE), via)
            return attrs.evolve(retry, tls=attempt.tls, starttls=attempt.starttls,
                                new_session=attempt.new_session)
        return attempt

    async def connect_and_send(self, m: qs.QueuedMessage, host: str, ip: str,
                               policy: TLSPolicy, via: Via | None = None) -> Attempt:
        """One transaction with ``host`` at ``ip``: on an idle connection of the same
        key (host, TLS policy, transport) when there is one, else on a new connection
        (``via``'s connector, port, EHLO name, AUTH and implicit TLS when given)."""
        port = via.port if via is not None else self.settings.port
        key = (ip, port, host, policy.mode, policy.policy_type, policy.policy_domain,
               *(via.key if via is not None else ()))
        cached = self.idle.take(key)
        if cached is not None:
            attempt = await self._send_on(cached, m, host, ip, key, policy, reused=True)
            err = attempt.error
            if not isinstance(err, SMTPConnectionError) and not (
                    isinstance(err, SMTPReplyError) and err.code == 421):
                return attempt
            # the peer closed the idle connection meanwhile (or is closing it, 421): try a
            # fresh one
        if via is None:
            client = SMTPClient(self.reactor, self.client_settings, policy, host)
        else:
            client = SMTPClient(self.reactor, via.client_settings or self.client_settings,
                                policy, host, via.auth, implicit_tls=via.implicit_tls)
        connector = via.connector if via is not None and via.connector else self.connector
        try:
            await connector(ip, port, client)
        except Exception as e:  # noqa: BLE001 - any connect failure is a temporary one
            self.metrics.inc("queue_connections", result="failed")
            # RFC 3463 §3.5: X.4.1, no answer from host.
            through = f" through transport {via.name}" if via and via.connector else ""
            return Attempt(host, ip, policy=policy, error=SMTPNoAnswerError(
                f"connect to {host} [{ip}]{through}: {e}"))
        try:
            await client.start()
        except SMTPClientError as e:
            client.quit()
            return _session(client, host, ip, policy, False, error=e)
        self.metrics.inc("queue_connections", result="ok")
        return await self._send_on(client, m, host, ip, key, policy)

    async def _send_on(self, client: SMTPClient, m: qs.QueuedMessage, host: str, ip: str,
                       key: tuple[Any, ...], policy: TLSPolicy,
                       reused: bool = False) -> Attempt:
        cm = ClientMessage(
            mail_from=m.mail_from,
            recipients=tuple(ClientRecipient(r.address, r.notify, r.orcpt) for r in m.recipients),
            size=m.size, body=m.body, smtputf8=m.smtputf8, ret=m.ret, envid=m.envid,
            requiretls=m.requiretls,
        )
        try:
            with self.open_blob(m.blob_id) as body:
                result = await client.send(cm, body)
        except SMTPClientError as e:
            client.quit()
            return _session(client, host, ip, policy, reused, error=e)
        except OSError as e:
            client.quit()
            return _session(client, host, ip, policy, reused,
                            error=SMTPConnectionError(f"reading the message: {e}"))
        self.idle.put(key, client)
        return _session(client, host, ip, policy, reused, result=result,
                        peer_dsn=client.has("DSN"))

    def _tcp_connect(self, ip: str, port: int, client: SMTPClient) -> Deferred[Any]:
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            connectProtocol,
        )

        cls = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        endpoint = cls(self.reactor, ip, port, timeout=self.settings.connect_timeout)
        return connectProtocol(endpoint, client)


def _session(client: SMTPClient, host: str, ip: str, policy: TLSPolicy, reused: bool,
             **kw: Any) -> Attempt:
    """An attempt over ``client``'s connection, with what it showed about TLS."""
    return Attempt(host, ip, tls=client.tls_result, policy=policy, new_session=not reused,
                   local_ip=client.local_ip, peer_helo=client.peer_helo,
                   starttls=client.starttls_offered or client.tls_result.used,
                   requiretls=client.tls_result.used and client.has("REQUIRETLS"), **kw)
