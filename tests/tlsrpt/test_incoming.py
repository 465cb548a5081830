"""Incoming SMTP TLS reports (mxd.tlsrpt.incoming): report mails in the shapes senders use,
size limits (gzip bombs), the store, the port-25 hook, `mxd tlsrpt list|show`."""

from __future__ import annotations

import argparse
import gzip
import json
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from mxd.dns.testing import FakeResolver
from mxd.msgauth.inbound import InboundChecker, InboundSettings
from mxd.tlsrpt import cli
from mxd.tlsrpt.incoming import MAX_JSON, TLSReportStore, extract_reports
from mxd.tlsrpt.report import ReportError, parse_report, report_json
from mxd.tlsrpt.send import daily_reports, report_mail
from tests.smtp.helpers import Session
from tests.tlsrpt.test_send import ATTEMPTS, DAY1, MIDNIGHT


def _ours() -> bytes:
    [r] = daily_reports(ATTEMPTS, DAY1, organization_name="Example A",
                        contact_info="mailto:x@a.example", submitter="mx.a.example")
    return report_mail(r, from_addr="postmaster@a.example", to_addr="tls@b.example",
                       submitter="mx.a.example", now=MIDNIGHT + 60, message_id="1@a.example")


def _doc() -> bytes:
    [r] = daily_reports(ATTEMPTS, DAY1, organization_name="Other Org",
                        contact_info="mailto:x@o.example", submitter="mx.o.example")
    return report_json(r.report)


def _attached(data: bytes, maintype: str, subtype: str, filename: str) -> bytes:
    m = EmailMessage(policy=SMTP)
    m["From"] = "r@o.example"
    m["To"] = "tls@b.example"
    m["Subject"] = "Report Domain: b.example Submitter: o.example Report-ID: <x>"
    m.set_content("report\n")
    m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return m.as_bytes()


@pytest.mark.parametrize("mail", [
    pytest.param(_ours, id="multipart/report application/tlsrpt+gzip"),
    pytest.param(lambda: _attached(_doc(), "application", "tlsrpt+json", "r.json"),
                 id="application/tlsrpt+json"),
    pytest.param(lambda: _attached(gzip.compress(_doc()), "application", "gzip", "r.json.gz"),
                 id="plain .json.gz attachment"),
    pytest.param(lambda: _attached(_doc(), "application", "octet-stream", "r.json"),
                 id="octet-stream .json attachment"),
])
def test_report_shapes_are_read(mail: Any) -> None:
    [doc] = extract_reports(mail())
    parsed = parse_report(doc)
    [p] = parsed.policies
    assert (p.policy.domain, p.failed, p.successful) == ("mx2.b.example", 2, 0)


@pytest.mark.parametrize("mail,error", [
    (lambda: _attached(gzip.compress(b"\0" * (MAX_JSON + 10)), "application", "tlsrpt+gzip",
                       "r.json.gz"), "larger than"),
    (lambda: _attached(b"\x1f\x8bnot gzip", "application", "tlsrpt+gzip", "r.json.gz"),
     "broken gzip"),
    (lambda: _attached(b"hello", "application", "pdf", "r.pdf"), "no TLS report"),
    (lambda: _attached(b"x" * 100, "application", "gzip", "photo.gz"), "no TLS report"),
])
def test_bad_reports_are_refused_with_a_reason(mail: Any, error: str) -> None:
    """A gzip bomb (10 MiB of zeros compress to ~10 KiB) stops at the limit."""
    with pytest.raises(ReportError, match=error):
        extract_reports(mail())


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_attachment_gives_a_report_error_or_a_report(data: bytes) -> None:
    mail = _attached(data, "application", "tlsrpt+json", "r.json")
    try:
        for doc in extract_reports(mail):
            parse_report(doc)
    except ReportError:
        pass


def test_store_keeps_each_report_once_and_cli_lists_it(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    store = TLSReportStore(tmp_path / "tlsrpt" / "incoming")
    store.ingest(_ours(), 1.0, "192.0.2.7", "postmaster@a.example")
    store.ingest(_ours(), 2.0, "192.0.2.7", "postmaster@a.example")
    [r] = store.reports()
    assert r["organization"] == "Example A" and r["sender"] == "postmaster@a.example"
    [p] = r["policies"]
    assert (p["policy_type"], p["successful"], p["failed"], p["failure_types"]) == (
        "tlsa", 0, 2, {"validation-failure": 2})
    assert p["sending_mta"] == {"127.0.0.1": 2}
    cfg = argparse.Namespace(data_dir=tmp_path)
    assert cli.run(argparse.Namespace(tlsrpt_func=cli._list, json=False), lambda a: cfg) == 0
    out = capsys.readouterr().out
    assert ("from Example A: mx2.b.example (tlsa): 0 successful, 2 failed "
            "[validation-failure 2]") in out
    assert cli.run(argparse.Namespace(tlsrpt_func=cli._show, json=True, id=r["id"]),
                   lambda a: cfg) == 0
    assert json.loads(capsys.readouterr().out)["report_id"] == r["report_id"]
    assert cli.run(argparse.Namespace(tlsrpt_func=cli._show, json=False, id="nope"),
                   lambda a: cfg) == 1


def test_port_25_mail_to_a_report_address_is_stored_and_delivered(tmp_path: Path) -> None:
    """The mail is delivered as usual; its report is stored; other mail is not read."""
    store = TLSReportStore(tmp_path)
    checker = InboundChecker(FakeResolver(), task.Clock(), InboundSettings(
        "mx.example.test", tls_report_addresses=frozenset({"bob@example.test"})),
        tls_reports=store)
    for rcpt in ("bob@example.test", "alice@example.test"):
        s = Session(checker=checker)
        s.ehlo("mx.a.example")
        s.send(f"MAIL FROM:<postmaster@a.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n")
        s.send(_ours().replace(b"\r\n.", b"\r\n..").decode() + "\r\n.\r\n")
        assert s.codes()[-1] == 250
        assert len(s.store.delivered) == 1
    [r] = store.reports()
    assert r["source"] == "192.0.2.7" and r["sender"] == "postmaster@a.example"
