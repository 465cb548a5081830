"""Where incoming DMARC aggregate reports are kept: one JSON file per report under
DATA_DIR/dmarc/incoming (``mxd.reportfiles``; a report that arrives twice is stored
once).  Blocking file I/O: the server calls it off the reactor thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mxd.msgauth.dmarcreport import AggregateReport, ReportError, extract_reports, parse_report
from mxd.reportfiles import ReportFiles


class ReportStore:
    def __init__(self, directory: Path) -> None:
        self.files = ReportFiles(directory)
        self.directory = self.files.directory

    def save(self, report: AggregateReport, received: float, source: str) -> Path:
        path = self.files.path(str(report.begin), report.org_name, report.org_name,
                               report.email, report.report_id)
        return self.files.write(path, dict(report.summary(), received=received, source=source))

    def reports(self) -> list[dict[str, Any]]:
        """Every stored report, oldest period first."""
        return self.files.load(lambda r: (r.get("begin", 0), r.get("org_name", "")))

    def ingest(self, message: bytes, received: float, source: str) -> list[AggregateReport]:
        """Extract, parse and save the reports of one mail; ReportError when there is none
        usable (each bad attachment is skipped if another one is good)."""
        reports: list[AggregateReport] = []
        errors: list[str] = []
        for xml in extract_reports(message):
            try:
                reports.append(parse_report(xml))
            except ReportError as e:
                errors.append(str(e))
        if not reports:
            raise ReportError("; ".join(errors) or "no report")
        for r in reports:
            self.save(r, received, source)
        return reports


class SentReportStore:
    """The DMARC aggregate reports this server sent (RFC 7489 §7.2), one JSON document
    per report and destination under DATA_DIR/dmarc/sent: what the admin pages list.
    Blocking file I/O (off the reactor thread)."""

    def __init__(self, directory: Path) -> None:
        self.files = ReportFiles(directory)
        self.directory = self.files.directory

    def record(self, *, domain: str, report_id: str, begin: int, end: int, to_addr: str,
               queue_id: str, sent: float, messages: int, records: int) -> Path:
        path = self.files.path(str(begin), domain, report_id, to_addr)
        return self.files.write(path, {
            "domain": domain, "report_id": report_id, "begin": begin, "end": end,
            "to": to_addr, "queue_id": queue_id, "sent": sent, "messages": messages,
            "records": records})

    def reports(self) -> list[dict[str, Any]]:
        """Every report sent, newest period first."""
        return self.files.load(lambda r: (-int(r.get("begin", 0)), r.get("domain", "")))
