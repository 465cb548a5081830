"""DMARC aggregate reports (RFC 7489 §7.2, Appendix C): reading incoming ones, writing ours.

Incoming reports arrive as mail: the XML is gzip- or zip-compressed (or plain) in a
``multipart/report``, as an attachment or as the whole body.  ``extract_reports`` finds and
decompresses them with hard limits (compressed and decompressed size, member count, so a
zip or gzip bomb costs at most ``MAX_XML`` octets), and ``parse_report`` reads the XML with
limits on records and refuses DOCTYPEs (no entity expansion).  ``build_report`` writes the
XML of one aggregate report.  Pure: no I/O.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import zipfile
import zlib
from collections.abc import Iterable
from xml.etree import ElementTree

import attrs

from mxd.errors import MxdError

MAX_MESSAGE = 20 * 1024 * 1024  # a report mail larger than this is not examined
MAX_XML = 20 * 1024 * 1024  # decompressed XML per report
MAX_REPORTS = 10  # reports per mail
MAX_RECORDS = 100_000  # <record> elements per report


class ReportError(MxdError):
    """The data is not a usable aggregate report (or exceeds a limit)."""


@attrs.frozen
class ReportRecord:
    source_ip: str
    count: int
    disposition: str
    dkim: str  # policy_evaluated dkim: pass/fail
    spf: str
    header_from: str
    envelope_from: str = ""
    dkim_domains: tuple[tuple[str, str], ...] = ()  # (domain, result)
    spf_domains: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class AggregateReport:
    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    domain: str  # policy_published
    policy: str
    subdomain_policy: str
    pct: int
    adkim: str
    aspf: str
    records: tuple[ReportRecord, ...]

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.records)

    def summary(self) -> dict[str, object]:
        """A JSON-ready summary (what `mxd dmarc reports` and the admin API show)."""
        passed = sum(r.count for r in self.records if "pass" in (r.dkim, r.spf))
        return {"org_name": self.org_name, "email": self.email, "report_id": self.report_id,
                "begin": self.begin, "end": self.end, "domain": self.domain,
                "policy": self.policy, "messages": self.messages, "dmarc_pass": passed,
                "records": [attrs.asdict(r) for r in self.records]}


def _bounded(read: io.BufferedIOBase | gzip.GzipFile | io.BytesIO, limit: int) -> bytes:
    data = read.read(limit + 1)
    if len(data) > limit:
        raise ReportError(f"decompressed report larger than {limit} octets")
    return data


def decompress(data: bytes, name: str = "", content_type: str = "") -> list[bytes]:
    """The XML documents in one attachment: gzip, zip (at most MAX_REPORTS members) or
    plain XML; every result at most MAX_XML octets however it was compressed."""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                return [_bounded(g, MAX_XML)]
        except (OSError, EOFError, zlib.error) as e:
            raise ReportError(f"broken gzip: {e}") from None
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                out = []
                for info in z.infolist()[:MAX_REPORTS]:
                    if info.is_dir():
                        continue
                    if info.file_size > MAX_XML:
                        raise ReportError(f"zip member {info.filename!r} declares "
                                          f"{info.file_size} octets")
                    with z.open(info) as member:  # the declared size is checked again
                        out.append(_bounded(member, MAX_XML))  # type: ignore[arg-type]
                return out
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as e:
            raise ReportError(f"broken zip: {e}") from None
    head = data.lstrip()[:100]
    if head.startswith(b"<?xml") or head.startswith(b"<feedback"):
        if len(data) > MAX_XML:
            raise ReportError("XML report too large")
        return [data]
    raise ReportError(f"attachment {name or content_type!r} is neither gzip, zip nor XML")


_REPORT_TYPES = ("application/gzip", "application/x-gzip", "application/zip",
                 "application/x-zip-compressed", "application/xml", "text/xml",
                 "application/octet-stream")


def extract_reports(message: bytes) -> list[bytes]:
    """The XML reports attached to (or making up) a report mail (RFC 7489 §7.2.1.1)."""
    if len(message) > MAX_MESSAGE:
        raise ReportError(f"report mail larger than {MAX_MESSAGE} octets")
    msg = email.message_from_bytes(message, policy=email.policy.default)
    found: list[bytes] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        name = part.get_filename() or ""
        if ctype not in _REPORT_TYPES and not name.lower().endswith((".xml", ".gz", ".zip")):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        found.extend(decompress(payload, name, ctype))
        if len(found) >= MAX_REPORTS:
            break
    if not found:
        raise ReportError("no aggregate report in the message")
    return found[:MAX_REPORTS]


def _text(el: ElementTree.Element | None, path: str, default: str = "") -> str:
    if el is None:
        return default
    found = el.find(path)
    return (found.text or "").strip() if found is not None and found.text else default


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ReportError(f"{what} is not a number: {value[:40]!r}") from None


def parse_report(xml: bytes) -> AggregateReport:
    """Read one aggregate report (RFC 7489 Appendix C); ReportError when malformed."""
    if len(xml) > MAX_XML:
        raise ReportError("XML report too large")
    if b"<!DOCTYPE" in xml[:4096].upper() or b"<!ENTITY" in xml.upper():
        raise ReportError("DOCTYPE/ENTITY declarations are not accepted in reports")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise ReportError(f"malformed XML: {e}") from None
    if root.tag != "feedback":
        raise ReportError(f"root element is <{root.tag[:40]}>, not <feedback>")
    meta = root.find("report_metadata")
    pol = root.find("policy_published")
    if meta is None or pol is None:
        raise ReportError("report_metadata or policy_published missing")
    records = []
    for i, rec in enumerate(root.iterfind("record")):
        if i >= MAX_RECORDS:
            raise ReportError(f"more than {MAX_RECORDS} records")
        row = rec.find("row")
        auth = rec.find("auth_results")
        records.append(ReportRecord(
            source_ip=_text(row, "source_ip"),
            count=_int(_text(row, "count", "0"), "count"),
            disposition=_text(row, "policy_evaluated/disposition"),
            dkim=_text(row, "policy_evaluated/dkim"),
            spf=_text(row, "policy_evaluated/spf"),
            header_from=_text(rec, "identifiers/header_from"),
            envelope_from=_text(rec, "identifiers/envelope_from"),
            dkim_domains=tuple((_text(d, "domain"), _text(d, "result"))
                               for d in (auth.iterfind("dkim") if auth is not None else [])),
            spf_domains=tuple((_text(d, "domain"), _text(d, "result"))
                              for d in (auth.iterfind("spf") if auth is not None else [])),
        ))
    report_id = _text(meta, "report_id")
    if not report_id:
        raise ReportError("report_id missing")
    return AggregateReport(
        org_name=_text(meta, "org_name"), email=_text(meta, "email"), report_id=report_id,
        begin=_int(_text(meta, "date_range/begin", "0"), "begin"),
        end=_int(_text(meta, "date_range/end", "0"), "end"),
        domain=_text(pol, "domain"), policy=_text(pol, "p"), subdomain_policy=_text(pol, "sp"),
        pct=_int(_text(pol, "pct", "100"), "pct"), adkim=_text(pol, "adkim", "r"),
        aspf=_text(pol, "aspf", "r"), records=tuple(records))


# -- writing our reports (RFC 7489 §7.2.1.1, Appendix C) -----------------------------------

def build_report(*, org_name: str, email_addr: str, report_id: str, begin: int, end: int,
                 domain: str, adkim: str, aspf: str, policy: str, subdomain_policy: str,
                 pct: int, records: Iterable[ReportRecord]) -> bytes:
    """The XML of one aggregate report."""
    E = ElementTree.Element
    S = ElementTree.SubElement
    root = E("feedback")
    S(root, "version").text = "1.0"
    meta = S(root, "report_metadata")
    S(meta, "org_name").text = org_name
    S(meta, "email").text = email_addr
    S(meta, "report_id").text = report_id
    dr = S(meta, "date_range")
    S(dr, "begin").text = str(begin)
    S(dr, "end").text = str(end)
    pol = S(root, "policy_published")
    for tag, value in (("domain", domain), ("adkim", adkim), ("aspf", aspf), ("p", policy),
                       ("sp", subdomain_policy or policy), ("pct", str(pct))):
        S(pol, tag).text = value
    for r in records:
        rec = S(root, "record")
        row = S(rec, "row")
        S(row, "source_ip").text = r.source_ip
        S(row, "count").text = str(r.count)
        pe = S(row, "policy_evaluated")
        S(pe, "disposition").text = r.disposition
        S(pe, "dkim").text = r.dkim
        S(pe, "spf").text = r.spf
        ids = S(rec, "identifiers")
        S(ids, "header_from").text = r.header_from
        auth = S(rec, "auth_results")
        for d, res in r.dkim_domains:
            el = S(auth, "dkim")
            S(el, "domain").text = d
            S(el, "result").text = res
        for d, res in r.spf_domains or ((r.envelope_from or r.header_from, "none"),):
            el = S(auth, "spf")
            S(el, "domain").text = d
            S(el, "result").text = res
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root)
