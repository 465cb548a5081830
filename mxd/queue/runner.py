"""The queue runner: a Service that delivers due queue work (RFC 5321 §4.5.4, §5).

It wakes with ``callLater`` at the next due time (never a polling loop), claims due
recipients (grouped per message and destination domain: one SMTP transaction each),
runs deliveries with bounded concurrency in total and per domain, and writes the results.
Each job: a route chooses the transport (``mxd.queue.routes``); local recipients go
through ``LocalDelivery``, remote ones through ``DirectDelivery`` (``mxd.queue.direct``,
MX hosts, DANE/MTA-STS/REQUIRETLS, the idle-connection cache; the ``socks5`` transport is
the same with each connection through the proxy) or a smarthost (``mxd.queue.smarthost``,
``smtp``/``submission``/``submissions`` transports); the ``fail`` transport fails them
with its reply, and a REQUIRETLS message fails with 5.7.30 through a transport that
cannot verify the next hop (RFC 8689 §4.2); ``mxd.queue.outcome.decide``
turns the recipients' outcomes into finish/defer/DSN, and the runner writes that decision,
the attempts (``mxd.queue.records``) and any DSN (``mxd.smtp.dsn``, null reverse-path,
queued like any message) in one store transaction.

Restart safety: see mxd.store.queuedb (in-flight leases, recovered at start).  A job
renews its recipients' leases every third of ``lease`` while it runs, so that another
runner (a worker, a node) never takes a slow delivery for an abandoned one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxd.dns.interfaces import IResolver
from mxd.metrics import IMetrics, NoopMetrics
from mxd.queue import smarthost
from mxd.queue import transports as tp
from mxd.queue.direct import Connector, DirectDelivery, RequireTLSUnavailable, TLSPolicyFactory
from mxd.queue.outcome import Decision, RcptKind, RcptOutcome, Verdict, decide, for_all
from mxd.queue.queue import Queue, new_queue_id
from mxd.queue.records import Attempt, attempt_metrics, attempt_record, domain_tls
from mxd.queue.routes import DIRECT, RouteError, RouteTable, Transport, TransportKind, choose
from mxd.queue.schedule import give_up_time
from mxd.queue.settings import QueueSettings
from mxd.smtp import dsn as dsnmod
from mxd.smtp.client import SMTPLocalError
from mxd.store import queuedb as qs
from mxd.store.interfaces import BlobWriter, OutboundMessage, OutboundRecipient

__all__ = ["LocalDelivery", "QueueRunner", "QueueSettings", "RequireTLSUnavailable"]

log = Logger()


class LocalDelivery(Protocol):
    """Delivery into local mailboxes (DSNs to local senders, local recipients)."""

    def is_local(self, address: str) -> bool: ...

    def deliver(self, address: str, body: bytes) -> Deferred[None]:
        """Errbacks with an error whose ``permanent`` attribute is true for unknown users."""


class QueueRunner(Service):
    """Delivers the queue's due work; see the module docstring."""

    name = "queue-runner"

    def __init__(
        self,
        queue: Queue,
        resolver: IResolver,
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
        sign: Callable[[bytes, float], bytes] | None = None,
        dsn_recipient: Callable[[str], str] | None = None,
    ) -> None:
        self.queue = queue
        # Where a DSN about a message goes, given its envelope sender: a forwarded
        # message's SRS sender is unwrapped to the original sender (mxd.forwarding).
        self.dsn_recipient = dsn_recipient or (lambda sender: sender)
        # DKIM-signs mxd's own messages (DSNs) by their From domain; None: unsigned.
        self.sign = sign
        self.reactor = reactor
        self.settings = settings
        self.local_delivery = local_delivery
        self.hostname = hostname
        self.metrics: IMetrics = metrics or NoopMetrics()
        self.direct = DirectDelivery(
            resolver=resolver, reactor=reactor, settings=settings,
            open_blob=queue.store.open_blob, hostname=hostname, metrics=self.metrics,
            random=random, connector=connector, tls_policy_factory=tls_policy_factory,
            tls_client_options_factory=tls_client_options_factory)
        self.random = self.direct.random
        self._transports = {t.name: t for t in settings.transports}
        self._routes = settings.route_table or RouteTable(global_routes=settings.routes)
        self._timer: Any = None
        self._timer_at: float | None = None
        self._jobs: dict[int, Deferred[None]] = {}
        self._lease_timers: dict[int, Any] = {}  # job -> its next lease renewal
        self._job_seq = 0
        self._per_domain: dict[str, int] = {}
        self._waking = False
        self._again = False
        self.started: Deferred[None] | None = None
        queue.add_listener(self.wake_soon)

    @property
    def tls_policy_factory(self) -> TLSPolicyFactory | None:
        """Direct delivery's per-host TLS policy (replaceable, for tests)."""
        return self.direct.tls_policy_factory

    @tls_policy_factory.setter
    def tls_policy_factory(self, factory: TLSPolicyFactory | None) -> None:
        self.direct.tls_policy_factory = factory

    # -- service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        now = self.reactor.seconds()
        d = (self.queue.store.recover_inflight(now) if self.settings.recover_at_start
             else succeed(0))

        def recovered(n: int) -> None:
            if n:
                log.warn("{n} recipient(s) were in flight at the last stop; retrying them", n=n)
            self.wake_soon()

        def failed(f: Failure) -> None:
            if self.running:
                log.failure("queue recovery failed", f)
            else:  # stopped during start-up: the store closed under the recovery
                log.info("queue recovery cut short by a stop ({error})",
                         error=f.getErrorMessage())

        self.started = d.addCallback(recovered).addErrback(failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.direct.close()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for timer in self._lease_timers.values():
            if timer.active():
                timer.cancel()
        self._lease_timers.clear()
        pending = list(self._jobs.values())
        if not pending:
            return succeed(None)
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

        claimed = await self.queue.store.claim_due(
            now, free=free, running=running, per_domain=limit, batch=s.batch,
            max_rcpts=s.max_rcpts_per_transaction, lease=s.lease, owner=s.lease_owner)
        for state, count in claimed.counts.items():
            self.metrics.set("queue_recipients", count, state=state)
        messages, more, nxt = claimed.messages, claimed.more, claimed.next_due
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
            timer = self._lease_timers.pop(job_id, None)
            if timer is not None and timer.active():
                timer.cancel()
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
            self._keep_leased(m, job_id)

    def _keep_leased(self, m: qs.QueuedMessage, job_id: int) -> None:
        """While the job runs, renew its recipients' leases every third of the lease, so
        that a delivery taking longer than ``lease`` (a slow receiver, a large message)
        is not taken for abandoned and claimed by another runner or node meanwhile."""
        ids = [r.id for r in m.recipients]
        lease, owner = self.settings.lease, self.settings.lease_owner
        every = max(0.01, lease / 3)

        def renewed(n: int) -> None:
            if n < len(ids) and job_id in self._jobs:  # (not: recorded meanwhile)
                log.warn("{queue_id}: {lost} of {n} lease(s) had run out before renewal;"
                         " another runner may deliver them too", queue_id=m.queue_id,
                         lost=len(ids) - n, n=len(ids))

        def renew() -> None:
            if job_id not in self._jobs or not self.running:
                return
            d = self.queue.store.renew_leases(ids, self.reactor.seconds(), lease, owner)
            d.addCallbacks(renewed, lambda f: log.warn(
                "{queue_id}: lease renewal failed: {error}", queue_id=m.queue_id,
                error=f.getErrorMessage()))
            self._lease_timers[job_id] = self.reactor.callLater(every, renew)

        self._lease_timers[job_id] = self.reactor.callLater(every, renew)

    # -- one job: deliver, then record --------------------------------------------------

    async def _run_job(self, m: qs.QueuedMessage) -> None:
        started = self.reactor.seconds()
        try:
            outcomes, attempts = await self._deliver(m)
        except Exception as e:  # noqa: BLE001 - any bug here must defer, not lose mail
            log.failure("delivery of {queue_id} crashed", queue_id=m.queue_id)
            outcomes = for_all(m, RcptKind.TEMPORARY, 451, "4.3.0", f"internal error: {e}")
            attempts = []
        await self._record(m, outcomes, attempts)
        self.metrics.observe("queue_delivery_seconds", self.reactor.seconds() - started)

    async def _deliver(self, m: qs.QueuedMessage) -> tuple[list[RcptOutcome], list[Attempt]]:
        """The transport for the message's recipients (one domain), and its outcomes.

        Routes are evaluated on every attempt (a route may start at attempt N); each
        attempt row records the transport and the route that chose it."""
        first = m.recipients[0]
        if self.local_delivery is not None and self.local_delivery.is_local(first.address):
            return await self._deliver_local(m), []
        try:
            choice = choose(self._routes, self._transports, m.mail_from, first.address,
                            account=m.sender_account, attempt=first.attempts + 1,
                            override=first.transport)
        except RouteError as e:
            return for_all(m, RcptKind.TEMPORARY, 451, "4.3.5", str(e)), []
        t = choice.transport
        log.info("delivering {queue_id} to {domain} via transport {transport} ({route})",
                 queue_id=m.queue_id, domain=first.domain, transport=t.name,
                 route=choice.reason)
        outcomes, attempts = await self._deliver_via(m, t, choice.reason)
        self.metrics.inc("queue_transport_attempts", transport=t.name)
        for o in outcomes:
            self.metrics.inc("queue_transport_results", transport=t.name, result=o.kind.value)
        if not attempts and outcomes and outcomes[0].kind is not RcptKind.DELIVERED:
            # No connection was made (an MX or smarthost lookup failed): still one row, so
            # the attempts log shows every attempt and its transport.
            o = outcomes[0]
            attempts = [Attempt(o.host or "", "", report_tls=False, error=SMTPLocalError(
                o.code or 451, o.enhanced, [o.text or ""], o.kind is RcptKind.PERMANENT))]
        stamped = [attrs.evolve(a, transport=t.name, route=choice.reason) for a in attempts]
        if t.kind is TransportKind.SOCKS5 and t.remote_ips:
            # RFC 8460 §4.4 "sending-mta-ip": the receiver saw the proxy's address, not ours.
            stamped = [attrs.evolve(a, local_ip=t.remote_ips[0]) if a.local_ip else a
                       for a in stamped]
        return outcomes, stamped

    async def _deliver_via(self, m: qs.QueuedMessage, t: Transport,
                           reason: str) -> tuple[list[RcptOutcome], list[Attempt]]:
        if t.kind is TransportKind.FAIL:
            kind = RcptKind.PERMANENT if t.fail_code >= 500 else RcptKind.TEMPORARY
            err = SMTPLocalError(t.fail_code, t.fail_enhanced, [t.fail_text],
                                 kind is RcptKind.PERMANENT)
            return (for_all(m, kind, t.fail_code, t.fail_enhanced, t.fail_text),
                    [Attempt("", "", error=err, report_tls=False)])
        if m.requiretls:
            why = tp.requiretls_refusal(t)
            if why is not None:
                # RFC 8689 §4.2: only over TLS whose peer was verified; the failure DSN
                # goes without REQUIRETLS (see _make_dsn).
                err = SMTPLocalError(550, "5.7.30", [why], True)
                return (for_all(m, RcptKind.PERMANENT, 550, "5.7.30", why),
                        [Attempt("", "", error=err, report_tls=False)])
        d = self.direct
        settings = (attrs.evolve(d.client_settings, helo_name=t.ehlo_hostname)
                    if t.ehlo_hostname else None)
        timeout = self.settings.connect_timeout
        if t.kind is TransportKind.DIRECT:
            if settings is None and t is DIRECT:
                return await d.deliver(m)
            return await d.deliver(m, tp.Via(t, reason, self.settings.port, settings))
        if t.kind is TransportKind.SOCKS5:
            return await d.deliver(m, tp.Via(t, reason, self.settings.port, settings,
                                             tp.socks5_connector(self.reactor, t, timeout)))
        policy = tp.smarthost_policy(t, tls_required_no=m.tls_required_no,
                                     trust=self.settings.smarthost_trust)
        implicit = t.kind is TransportKind.SUBMISSIONS
        via = tp.Via(t, reason, t.address[1], settings,
                     tp.implicit_tls_connector(self.reactor, policy, timeout) if implicit
                     else None, tp.client_auth(t), implicit)
        return await smarthost.deliver(d, m, via, policy)

    async def _deliver_local(self, m: qs.QueuedMessage) -> list[RcptOutcome]:
        assert self.local_delivery is not None
        with self.queue.store.open_blob(m.blob_id) as f:
            data = f.read()
        out = []
        for r in m.recipients:
            try:
                await self.local_delivery.deliver(r.address, data)
                out.append(RcptOutcome(r, RcptKind.DELIVERED, 250, "2.0.0", "delivered locally",
                                       final=True))
            except Exception as e:  # noqa: BLE001 - typed by its permanent flag
                if getattr(e, "permanent", False):
                    out.append(RcptOutcome(r, RcptKind.PERMANENT, 550, "5.1.1", str(e)))
                else:
                    out.append(RcptOutcome(r, RcptKind.TEMPORARY, 451,
                                           getattr(e, "enhanced", None) or "4.3.0", str(e)))
        return out

    # -- recording results and DSNs -----------------------------------------------------

    async def _record(self, m: qs.QueuedMessage, outcomes: list[RcptOutcome],
                      attempts: list[Attempt]) -> None:
        now = self.reactor.seconds()
        decision = decide(m, outcomes, now, self.settings.retry, self.random)
        self._log_decision(m, decision)
        dsn: tuple[BlobWriter, OutboundMessage, str] | None = None
        if decision.reports:
            try:
                writer, envelope = self._make_dsn(
                    m, list(decision.reports), now, decision.attempts, decision.next_attempt)
                dsn = (writer, envelope, new_queue_id())
            except Exception:  # noqa: BLE001 - a DSN problem must not lose the result
                log.failure("cannot build a DSN for {queue_id}", queue_id=m.queue_id)
        supports = (domain_tls(m, a, now) for a in attempts)
        result = qs.AttemptResult(
            attempts=tuple(attempt_record(m, a, now) for a in attempts),  # transport, route
            domains=tuple(d for d in supports if d is not None),
            finished=tuple(decision.finished),
            deferred=tuple(qs.Deferral(d.outcome.recipient.id, d.next_attempt, d.outcome.code,
                                       d.outcome.enhanced, d.outcome.text, d.outcome.host,
                                       d.delay_dsn_sent)
                           for d in decision.deferred if d.next_attempt is not None))
        await self.queue.store.record_result(m, result, now, dsn)
        for rec in result.attempts:
            for name, labels in attempt_metrics(m, rec):
                self.metrics.inc(name, 1, **labels)
        if dsn is not None:
            log.info("queued DSN {dsn_id} about {queue_id} to <{sender}>", dsn_id=dsn[2],
                     queue_id=m.queue_id, sender=m.mail_from)

    def _log_decision(self, m: qs.QueuedMessage, decision: Decision) -> None:
        for d in decision.recipients:
            o, rcpt = d.outcome, d.outcome.recipient.address
            self.metrics.inc("queue_attempts", result=o.kind.value)
            if d.verdict is Verdict.DELIVERED:
                log.info("delivered {queue_id} to <{rcpt}> via {host}: {reply}",
                         queue_id=m.queue_id, rcpt=rcpt, host=o.host, reply=d.diagnostic)
            elif d.verdict is Verdict.BOUNCED:
                log.info("bounced {queue_id} for <{rcpt}>: {reply}", queue_id=m.queue_id,
                         rcpt=rcpt, reply=d.diagnostic)
            else:
                log.info("deferred {queue_id} for <{rcpt}> until {when}: {reply}",
                         queue_id=m.queue_id, rcpt=rcpt, when=d.next_attempt,
                         reply=d.diagnostic)

    def _make_dsn(self, m: qs.QueuedMessage, reports: list[dsnmod.RecipientReport],
                  now: float, attempts: int, next_time: float | None,
                  ) -> tuple[BlobWriter, OutboundMessage]:
        retry = self.settings.retry
        with self.queue.store.open_blob(m.blob_id) as f:
            # The DSN goes without REQUIRETLS (RFC 8689 §4.1; it may not be deliverable
            # otherwise), so it never carries the body of a message that required TLS.
            full = ((m.ret or "").upper() == "FULL" and m.size <= dsnmod.MAX_RETURNED_FULL
                    and not (m.requiretls or m.received_requiretls))
            original = f.read() if full else _read_headers(f)
        data = dsnmod.build_dsn(
            reporting_mta=self.hostname, sender=self.dsn_recipient(m.mail_from),
            recipients=reports,
            original=original, ret=m.ret, envid=m.envid, arrival=m.queued_at,
            smtputf8=m.smtputf8, now=now,
            context=dsnmod.ReportContext(attempts=attempts, queued_at=m.queued_at,
                                         next_attempt=next_time,
                                         give_up_at=give_up_time(m.queued_at, retry)),
        )
        if self.sign is not None:
            data = self.sign(data, now)
        envelope = OutboundMessage(
            mail_from="", recipients=(OutboundRecipient(self.dsn_recipient(m.mail_from),
                                                        frozenset({"NEVER"})),),
            smtputf8=m.smtputf8, body="8BITMIME" if dsnmod.dsn_is_8bit(data) else "7BIT",
            size=len(data),
        )
        writer = self.queue.store.new_blob()
        writer.write(data)
        return writer, envelope


def _read_headers(f: Any, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    for line in f:
        out += line
        if line in (b"\r\n", b"\n") or len(out) > limit:
            break
    return bytes(out)
