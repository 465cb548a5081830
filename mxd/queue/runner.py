"""The queue runner: a Service that delivers due queue work (RFC 5321 §4.5.4, §5).

It wakes with ``callLater`` at the next due time (never a polling loop), claims due
recipients (grouped per message and destination domain: one SMTP transaction each),
runs deliveries with bounded concurrency in total and per domain, and writes the results:
delivered and permanently failed recipients leave the queue, temporary failures are
rescheduled by ``mxd.queue.schedule``; failure and delayed DSNs (``mxd.smtp.dsn``) are
queued in the same transaction as the result that caused them, with a null reverse-path,
and go to a local sender's INBOX through ``LocalDelivery`` or out like any message.

Direct delivery (RFC 5321 §5.1): MX hosts in order (``mxd.queue.mx``), each host's
addresses in order; a connection-level failure (refused, timeout, TLS, 4xx/5xx greeting)
moves on to the next address/host; once a transaction ran its per-recipient replies are
final for this attempt.

Transport security (issue 8): ``tls_policy_factory`` (``mxd.queue.tlspolicy.
make_policy_factory``) decides each MX host's TLS policy and may refuse a host with
``HostRefused``: the refusal is logged as a ``refused`` attempt with its RFC 8460 result
type and the next MX is tried.  When every host was refused for good (REQUIRETLS cannot be
met, 5.7.30; also a connected host that does not offer REQUIRETLS, RFC 8689 §4.1) the
message fails with a DSN sent without REQUIRETLS and without the body; otherwise refusals
defer it (4.7.5: bogus TLSA, an MX outside an enforced MTA-STS policy).  Every attempt row
carries the RFC 8460 §4.4 fields of its session (once per connection, not per message on a
reused one) and updates the recipient domain's TLS support record (``queue_tls_domains``).

Restart safety: see mxd.store.queuedb (in-flight leases, recovered at start).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from mxd.errors import MxdError
from mxd.metrics import IMetrics, NoopMetrics
from mxd.queue import mx
from mxd.queue.queue import Queue
from mxd.queue.routes import Route, RouteError, Transport, TransportKind, choose_transport
from mxd.queue.schedule import RetrySettings, delay_dsn_due, give_up_time, next_attempt
from mxd.smtp import dsn as dsnmod
from mxd.smtp.client import (
    ClientMessage,
    ClientRecipient,
    ClientSettings,
    SMTPClient,
    SMTPClientError,
    SMTPConnectionError,
    SMTPLocalError,
    SMTPNoAnswerError,
    SMTPReplyError,
    SMTPTLSError,
    TLSMode,
    TLSPolicy,
    TLSResult,
    TransactionResult,
)
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, PolicyType, ResultType, TLSAttempt

log = Logger()


@attrs.frozen
class QueueSettings:
    """Settings of the queue runner (the composition layer maps the config onto it)."""

    retry: RetrySettings = RetrySettings()
    max_concurrent: int = 20  # deliveries (SMTP transactions) in flight in total
    max_per_domain: int = 4  # ... and per destination domain
    port: int = 25  # direct delivery port (RFC 5321 §4.5.4.2); tests use another
    connect_timeout: float = 30.0
    lease: float = 3 * 3600.0  # longer than any attempt can take (sum of client timeouts)
    batch: int = 500  # due recipients read per wake
    max_rcpts_per_transaction: int = 100  # RFC 5321 §4.5.3.1.8: at least 100 must be accepted
    own_names: frozenset[str] = frozenset()  # our host names (RFC 5321 §5.1 MX loop rule)
    own_addresses: frozenset[str] = frozenset()  # never connect to these
    ipv4: bool = True
    ipv6: bool = True
    prefer_ipv6: bool = False
    plaintext_fallback: bool = True  # opportunistic TLS: retry in plaintext after a TLS failure
    client: ClientSettings = ClientSettings()
    routes: tuple[Route, ...] = ()
    transports: tuple[Transport, ...] = ()
    stop_timeout: float = 10.0
    # Connection reuse: a connection that just delivered waits this long for the next
    # message to the same host (like Postfix's connection cache); 0 disables reuse.
    idle_timeout: float = 2.0
    max_idle_per_host: int = 8
    max_messages_per_connection: int = 100


class RequireTLSUnavailable(MxdError):
    """A REQUIRETLS message and no way to verify a host (RFC 8689 §4.1): 5.7.30."""

    permanent = True
    enhanced = "5.7.30"


class LocalDelivery(Protocol):
    """Delivery into local mailboxes (DSNs to local senders, local recipients)."""

    def is_local(self, address: str) -> bool: ...

    def deliver(self, address: str, body: bytes) -> Deferred[None]:
        """Errbacks with an error whose ``permanent`` attribute is true for unknown users."""


Connector = Callable[[str, int, SMTPClient], Deferred[Any]]
# tls_policy_factory(domain, plan, host, *, requiretls, tls_required_no) -> Deferred[TLSPolicy];
# it may errback (e.g. mxd.queue.tlspolicy.HostRefused, with ``permanent`` and ``enhanced``)
# to refuse a host: the runner then tries the next MX.
TLSPolicyFactory = Callable[..., Deferred[TLSPolicy]]


@attrs.frozen
class RcptOutcome:
    recipient: qs.QueuedRecipient
    kind: str  # "delivered" | "temporary" | "permanent"
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    host: str | None = None
    peer_dsn: bool = False  # the peer took NOTIFY (so no "relayed" DSN from us)
    final: bool = False  # delivered into a local mailbox (RFC 3464 "delivered")


@attrs.frozen
class _Attempt:
    host: str
    ip: str
    result: TransactionResult | None = None
    error: Exception | None = None
    tls: TLSResult | None = None
    peer_dsn: bool = False
    policy: TLSPolicy | None = None
    new_session: bool = True  # False: a message on a reused connection
    local_ip: str | None = None
    peer_helo: str | None = None  # None: the session never got to EHLO
    starttls: bool = False  # offered before TLS
    requiretls: bool = False  # offered (after TLS) (RFC 8689 §3)
    refusal: Any = None  # mxd.queue.tlspolicy.HostRefusal: not connected (issue 8)


def _reply_fields(e: Exception) -> tuple[int | None, str | None, str]:
    if isinstance(e, SMTPReplyError):
        return e.code, e.enhanced, " ".join(e.lines)
    if isinstance(e, mx.MXError):
        return (550 if e.permanent else 451), e.enhanced, str(e)
    return None, getattr(e, "enhanced", "4.4.1"), str(e) or e.__class__.__name__


class QueueRunner(Service):
    """Delivers the queue's due work; see the module docstring."""

    name = "queue-runner"

    def __init__(
        self,
        queue: Queue,
        resolver: mx.MXResolver,
        reactor: Any,
        settings: QueueSettings = QueueSettings(),
        tls_client_options_factory: Callable[[str], Any] | None = None,
        local_delivery: LocalDelivery | None = None,
        hostname: str = "localhost",
        metrics: IMetrics | None = None,
        *,
        random: Callable[[], float] | None = None,
        connector: Connector | None = None,
        tls_policy_factory: TLSPolicyFactory | None = None,
    ) -> None:
        self.queue = queue
        self.resolver = resolver
        self.reactor = reactor
        self.settings = settings
        self.tls_client_options_factory = tls_client_options_factory
        self.local_delivery = local_delivery
        self.hostname = hostname
        self.metrics: IMetrics = metrics or NoopMetrics()
        self.random = random or _random.SystemRandom().random
        self.connector = connector or self._tcp_connect
        self.tls_policy_factory = tls_policy_factory
        self.client_settings = attrs.evolve(settings.client, helo_name=hostname)
        self._transports = {t.name: t for t in settings.transports}
        self._timer: Any = None
        self._timer_at: float | None = None
        self._jobs: dict[int, Deferred[None]] = {}
        self._job_seq = 0
        self._per_domain: dict[str, int] = {}
        self._waking = False
        self._again = False
        self._idle = IdleConnections(self.reactor, settings.idle_timeout,
                                     settings.max_idle_per_host, settings.max_messages_per_connection)
        self.started: Deferred[None] | None = None
        queue.add_listener(self.wake_soon)

    # -- service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        now = self.reactor.seconds()
        d = self.queue.store.transact(lambda c: qs.recover_inflight(c, now))

        def recovered(n: int) -> None:
            if n:
                log.warn("{n} recipient(s) were in flight at the last stop; retrying them", n=n)
            self.wake_soon()

        d.addCallback(recovered)
        d.addErrback(lambda f: log.failure("queue recovery failed", f))
        self.started = d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._idle.close_all()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending = list(self._jobs.values())
        if not pending:
            return _done()
        done: Deferred[None] = Deferred()
        remaining = [len(pending)]

        def one(_: Any) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and not done.called:
                done.callback(None)

        for d in pending:
            d.addBoth(one)
        def give_up() -> None:
            if not done.called:
                done.callback(None)

        timer = self.reactor.callLater(self.settings.stop_timeout, give_up)
        done.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return done

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    # -- waking ------------------------------------------------------------------------

    def wake_soon(self) -> None:
        """Look for due work as soon as possible (after enqueue, kick, a finished job)."""
        if self.running:
            self._schedule(self.reactor.seconds())

    def _schedule(self, at: float) -> None:
        now = self.reactor.seconds()
        if self._timer is not None and self._timer.active():
            if self._timer_at is not None and self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.reactor.callLater(max(0.0, at - now), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self.running:
            return
        if self._waking:
            self._again = True
            return
        d = ensureDeferred(self._fill())
        d.addErrback(lambda f: log.failure("queue runner wake failed", f))

    async def _fill(self) -> None:
        self._waking = True
        try:
            while self.running:
                self._again = False
                more, nxt = await self._claim_and_start()
                if more or self._again:
                    continue  # more due work, or new work arrived while we were busy
                if nxt is not None and nxt > self.reactor.seconds() and self.running:
                    self._schedule(nxt)
                # Due work blocked by the concurrency limits is picked up when a job ends.
                break
        finally:
            self._waking = False

    async def _claim_and_start(self) -> tuple[bool, float | None]:
        """Claim and start what capacity allows, in one store transaction.

        Returns (more due work may be waiting, the next due time).
        """
        s = self.settings
        free = s.max_concurrent - len(self._jobs)
        now = self.reactor.seconds()
        running = dict(self._per_domain)
        limit = s.max_per_domain

        metrics = self.metrics

        def op(c: Any) -> tuple[list[qs.QueuedMessage], bool, float | None]:
            for state, count in qs.count_recipients(c).items():
                metrics.set("queue_recipients", count, state=state)
            if free <= 0:
                return [], False, qs.next_due_time(c)
            due = qs.due_recipients(c, now, s.batch)
            groups: dict[tuple[str, str, str | None], list[int]] = {}
            for queue_id, rid, domain, transport in due:
                if running.get(domain, 0) >= limit:
                    continue
                ids = groups.setdefault((queue_id, domain, transport), [])
                if len(ids) < s.max_rcpts_per_transaction:
                    ids.append(rid)
            claimed: list[qs.QueuedMessage] = []
            planned: dict[str, int] = {}
            for (_qid, domain, _t), ids in groups.items():
                if len(claimed) >= free:
                    break
                if running.get(domain, 0) + planned.get(domain, 0) >= limit:
                    continue
                m = qs.claim(c, ids, now, s.lease)
                if m is not None:
                    planned[domain] = planned.get(domain, 0) + 1
                    claimed.append(m)
            more = bool(claimed) and len(due) >= s.batch and len(claimed) < free
            return claimed, more, qs.next_due_time(c)

        messages, more, nxt = await self.queue.store.transact(op)
        for m in messages:
            self._start_job(m)
        return more, nxt

    def _start_job(self, m: qs.QueuedMessage) -> None:
        domain = m.recipients[0].domain
        self._job_seq += 1
        job_id = self._job_seq
        self._per_domain[domain] = self._per_domain.get(domain, 0) + 1
        d = ensureDeferred(self._run_job(m))

        def finished(_: Any) -> None:
            self._jobs.pop(job_id, None)
            left = self._per_domain.get(domain, 1) - 1
            if left > 0:
                self._per_domain[domain] = left
            else:
                self._per_domain.pop(domain, None)
            self.wake_soon()

        d.addErrback(lambda f: log.failure("delivery job for {queue_id} failed", f,
                                           queue_id=m.queue_id))
        d.addBoth(finished)
        if not d.called:
            self._jobs[job_id] = d

    # -- one job: deliver, then record --------------------------------------------------

    async def _run_job(self, m: qs.QueuedMessage) -> None:
        started = self.reactor.seconds()
        try:
            outcomes, attempts = await self._deliver(m)
        except Exception as e:  # noqa: BLE001 - any bug here must defer, not lose mail
            log.failure("delivery of {queue_id} crashed", queue_id=m.queue_id)
            outcomes = [RcptOutcome(r, "temporary", 451, "4.3.0", f"internal error: {e}")
                        for r in m.recipients]
            attempts = []
        await self._record(m, outcomes, attempts)
        self.metrics.observe("queue_delivery_seconds", self.reactor.seconds() - started)

    async def _deliver(self, m: qs.QueuedMessage) -> tuple[list[RcptOutcome], list[_Attempt]]:
        first = m.recipients[0]
        if self.local_delivery is not None and self.local_delivery.is_local(first.address):
            return await self._deliver_local(m), []
        try:
            transport = choose_transport(self.settings.routes, self._transports, m.mail_from,
                                         first.address, first.transport)
        except RouteError as e:
            return self._all(m, "temporary", 451, "4.3.5", str(e)), []
        if transport.kind is TransportKind.FAIL:
            kind = "permanent" if transport.fail_code >= 500 else "temporary"
            return self._all(m, kind, transport.fail_code, transport.fail_enhanced,
                             transport.fail_text), []
        if transport.kind is not TransportKind.DIRECT:
            return self._all(m, "temporary", 451, "4.3.5",
                             f"transport {transport.kind} is not available"), []
        return await self._deliver_direct(m)

    @staticmethod
    def _all(m: qs.QueuedMessage, kind: str, code: int | None, enhanced: str | None,
             text: str, host: str | None = None) -> list[RcptOutcome]:
        return [RcptOutcome(r, kind, code, enhanced, text, host) for r in m.recipients]

    async def _deliver_local(self, m: qs.QueuedMessage) -> list[RcptOutcome]:
        assert self.local_delivery is not None
        with self.queue.store.open_blob(m.blob_id) as f:
            data = f.read()
        out = []
        for r in m.recipients:
            try:
                await self.local_delivery.deliver(r.address, data)
                out.append(RcptOutcome(r, "delivered", 250, "2.0.0", "delivered locally",
                                       final=True))
            except Exception as e:  # noqa: BLE001 - typed by its permanent flag
                if getattr(e, "permanent", False):
                    out.append(RcptOutcome(r, "permanent", 550, "5.1.1", str(e)))
                else:
                    out.append(RcptOutcome(r, "temporary", 451, "4.3.0", str(e)))
        return out

    async def _deliver_direct(self, m: qs.QueuedMessage) -> tuple[list[RcptOutcome], list[_Attempt]]:
        domain = m.recipients[0].domain
        try:
            plan = await mx.find_mx_hosts(self.resolver, domain, self.random,
                                          self.settings.own_names)
        except mx.MXError as e:
            kind = "permanent" if e.permanent else "temporary"
            return self._all(m, kind, *_reply_fields(e)), []
        attempts: list[_Attempt] = []
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
                    return self._all(m, "permanent", *_reply_fields(e)), attempts
                continue
            if not addrs:
                last = mx.NoSuchDomain(host.name, "the host has no address")
                if host.implicit:
                    return self._all(m, "permanent", *_reply_fields(last)), attempts
                continue
            try:
                policy = await self._policy(m, plan, host)
            except Exception as e:  # noqa: BLE001 - the policy refuses this host (issue 8)
                # mxd.queue.tlspolicy.HostRefused: a DANE/MTA-STS/REQUIRETLS verdict against
                # this host (4.7.5 temporary, 5.7.30 permanent); try the next one.  Any other
                # error deciding the policy is a temporary refusal of the host.
                log.info("not using {host} for {domain}: {why}", host=host.name, domain=domain,
                         why=str(e))
                attempts.append(_Attempt(host.name, "", error=e,
                                         refusal=getattr(e, "refusal", None)))
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
                attempt = await self._attempt(m, host, addr.ip, policy)
                attempts.append(attempt)
                if attempt.result is not None:
                    return self._outcomes(m, attempt), attempts
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
                    kind = "permanent" if err.permanent else "temporary"
                    return self._all(m, kind, *_reply_fields(err), host=host.name), attempts
                last = err
        if refused_for_good and len(refused_for_good) == len({h.name for h in plan.hosts}):
            # Every host was refused for good (RFC 8689 §4.1: REQUIRETLS cannot be met): a
            # failure DSN (5.7.30), itself sent without REQUIRETLS (see _make_dsn).
            final = next(e for e in reversed(refused) if getattr(e, "permanent", False))
            _code, enhanced, text = _reply_fields(final)
            host_name = refused_host[id(final)]
            if not text.startswith(host_name):
                text = f"{host_name}: {text}"
            return self._all(m, "permanent", 550, enhanced or "5.7.30", text), attempts
        code, enhanced, text = _reply_fields(last)
        if refused and last is refused[-1]:
            code, enhanced = 451, _temporary(getattr(last, "enhanced", "4.7.5"))
        if code is not None and code >= 500 and not isinstance(last, mx.MXError):
            code = 451  # a 5xx greeting from one host is no verdict on the message
        return self._all(m, "temporary", code or 451, _temporary(enhanced), text), attempts

    def _outcomes(self, m: qs.QueuedMessage, a: _Attempt) -> list[RcptOutcome]:
        assert a.result is not None
        by_addr = {r.address: r for r in a.result.recipients}
        out = []
        for r in m.recipients:
            rr = by_addr.get(r.address)
            if rr is None:
                out.append(RcptOutcome(r, "temporary", 451, "4.3.0", "no reply", a.host))
                continue
            reply = rr.reply
            # RecipientResult.permanent: RFC 5321 §4.5.3.1.10 makes a 552 to RCPT temporary.
            kind = "delivered" if reply.ok else "permanent" if rr.permanent else "temporary"
            enhanced = reply.enhanced
            if kind == "temporary" and enhanced and enhanced[0] == "5":
                enhanced = _temporary(enhanced)  # RFC 3463 §3.1: the class follows the verdict
            out.append(RcptOutcome(r, kind, reply.code, enhanced, " ".join(reply.lines),
                                   a.host, a.peer_dsn))
        return out

    async def _policy(self, m: qs.QueuedMessage, plan: mx.MXPlan, host: mx.MXHost) -> TLSPolicy:
        if self.tls_policy_factory is not None:
            return await self.tls_policy_factory(
                m.recipients[0].domain, plan, host, requiretls=m.requiretls,
                tls_required_no=m.tls_required_no)
        if m.requiretls:
            # RFC 8689 §4.1: REQUIRETLS needs a host verified by DANE or MTA-STS; with both
            # off (no policy factory) no host can be.
            raise RequireTLSUnavailable(
                f"{host.name}: REQUIRETLS needs DANE or MTA-STS verification, which is off")
        options = (self.tls_client_options_factory(host.name)
                   if self.tls_client_options_factory is not None else None)
        return TLSPolicy(mode=TLSMode.OPPORTUNISTIC, client_options=options)

    async def _attempt(self, m: qs.QueuedMessage, host: mx.MXHost, ip: str,
                       policy: TLSPolicy) -> _Attempt:
        attempt = await self._connect_and_send(m, host.name, ip, policy)
        if (isinstance(attempt.error, SMTPTLSError) and policy.mode is TLSMode.OPPORTUNISTIC
                and self.settings.plaintext_fallback and not m.requiretls):
            # RFC 7435 §4: opportunistic TLS that fails falls back to cleartext.
            log.info("TLS with {host} [{ip}] failed; retrying without TLS", host=host.name, ip=ip)
            retry = await self._connect_and_send(m, host.name, ip, attrs.evolve(policy, mode=TLSMode.NONE))
            return attrs.evolve(retry, tls=attempt.tls, starttls=attempt.starttls,
                                new_session=attempt.new_session)
        return attempt

    async def _connect_and_send(self, m: qs.QueuedMessage, host: str, ip: str,
                                policy: TLSPolicy) -> _Attempt:
        key = (ip, self.settings.port, host, policy.mode, policy.policy_type, policy.policy_domain)
        cached = self._idle.take(key)
        if cached is not None:
            attempt = await self._send_on(cached, m, host, ip, key, policy, reused=True)
            err = attempt.error
            if not isinstance(err, SMTPConnectionError) and not (
                    isinstance(err, SMTPReplyError) and err.code == 421):
                return attempt
            # the peer closed the idle connection meanwhile (or is closing it, 421): try a
            # fresh one
        client = SMTPClient(self.reactor, self.client_settings, policy, host)
        try:
            await self.connector(ip, self.settings.port, client)
        except Exception as e:  # noqa: BLE001 - any connect failure is a temporary one
            self.metrics.inc("queue_connections", result="failed")
            # RFC 3463 §3.5: X.4.1, no answer from host.
            return _Attempt(host, ip, error=SMTPNoAnswerError(f"connect to {host} [{ip}]: {e}"),
                            policy=policy)
        try:
            await client.start()
        except SMTPClientError as e:
            client.quit()
            return _session(client, host, ip, policy, False, error=e)
        self.metrics.inc("queue_connections", result="ok")
        return await self._send_on(client, m, host, ip, key, policy)

    async def _send_on(self, client: SMTPClient, m: qs.QueuedMessage, host: str, ip: str,
                       key: tuple[Any, ...], policy: TLSPolicy,
                       reused: bool = False) -> _Attempt:
        cm = ClientMessage(
            mail_from=m.mail_from,
            recipients=tuple(ClientRecipient(r.address, r.notify, r.orcpt) for r in m.recipients),
            size=m.size, body=m.body, smtputf8=m.smtputf8, ret=m.ret, envid=m.envid,
            requiretls=m.requiretls,
        )
        try:
            with self.queue.store.open_blob(m.blob_id) as body:
                result = await client.send(cm, body)
        except SMTPClientError as e:
            client.quit()
            return _session(client, host, ip, policy, reused, error=e)
        except OSError as e:
            client.quit()
            return _session(client, host, ip, policy, reused,
                            error=SMTPConnectionError(f"reading the message: {e}"))
        self._idle.put(key, client)
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

    # -- recording results and DSNs -----------------------------------------------------

    async def _record(self, m: qs.QueuedMessage, outcomes: list[RcptOutcome],
                      attempts: list[_Attempt]) -> None:
        now = self.reactor.seconds()
        retry = self.settings.retry
        reports: list[dsnmod.RecipientReport] = []
        finish: list[int] = []
        defer: list[tuple[qs.QueuedRecipient, RcptOutcome, float, bool]] = []
        next_times: list[float] = []
        for o in outcomes:
            r = o.recipient
            self.metrics.inc("queue_attempts", result=o.kind)
            diag = f"{o.code} {o.enhanced or ''} {o.text or ''}".replace("  ", " ").strip() if o.code else o.text
            if o.kind == "delivered":
                finish.append(r.id)
                log.info("delivered {queue_id} to <{rcpt}> via {host}: {reply}", queue_id=m.queue_id,
                         rcpt=r.address, host=o.host, reply=diag)
                # RFC 3461 §6.2.1: final delivery is "delivered"; handing on to an MTA
                # without DSN support is "relayed" (one that has it reports itself).
                action = dsnmod.Action.DELIVERED if o.final else dsnmod.Action.RELAYED
                if (o.final or not o.peer_dsn) and r.notify is not None \
                        and dsnmod.wants_dsn(m.mail_from, r.notify, action):
                    reports.append(dsnmod.RecipientReport(
                        r.address, action, o.enhanced or "2.0.0", r.orcpt, o.host, diag, now))
                continue
            attempts_n = r.attempts + 1
            nxt = None if o.kind == "permanent" else next_attempt(
                m.queued_at, now, attempts_n, retry, self.random)
            if nxt is None:
                finish.append(r.id)
                status = o.enhanced or ("5.0.0" if o.kind == "permanent" else "4.4.7")
                if o.kind != "permanent":
                    diag = f"{diag} (gave up after {attempts_n} attempts)"
                log.info("bounced {queue_id} for <{rcpt}>: {reply}", queue_id=m.queue_id,
                         rcpt=r.address, reply=diag)
                if dsnmod.wants_dsn(m.mail_from, r.notify, dsnmod.Action.FAILED):
                    reports.append(dsnmod.RecipientReport(
                        r.address, dsnmod.Action.FAILED, status, r.orcpt, o.host, diag, now))
                continue
            send_delay = delay_dsn_due(attempts_n, retry, r.delay_dsn_sent)
            defer.append((r, o, nxt, r.delay_dsn_sent or send_delay))
            next_times.append(nxt)
            log.info("deferred {queue_id} for <{rcpt}> until {when}: {reply}", queue_id=m.queue_id,
                     rcpt=r.address, when=nxt, reply=diag)
            if send_delay and dsnmod.wants_dsn(m.mail_from, r.notify, dsnmod.Action.DELAYED):
                reports.append(dsnmod.RecipientReport(
                    r.address, dsnmod.Action.DELAYED, o.enhanced or "4.0.0", r.orcpt, o.host, diag,
                    now, give_up_time(m.queued_at, retry)))
        dsn_blob: str | None = None
        dsn_envelope: OutboundMessage | None = None
        if reports and m.mail_from and not m.is_dsn:
            try:
                dsn_blob, dsn_envelope = await self._make_dsn(m, reports, now, attempts_n_max(outcomes),
                                                              min(next_times) if next_times else None)
            except Exception:  # noqa: BLE001 - a DSN problem must not lose the result
                log.failure("cannot build a DSN for {queue_id}", queue_id=m.queue_id)
        dsn_id = self._dsn_queue_id() if dsn_blob else None
        store = self.queue.store

        def op(c: Any) -> None:
            for a in attempts:
                qs.log_attempt(c, _attempt_record(m, a, now))
                support = _domain_tls(m, a, now)
                if support is not None:
                    qs.record_domain_tls(c, support)
            for rid in finish:
                qs.finish_recipient(c, rid)
            for r, o, nxt, sent in defer:
                qs.defer_recipient(c, r.id, next_attempt=nxt, now=now, code=o.code,
                                   enhanced=o.enhanced, text=o.text, host=o.host,
                                   delay_dsn_sent=sent)
            blob = qs.remove_message_if_done(c, m.id)
            if blob is not None:
                store.unref_blob(c, blob)
            if dsn_blob is not None and dsn_envelope is not None and dsn_id is not None:
                store.ref_blob(c, dsn_blob)
                qs.insert_message(c, dsn_id, dsn_blob, dsn_envelope, now, is_dsn=True)

        await store.transact(op)
        if dsn_id:
            log.info("queued DSN {dsn_id} about {queue_id} to <{sender}>", dsn_id=dsn_id,
                     queue_id=m.queue_id, sender=m.mail_from)

    @staticmethod
    def _dsn_queue_id() -> str:
        from mxd.queue.queue import new_queue_id

        return new_queue_id()

    async def _make_dsn(self, m: qs.QueuedMessage, reports: list[dsnmod.RecipientReport],
                        now: float, attempts: int, next_time: float | None,
                        ) -> tuple[str, OutboundMessage]:
        retry = self.settings.retry
        with self.queue.store.open_blob(m.blob_id) as f:
            # The DSN goes without REQUIRETLS (RFC 8689 §4.1; it may not be deliverable
            # otherwise), so it never carries the body of a message that required TLS.
            full = ((m.ret or "").upper() == "FULL" and m.size <= dsnmod.MAX_RETURNED_FULL
                    and not (m.requiretls or m.received_requiretls))
            original = f.read() if full else _read_headers(f)
        data = dsnmod.build_dsn(
            reporting_mta=self.hostname, sender=m.mail_from, recipients=reports,
            original=original, ret=m.ret, envid=m.envid, arrival=m.queued_at,
            smtputf8=m.smtputf8, now=now,
            context=dsnmod.ReportContext(attempts=attempts, queued_at=m.queued_at,
                                         next_attempt=next_time,
                                         give_up_at=give_up_time(m.queued_at, retry)),
        )
        envelope = OutboundMessage(
            mail_from="", recipients=(OutboundRecipient(m.mail_from, frozenset({"NEVER"})),),
            smtputf8=m.smtputf8, body="8BITMIME" if dsnmod.dsn_is_8bit(data) else "7BIT",
            size=len(data),
        )
        writer = self.queue.store.new_blob()
        writer.write(data)
        blob_id = await self.queue.store.commit_blob(writer)
        return blob_id, envelope


class IdleConnections:
    """Started SMTP clients waiting for another message to the same host (and TLS policy)."""

    def __init__(self, clock: Any, timeout: float, per_key: int, max_uses: int) -> None:
        self.clock = clock
        self.timeout = timeout
        self.per_key = per_key
        self.max_uses = max_uses
        self._idle: dict[tuple[Any, ...], list[tuple[SMTPClient, Any]]] = {}

    def put(self, key: tuple[Any, ...], client: SMTPClient) -> None:
        entries = self._idle.setdefault(key, [])
        if (self.timeout <= 0 or client.transactions >= self.max_uses
                or len(entries) >= self.per_key or not client.usable):
            client.quit()
            return
        timer = self.clock.callLater(self.timeout, self._expire, key, client)
        entries.append((client, timer))

    def take(self, key: tuple[Any, ...]) -> SMTPClient | None:
        entries = self._idle.get(key)
        while entries:
            client, timer = entries.pop()
            if timer.active():
                timer.cancel()
            if client.usable:
                return client
        return None

    def _expire(self, key: tuple[Any, ...], client: SMTPClient) -> None:
        entries = self._idle.get(key, [])
        for i, (c, _t) in enumerate(entries):
            if c is client:
                del entries[i]
                break
        if not entries:
            self._idle.pop(key, None)
        client.quit()

    def close_all(self) -> None:
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for client, timer in entries:
                if timer.active():
                    timer.cancel()
                client.quit()


def attempts_n_max(outcomes: list[RcptOutcome]) -> int:
    return max((o.recipient.attempts + 1 for o in outcomes), default=1)


def _temporary(enhanced: str | None) -> str:
    if not enhanced:
        return "4.4.1"
    return "4" + enhanced[1:] if enhanced[0] == "5" else enhanced


def _read_headers(f: Any, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    for line in f:
        out += line
        if line in (b"\r\n", b"\n") or len(out) > limit:
            break
    return bytes(out)


def _session(client: SMTPClient, host: str, ip: str, policy: TLSPolicy, reused: bool,
             **kw: Any) -> _Attempt:
    """An attempt over ``client``'s connection, with what it showed about TLS."""
    return _Attempt(host, ip, tls=client.tls_result, policy=policy, new_session=not reused,
                    local_ip=client.local_ip, peer_helo=client.peer_helo,
                    starttls=client.starttls_offered or client.tls_result.used,
                    requiretls=client.tls_result.used and client.has("REQUIRETLS"), **kw)


def _tls_report(m: qs.QueuedMessage, a: _Attempt, now: float) -> TLSAttempt | None:
    """The RFC 8460 record of the attempt's session (None: no TLS session to report: not
    connected, or the server never got to EHLO)."""
    if a.refusal is not None:
        return a.refusal.attempt(now)  # type: ignore[no-any-return]
    if a.tls is None or a.peer_helo is None:
        return None
    report = a.policy.report if a.policy is not None else None
    if report is not None and hasattr(report, "attempt_from_client"):
        attempt: TLSAttempt = report.attempt_from_client(
            a.tls, now, sending_ip=a.local_ip, receiving_ip=a.ip, helo=a.peer_helo)
        return _with_notes(attempt, getattr(report, "notes", ()), a, now)
    # No policy object (the plain opportunistic path): RFC 8460 §4.4 "no-policy-found".
    info = PolicyInfo.none_found(m.recipients[0].domain)
    if a.tls.used and not a.tls.failure:
        return TLSAttempt(info, True, now)
    try:
        rtype = ResultType(a.tls.failure or "starttls-not-supported")
    except ValueError:
        rtype = ResultType.VALIDATION_FAILURE
    return TLSAttempt(info, False, now, FailureDetail(rtype, a.local_ip, a.host, a.peer_helo,
                                                      a.ip))


def _with_notes(attempt: TLSAttempt, notes: Any, a: _Attempt, now: float) -> TLSAttempt:
    """A policy failure found before connecting (``HostTLSPolicy.notes``: a bogus TLSA
    answer or an unlisted MX ignored under ``TLS-Required: No``, unusable TLSA records, an
    MTA-STS testing-mode mismatch) makes the session a failure of that policy (RFC 8460
    §4.3.2) when the session itself succeeded or ran without a policy.  A failed policy
    refresh while a cached policy was used is not one: that policy was applied."""
    if attempt.success is False and attempt.policy.type is not PolicyType.NO_POLICY_FOUND:
        return attempt
    for note in notes or ():
        if note.result_type is ResultType.STS_POLICY_FETCH_ERROR:
            continue
        return TLSAttempt(note.policy, False, now, FailureDetail(
            note.result_type, a.local_ip, a.host, a.peer_helo, a.ip, note.detail[:200] or None))
    return attempt


def _overridden(a: _Attempt) -> bool:
    """Whether DANE/MTA-STS verification failed and was ignored (``TLS-Required: No``)."""
    report = a.policy.report if a.policy is not None else None
    if report is None or not getattr(report, "tls_required_no", False):
        return False
    return bool((a.tls is not None and a.tls.failure) or getattr(report, "notes", ()))


def _attempt_record(m: qs.QueuedMessage, a: _Attempt, now: float) -> qs.AttemptRecord:
    if a.result is not None:
        oks = [r.reply.ok for r in a.result.recipients]
        result = "delivered" if all(oks) else "partial" if any(oks) else "failed"
        reply = a.result.data_reply or (a.result.recipients[0].reply if a.result.recipients else None)
        code, enhanced, text = (reply.code, reply.enhanced, " ".join(reply.lines)) if reply else (None, None, None)
    else:
        result = "refused" if a.refusal is not None else "error"
        code, enhanced, text = _reply_fields(a.error or Exception("unknown"))
    t = a.tls
    r = _tls_report(m, a, now)
    fd = r.failure if r is not None else None
    return qs.AttemptRecord(
        queue_id=m.queue_id, domain=m.recipients[0].domain,
        recipients=tuple(r.address for r in m.recipients), at=now, result=result, host=a.host,
        ip=a.ip or None, code=code, enhanced=enhanced, text=text,
        tls_used=bool(t and t.used), tls_verified=bool(t and t.verified),
        tls_version=t.version if t else None, tls_cipher=t.cipher if t else None,
        tls_policy_type=(r.policy.type.value if r else t.policy_type if t else None),
        tls_policy_domain=(r.policy.domain if r else t.policy_domain if t else None),
        tls_failure=(t.failure if t else fd.result_type.value if fd else None),
        tls_session=a.new_session, tls_success=None if r is None else r.success,
        tls_policy_strings=r.policy.strings if r else (),
        tls_policy_mx=r.policy.mx_host if r else (),
        tls_result_type=fd.result_type.value if fd else None,
        tls_detail=fd.additional_information if fd else None,
        sending_ip=a.local_ip, receiving_helo=a.peer_helo, tls_overridden=_overridden(a),
    )


def _domain_tls(m: qs.QueuedMessage, a: _Attempt, now: float) -> qs.DomainTLS | None:
    """The per-domain support record of a connection that got to EHLO (None otherwise)."""
    if a.peer_helo is None or a.tls is None:
        return None
    return qs.DomainTLS(
        domain=m.recipients[0].domain, at=now, mx_host=a.host, ip=a.ip, starttls=a.starttls,
        requiretls=a.requiretls, tls_used=a.tls.used,
        verified=a.tls.used and a.tls.verified and a.tls.failure is None,
        policy_type=a.tls.policy_type, result_type=a.tls.failure, tls_version=a.tls.version)


def _done() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.callback(None)
    return d
