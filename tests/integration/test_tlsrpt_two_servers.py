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

B also receives mail for a second domain, sts.test, whose MX is mx.example.test (B again,
no TLSA record, so DANE does not apply) and which publishes an MTA-STS policy in enforce
mode (``_mta-sts`` TXT and the policy over HTTPS with a certificate of the lab CA, which A
trusts through ``[outbound] ca_file``) and its own ``_smtp._tls`` record: A's report day
then also holds one report about the policy DOMAIN sts.test (policy type sts, RFC 8460
§4.1), sent to the domain's rua.

The sending account then reads its own support records on A's admin listener
(``/api/account/tls/domains`` with its credentials); another account of A sees none."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import smtplib
import ssl
import threading
import time
import urllib.error
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
STS_POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"


class NamedServer(MxdServer):
    """An MxdServer under another host name and domain (A: mx.a.test, a.test)."""

    def __init__(self, *a: Any, hostname: str, domains: tuple[str, ...], **kw: Any) -> None:
        self.names = (hostname, domains)
        super().__init__(*a, **kw)

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace('hostname = "mx.example.test"', f'hostname = "{self.names[0]}"')
        text = text.replace('names = ["example.test"]', f"names = {json.dumps(self.names[1])}")
        self.config_path.write_text(text)


class PolicyServer:
    """The MTA-STS policy host (RFC 8461 §3.3): HTTPS on loopback, in a thread."""

    def __init__(self, tls_ca: Any, tmp_path: Path) -> None:
        cert = tls_ca.issue_cert("mta-sts.sts.test")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "policy.pem"))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp_path / "policy.pem"))
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/.well-known/mta-sts.txt"
                outer.hits += ok
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(STS_POLICY) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(STS_POLICY)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_reports_between_two_servers(dns_lab_factory: Any, tls_files: dict[str, Path],  # noqa: F811
                                     tls_ca: Any, tmp_path: Path) -> None:
    leaf = x509.load_pem_x509_certificate(tls_files["cert"].read_bytes())
    good = dane.tlsa_text(dane.tlsa_for_certificate(leaf))
    lab = dns_lab_factory({"example.test": ZoneSpec(records=[
        "@ MX 10 mx1", "@ MX 20 mx2", f"mx1 A {MX1}", f"mx2 A {MX2}",
        "_25._tcp.mx1 TLSA 3 1 1 " + "00" * 32, f"_25._tcp.mx2 TLSA {good}",
        f'_smtp._tls.mx1 TXT "v=TLSRPTv1; rua=mailto:{REPORTS}"',
        f'_smtp._tls.mx2 TXT "v=TLSRPTv1; rua=mailto:{REPORTS}"', f"mx A {MX2}"]),
        "sts.test": ZoneSpec(records=[
            "@ MX 10 mx.example.test.", "mta-sts A 127.0.0.1",
            '_mta-sts TXT "v=STSv1; id=20261205"',
            f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:{REPORTS}"'], signed=False)})
    host, port = lab.resolver_address
    trusted = f'trusted = ["{host}:{port}"]\n'
    smtp_port = free_port()
    (tmp_path / "b").mkdir()
    policy = PolicyServer(tls_ca, tmp_path)
    b = NamedServer(tmp_path / "b", tls_files, resolver=(host, port), hostname="mx.example.test",
                    domains=("example.test", "sts.test"), extra_config=(
        trusted + f'[tlsrpt]\nreport_addresses = ["{REPORTS}"]\nsend = false\n'
        + "".join(f'[[listeners]]\nprotocol = "smtp"\naddress = "{ip}"\nport = {smtp_port}\n'
                  for ip in (MX1, MX2))))
    b.add_account(REPORTS, "reports-pass", REPORTS)
    b.add_account(MxdServer.user, MxdServer.password, MxdServer.user)
    b.add_account("bob@sts.test", "bob-pass", "bob@sts.test")
    (tmp_path / "a").mkdir()
    a = NamedServer(tmp_path / "a", tls_files, resolver=(host, port), hostname="mx.a.test",
                    domains=("a.test",), extra_config=(
                        trusted + f"[queue]\nsmtp_port = {smtp_port}\n"
                        f'[outbound]\nca_file = "{tls_files["ca"]}"\n'
                        f"mta_sts_port = {policy.port}\n"
                        "[tlsrpt]\nsend = true\nsend_success = true\n"
                        'organization = "A Test"\n[metrics]\nenabled = true\n'))
    a.add_account("sender@a.test", "sender-pass", "sender@a.test")
    a.add_account("other@a.test", "other-pass", "other@a.test")
    b.start()
    try:
        a.start()
        try:
            _run(a, b)
        finally:
            a.stop()
    finally:
        b.stop()
        policy.close()
    assert policy.hits >= 1


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
        # MTA-STS (RFC 8461 §5): sts.test's policy names mx.example.test, which must
        # present a certificate valid for that name (it does, from the lab CA).
        s.sendmail("sender@a.test", ["bob@sts.test"],
                   b"From: sender@a.test\r\nTo: bob@sts.test\r\nSubject: sts\r\n\r\nhi\r\n")
    _until(lambda: _queue_empty(a), f"A did not deliver:\n{a.log_tail()}")
    attempts = _until(lambda: a.mxd("queue", "domains").stdout, "no TLS records on A")
    assert "example.test" in attempts and "sts.test" in attempts

    _account_api(a)

    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    sent = a.mxd("tlsrpt", "send", "--day", today)
    assert sent.returncode == 0, (sent.stdout, sent.stderr, a.log_tail())
    assert sent.stdout.strip() == f"{today}: 3 report(s), 3 delivery(ies) started"

    def listed() -> str:
        out = b.mxd("tlsrpt", "list")
        return out.stdout if out.stdout.count("from A Test") == 3 else ""

    out = _until(listed, f"B did not list the three reports:\n{b.log_tail()}\n{a.log_tail()}")
    assert "mx1.example.test (tlsa): 0 successful, 1 failed [validation-failure 1]" in out
    assert "mx2.example.test (tlsa): 1 successful, 0 failed" in out
    assert "sts.test (sts): 1 successful, 0 failed" in out, out
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
    assert any('result="success"' in line and 'policy_type="sts"' in line
               for line in tls_lines), tls_lines
    # The REQUIRETLS message was refused at mx1 for its DANE failure (RFC 8689 §4.2) ...
    assert 'mxd_requiretls_failures_total{reason="validation-failure"}' in metrics, metrics
    # ... and the report mail with TLS-Required: No went through mx1 anyway (RFC 8689 §5).
    assert 'mxd_tls_required_no_overrides_total{policy_type="tlsa"}' in metrics, metrics


def _account_api(a: MxdServer) -> None:
    """Each account reads its own support records on A's admin listener with its own
    credentials (HTTP Basic): the sender sees both recipient domains, another account of A
    sees none of them, a wrong password gets 401 and the admin token is no account."""
    def get(headers: dict[str, str]) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{a.ports['admin']}/api/account/tls/domains", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()}

    code, rows = get(basic("sender@a.test", "sender-pass"))
    assert code == 200, rows
    by_domain = {r["domain"]: r for r in rows}
    assert set(by_domain) == {"example.test", "sts.test"}, rows
    assert by_domain["sts.test"]["policy"] == "sts" and by_domain["sts.test"]["verified"]
    assert get(basic("other@a.test", "other-pass")) == (200, [])
    assert get(basic("sender@a.test", "wrong"))[0] == 401
    assert get(a.admin_headers())[0] == 401
