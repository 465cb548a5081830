"""Where incoming DMARC aggregate reports are kept: one JSON file per report under
DATA_DIR/dmarc/incoming, named by reporter and report id (a report that arrives twice is
stored once).  Blocking file I/O: the server calls it off the reactor thread."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from mxd.msgauth.dmarcreport import AggregateReport, ReportError, extract_reports, parse_report


class ReportStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, report: AggregateReport) -> Path:
        key = f"{report.org_name}\0{report.email}\0{report.report_id}".encode()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", report.org_name)[:40] or "report"
        return self.directory / f"{report.begin}-{safe}-{hashlib.sha256(key).hexdigest()[:16]}.json"

    def save(self, report: AggregateReport, received: float, source: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(report)
        data = dict(report.summary(), received=received, source=source)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def reports(self) -> list[dict[str, Any]]:
        """Every stored report, oldest period first."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in sorted(self.directory.glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        out.sort(key=lambda r: (r.get("begin", 0), r.get("org_name", "")))
        return out

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
