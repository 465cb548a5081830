"""Admin pages escape everything they show and send a strict Content-Security-Policy."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from twisted.internet.defer import succeed

from mxd.admin.web import admin_site
from mxd.dnsrecords import DNSRecord
from mxd.store.interfaces import Account
from tests.admin.test_auth import Admin

HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"


class _Directory:
    def list_accounts(self):  # type: ignore[no-untyped-def]
        return succeed([Account(1, HOSTILE + "@example.test", (HOSTILE + "@example.test",))])


class _Store:
    def list_accounts(self):  # type: ignore[no-untyped-def]
        return succeed([])

    def get_usage(self, account_id: int):  # type: ignore[no-untyped-def]
        return succeed((0, None))


class _Reports:
    def reports(self) -> list[dict[str, object]]:
        return [{"org_name": HOSTILE, "report_id": HOSTILE, "domain": HOSTILE, "begin": 0,
                 "end": 1, "messages": 1, "dmarc_pass": 0, "policy": HOSTILE}]


def _admin(tmp_path: Path, hashed: str) -> Admin:
    a = Admin(tmp_path, hashed)
    a.ctx.directory, a.ctx.store = _Directory(), _Store()
    a.ctx.domains = ("example.test",)
    a.ctx.domain_records = lambda d: [DNSRecord(d, "TXT", HOSTILE, HOSTILE, HOSTILE)]
    a.ctx.dmarc_reports = _Reports()
    a.site = admin_site(a.ctx)
    return a


def test_pages_escape_hostile_values_and_send_csp(tmp_path, hashed):
    """Account names, DNS record values and report fields full of markup come out
    escaped on every page, under a CSP that allows no script at all."""
    a = _admin(tmp_path, hashed)
    _, cookie = a.login()
    for path in ("/accounts", "/domains", "/reports"):
        code, hdrs, body = a.request("GET", path, headers={"Cookie": cookie})
        assert code == 200, (path, body)
        assert b"<script>" not in body and b"<img" not in body, path
        assert b"&lt;script&gt;" in body, path
        csp = hdrs["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp
        assert hdrs["x-frame-options"] == "DENY"


def test_account_forms_need_the_csrf_token(tmp_path, hashed):
    """A POST to the accounts page without the session's token never reaches the
    directory."""
    a = _admin(tmp_path, hashed)
    called: list[str] = []
    a.ctx.directory = attrs.make_class("D", {})()  # any call would raise AttributeError
    a.ctx.directory.delete_account = lambda name: called.append(name)  # type: ignore[attr-defined]
    _, cookie = a.login()
    code, _, _ = a.request("POST", "/accounts/delete", headers={"Cookie": cookie},
                           body=b"name=x&confirm=x")
    assert code == 403 and called == []


def test_overview_lists_recent_warnings_escaped(tmp_path, hashed):
    """Warnings and errors logged since the start appear on the overview (newest first,
    escaped); info events do not; the buffer is bounded."""
    from twisted.logger import Logger, LogPublisher

    from mxd.admin.recent import RecentProblems

    recent = RecentProblems(size=3)
    pub = LogPublisher(recent)
    log = Logger(namespace="mxd.test", observer=pub)
    log.info("routine {x}", x=1)
    log.warn("first {what}", what=HOSTILE)
    for i in range(3):
        log.error("boom {i}", i=i)
    assert [e[3] for e in recent.latest()] == ["boom 2", "boom 1", "boom 0"]
    a = _admin(tmp_path, hashed)
    a.ctx.recent = recent
    log.warn("late {what}", what=HOSTILE)
    _, cookie = a.login()
    code, _, body = a.request("GET", "/", headers={"Cookie": cookie})
    assert code == 200 and b"boom 2" in body and b"routine" not in body
    assert b"late &lt;script&gt;" in body and b"<script>" not in body


def _csrf(a: Admin, cookie: str) -> str:
    import re

    _, _, body = a.request("GET", "/domains", headers={"Cookie": cookie})
    m = re.search(rb'name=csrf value="([^"]+)"', body)
    assert m is not None
    return m.group(1).decode()


def test_domains_page_shows_the_dns_check_next_to_the_records(tmp_path, hashed):
    """POST /domains/check runs the DNS check (mxd.dnscheck) of a configured domain; the
    page then shows each record with its check result (worst status, DNSSEC state,
    detail, escaped), the checks without a record of their own, and the fixes."""
    from mxd.dnscheck import DNSSEC, CheckResult, Status

    a = _admin(tmp_path, hashed)
    a.ctx.domain_records = lambda d: [DNSRecord(d, "MX", "10 mx.example.test.", "mx", "mail"),
                                      DNSRecord(d, "TXT", "v=spf1 -all", "spf", "SPF")]
    calls: list[str] = []

    def check(domain: str):  # type: ignore[no-untyped-def]
        calls.append(domain)
        return succeed([
            CheckResult("mx", Status.OK, DNSSEC.SECURE, "MX → mx.example.test"),
            CheckResult("spf", Status.ERROR, DNSSEC.INSECURE, HOSTILE, "publish v=spf1 mx"),
            CheckResult("dnssec", Status.WARN, DNSSEC.INSECURE, "not signed", "sign it")])

    a.ctx.domain_check = check
    a.site = admin_site(a.ctx)
    _, cookie = a.login()
    code, _, body = a.request("GET", "/domains", headers={"Cookie": cookie})
    assert code == 200 and b"<th>DNS check" not in body
    token = _csrf(a, cookie)
    code, _, _ = a.request("POST", "/domains/check", headers={"Cookie": cookie},
                           body=b"domain=example.test")
    assert code == 403 and calls == []  # no CSRF token
    code, hdrs, _ = a.request("POST", "/domains/check", headers={"Cookie": cookie},
                              body=f"domain=example.test&csrf={token}".encode())
    assert code == 303 and hdrs["location"] == "/domains#example.test" and calls == [
        "example.test"]
    code, _, body = a.request("POST", "/domains/check", headers={"Cookie": cookie},
                              body=f"domain=other.test&csrf={token}".encode())
    assert code == 400 and b"not a configured domain" in body
    _, _, body = a.request("GET", "/domains", headers={"Cookie": cookie})
    text = body.decode()
    rows = text.split("<tr>")
    mx_row = next(r for r in rows if "10 mx.example.test." in r)
    assert "OK" in mx_row and "[secure] MX → mx.example.test" in mx_row
    spf_row = next(r for r in rows if "v=spf1 -all" in r)
    assert "ERROR" in spf_row and "&lt;script&gt;" in spf_row and "<script>" not in text
    assert "other checks" in text and "not signed" in text and "sign it" in text
    assert "spf: publish v=spf1 mx" in text


def test_reports_page_lists_dmarc_reports_sent(tmp_path, hashed):
    """The DMARC reports this server sent (msgauth.reportstore.SentReportStore) are
    listed on /reports, escaped, and as JSON at /api/dmarc/sent."""

    from mxd.msgauth.reportstore import SentReportStore

    a = _admin(tmp_path, hashed)
    store = SentReportStore(tmp_path / "sent")
    store.record(domain="example.net", report_id=HOSTILE, begin=86400, end=2 * 86400 - 1,
                 to_addr="rua@example.net", queue_id="q1", sent=2 * 86400 + 60, messages=7,
                 records=2)
    a.ctx.dmarc_sent = store
    a.site = admin_site(a.ctx)
    _, cookie = a.login()
    code, _, body = a.request("GET", "/reports", headers={"Cookie": cookie})
    text = body.decode()
    assert code == 200 and "DMARC aggregate reports sent" in text
    sent = text[text.index("DMARC aggregate reports sent"):].split("</table>")[0]
    assert "example.net" in sent and "rua@example.net" in sent and "<td>7</td>" in sent
    assert "&lt;script&gt;" in sent and "<script>" not in text
    assert 'href="/queue/q1"' in sent
    code, _, body = a.request("GET", "/api/dmarc/sent", headers={
        "Authorization": f"Bearer {a.token}"})
    assert code == 200, body
    assert json.loads(body)[0]["report_id"] == HOSTILE


def test_reports_page_lists_tls_reports_sent(tmp_path, hashed):
    """The TLS reports this server sent (tlsrpt.send.SentTLSReports): mail with its queue
    id, https with its result; escaped; also JSON at /api/tlsrpt/sent."""
    import datetime

    from mxd.tlsrpt.send import PolicyReport, SentTLSReports

    a = _admin(tmp_path, hashed)
    store = SentTLSReports(tmp_path / "tls-sent")
    day = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    report = PolicyReport(HOSTILE, "tlsa", {}, "2026-12-04.r1", day,
                          day + datetime.timedelta(days=1), 3)
    store.record(report, to="mailto:tls@example.net", method="mailto", result="queued",
                 sent=1.0, queue_id="q7")
    store.record(report, to="https://r.example.net/x", method="https", result="failed",
                 sent=2.0)
    a.ctx.tls_sent = store
    a.ctx.queue = object()  # the API tree of the queue exists only with a queue
    a.site = admin_site(a.ctx)
    _, cookie = a.login()
    code, _, body = a.request("GET", "/reports", headers={"Cookie": cookie})
    text = body.decode()
    sent = text[text.index("TLS reports sent"):].split("</table>")[0]
    assert code == 200 and "tlsa" in sent and "&lt;script&gt;" in sent
    assert 'queued as <a href="/queue/q7">' in sent and "<td>failed</td>" in sent
    assert "<script>" not in text
    code, _, body = a.request("GET", "/api/tlsrpt/sent", headers={
        "Authorization": f"Bearer {a.token}"})
    assert code == 200 and len(json.loads(body)) == 2
