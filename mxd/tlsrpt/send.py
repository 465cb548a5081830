"""Sending the daily SMTP TLS reports (RFC 8460 §4.1, §5).

``daily_reports`` (pure) turns one UTC day's ``TLSAttempt`` values into one report per
policy domain: the recipient domain for MTA-STS and no-policy-found (STARTTLS) results, the
MX host (its TLSA base domain) for DANE results.  DANE and MTA-STS results go in separate
reports even when the names coincide (RFC 8460 §4.3 keeps policies apart; deployed senders
send one report per policy domain and policy kind).  A day without failures is reported
only when success reports are asked for.

``TLSReporter`` (a Twisted service) runs after 00:00 UTC plus jitter, looks up
``_smtp._tls.<policy domain>`` through mxd's resolver (§3) and delivers to every ``rua``:

* ``mailto:`` (§5.3): a ``multipart/report; report-type="tlsrpt"`` mail with the gzipped JSON
  as ``application/tlsrpt+gzip``, the ``TLS-Report-Domain``/``TLS-Report-Submitter`` fields
  and the §5.3 subject, DKIM-signed when a key is configured for the From domain, with
  ``TLS-Required: No`` (RFC 8689 §5: a receiver with broken TLS must still get its report);
* ``https:`` (§5.4): a POST of ``application/tlsrpt+gzip``, the server's certificate
  verified against the Web PKI, retried with back-off on 5xx and network errors.

Queued reports are marked so that their own deliveries record no TLS results (§3 loop
prevention).  The last reported day is kept in a state file, so a restart sends nothing twice.
"""

from __future__ import annotations

import datetime
import gzip
import random as random_module
from collections.abc import Callable, Iterable, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.dailyreports import DailyTimer, queue_report_mail, utc_day_start
from mxd.dns.errors import DNSLookupError, DomainError
from mxd.metrics import IMetrics, NoopMetrics
from mxd.reportfiles import ReportFiles
from mxd.tlsrpt.report import aggregate, lookup_txt_record, report_filename, report_json
from mxd.tlsrpt.results import PolicyType, TLSAttempt

_log = Logger()
DAY = 86400


@attrs.frozen
class PolicyReport:
    """One day's report for one policy domain and kind ("tlsa" or "sts": MTA-STS and
    STARTTLS-without-policy results, both about the recipient domain)."""

    policy_domain: str
    kind: str
    report: dict[str, Any]
    report_id: str
    start: datetime.datetime
    end: datetime.datetime
    failures: int

    @property
    def gzipped(self) -> bytes:
        return gzip.compress(report_json(self.report), mtime=0)


def _kind(a: TLSAttempt) -> str:
    return "tlsa" if a.policy.type is PolicyType.TLSA else "sts"


def daily_reports(attempts: Iterable[TLSAttempt], day_start: float, *, organization_name: str,
                  contact_info: str, submitter: str, send_success: bool = False
                  ) -> list[PolicyReport]:
    """The reports of the UTC day starting at ``day_start`` (RFC 8460 §4.1), one per
    (policy domain, kind), failure-only unless ``send_success``."""
    start = datetime.datetime.fromtimestamp(day_start, datetime.UTC)
    end = start + datetime.timedelta(days=1)
    groups: dict[tuple[str, str], list[TLSAttempt]] = {}
    for a in attempts:
        if start.timestamp() <= a.time < end.timestamp() and a.policy.domain:
            groups.setdefault((a.policy.domain, _kind(a)), []).append(a)
    out = []
    for (domain, kind), items in sorted(groups.items()):
        failures = sum(1 for a in items if not a.success)
        if not failures and not send_success:
            continue
        report_id = f"{start:%Y%m%d}.{kind}.{domain}@{submitter}"
        doc = aggregate(items, organization_name=organization_name, contact_info=contact_info,
                        report_id=report_id, start=start, end=end)
        out.append(PolicyReport(domain, kind, doc, report_id, start, end, failures))
    return out


def report_mail(r: PolicyReport, *, from_addr: str, to_addr: str, submitter: str, now: float,
                message_id: str) -> bytes:
    """The RFC 8460 §5.3 mail of a report."""
    m = EmailMessage(policy=SMTP)
    m["From"] = from_addr
    m["To"] = to_addr
    # §5.3: "Subject: Report Domain: <policy domain> Submitter: <submitter> Report-ID: <id>"
    m["Subject"] = (f"Report Domain: {r.policy_domain} Submitter: {submitter} "
                    f"Report-ID: <{r.report_id}>")
    m["Date"] = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(
        "%a, %d %b %Y %H:%M:%S +0000")
    m["Message-ID"] = f"<{message_id}>"
    m["TLS-Report-Domain"] = r.policy_domain  # §5.3
    m["TLS-Report-Submitter"] = submitter
    m["TLS-Required"] = "No"  # RFC 8689 §5
    m.set_content(f"This is an aggregate TLS report (RFC 8460) for {r.policy_domain} "
                  f"from {submitter}, covering {r.start:%Y-%m-%d} (UTC).\n")
    m.add_attachment(r.gzipped, maintype="application", subtype="tlsrpt+gzip",
                     filename=report_filename(submitter, r.policy_domain, r.start, r.end))
    m.set_type("multipart/report")  # §5.3: multipart/report with report-type "tlsrpt"
    m.set_param("report-type", "tlsrpt")
    return m.as_bytes()


# RFC 8460 §5.3: "the report SHOULD be DKIM signed ... The DKIM signature SHOULD cover
# the TLS-Report-Domain and TLS-Report-Submitter header fields" (our signer's default set
# does not contain them).
SIGNED_HEADERS = ("tls-report-domain", "tls-report-submitter")


# RFC 8460 §5.4 leaves retries to the sender; these fit in the day before the next run.
HTTPS_RETRIES: tuple[float, ...] = (60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0)


@attrs.frozen
class SenderSettings:
    organization_name: str  # §4.4 "organization-name"
    submitter: str  # our host name: TLS-Report-Submitter, the report-id's domain
    from_addr: str  # From and envelope sender of the report mails
    contact_info: str  # §4.4 "contact-info"
    send_success: bool = False  # also report days without failures
    max_jitter: float = 3600.0
    https_retries: tuple[float, ...] = HTTPS_RETRIES


class HTTPSPostError(Exception):
    """An https rua answered with a status that is not 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP status {status}")
        self.status = status


def https_poster(reactor: Any, trust_root: Any = None, timeout: float = 60.0
                 ) -> Callable[[str, bytes], Deferred[int]]:
    """POST a gzipped report (RFC 8460 §5.4) with Web PKI verification (``trust_root``:
    the platform's CAs unless given); fires with the HTTP status."""
    from twisted.internet.defer import succeed
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IBodyProducer
    from zope.interface import implementer

    @implementer(IBodyProducer)
    class _Body:
        """The whole body at once (no Cooperator: it runs on the reactor we are given)."""

        def __init__(self, data: bytes) -> None:
            self.data = data
            self.length = len(data)

        def startProducing(self, consumer: Any) -> Deferred[None]:
            consumer.write(self.data)
            return succeed(None)

        def pauseProducing(self) -> None:
            pass

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust_root),
                  connectTimeout=timeout)

    class _Discard(Protocol):
        def __init__(self, done: Deferred[None]) -> None:
            self.done = done

        def connectionLost(self, reason: Any = None) -> None:
            self.done.callback(None)

    async def post(url: str, body: bytes) -> int:
        response = await agent.request(
            b"POST", url.encode("ascii"),
            Headers({b"Content-Type": [b"application/tlsrpt+gzip"], b"User-Agent": [b"mxd"]}),
            _Body(body))
        done: Deferred[None] = Deferred()
        response.deliverBody(_Discard(done))
        await done
        return int(response.code)

    return lambda url, body: Deferred.fromCoroutine(post(url, body))


class SentTLSReports:
    """The TLS reports this server sent, one JSON document per report and destination
    under DATA_DIR/tlsrpt/sent: what the admin pages list.  A mailto: report is recorded
    once queued (with its queue id), an https: one once its POST succeeded or gave up
    (§5.4).  Blocking file I/O (small, fsynced documents)."""

    def __init__(self, directory: Path) -> None:
        self.files = ReportFiles(directory)

    def record(self, report: PolicyReport, *, to: str, method: str, result: str,
               sent: float, queue_id: str | None = None) -> Path:
        begin = int(report.start.timestamp())
        data = {"policy_domain": report.policy_domain, "kind": report.kind,
                "report_id": report.report_id, "begin": begin,
                "end": int(report.end.timestamp()), "to": to, "method": method,
                "result": result, "queue_id": queue_id, "sent": sent,
                "failures": report.failures}
        path = self.files.path(str(begin), report.policy_domain, report.report_id, to)
        return self.files.write(path, data)

    def reports(self) -> list[dict[str, Any]]:
        """Every report sent, newest period first."""
        return self.files.load(lambda r: (-int(r.get("begin", 0)), r.get("policy_domain", "")))


class TLSReporter(service.Service):
    """Sends yesterday's TLS reports after 00:00 UTC (see the module docstring).

    ``attempts(start, end)``: the TLS sessions of [start, end) (the queue store's
    ``tls_attempts_between``); ``post(url, body)``: see ``https_poster``."""

    def __init__(self, attempts: Callable[[float, float], Deferred[list[TLSAttempt]]],
                 resolver: Any, queue: Any, clock: Any, settings: SenderSettings, *,
                 sign: Callable[[bytes, float], bytes] | None,
                 post: Callable[[str, bytes], Deferred[int]] | None,
                 state: Path | None = None, metrics: IMetrics | None = None,
                 random: Callable[[], float] = random_module.random,
                 sent_store: SentTLSReports | None = None) -> None:
        self.attempts = attempts
        self.resolver = resolver
        self.queue = queue
        self.clock = clock
        self.settings = settings
        self.sign = sign
        self.post = post
        self.state = state
        self.metrics = metrics or NoopMetrics()
        self.random = random
        self._daily: DailyTimer | None = None
        self.sent: list[tuple[str, str, str]] = []  # (policy domain, kind, rua), for logs/tests
        self.pending: list[Deferred[bool]] = []  # https deliveries still retrying
        self.sent_store = sent_store  # what the admin pages list, or None

    def startService(self) -> None:
        super().startService()
        self._daily = DailyTimer(self.clock, self.run_once, "tls reports", random=self.random,
                                 max_jitter=self.settings.max_jitter)
        self._daily.start()

    def stopService(self) -> Any:
        super().stopService()
        if self._daily is not None:
            self._daily.stop()
        for d in self.pending:
            d.cancel()
        self.pending = []
        return None

    def _last_reported(self) -> float:
        try:
            return float((self.state or Path("/nonexistent")).read_text().strip())
        except (OSError, ValueError):
            return 0.0

    def _mark_reported(self, day_start: float) -> None:
        if self.state is not None:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state.with_suffix(".tmp")
            tmp.write_text(f"{int(day_start)}\n")
            tmp.replace(self.state)

    async def run_once(self) -> int:
        """Report the previous UTC day unless done already; returns deliveries started."""
        now = self.clock.seconds()
        day = utc_day_start(now) - DAY
        if self._last_reported() >= day:
            return 0
        # Several nodes on one PostgreSQL database see the same attempts: one sends.
        claim = getattr(getattr(self.queue, "store", None), "claim_report_day", None)
        if claim is not None and not await claim("tlsrpt", day):
            _log.info("tls reports of {day}: another node sends them", day=int(day))
            self._mark_reported(day)
            return 0
        _, started = await self.report_day(day)
        return started

    async def report_day(self, day_start: float) -> tuple[int, int]:
        """Build and send the reports of the UTC day starting at ``day_start`` now (the daily
        run, and ``mxd tlsrpt send --day`` through the admin API); (reports, deliveries
        started).  A finished day newer than the last one reported is remembered, so the
        daily run does not send it again; a day still running (today) is not, so its full
        report still goes out after midnight."""
        now = self.clock.seconds()
        day = utc_day_start(day_start)
        attempts = await self.attempts(day, day + DAY)
        reports = daily_reports(attempts, day, organization_name=self.settings.organization_name,
                                contact_info=self.settings.contact_info,
                                submitter=self.settings.submitter,
                                send_success=self.settings.send_success)
        started = 0
        for r in reports:
            started += await self._deliver(r, now)
        if day + DAY <= now and day > self._last_reported():
            self._mark_reported(day)
        return len(reports), started

    async def _deliver(self, r: PolicyReport, now: float) -> int:
        try:
            record = await lookup_txt_record(self.resolver, r.policy_domain)
        except (DNSLookupError, DomainError) as e:
            _log.info("no tls report for {domain}: _smtp._tls lookup failed: {error}",
                      domain=r.policy_domain, error=str(e))
            self.metrics.inc("tlsrpt_reports_failed", method="dns", reason="lookup")
            return 0
        if record is None:
            return 0
        started = 0
        for n, uri in enumerate(record.rua[:4]):  # a bound against records listing dozens
            if uri[:7].lower() == "mailto:":
                address = uri[7:].split("?", 1)[0]
                data = report_mail(r, from_addr=self.settings.from_addr, to_addr=address,
                                   submitter=self.settings.submitter, now=now,
                                   message_id=f"{r.report_id}.{n}")
                try:
                    queue_id = await queue_report_mail(
                        self.queue, data, from_addr=self.settings.from_addr, to_addr=address,
                        now=now, sign=self.sign, tls_required_no=True, tls_report=True)
                except Exception as e:  # noqa: BLE001  a bad address: the others still go
                    _log.warn("tls report {id} to {rua} not queued: {error}", id=r.report_id,
                              rua=address, error=str(e))
                    self.metrics.inc("tlsrpt_reports_failed", method="mailto", reason="queue")
                    continue
                self.metrics.inc("tlsrpt_reports_sent", method="mailto")
                _log.info("tls report {id} queued to {rua}", id=r.report_id, rua=address)
                self._record(r, to=address, method="mailto", result="queued", sent=now,
                             queue_id=queue_id)
            elif self.post is not None:
                d = Deferred.fromCoroutine(self._post(uri, r.gzipped, r.report_id))
                self.pending.append(d)
                d.addBoth(self._done, d)
                d.addCallback(self._posted, r, uri)
            else:
                continue
            self.sent.append((r.policy_domain, r.kind, uri))
            started += 1
        return started

    def _record(self, r: PolicyReport, **kw: Any) -> None:
        if self.sent_store is None:
            return
        try:
            self.sent_store.record(r, **kw)
        except OSError as e:  # the report went out; only the admin's list misses it
            _log.warn("tls report {id}: not recorded as sent: {error}", id=r.report_id,
                      error=str(e))

    def _posted(self, delivered: bool, r: PolicyReport, uri: str) -> bool:
        self._record(r, to=uri, method="https", sent=self.clock.seconds(),
                     result="delivered" if delivered else "failed")
        return delivered

    def _done(self, result: Any, d: Deferred[bool]) -> Any:
        if d in self.pending:
            self.pending.remove(d)
        return result

    async def _post(self, url: str, body: bytes, report_id: str) -> bool:
        """POST with retries (§5.4); True when a 2xx answer came."""
        from twisted.internet.task import deferLater

        assert self.post is not None
        delays: Sequence[float] = self.settings.https_retries
        for attempt in range(len(delays) + 1):
            try:
                status = await self.post(url, body)
            except Exception as e:  # noqa: BLE001  network, TLS, timeouts: all retried
                status, reason = 0, type(e).__name__
                error = str(e) or reason
            else:
                reason, error = f"http_{status}", f"HTTP status {status}"
            if 200 <= status < 300:
                self.metrics.inc("tlsrpt_reports_sent", method="https")
                _log.info("tls report {id} posted to {url}", id=report_id, url=url)
                return True
            if 400 <= status < 500 and status != 429:  # refused: retrying will not help
                break
            if attempt < len(delays):
                _log.info("tls report {id} to {url} failed ({error}); retry in {delay}s",
                          id=report_id, url=url, error=error, delay=delays[attempt])
                await deferLater(self.clock, delays[attempt], lambda: None)
        _log.warn("tls report {id} to {url} not delivered: {error}", id=report_id, url=url,
                  error=error)
        self.metrics.inc("tlsrpt_reports_failed", method="https", reason=reason)
        return False
