"""SMTP TLS reporting (RFC 8460) between two real ``twistd mxd`` processes on loopback,
through the DNSSEC lab.

Server A (domain a.test) sends a message to B's domain example.test, whose MX hosts are
both B (loopback addresses of their own): mx1 publishes a TLSA record that does not match
B's certificate (a DANE validation failure, RFC 7672 §2.2), mx2 a matching one.  Each MX host
has its own ``_smtp._tls`` record (HostTLSRPT) naming B's report address.  Then ``mxd tlsrpt
send --day <today>`` on A makes the running A report the day now: one report per MX host
(failures for mx1, the success for mx2 with send_success on), delivered by mail to B, which
recognises and stores them; ``mxd tlsrpt list`` on B shows the counts and the failure type.
A's /metrics then shows the TLS result, REQUIRETLS failure, TLS-Required: No override and
report counters (the message is sent with REQUIRETLS, refused at mx1 for its DANE failure).

Not covered here: an MTA-STS policy (DANE takes precedence for a signed MX host; the
MTA-STS report path is covered by the lab test in test_tls_policy_e2e.py)."""

from __future__ import annotations

import datetime
import json
import smtplib
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mxd import dane
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.mxdserver import MxdServer
from tests.integration.tools import free_port

pytestmark = pytest.mark.integration

MX1, MX2 = "127.0.3.21", "127.0.3.22"  # B's two MX addresses (same port)
REPORTS = "tls-reports@example.test"


class NamedServer(MxdServer):
    """An MxdServer under another host name and domain (A: mx.a.test, a.test)."""

    def __init__(self, *a: Any, hostname: str, domain: str, **kw: Any) -> None:
        self.names = (hostname, domain)
        super().__init__(*a, **kw)

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace('hostname = "mx.example.test"', f'hostname = "{self.names[0]}"')
        text = text.replace('names = ["example.test"]', f'names = ["{self.names[1]}"]')
        self.config_path.write_text(text)


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_reports_between_two_servers(dns_lab_factory: Any, tls_files: dict[str, Path],  # noqa: F811
                                     tmp_path: Path) -> None:
    leaf = x509.load_pem_x509_certificate(tls_files["cert"].read_bytes())
    good = dane.tlsa_text(dane.tlsa_for_certificate(leaf))
    lab = dns_lab_factory({"example.test": ZoneSpec(records=[
        "@ MX 10 mx1", "@ MX 20 mx2", f"mx1 A {MX1}", f"mx2 A {MX2}",
        "_25._tcp.mx1 TLSA 3 1 1 " + "00" * 32, f"_25._tcp.mx2 TLSA {good}",
        f'_smtp._tls.mx1 TXT "v=TLSRPTv1; rua=mailto:{REPORTS}"',
        f'_smtp._tls.mx2 TXT "v=TLSRPTv1; rua=mailto:{REPORTS}"'])})
    host, port = lab.resolver_address
    trusted = f'trusted = ["{host}:{port}"]\n'
    smtp_port = free_port()
    (tmp_path / "b").mkdir()
    b = MxdServer(tmp_path / "b", tls_files, resolver=(host, port), extra_config=(
        trusted + f'[tlsrpt]\nreport_addresses = ["{REPORTS}"]\nsend = false\n'
        + "".join(f'[[listeners]]\nprotocol = "smtp"\naddress = "{ip}"\nport = {smtp_port}\n'
                  for ip in (MX1, MX2))))
    b.add_account(REPORTS, "reports-pass", REPORTS)
    b.add_account(MxdServer.user, MxdServer.password, MxdServer.user)
    (tmp_path / "a").mkdir()
    a = NamedServer(tmp_path / "a", tls_files, resolver=(host, port), hostname="mx.a.test",
                    domain="a.test", extra_config=(
                        trusted + f"[queue]\nsmtp_port = {smtp_port}\n"
                        "[tlsrpt]\nsend = true\nsend_success = true\n"
                        'organization = "A Test"\n[metrics]\nenabled = true\n'))
    a.add_account("sender@a.test", "sender-pass", "sender@a.test")
    b.start()
    try:
        a.start()
        try:
            _run(a, b)
        finally:
            a.stop()
    finally:
        b.stop()


def _queue_empty(server: MxdServer) -> bool:
    r = server.mxd("queue", "list", "--json")
    return r.returncode == 0 and json.loads(r.stdout) == []


def _run(a: MxdServer, b: MxdServer) -> None:
    ctx = ssl.create_default_context(cafile=str(a.ca_file))
    with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login("sender@a.test", "sender-pass")
        s.ehlo()
        assert s.has_extn("requiretls")
        # REQUIRETLS (RFC 8689): mx1 fails DANE, so only mx2 (verified, offering it) may
        # take the message.
        s.sendmail("sender@a.test", [MxdServer.user],
                   b"From: sender@a.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhi\r\n",
                   mail_options=["REQUIRETLS"])
    _until(lambda: _queue_empty(a), f"A did not deliver:\n{a.log_tail()}")
    attempts = _until(lambda: a.mxd("queue", "domains").stdout, "no TLS records on A")
    assert "example.test" in attempts

    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    sent = a.mxd("tlsrpt", "send", "--day", today)
    assert sent.returncode == 0, (sent.stdout, sent.stderr, a.log_tail())
    assert sent.stdout.strip() == f"{today}: 2 report(s), 2 delivery(ies) started"

    def listed() -> str:
        out = b.mxd("tlsrpt", "list")
        return out.stdout if out.stdout.count("from A Test") == 2 else ""

    out = _until(listed, f"B did not list both reports:\n{b.log_tail()}\n{a.log_tail()}")
    assert "mx1.example.test (tlsa): 0 successful, 1 failed [validation-failure 1]" in out
    assert "mx2.example.test (tlsa): 1 successful, 0 failed" in out
    reports = json.loads(b.mxd("tlsrpt", "list", "--json").stdout)
    assert {r["sender"] for r in reports} == {"postmaster@mx.a.test"}

    req = urllib.request.Request(f"http://127.0.0.1:{a.ports['admin']}/metrics",
                                 headers=a.admin_headers())
    with urllib.request.urlopen(req, timeout=10) as r:
        metrics = r.read().decode()
    assert 'mxd_tlsrpt_reports_sent_total{method="mailto"}' in metrics, metrics
    tls_lines = [line for line in metrics.splitlines()
                 if line.startswith("mxd_tls_results_total{")]
    assert any('result="validation-failure"' in line and 'policy_type="tlsa"' in line
               for line in tls_lines), tls_lines
    assert any('result="success"' in line and 'policy_type="tlsa"' in line
               for line in tls_lines), tls_lines
    # The REQUIRETLS message was refused at mx1 for its DANE failure (RFC 8689 §4.2) ...
    assert 'mxd_requiretls_failures_total{reason="validation-failure"}' in metrics, metrics
    # ... and the report mail with TLS-Required: No went through mx1 anyway (RFC 8689 §5).
    assert 'mxd_tls_required_no_overrides_total{policy_type="tlsa"}' in metrics, metrics
