"""Composing and sending in the web client, in a real browser (headless Chromium through
Selenium) against `twistd mxd`, delivering through the DNSSEC lab to an aiosmtpd sink
that offers REQUIRETLS (RFC 8689) behind a DANE-verified certificate.

After one earlier delivery from the account to the sink's domain, the compose page's
indicator shows all three bars (STARTTLS, verified TLS, REQUIRETLS) and REQUIRETLS is
selected by itself; the message reaches the sink with MAIL FROM ... REQUIRETLS, its
attachment intact, and the sent copy is in Sent (read with imaplib).  "Fallback to
insecure" puts `TLS-Required: No` in what the sink receives.  CR/LF in the subject is
refused; a cross-site form POST without the CSRF token sends nothing.  A message from
another account, opened in the message view and answered with its Reply link, reaches
that account with In-Reply-To and References."""

from __future__ import annotations

import email
import email.policy
import http.client
import http.server
import imaplib
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from mxd import dane
from tests.integration.browser import screenshot_dir
from tests.integration.dnslab import ZoneSpec, dns_lab_factory  # noqa: F401
from tests.integration.mxdserver import MxdServer, make_server
from tests.integration.tools import free_port, require_module

pytestmark = pytest.mark.integration

SINK_IP = "127.0.4.31"
ATTACHMENT = bytes(range(256)) * 64 + b"\r\n.\r\nend"  # binary, with an SMTP end-of-data


class Sink:
    """aiosmtpd with STARTTLS that offers REQUIRETLS after it (RFC 8689 §3) and keeps
    each MAIL FROM line as sent and each message's content."""

    def __init__(self, host: str, port: int, leaf: trustme.LeafCert) -> None:
        require_module("aiosmtpd")
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        self.mail_lines: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        sink = self

        class Handler:
            async def handle_EHLO(self, server: Any, session: Any, envelope: Any,
                                  hostname: str, responses: list[str]) -> list[str]:
                session.host_name = hostname
                if session.ssl is not None:
                    return [*responses[:-1], "250-REQUIRETLS", responses[-1]]
                return responses

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink.lock:
                    sink.messages.append({"rcpts": list(envelope.rcpt_tos),
                                          "tls": session.ssl is not None,
                                          "data": bytes(envelope.original_content)})
                return "250 2.0.0 OK"

        class TranscriptSMTP(SMTP):
            async def smtp_MAIL(self, arg: str) -> None:
                with sink.lock:
                    sink.mail_lines.append(f"MAIL {arg}")
                words = (arg or "").split()
                await super().smtp_MAIL(" ".join(w for w in words if w.upper() != "REQUIRETLS"))

        class SinkController(Controller):
            def factory(self) -> SMTP:
                return TranscriptSMTP(self.handler, tls_context=ctx, require_starttls=False,
                                      decode_data=False)

        self.controller = SinkController(Handler(), hostname=host, port=port)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def _until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def world(dns_lab_factory: Any, tls_files: dict[str, Path], tmp_path: Path) -> Any:  # noqa: F811
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.rt.test")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    lab = dns_lab_factory({"rt.test": ZoneSpec(records=[
        "@ MX 10 mx", f"mx A {SINK_IP}",
        f"_25._tcp.mx TLSA {dane.tlsa_text(dane.tlsa_for_certificate(cert))}"])})
    host, port = lab.resolver_address
    smtp_port = free_port(SINK_IP)
    sink = Sink(SINK_IP, smtp_port, leaf)
    sink.controller.start()
    base = tmp_path / "mxd"
    base.mkdir()
    server = make_server(base, tls_files, resolver=(host, port), extra_config=(
        f'trusted = ["{host}:{port}"]\n[queue]\nsmtp_port = {smtp_port}\n'))
    server.start()
    try:
        yield server, sink, f"http://127.0.0.1:{server.ports['webmail']}"
    finally:
        server.stop()
        sink.controller.stop()


def _queue_empty(server: MxdServer) -> bool:
    r = server.mxd("queue", "list", "--json")
    return r.returncode == 0 and r.stdout.strip() in ("[]", "")


def _first_delivery(server: MxdServer, sink: Sink) -> None:
    """The earlier delivery from the account to rt.test (SMTP submission) that teaches
    mxd what rt.test supports."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(server.user, server.password)
        s.sendmail(server.user, ["first@rt.test"], b"Subject: first\r\n\r\nhello\r\n")
    _until(lambda: sink.count() >= 1, "the first message never reached the sink")
    _until(lambda: _queue_empty(server), "the first message stayed in the queue")


def _login(driver: Any, base: str, server: MxdServer) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/login")
    driver.find_element(By.NAME, "address").send_keys(server.user)
    driver.find_element(By.NAME, "password").send_keys(server.password)
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, "//button[text()='Log in']").click()
    _wait_replaced(driver, old)


def _wait_replaced(driver: Any, old: Any) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(driver, 30).until(gone)


def _send(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "send").click()
    _wait_replaced(driver, old)


def _sent_copies(server: MxdServer) -> list[bytes]:
    with imaplib.IMAP4("127.0.0.1", server.ports["imap"]) as m:
        m.starttls(ssl.create_default_context(cafile=str(server.ca_file)))
        m.login(server.user, server.password)
        m.select("Sent", readonly=True)
        _, data = m.uid("SEARCH", "SEEN")
        uids = data[0].split()
        out = []
        for uid in uids:
            _, got = m.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append(bytes(got[0][1]))  # type: ignore[index]
        return out


def test_compose_requiretls_insecure_attachment_and_refusals(world: Any, chrome: Any,
                                                             tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, sink, base = world
    shots = screenshot_dir(tmp_path)
    _first_delivery(server, sink)

    driver = chrome
    _login(driver, base, server)
    driver.get(base + "/compose")
    to = driver.find_element(By.ID, "to")
    to.send_keys("Receiver <receiver@rt.test>")
    # The indicator: three bars for rt.test, its tooltip in words; REQUIRETLS selected.
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, "#tls-to span.dom[data-domain='rt.test'][data-level='3']"))
    dom = driver.find_element(By.CSS_SELECTOR, "#tls-to span.dom")
    title = dom.get_attribute("title")
    assert "STARTTLS yes" in title and "verified TLS yes (DANE)" in title
    assert "REQUIRETLS yes" in title
    WebDriverWait(driver, 10).until(
        lambda d: Select(d.find_element(By.ID, "tls-choice")).first_selected_option
        .get_attribute("value") == "requiretls")
    assert "selected automatically" in driver.find_element(By.ID, "tls-auto").text
    driver.find_element(By.ID, "subject").send_keys("with REQUIRETLS")
    driver.find_element(By.ID, "body").send_keys("Hello over verified TLS only.")
    upload = tmp_path / "data.bin"
    upload.write_bytes(ATTACHMENT)
    driver.find_element(By.ID, "attachment").send_keys(str(upload))
    driver.save_screenshot(str(shots / "webmail-compose.png"))
    _send(driver)
    assert "Message sent" in driver.find_element(By.ID, "sent").text

    _until(lambda: sink.count() >= 2, "the REQUIRETLS message never reached the sink")
    with sink.lock:
        line = sink.mail_lines[-1]
        got = sink.messages[-1]
    assert line.upper().endswith(" REQUIRETLS") and f"<{server.user}>" in line, line
    assert got["tls"] and got["rcpts"] == ["receiver@rt.test"]
    msg = email.message_from_bytes(got["data"], policy=email.policy.default)
    assert msg["Subject"] == "with REQUIRETLS" and "TLS-Required" not in msg
    (att,) = msg.iter_attachments()  # type: ignore[attr-defined]
    assert att.get_filename() == "data.bin" and att.get_content() == ATTACHMENT
    copies = _sent_copies(server)
    assert any(b"with REQUIRETLS" in c for c in copies), copies

    # "Fallback to insecure": the user's explicit choice wins over the automatic one and
    # the sink receives TLS-Required: No (RFC 8689 §5).
    driver.get(base + "/compose")
    driver.find_element(By.ID, "to").send_keys("receiver@rt.test")
    WebDriverWait(driver, 20).until(
        lambda d: Select(d.find_element(By.ID, "tls-choice")).first_selected_option
        .get_attribute("value") == "requiretls")
    Select(driver.find_element(By.ID, "tls-choice")).select_by_value("insecure")
    driver.find_element(By.ID, "subject").send_keys("insecure fallback")
    driver.find_element(By.ID, "to").send_keys(", second@rt.test")  # typing again ...
    time.sleep(0.5)  # ... past the script's 250 ms pause: it must not undo the choice
    assert Select(driver.find_element(By.ID, "tls-choice")).first_selected_option \
        .get_attribute("value") == "insecure"
    _send(driver)
    assert "Message sent" in driver.find_element(By.ID, "sent").text
    _until(lambda: sink.count() >= 3, "the TLS-Required: No message never reached the sink")
    with sink.lock:
        line = sink.mail_lines[-1]
        got = sink.messages[-1]
    assert "REQUIRETLS" not in line.upper()
    msg = email.message_from_bytes(got["data"], policy=email.policy.default)
    assert msg["TLS-Required"] == "No" and msg["Subject"] == "insecure fallback"
    assert sorted(got["rcpts"]) == ["receiver@rt.test", "second@rt.test"]

    # CR/LF in the subject: a text input cannot hold one, so the page's field is swapped
    # for a textarea (what a hostile script or a tool would send); the server refuses it.
    driver.get(base + "/compose")
    driver.find_element(By.ID, "to").send_keys("receiver@rt.test")
    driver.execute_script(
        "var i = document.getElementById('subject');"
        "var t = document.createElement('textarea'); t.name = 'subject'; t.id = 'subject';"
        "t.value = 'hi\\r\\nBcc: victim@example.com'; i.replaceWith(t);")
    _send(driver)
    error = driver.find_element(By.ID, "error").text
    assert "Not sent: subject" in error and "control character" in error
    time.sleep(1)
    assert sink.count() == 3

    # An upload declared larger than [webmail] max_upload is answered 413 at once, with
    # the session's cookie and before any of the body is sent.
    cookie = driver.get_cookie("mxd_webmail")["value"]
    conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("POST", "/compose")
    for k, v in (("Cookie", f"mxd_webmail={cookie}"), ("Content-Length", str(200 << 20)),
                 ("Content-Type", "multipart/form-data; boundary=x")):
        conn.putheader(k, v)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"larger than" in response.read()
    conn.close()

    # A cross-site form POST (another origin, no CSRF token) sends nothing.
    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = (f"<form id=f method=post action='{base}/compose' "
                    "enctype='multipart/form-data'><input name=from value='"
                    f"{server.user}'><input name=to value='receiver@rt.test'>"
                    "<input name=subject value=forged></form>"
                    "<script>document.getElementById('f').submit()</script>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://localhost:{evil.server_address[1]}/")
        _until(lambda: driver.current_url.startswith(base), "the form was not submitted", 20)
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "log in first" in text or "CSRF" in text, text
    finally:
        evil.shutdown()
        evil.server_close()
    time.sleep(1)
    assert sink.count() == 3
    assert not any(b"forged" in c for c in _sent_copies(server))

    # Reply from the message view: a message from bob, opened in the webmail, answered
    # with the Reply link; bob's copy (local delivery) threads under it.
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(server.user2, server.password2)
        s.sendmail(server.user2, [server.user], b"From: Bob <bob@example.test>\r\n"
                   b"Subject: lunch?\r\nMessage-ID: <lunch@example.test>\r\n\r\n12:30?\r\n")
    with imaplib.IMAP4("127.0.0.1", server.ports["imap"]) as m:
        m.starttls(ctx)
        m.login(server.user, server.password)
        m.select("INBOX", readonly=True)
        uid = _until(lambda: m.uid("SEARCH", "SUBJECT", "lunch")[1][0].split(),
                     "bob's message never arrived")[-1].decode()
    driver.get(f"{base}/message?mailbox=INBOX&uid={uid}")
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.LINK_TEXT, "Reply").click()
    _wait_replaced(driver, old)
    assert driver.find_element(By.ID, "subject").get_attribute("value") == "Re: lunch?"
    assert "bob@example.test" in driver.find_element(By.ID, "to").get_attribute("value")
    assert "> 12:30?" in driver.find_element(By.ID, "body").get_attribute("value")
    driver.find_element(By.ID, "body").send_keys("Yes.")
    _send(driver)
    assert "Message sent" in driver.find_element(By.ID, "sent").text
    with imaplib.IMAP4("127.0.0.1", server.ports["imap"]) as m:
        m.starttls(ctx)
        m.login(server.user2, server.password2)
        m.select("INBOX", readonly=True)
        got = _until(lambda: m.uid("SEARCH", "HEADER", "In-Reply-To", "lunch@example.test")[1][0]
                     .split(), "the reply never reached bob")
        _, data = m.uid("FETCH", got[-1], "(BODY.PEEK[HEADER.FIELDS (REFERENCES SUBJECT)])")
    assert b"<lunch@example.test>" in bytes(data[0][1]) and b"Re: lunch?" in bytes(data[0][1])
