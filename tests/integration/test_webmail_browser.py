"""The webmail in a real browser (headless Chromium through Selenium) against `twistd
mxd`: login (a wrong password refused, then the limiter), a message delivered by swaks
read, flags/move/delete checked afterwards over IMAP (imaplib), the password changed
and checked with gsasl SCRAM-SHA-256, a cross-site form POST refused, and a hostile
HTML message that runs no script and fetches nothing until "load remote content" —
checked on Chromium's network log and on a loopback HTTP server that counts its hits."""

from __future__ import annotations

import http.client
import http.server
import imaplib
import json
import smtplib
import ssl
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.integration.browser import screenshot_dir
from tests.integration.mxdserver import MxdServer
from tests.integration.test_admin_browser import _EvilPage, _until, _wait_replaced
from tests.integration.tools import free_port, require_tool

pytestmark = pytest.mark.integration


def _base(server: MxdServer) -> str:
    return f"http://127.0.0.1:{server.ports['webmail']}"


def _login(driver: Any, server: MxdServer, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(_base(server) + "/login")
    driver.find_element(By.NAME, "address").send_keys(server.user)
    driver.find_element(By.NAME, "password").send_keys(password)
    _click(driver, "Log in")


def _click(driver: Any, label: str, scope: Any = None) -> None:
    """Click a button (or link) by its text and wait for the page it leads to."""
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.TAG_NAME, "html")
    (scope or driver).find_element(
        By.XPATH, f".//button[normalize-space()='{label}'] | .//a[normalize-space()='{label}']"
    ).click()
    _wait_replaced(driver, old)


def _imap(server: MxdServer, password: str | None = None) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    imap.login(server.user, password or server.password)
    return imap


def _flags(imap: imaplib.IMAP4_SSL, mailbox: str) -> list[bytes]:
    """The FLAGS of every message in ``mailbox``."""
    typ, exists = imap.select(mailbox)
    assert typ == "OK"
    if exists[0] == b"0":
        return []
    typ, data = imap.fetch("1:*", "(FLAGS)")
    assert typ == "OK", data
    return [d for d in data if isinstance(d, bytes)]


def _swaks(server: MxdServer, subject: str, body: str) -> None:
    swaks = require_tool("swaks")
    r = subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(server.ports["smtp"]),
                        "--from", "bob@remote.example", "--to", server.user,
                        "--helo", "client.remote.example", "--header", f"Subject: {subject}",
                        "--body", body, "--timeout", "20"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_webmail_login_read_flags_settings(mxd_server: MxdServer, chrome: Any,
                                           tmp_path: Path) -> None:
    """Wrong password refused; log in; the swaks message is listed and reads escaped;
    flag / mark unread / move / delete each show over IMAP afterwards (the flag also in
    an IMAP session that had the mailbox selected); the password
    change works for SCRAM (gsasl); log out; repeated failures are limited (429)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, driver, shots = mxd_server, chrome, screenshot_dir(tmp_path)
    base = _base(server)
    _swaks(server, "Hello <b>from</b> swaks", "Body line one.\n<script>alert(1)</script>")
    driver.get(base + "/")
    assert driver.current_url == base + "/login"
    driver.save_screenshot(str(shots / "webmail-login.png"))
    _login(driver, server, "not-the-password")
    assert "Wrong address or password" in driver.page_source
    _login(driver, server, server.password)
    assert driver.current_url == base + "/"
    cookie = driver.get_cookie("mxd_webmail")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    row = driver.find_element(By.XPATH, "//tr[td/a[text()='INBOX']]")
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "1"  # messages
    assert row.find_elements(By.TAG_NAME, "td")[2].text == "1"  # unseen
    driver.save_screenshot(str(shots / "webmail-mailboxes.png"))

    _click(driver, "INBOX")
    driver.save_screenshot(str(shots / "webmail-messages.png"))
    _click(driver, "Hello <b>from</b> swaks")
    text = driver.find_element(By.CSS_SELECTOR, "pre.body").text
    assert "Body line one." in text and "<script>alert(1)</script>" in text
    assert driver.find_element(By.LINK_TEXT, "Reply").get_attribute("href").endswith(
        "/compose?reply=INBOX/1")
    driver.save_screenshot(str(shots / "webmail-message.png"))
    imap = _imap(server)
    try:
        assert b"\\Seen" in _flags(imap, "INBOX")[0]
        _click(driver, "Flag")
        # The session that has INBOX selected hears of it (untagged FETCH at NOOP).
        imap.noop()
        assert any(b"\\Flagged" in r for r in imap.untagged_responses.pop("FETCH", [])
                   if isinstance(r, bytes))
        assert b"\\Flagged" in _flags(imap, "INBOX")[0]
        _click(driver, "Mark unread")
        assert b"\\Seen" not in _flags(imap, "INBOX")[0]
        driver.get(base + "/message?mailbox=INBOX&uid=1")
        Select(driver.find_element(By.NAME, "to")).select_by_value("Archive")
        _click(driver, "Move to")
        assert _flags(imap, "INBOX") == [] and len(_flags(imap, "Archive")) == 1
        driver.get(base + "/messages?mailbox=Archive")
        driver.find_element(By.CSS_SELECTOR, "input[type=checkbox][name=uid]").click()
        _click(driver, "Delete")
        assert _flags(imap, "Archive") == [] and len(_flags(imap, "Trash")) == 1
    finally:
        imap.logout()

    driver.get(base + "/settings")
    for name, value in (("old", server.password), ("new", "n3w-webmail-pass"),
                        ("again", "n3w-webmail-pass")):
        driver.find_element(By.NAME, name).send_keys(value)
    _click(driver, "Change password")
    assert driver.find_element(By.ID, "result").text == "Password changed."
    driver.save_screenshot(str(shots / "webmail-settings.png"))
    gsasl = require_tool("gsasl")
    proc = subprocess.run(
        [gsasl, "--imap", f"--connect=127.0.0.1:{server.ports['imap']}", "--starttls",
         f"--x509-ca-file={server.ca_file}", "--hostname=localhost", "-m", "SCRAM-SHA-256",
         "--no-cb", "-a", server.user, "-p", "n3w-webmail-pass"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    driver.get(base + "/settings/tls")
    assert driver.find_element(By.TAG_NAME, "h1").text == "TLS per recipient domain"

    _click(driver, "Log out")
    assert driver.current_url == base + "/login"
    driver.get(base + "/messages?mailbox=INBOX")
    assert driver.current_url == base + "/login"

    # The SASL limiter: failures from this address end in 429, even for the password.
    port = server.ports["webmail"]
    codes = []
    for _ in range(30):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/login", urllib.parse.urlencode(
            {"address": server.user, "password": "guess"}),
            {"Content-Type": "application/x-www-form-urlencoded",
             "Host": f"127.0.0.1:{port}"})
        codes.append(conn.getresponse().status)
        conn.close()
        if codes[-1] == 429:
            break
    assert codes[0] == 403 and codes[-1] == 429, codes
    _login(driver, server, "n3w-webmail-pass")
    assert "Too many failed logins" in driver.page_source


class _Remote(http.server.BaseHTTPRequestHandler):
    """A 'remote' image server on loopback that counts what it is asked for."""

    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = bytes.fromhex("47494638396101000100800000ffffff00000021f90401000000002c0000"
                             "0000010001000002024401003b")  # a 1x1 GIF
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _requests(driver: Any) -> list[str]:
    """Every URL Chromium requested since the last call (its performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def test_hostile_html_runs_no_script_fetches_nothing(mxd_server: MxdServer, chrome: Any,
                                                     tmp_path: Path) -> None:
    """A hostile HTML message (script, onerror, remote image, CSS url(), form, meta
    refresh, svg) shows its text in the sandboxed frame; no script runs (the page title
    and the frame stay as they were, no dialog), and neither Chromium's network log nor
    the loopback image server see a request for the remote URLs — until "load remote
    content" is clicked, which fetches the image (so the checks can see a fetch)."""
    from selenium.webdriver.common.by import By

    server, driver, shots = mxd_server, chrome, screenshot_dir(tmp_path)
    hits: list[str] = []
    remote = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             type("R", (_Remote,), {"hits": hits}))
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{remote.server_address[1]}"
    try:
        html = (
            f"<h2>Quarterly report</h2><p>Visible text.</p>"
            f"<script>document.title='pwned';parent.document.title='pwned'</script>"
            f"<img src=\"{url}/track.gif\" onerror=\"parent.document.title='pwned'\" alt=track>"
            f"<div style=\"background:url({url}/css.gif)\">styled</div>"
            f"<form action=\"{url}/steal\"><input name=pw value=x><button>Go</button></form>"
            f"<meta http-equiv=refresh content=\"0;url={url}/refresh\">"
            f"<svg><image href=\"{url}/svg.gif\"/></svg>"
            f"<a href=\"javascript:parent.document.title='pwned'\">click</a>")
        raw = (f"From: Mallory <mallory@evil.example>\r\nTo: {server.user}\r\n"
               "Subject: hostile html\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n").encode()
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("mallory@evil.example", [server.user], raw)

        _login(driver, server, server.password)
        _requests(driver)  # drop what came before
        driver.get(_base(server) + "/message?mailbox=INBOX&uid=1")
        frame = driver.find_element(By.CSS_SELECTOR, "iframe.body")
        assert "allow-scripts" not in (frame.get_attribute("sandbox") or "")
        driver.switch_to.frame(frame)
        _until(lambda: "Visible text." in driver.find_element(By.TAG_NAME, "body").text,
               "the message frame did not load")
        assert driver.find_elements(By.TAG_NAME, "form") == []
        assert driver.find_elements(By.TAG_NAME, "script") == []
        driver.switch_to.default_content()
        driver.save_screenshot(str(shots / "webmail-hostile.png"))
        assert driver.title == "hostile html - mxd webmail"
        assert "1 remote image(s) blocked" in driver.find_element(By.ID, "remote-blocked").text
        seen = _requests(driver)
        assert any("/message/body" in u for u in seen), seen
        assert not [u for u in seen if u.startswith(url)], seen
        assert hits == []

        _click(driver, "Load remote content")
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe.body"))
        _until(lambda: hits, "the remote image was not fetched after asking for it")
        driver.switch_to.default_content()
        assert hits == ["/track.gif"], hits  # CSS, svg, form, refresh: never
        assert [u for u in _requests(driver) if u.startswith(url)] == [url + "/track.gif"]
        assert driver.title == "hostile html - mxd webmail"
    finally:
        remote.shutdown()
        remote.server_close()


def test_cross_site_post_refused(mxd_server: MxdServer, chrome: Any) -> None:
    """While logged in, a page on another site posting a delete form to the webmail gets
    no session (SameSite=Strict) and the message stays, as IMAP shows."""
    from selenium.webdriver.common.by import By

    server = mxd_server
    _swaks(server, "keep me", "still here")
    _login(chrome, server, server.password)
    base = _base(server)
    target = f"{base}/message/flags?mailbox=INBOX&uid=1&op=delete"
    handler = type("Evil", (_EvilPage,), {"target": target})
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        chrome.get(f"http://localhost:{evil.server_address[1]}/")
        _until(lambda: chrome.current_url.startswith(base), "the form was not submitted")
        assert "log in first" in chrome.find_element(By.TAG_NAME, "body").text
    finally:
        evil.shutdown()
        evil.server_close()
    imap = _imap(server)
    try:
        assert len(_flags(imap, "INBOX")) == 1
    finally:
        imap.logout()


def test_webmail_off_loopback_speaks_https_with_secure_cookies(mxd_server_factory: Any) -> None:
    """A webmail listener on all addresses serves HTTPS only: the login over TLS sets a
    Secure cookie, only the configured host name is accepted (loopback names are not,
    off loopback), and plain HTTP gets no page."""
    port = free_port("0.0.0.0")
    server: MxdServer = mxd_server_factory(extra_config=(
        f'[[listeners]]\nprotocol = "webmail"\naddress = "0.0.0.0"\nport = {port}\n'))
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.check_hostname = False  # the test certificate names localhost, not mx.example.test

    def post(host: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=ctx)
        conn.request("POST", "/login", urllib.parse.urlencode(
            {"address": server.user, "password": server.password}),
            {"Content-Type": "application/x-www-form-urlencoded", "Host": host})
        return conn.getresponse()

    r = post(f"mx.example.test:{port}")
    assert r.status == 302, r.read()
    cookie = r.getheader("set-cookie") or ""
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert post(f"127.0.0.1:{port}").status == 421
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        plain.request("GET", "/login", headers={"Host": f"mx.example.test:{port}"})
        status = plain.getresponse().status
    except (http.client.HTTPException, OSError):
        status = None
    assert status is None  # not an HTTP server without TLS
