"""Outgoing DMARC aggregate reports (RFC 7489 §7.1, §7.2).

``EvaluationLog`` keeps the DMARC evaluation of every message received for a domain that
asked for reports (rua=), one JSON line per message in DATA_DIR/dmarc/evaluations/DAY.jsonl
(UTC), buffered in memory and written off the reactor thread.  ``DMARCReporter`` (a
Twisted service) wakes after 00:00 UTC with a random delay, aggregates each finished day
per policy domain, checks every rua destination outside the domain's organization
(§7.1: a ``<domain>._report._dmarc.<rua-domain>`` TXT starting with v=DMARC1), and queues
one DKIM-signed report mail per destination.  Mail that is itself a report is never
evaluated into a report (loop prevention), and a day's file is renamed once reported.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random as random_module
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.dailyreports import DailyTimer, next_daily_run, queue_report_mail
from mxd.dns.errors import DNSLookupError, DomainError
from mxd.msgauth.dmarc import DMARCOutcome, DMARCResult, is_dmarc, organizational_domain
from mxd.msgauth.dmarcreport import ReportRecord, build_report

_log = Logger()
DAY = 86400


def is_report_mail(headers: bytes) -> bool:
    """A DMARC report itself (RFC 7489 §7.2.1.1 subject, or a multipart/report with an
    aggregate attachment): never the subject of another report."""
    low = headers.lower()
    return b"\nsubject: report domain:" in b"\n" + low or b"report-type=\"dmarc" in low


def evaluation_row(outcome: DMARCOutcome, source_ip: str, when: float,
                   dkim: list[tuple[str, str]], spf: tuple[str, str], record: Any) -> dict[str, Any]:
    """What one message contributes to the reports of its policy domain."""
    return {
        "t": int(when), "ip": source_ip, "from": outcome.from_domain,
        "domain": outcome.record_domain, "disposition": str(outcome.disposition)
        if outcome.result is DMARCResult.FAIL else "none",
        "dkim": "pass" if outcome.dkim_aligned else "fail",
        "spf": "pass" if outcome.spf_aligned else "fail",
        "dkim_results": dkim, "spf_result": list(spf),
        "p": str(record.policy), "sp": str(record.subdomain_policy or record.policy),
        "pct": record.pct, "adkim": record.adkim, "aspf": record.aspf,
        "rua": list(record.rua),
    }


class EvaluationLog:
    """Collects evaluation rows; ``flush`` appends them to the day files (blocking)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._pending: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        if len(self._pending) < 1_000_000:  # bounded even if flushing stalls
            self._pending.append(row)

    def flush(self) -> int:
        rows, self._pending = self._pending, []
        if not rows:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[str]] = {}
        for r in rows:
            day = datetime.fromtimestamp(r["t"], UTC).strftime("%Y-%m-%d")
            by_day.setdefault(day, []).append(json.dumps(r))
        for day, lines in by_day.items():
            # One write(2) on an O_APPEND descriptor: several worker processes append to
            # the same day file, and their lines must not interleave.
            data = ("\n".join(lines) + "\n").encode("utf-8")
            fd = os.open(self.directory / f"{day}.jsonl",
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {day}.jsonl ({written} of {len(data)})")
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(rows)

    def finished_days(self, now: float) -> list[Path]:
        today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.jsonl") if p.stem < today)


@attrs.frozen
class DomainReport:
    domain: str
    rua: tuple[str, ...]
    xml: bytes
    begin: int
    end: int
    report_id: str
    messages: int = 0  # the messages the report covers
    records: int = 0  # its <record> rows


def aggregate(rows: list[dict[str, Any]], day_start: int, submitter: str, email_addr: str
              ) -> list[DomainReport]:
    """One report per policy domain of one day: rows grouped by source, disposition and
    results (RFC 7489 §7.2), the policy as last seen."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("domain") and r.get("rua"):
            by_domain.setdefault(r["domain"], []).append(r)
    out = []
    for domain, items in sorted(by_domain.items()):
        groups: dict[tuple[Any, ...], int] = {}
        for r in items:
            key = (r["ip"], r["disposition"], r["dkim"], r["spf"], r["from"],
                   tuple(tuple(x) for x in r["dkim_results"]), tuple(r["spf_result"]))
            groups[key] = groups.get(key, 0) + 1
        records = [ReportRecord(ip, n, disp, dk, sp, hfrom, dkim_domains=dres,
                                spf_domains=(sres,) if sres and sres[0] else ())
                   for (ip, disp, dk, sp, hfrom, dres, sres), n in sorted(groups.items())]
        last = items[-1]
        day = datetime.fromtimestamp(day_start, UTC).strftime("%Y%m%d")
        report_id = f"{day}.{domain}@{submitter}"
        xml = build_report(org_name=submitter, email_addr=email_addr, report_id=report_id,
                           begin=day_start, end=day_start + DAY - 1, domain=domain,
                           adkim=last["adkim"], aspf=last["aspf"], policy=last["p"],
                           subdomain_policy=last["sp"], pct=int(last["pct"]), records=records)
        out.append(DomainReport(domain, tuple(last["rua"]), xml, day_start,
                                day_start + DAY - 1, report_id, messages=len(items),
                                records=len(records)))
    return out


_MAILTO = re.compile(r"^mailto:([^!?]+@[^!?]+?)(?:!(\d+)([kmgt]?))?$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def mailto(uri: str) -> tuple[str, int | None] | None:
    """The address and size limit of a rua URI (RFC 7489 §6.2: mailto only here)."""
    m = _MAILTO.match(uri.strip())
    if not m:
        return None
    limit = int(m.group(2)) * _UNITS[m.group(3).lower()] if m.group(2) else None
    return m.group(1), limit


async def destination_allowed(resolver: Any, policy_domain: str, address: str) -> bool:
    """§7.1: a rua outside the policy domain's organization must agree to receive its
    reports with a v=DMARC1 TXT at POLICY._report._dmarc.RUA-DOMAIN."""
    rua_domain = address.rpartition("@")[2].lower().rstrip(".")
    if organizational_domain(rua_domain) == organizational_domain(policy_domain):
        return True
    try:
        answer = await resolver.lookup_txt(f"{policy_domain}._report._dmarc.{rua_domain}")
    except (DNSLookupError, DomainError):
        return False
    return any(is_dmarc(r.decode("utf-8", "replace")) for r in answer.records)


def report_mail(report: DomainReport, *, from_addr: str, to_addr: str, submitter: str,
                now: float, message_id: str) -> bytes:
    """§7.2.1.1: the report as a gzip attachment, Subject "Report Domain: ..."."""
    m = EmailMessage(policy=SMTP)
    m["From"] = from_addr
    m["To"] = to_addr
    m["Subject"] = (f"Report Domain: {report.domain} Submitter: {submitter} "
                    f"Report-ID: <{report.report_id}>")
    m["Date"] = datetime.fromtimestamp(now, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    m["Message-ID"] = f"<{message_id}>"
    m.set_content(f"DMARC aggregate report for {report.domain} from {submitter}.\n")
    name = f"{submitter}!{report.domain}!{report.begin}!{report.end}.xml.gz"
    m.add_attachment(gzip.compress(report.xml, mtime=0), maintype="application",
                     subtype="gzip", filename=name)
    return m.as_bytes()


@attrs.frozen
class ReporterSettings:
    submitter: str  # our host name (org_name and Submitter)
    from_addr: str  # the From and envelope sender of reports
    max_jitter: float = 3600.0  # seconds after 00:00 UTC, chosen at random each day


class EvaluationFlusher(service.Service):
    """Flushes an ``EvaluationLog`` every ``interval`` seconds and at stop: what a worker
    process runs (the main process's ``DMARCReporter`` flushes its own and reports)."""

    def __init__(self, log: EvaluationLog, clock: Any,
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]],
                 interval: float = 60.0) -> None:
        self.log = log
        self.clock = clock
        self.run_blocking = run_blocking
        self.interval = interval
        self._timer: Any = None

    def startService(self) -> None:
        super().startService()
        self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self.run_blocking(self.log.flush).addErrback(
            lambda f: _log.failure("dmarc evaluation log flush failed", f))
        if self.running:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def stopService(self) -> Any:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        return self.run_blocking(self.log.flush)


class DMARCReporter(service.Service):
    """Sends yesterday's aggregate reports after midnight UTC (and flushes the log)."""

    def __init__(self, log: EvaluationLog, resolver: Any, queue: Any, clock: Any,
                 settings: ReporterSettings, *, sign: Callable[[bytes, float], bytes] | None,
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
                 random: Callable[[], float] = random_module.random,
                 flush_interval: float = 60.0, sent_store: Any = None) -> None:
        self.log = log
        self.resolver = resolver
        self.queue = queue
        self.clock = clock
        self.settings = settings
        self.sign = sign
        self.run_blocking = run_blocking
        self.random = random
        self.flush_interval = flush_interval
        self._timers: list[Any] = []
        self._daily: DailyTimer | None = None
        self.sent: list[tuple[str, str]] = []  # (domain, rua address), for tests and logs
        self.sent_store = sent_store  # a reportstore.SentReportStore: what the admin lists

    def _blocking(self, fn: Callable[[], Any]) -> Deferred[Any]:
        if self.run_blocking is not None:
            return self.run_blocking(fn)
        return Deferred.fromCoroutine(_call(fn))

    def startService(self) -> None:
        super().startService()
        self._schedule_flush()
        self._schedule_run()

    def stopService(self) -> Any:
        super().stopService()
        for t in self._timers:
            if t.active():
                t.cancel()
        self._timers = []
        if self._daily is not None:
            self._daily.stop()
        return self._blocking(self.log.flush)

    def _schedule_flush(self) -> None:
        def tick() -> None:
            self._blocking(self.log.flush).addErrback(
                lambda f: _log.failure("dmarc evaluation log flush failed", f))
            if self.running:
                self._schedule_flush()

        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.clock.callLater(self.flush_interval, tick))

    def next_run(self, now: float) -> float:
        return next_daily_run(now, self.random, self.settings.max_jitter)

    def _schedule_run(self) -> None:
        self._daily = DailyTimer(self.clock, self.run_once, "dmarc reports",
                                 random=self.random, max_jitter=self.settings.max_jitter)
        self._daily.start()

    async def run_once(self) -> int:
        """Report every finished day not reported yet; returns the mails queued."""
        await self._blocking(self.log.flush)
        now = self.clock.seconds()
        days = await self._blocking(lambda: self.log.finished_days(now))
        queued = 0
        for path in days:
            rows = await self._blocking(functools.partial(_read_rows, path))
            day_start = int(datetime.strptime(path.stem, "%Y-%m-%d").replace(
                tzinfo=UTC).timestamp())
            for report in aggregate(rows, day_start, self.settings.submitter,
                                    self.settings.from_addr):
                queued += await self._send(report, now)
            await self._blocking(functools.partial(path.rename, path.with_suffix(".reported")))
        return queued

    async def _send(self, report: DomainReport, now: float) -> int:
        sent = 0
        for uri in report.rua[:2]:  # §7.1 leaves the count to us; two is plenty
            parsed = mailto(uri)
            if parsed is None:
                continue
            address, limit = parsed
            if not await destination_allowed(self.resolver, report.domain, address):
                _log.info("dmarc report for {domain} not sent to {rua}: external destination "
                          "not authorized (RFC 7489 §7.1)", domain=report.domain, rua=address)
                continue
            data = report_mail(report, from_addr=self.settings.from_addr, to_addr=address,
                               submitter=self.settings.submitter, now=now,
                               message_id=f"{report.report_id}.{sent}")
            if limit is not None and len(data) > limit:
                _log.info("dmarc report for {domain} larger than {rua}'s limit", rua=address,
                          domain=report.domain)
                continue
            queue_id = await queue_report_mail(
                self.queue, data, from_addr=self.settings.from_addr, to_addr=address, now=now,
                sign=self.sign)
            self.sent.append((report.domain, address))
            if self.sent_store is not None:
                await self._blocking(functools.partial(
                    self.sent_store.record, domain=report.domain, report_id=report.report_id,
                    begin=report.begin, end=report.end, to_addr=address, queue_id=queue_id,
                    sent=now, messages=report.messages, records=report.records))
            _log.info("dmarc report {report_id} queued to {rua}", report_id=report.report_id,
                      rua=address)
            sent += 1
        return sent


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()
