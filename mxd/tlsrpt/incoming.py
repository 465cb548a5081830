"""Incoming SMTP TLS reports (RFC 8460 §5.3): recognising, reading and keeping them.

A report mail is a ``multipart/report; report-type="tlsrpt"`` whose report part is
``application/tlsrpt+gzip`` or ``application/tlsrpt+json``; some senders attach it as a plain
``.json``/``.json.gz`` file (``application/gzip``, ``application/json``,
``application/octet-stream``), which is accepted too.  ``extract_reports`` decompresses with
hard limits (the mail, each document, the number of documents), so a gzip bomb costs at most
``MAX_JSON`` octets; ``mxd.tlsrpt.report.parse_report`` reads the JSON.  ``TLSReportStore``
keeps one JSON summary per report under DATA_DIR/tlsrpt/incoming (blocking I/O: call it off
the reactor thread); a report that arrives twice is stored once.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import re
import zlib
from pathlib import Path
from typing import Any

from mxd.reportfiles import ReportFiles
from mxd.tlsrpt.report import ParsedReport, ReportError, parse_report

MAX_MESSAGE = 20 * 1024 * 1024  # a report mail larger than this is not examined
MAX_JSON = 10 * 1024 * 1024  # one decompressed report
MAX_REPORTS = 5  # report documents per mail

_TYPES = ("application/tlsrpt+gzip", "application/tlsrpt+json", "application/gzip",
          "application/x-gzip", "application/json", "application/octet-stream")


def gunzip_bounded(data: bytes, limit: int = MAX_JSON) -> bytes:
    """Decompress gzip data, refusing more than ``limit`` octets of output (gzip bombs)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            out = g.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ReportError(f"broken gzip: {e}") from None
    if len(out) > limit:
        raise ReportError(f"decompressed report larger than {limit} octets")
    return out


def extract_reports(message: bytes) -> list[bytes]:
    """The JSON documents of a TLS report mail (RFC 8460 §5.3); ReportError when none."""
    if len(message) > MAX_MESSAGE:
        raise ReportError(f"report mail larger than {MAX_MESSAGE} octets")
    msg = email.message_from_bytes(message, policy=email.policy.default)
    found: list[bytes] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if ctype not in _TYPES and not name.endswith((".json", ".json.gz")):
            continue
        if ctype in ("application/octet-stream", "application/gzip", "application/x-gzip",
                     "application/json") and not name.endswith((".json", ".json.gz")):
            continue  # a generic type is a report only with a report's file name
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        if payload[:2] == b"\x1f\x8b":
            found.append(gunzip_bounded(payload))
        elif len(payload) <= MAX_JSON:
            found.append(payload)
        else:
            raise ReportError("JSON report too large")
        if len(found) >= MAX_REPORTS:
            break
    if not found:
        raise ReportError("no TLS report in the message")
    return found


def summary(r: ParsedReport) -> dict[str, Any]:
    """A JSON-ready summary: per policy, the session counts and failures by result type
    and by sending MTA (what `mxd tlsrpt list|show` and the admin API show)."""
    policies = []
    for p in r.policies:
        by_type: dict[str, int] = {}
        by_mta: dict[str, int] = {}
        for d, n in p.failure_details:
            key = d.result_type.value
            by_type[key] = by_type.get(key, 0) + n
            if d.sending_mta_ip:
                by_mta[d.sending_mta_ip] = by_mta.get(d.sending_mta_ip, 0) + n
        policies.append({
            "policy_type": p.policy.type.value, "policy_domain": p.policy.domain,
            "mx_host": list(p.policy.mx_host), "successful": p.successful, "failed": p.failed,
            "failure_types": by_type, "sending_mta": by_mta,
            "failure_details": [
                {"result_type": d.result_type.value, "count": n,
                 "sending_mta_ip": d.sending_mta_ip, "receiving_mx": d.receiving_mx_hostname,
                 "receiving_ip": d.receiving_ip, "reason": d.failure_reason_code}
                for d, n in p.failure_details],
        })
    return {"organization": r.organization_name, "report_id": r.report_id,
            "start": r.start, "end": r.end, "contact": r.contact_info, "policies": policies}


class TLSReportStore:
    """Incoming TLS reports, one JSON file each (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.files = ReportFiles(directory)
        self.directory = self.files.directory

    def save(self, r: ParsedReport, received: float, source: str, sender: str = "") -> Path:
        day = re.sub(r"[^0-9]", "", r.start)[:8] or "0"
        path = self.files.path(day, r.organization_name, r.organization_name, r.report_id)
        return self.files.write(path, dict(summary(r), received=received, source=source,
                                           sender=sender, id=path.stem))

    def reports(self) -> list[dict[str, Any]]:
        """Every stored report, oldest period first."""
        return self.files.load(lambda r: (r.get("start", ""), r.get("organization", "")))

    def get(self, report_id: str) -> dict[str, Any] | None:
        """One stored report by its id (file stem) or its report-id."""
        for r in self.reports():
            if report_id in (r.get("id"), r.get("report_id")):
                return r
        return None

    def ingest(self, message: bytes, received: float, source: str,
               sender: str = "") -> list[ParsedReport]:
        """Extract, parse and save the reports of one mail; ReportError when none is usable."""
        reports: list[ParsedReport] = []
        errors: list[str] = []
        for doc in extract_reports(message):
            try:
                reports.append(parse_report(doc))
            except ReportError as e:
                errors.append(str(e))
        if not reports:
            raise ReportError("; ".join(errors) or "no report")
        for r in reports:
            self.save(r, received, source, sender)
        return reports
