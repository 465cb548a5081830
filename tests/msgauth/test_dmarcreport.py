"""DMARC aggregate reports (mxd.msgauth.dmarcreport, reportstore): parsing with limits,
bombs and malformed XML, writing, and parsedmarc (independent) reading what we write."""

from __future__ import annotations

import gzip
import io
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.msgauth.dmarcreport import (
    MAX_XML,
    ReportError,
    ReportRecord,
    build_report,
    decompress,
    extract_reports,
    parse_report,
)
from mxd.msgauth.reportstore import ReportStore

RECORDS = [ReportRecord("192.0.2.1", 3, "none", "pass", "fail", "example.com",
                        dkim_domains=(("example.com", "pass"),),
                        spf_domains=(("bounce.example.com", "pass"),)),
           ReportRecord("2001:db8::5", 1, "reject", "fail", "fail", "example.com",
                        spf_domains=(("evil.test", "fail"),))]


def _xml(report_id: str = "r1") -> bytes:
    return build_report(org_name="mx.example.org", email_addr="postmaster@example.org",
                        report_id=report_id, begin=1796428800, end=1796515199,
                        domain="example.com", adkim="r", aspf="s", policy="reject",
                        subdomain_policy="quarantine", pct=100, records=RECORDS)


def _mail(payload: bytes, name: str = "r.xml.gz", ctype: str = "application/gzip") -> bytes:
    m = EmailMessage()
    m["From"] = "noreply-dmarc@reporter.example"
    m["To"] = "dmarc@example.com"
    m["Subject"] = "Report Domain: example.com Submitter: reporter.example Report-ID: r1"
    m.set_content("A DMARC aggregate report.")
    maintype, subtype = ctype.split("/")
    m.add_attachment(payload, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes().replace(b"\n", b"\r\n")


def test_round_trip_and_summary() -> None:
    """What build_report writes, parse_report reads back field by field."""
    r = parse_report(_xml())
    assert (r.org_name, r.report_id, r.domain, r.policy, r.aspf) == (
        "mx.example.org", "r1", "example.com", "reject", "s")
    assert r.records == tuple(RECORDS) and r.messages == 4
    assert r.summary()["dmarc_pass"] == 3


def test_parsedmarc_reads_our_report() -> None:
    """parsedmarc (independent, offline) parses the XML mxd writes."""
    parsedmarc = pytest.importorskip("parsedmarc")
    out = parsedmarc.parse_aggregate_report_xml(_xml(), offline=True,
                                                always_use_local_files=True)
    assert out["report_metadata"]["report_id"] == "r1"
    assert out["policy_published"]["p"] == "reject"
    assert [(rec["source"]["ip_address"], rec["count"]) for rec in out["records"]] == [
        ("192.0.2.1", 3), ("2001:db8::5", 1)]
    assert out["records"][0]["alignment"]["dmarc"] is True


@pytest.mark.parametrize(("payload", "name", "ctype"), [
    (gzip.compress(_xml()), "r.xml.gz", "application/gzip"),
    (_xml(), "r.xml", "text/xml"),
])
def test_extract_from_mail(payload: bytes, name: str, ctype: str) -> None:
    """gzip and plain XML attachments are found in a report mail."""
    (xml,) = extract_reports(_mail(payload, name, ctype))
    assert parse_report(xml).report_id == "r1"


def test_zip_attachment() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("r.xml", _xml())
    (xml,) = extract_reports(_mail(buf.getvalue(), "r.zip", "application/zip"))
    assert parse_report(xml).records == tuple(RECORDS)


def test_gzip_bomb_is_bounded() -> None:
    """A gzip that inflates past MAX_XML is refused after reading MAX_XML + 1 octets."""
    bomb = gzip.compress(b"\0" * (MAX_XML + 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100_000
    with pytest.raises(ReportError, match="larger than"):
        decompress(bomb)


def test_zip_bomb_is_bounded() -> None:
    """A zip member declaring (or inflating to) more than MAX_XML is refused."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("r.xml", b"<feedback>" + b" " * (MAX_XML + 10))
    with pytest.raises(ReportError, match="declares"):
        decompress(buf.getvalue())


@pytest.mark.parametrize("xml", [
    b"<feedback><report_metadata>",  # truncated
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><feedback>&a;</feedback>",
    b"<html></html>",
    b"<feedback><report_metadata/><policy_published/></feedback>",  # no report_id
    b"<feedback><report_metadata><report_id>x</report_id></report_metadata>"
    b"<policy_published/><record><row><count>many</count></row></record></feedback>",
])
def test_malformed_reports_are_report_errors(xml: bytes) -> None:
    """Malformed XML, entity declarations, wrong roots and bad numbers: ReportError."""
    with pytest.raises(ReportError):
        parse_report(xml)


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_parser_total(data: bytes) -> None:
    """Any bytes give a report or ReportError."""
    try:
        parse_report(data)
    except ReportError:
        pass


def test_store_saves_once_and_lists(tmp_path: Path) -> None:
    """A report that arrives twice is stored once; list gives summaries."""
    store = ReportStore(tmp_path)
    mail = _mail(gzip.compress(_xml()))
    store.ingest(mail, 1.0, "192.0.2.9")
    store.ingest(mail, 2.0, "192.0.2.9")
    (only,) = store.reports()
    assert only["report_id"] == "r1" and only["messages"] == 4 and only["received"] == 2.0
    with pytest.raises(ReportError):
        store.ingest(_mail(b"not a report", "x.xml", "text/xml"), 3.0, "192.0.2.9")
