"""The inbound checks on port 25 (the SMTP server's ``IMessageChecker``): iprev, SPF,
DKIM and DMARC, with their DNSSEC status, ending in Authentication-Results and a verdict.

Lookups that need only the envelope (iprev, SPF) and the header section (the DMARC record
of the From domain) start when the header section is complete, while the body streams
into the DKIM body hashes; DKIM keys are fetched at the end.  The verdict (RFC 7489 §6.6.2,
§10.3): p=reject refuses the message with 550 5.7.1 at the end of DATA (or, configured so,
delivers it to Junk); p=quarantine delivers it to Junk.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.msgauth import arc, authres, dmarc, iprev, spf
from mxd.msgauth.dkim import BodyHasher, Verifier
from mxd.msgauth.dkimsign import header_list
from mxd.msgauth.headers import from_domains, join_fields, split_fields
from mxd.smtp.interfaces import SessionInfo, Verdict
from mxd.smtp.replies import Reply

_log = Logger()


@attrs.frozen
class InboundSettings:
    hostname: str  # authserv-id of our Authentication-Results (RFC 8601 §2.5)
    dmarc_reject: str = "reject"  # "reject" (550 5.7.1) or "junk"
    report_addresses: frozenset[str] = frozenset()  # mail to these is read as DMARC reports
    tls_report_addresses: frozenset[str] = frozenset()  # ... as TLS reports (RFC 8460)


class InboundChecker:
    """Creates an ``InboundCheck`` per message received on port 25."""

    def __init__(self, resolver: Any, clock: Any, settings: InboundSettings, *,
                 sample: Callable[[], float] = random.random, metrics: Any = None,
                 reports: Any = None,
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
                 evaluations: Any = None, tls_reports: Any = None,
                 sealer: Any = None) -> None:
        self.resolver = resolver
        self.clock = clock
        self.settings = settings
        self.sample = sample
        self.metrics = metrics
        self.reports = reports  # a ReportStore for DMARC aggregate reports, or None
        self.run_blocking = run_blocking  # where report parsing runs (a thread pool)
        self.evaluations = evaluations  # a dmarcsend.EvaluationLog for outgoing reports
        self.tls_reports = tls_reports  # a tlsrpt.incoming.TLSReportStore, or None
        self.sealer = sealer  # a signing.KeyRing: ARC sets on forwarded mail, or None

    def begin(self, session: SessionInfo, headers: bytes) -> InboundCheck | None:
        if session.role != "smtp":
            return None
        return InboundCheck(self, session, headers)


class InboundCheck:
    def __init__(self, checker: InboundChecker, session: SessionInfo, headers: bytes) -> None:
        self.checker = checker
        self.session = session
        fields = split_fields(headers)
        kept, removed = authres.remove_ours(fields, checker.settings.hostname)
        self.header_section = join_fields(kept) if removed else None
        if removed:
            _log.info("msgauth removed {count} Authentication-Results claiming {host}",
                      count=removed, host=checker.settings.hostname)
        r = checker.resolver
        self._iprev = iprev.check_iprev(r, session.remote_ip)
        self._spf: Deferred[spf.SPFOutcome] = spf.check_mail_from(
            r, session.remote_ip, session.mail_from, session.helo,
            receiver=checker.settings.hostname)
        domains = from_domains(kept)
        self.from_domain = domains[0] if domains and len(set(domains)) == 1 else None
        self._dmarc: Deferred[dmarc.Found] | None = (
            Deferred.fromCoroutine(dmarc.lookup(r, self.from_domain))
            if self.from_domain else None)
        # DKIM signatures are verified over the fields as received (minus ours).
        self.verifier = Verifier(b"", kept)
        self.arc = arc.Validator(kept)  # RFC 8617 §5.2 (hashes the body only with a chain)
        self.fields = kept
        # RFC 8617 §5.1: mail we forward gets our ARC set, sealed with an RSA key of the
        # forwarding domain (RFC 8617 defines rsa-sha256 only; an Ed25519-only domain
        # forwards without a seal).
        self.seal_key = None
        self.seal_body: BodyHasher | None = None
        if session.forwarding_domain and checker.sealer is not None:
            keys = [k for k in checker.sealer.for_domain(session.forwarding_domain)
                    if k.algorithm == "rsa"]
            if keys:
                self.seal_key = keys[0]
                self.seal_body = BodyHasher(True, "sha256", None)
            else:
                _log.info("msgauth no RSA key for {domain}: forwarded without an ARC seal",
                          domain=session.forwarding_domain)
        self.is_report = False
        # A copy of mail to a DMARC report address, for the report parser (bounded).
        self.report_copy: list[bytes] | None = None
        rcpts = [r.lower() for r in session.recipients]
        to_reports = any(r in checker.settings.report_addresses for r in rcpts)
        to_tls = any(r in checker.settings.tls_report_addresses for r in rcpts)
        # The stores this mail is a report for: (kind, store).
        self.report_stores = [(kind, store) for kind, store, wanted in (
            ("dmarc", checker.reports, to_reports), ("tls", checker.tls_reports, to_tls))
            if store is not None and wanted]
        if self.report_stores:
            self.report_copy = [headers, b"\r\n"]
            self.report_size = len(headers)
        to_reports = to_reports or to_tls
        if checker.evaluations is not None:
            from mxd.msgauth.dmarcsend import is_report_mail

            self.is_report = to_reports or is_report_mail(headers)

    def feed(self, data: bytes) -> None:
        if self.verifier.wants_body:
            self.verifier.feed(data)
        if self.seal_body is not None:
            self.seal_body.feed(data)
        self.arc.feed(data)
        if self.report_copy is not None:
            from mxd.msgauth.dmarcreport import MAX_MESSAGE

            self.report_size += len(data)
            if self.report_size > MAX_MESSAGE:
                _log.info("msgauth report mail too large; not parsed")
                self.report_copy = None
            else:
                self.report_copy.append(data)

    def finish(self) -> Deferred[Verdict]:
        return Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> Verdict:
        settings = self.checker.settings
        ip_outcome = await self._iprev
        spf_outcome = await self._spf
        dkim_results = await self.verifier.finish(self.checker.resolver,
                                                  self.checker.clock.seconds())
        dmarc_outcome = None
        if self._dmarc is not None and self.from_domain:
            found = await self._dmarc
            dmarc_outcome = dmarc.evaluate(self.from_domain, found, spf_outcome,
                                           dkim_results, self.checker.sample)
            if (self.checker.evaluations is not None and found.record is not None
                    and found.record.rua and not self.is_report):
                # RFC 7489 §7.2: kept for the daily aggregate report (never about reports).
                from mxd.msgauth.dmarcsend import evaluation_row

                self.checker.evaluations.add(evaluation_row(
                    dmarc_outcome, self.session.remote_ip, self.checker.clock.seconds(),
                    [(d.domain, str(d.result)) for d in dkim_results if d.domain],
                    (spf_outcome.domain, str(spf_outcome.result)), found.record))
        elif self.from_domain is None:
            dmarc_outcome = dmarc.DMARCOutcome(dmarc.DMARCResult.PERMERROR, "",
                                               reason="not exactly one From domain")
        arc_outcome = await self.arc.finish(self.checker.resolver)
        results = authres.AuthResults(settings.hostname, ip_outcome, spf_outcome,
                                      tuple(dkim_results), dmarc_outcome, arc_outcome)
        ar = authres.field(results, self.session.mail_from)
        # The results travel in the message's Authentication-Results; the log gets them at
        # debug level (a line per message at info would double the log volume), and at
        # info only when DMARC fails.
        failed = dmarc_outcome is not None and dmarc_outcome.result is dmarc.DMARCResult.FAIL
        (_log.info if failed else _log.debug)(
            "msgauth from={remote_ip} iprev={iprev} spf={spf} dkim={dkim} dmarc={dmarc} "
            "header_from={header_from}", remote_ip=self.session.remote_ip,
            iprev=ip_outcome.result, spf=spf_outcome.result,
            dkim=",".join(str(d.result) for d in dkim_results) or "none",
            dmarc=dmarc_outcome.result if dmarc_outcome else "none",
            header_from=self.from_domain or "")
        verdict = Verdict(fields=(*self._seal(ar, arc_outcome), ar),
                          header_section=self.header_section, remote_host=ip_outcome.name)
        if self.report_copy is not None:
            for kind, store in self.report_stores:
                self._ingest_report(b"".join(self.report_copy), kind, store)
        if dmarc_outcome is not None and dmarc_outcome.result is dmarc.DMARCResult.FAIL:
            if dmarc_outcome.disposition is dmarc.Policy.REJECT:
                if settings.dmarc_reject == "reject":
                    # RFC 7489 §10.3 / §6.6.4: refused in the SMTP dialogue with 5.7.1.
                    text = (f"Rejected by DMARC policy of {dmarc_outcome.record_domain}: "
                            f"{dmarc_outcome.reason}")
                    return attrs.evolve(verdict, reject=Reply(550, "5.7.1", text))
                return attrs.evolve(verdict, mailbox="Junk")
            if dmarc_outcome.disposition is dmarc.Policy.QUARANTINE:
                return attrs.evolve(verdict, mailbox="Junk")
        return verdict

    def _seal(self, ar: str, chain: arc.ARCOutcome) -> list[str]:
        """The ARC set for a forwarded message (AS, AMS, AAR: newest on top), or []."""
        if self.seal_key is None or self.seal_body is None:
            return []
        try:
            fields = arc.seal(
                self.seal_key, self.fields, self.seal_body.digest(),
                authserv_id=self.checker.settings.hostname,
                auth_results=ar.partition(";")[2].strip(), cv=chain.result,
                signed_headers=header_list(self.fields, ("dkim-signature",)),
                now=int(self.checker.clock.seconds()))
        except ValueError as e:  # a chain already at i=50 (RFC 8617 §4.2.1)
            _log.info("msgauth not sealed: {error}", error=str(e))
            return []
        return list(reversed(fields))

    def _ingest_report(self, message: bytes, kind: str, store: Any) -> None:
        """Parse and store a DMARC aggregate report (RFC 7489 §7.2) or a TLS report (RFC
        8460 §5.3) off the reactor thread; the mail is delivered whatever comes of it
        (reports are ordinary mail)."""
        checker = self.checker
        now = checker.clock.seconds()
        source = self.session.remote_ip
        sender = self.session.mail_from or ""

        def work() -> Any:
            if kind == "tls":
                return store.ingest(message, now, source, sender)
            return store.ingest(message, now, source)

        def done(reports: Any) -> None:
            for r in reports:
                if kind == "tls":
                    _log.info("tls report {report_id} from {org}: {policies}",
                              report_id=r.report_id, org=r.organization_name,
                              policies=", ".join(f"{p.policy.domain} ({p.policy.type}) "
                                                 f"{p.successful} ok {p.failed} failed"
                                                 for p in r.policies))
                    continue
                _log.info("dmarc report {report_id} from {org} for {domain}: {messages} "
                          "messages", report_id=r.report_id, org=r.org_name, domain=r.domain,
                          messages=r.messages)

        def failed(f: Any) -> None:
            _log.info("{kind} report mail from {remote_ip} not stored: {error}", kind=kind,
                      remote_ip=source, error=f.getErrorMessage())

        d = (checker.run_blocking(work) if checker.run_blocking is not None
             else Deferred.fromCoroutine(_call(work)))
        d.addCallbacks(done, failed)


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()
