"""The admin web in a real browser (headless Chromium through Selenium) against
`twistd mxd`: login/logout, every queue action checked afterwards with `mxd queue show
--json`, and the two attacks it must refuse — a DNS-rebinding name (Chromium resolves
evil.example to 127.0.0.1) and a cross-site form POST from another origin."""

from __future__ import annotations

import http.server
import json
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.browser import screenshot_dir
from tests.integration.mxdserver import MxdServer
from tests.integration.tools import free_port

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "br0wser-admin"


def _queue_one(server: MxdServer, subject: str = "<b>browser</b>") -> str:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(server.user, server.password)
        s.sendmail(server.user, ["dave@remote.example"],
                   f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    r = server.mxd("queue", "list", "--json")
    return str(json.loads(r.stdout)[-1]["queue_id"])


def _show(server: MxdServer, qid: str) -> dict[str, Any] | None:
    r = server.mxd("queue", "show", qid, "--json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def _until(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def server(mxd_server_factory: Any) -> MxdServer:
    closed = free_port()  # nothing listens here: the relay transport always defers
    s: MxdServer = mxd_server_factory(extra_config=(
        f'[transports.relay]\nkind = "smtp"\nhost = "127.0.0.1"\nport = {closed}\n'))
    r = s.mxd("admin", "password", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return s


def _login(driver: Any, base: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/login")
    driver.find_element(By.NAME, "password").send_keys(password)
    _click(driver, "log in")


def _wait_replaced(driver: Any, old: Any) -> None:
    """Wait until the page that held ``old`` is gone.  Chromium reports a replaced node
    either as stale or, when the new document came in between, as "Node with given id
    does not belong to the document" (a plain WebDriverException)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(driver, 20).until(gone)


def _click(driver: Any, label: str) -> None:
    """Click a form's button and wait for the page it leads to."""
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, f"//button[text()='{label}']").click()
    _wait_replaced(driver, old)


def test_admin_login_queue_actions_logout(server: MxdServer, chrome: Any, tmp_path: Path):
    """Log in with the password set by `mxd admin password`, then hold, release,
    REQUIRETLS yes/no/default, transport override, kick and drop from the message page,
    each checked with the CLI; log out, and the queue page asks for the login again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots = screenshot_dir(tmp_path)
    base = f"http://127.0.0.1:{server.ports['admin']}"
    qid = _queue_one(server)
    _until(lambda: (_show(server, qid) or {}).get("attempts"), "first attempt never happened")

    driver = chrome
    driver.get(base + "/queue")
    assert driver.current_url == base + "/login"
    _login(driver, base, "not-the-password")
    assert "Wrong password" in driver.page_source
    _login(driver, base, ADMIN_PASSWORD)
    assert driver.current_url == base + "/"
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("mxd ")
    driver.save_screenshot(str(shots / "admin-status.png"))
    cookie = driver.get_cookie("mxd_admin")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

    driver.get(base + "/queue")
    driver.find_element(By.LINK_TEXT, qid).click()
    assert driver.current_url == f"{base}/queue/{qid}"
    driver.save_screenshot(str(shots / "admin-message.png"))

    _click(driver, "hold")
    assert _show(server, qid)["recipients"][0]["held"] is True
    driver.get(base + "/queue")
    driver.save_screenshot(str(shots / "admin-queue.png"))
    driver.find_element(By.LINK_TEXT, qid).click()
    _click(driver, "release")
    assert _show(server, qid)["recipients"][0]["held"] is False

    for setting, requiretls, no in (("yes", True, False), ("no", False, True),
                                    ("default", False, False)):
        Select(driver.find_element(By.NAME, "setting")).select_by_value(setting)
        _click(driver, "set REQUIRETLS")
        shown = _show(server, qid)
        assert (shown["requiretls"], shown["tls_required_no"]) == (requiretls, no), setting
        assert shown["tls_override"] == setting

    driver.find_element(By.NAME, "name").send_keys("nosuch")
    _click(driver, "set transport")
    assert "unknown transport" in driver.page_source
    driver.get(f"{base}/queue/{qid}")
    driver.find_element(By.NAME, "name").send_keys("relay")
    _click(driver, "set transport")
    assert _show(server, qid)["recipients"][0]["transport"] == "relay"

    before = _show(server, qid)["recipients"][0]["attempts"]
    _click(driver, "kick")
    _until(lambda: _show(server, qid)["recipients"][0]["attempts"] > before,
           "kick did not lead to a new attempt")
    driver.get(f"{base}/queue/{qid}")
    assert "relay" in driver.find_element(By.XPATH, "//h2[text()='attempts']/following::table"
                                          ).text
    _click(driver, "drop")
    assert driver.current_url == base + "/queue"
    assert _show(server, qid) is None

    _click(driver, "log out")
    assert driver.current_url == base + "/login"
    driver.save_screenshot(str(shots / "admin-login.png"))
    driver.get(base + "/queue")
    assert driver.current_url == base + "/login"


class _EvilPage(http.server.BaseHTTPRequestHandler):
    """Another origin's page that posts a form to the admin listener at once."""

    target = ""

    def do_GET(self) -> None:
        body = (f"<!doctype html><form id=f method=post action='{self.target}'>"
                "<input type=hidden name=csrf value=guess></form>"
                "<script>document.getElementById('f').submit()</script>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_rebinding_and_cross_site_post_refused(server: MxdServer, chrome: Any, tmp_path: Path):
    """While logged in: a page on another site (http://localhost:PORT) posting a form to
    the admin listener gets no session (SameSite=Strict) and changes nothing; the admin
    listener reached under a rebound name (evil.example -> 127.0.0.1) answers 421."""
    from selenium.webdriver.common.by import By

    shots = screenshot_dir(tmp_path)
    port = server.ports["admin"]
    base = f"http://127.0.0.1:{port}"
    qid = _queue_one(server)
    _login(chrome, base, ADMIN_PASSWORD)
    assert chrome.current_url == base + "/"

    handler = type("Evil", (_EvilPage,), {"target": f"{base}/api/queue/{qid}/hold"})
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=evil.serve_forever, daemon=True)
    t.start()
    try:
        chrome.get(f"http://localhost:{evil.server_address[1]}/")
        _until(lambda: chrome.current_url.startswith(base), "the form was not submitted")
        assert "log in first" in chrome.find_element(By.TAG_NAME, "body").text
    finally:
        evil.shutdown()
        evil.server_close()
    assert _show(server, qid)["recipients"][0]["held"] is False

    chrome.get(f"http://evil.example:{port}/queue")
    assert "misdirected request" in chrome.find_element(By.TAG_NAME, "body").text
    chrome.save_screenshot(str(shots / "admin-rebinding.png"))
    assert qid not in chrome.page_source
    # The real session still works on the real name.
    chrome.get(base + "/queue")
    assert qid in chrome.page_source


def test_accounts_domains_tls_and_reports_pages(server: MxdServer, chrome: Any,
                                                tmp_path: Path):
    """Accounts: add (with an address), password reset, address add/remove, quota and
    delete through the forms, each checked with `mxd account list` or over IMAP (login
    with the new password, GETQUOTAROOT, RFC 9208); domains show the records of `mxd dns
    records`; the TLS support and reports pages render; names are escaped."""
    import imaplib

    from selenium.webdriver.common.by import By

    shots = screenshot_dir(tmp_path)
    base = f"http://127.0.0.1:{server.ports['admin']}"
    driver = chrome
    _login(driver, base, ADMIN_PASSWORD)

    def accounts() -> dict[str, list[str]]:
        r = server.mxd("account", "list")
        assert r.returncode == 0, r.stderr
        return {line.split("\t")[0]: line.split("\t")[1].split() if "\t" in line else []
                for line in r.stdout.splitlines()}

    def fill(fields: dict[str, str], button: str, row: str | None = None) -> None:
        scope = (driver.find_element(By.XPATH, f"//tr[td[1][text()='{row}']]") if row
                 else driver)
        for name, value in fields.items():
            el = scope.find_element(By.CSS_SELECTOR,
                                    f"input[name='{name}']:not([type=hidden])")
            el.clear()
            el.send_keys(value)
        old = driver.find_element(By.TAG_NAME, "html")
        scope.find_element(By.XPATH, f".//button[text()='{button}']").click()
        _wait_replaced(driver, old)

    driver.get(base + "/accounts")
    fill({"name": "carol@example.test", "password": "first-pass",
          "addresses": "carol@example.test"}, "add account")
    assert accounts()["carol@example.test"] == ["carol@example.test"]
    fill({"address": "c.one@example.test"}, "add address", row="carol@example.test")
    assert sorted(accounts()["carol@example.test"]) == ["c.one@example.test",
                                                         "carol@example.test"]
    fill({"address": "x@elsewhere.example"}, "add address", row="carol@example.test")
    assert "not in a configured domain" in driver.page_source
    driver.get(base + "/accounts")
    fill({"password": "second-pass"}, "set password", row="carol@example.test")
    fill({"quota": "5000000"}, "set quota", row="carol@example.test")
    driver.save_screenshot(str(shots / "admin-accounts.png"))
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx) as imap:
        imap.login("carol@example.test", "second-pass")
        typ, data = imap.getquotaroot("INBOX")
        assert typ == "OK" and b"STORAGE 0 4882" in b" ".join(
            x if isinstance(x, bytes) else b"" for d in data for x in d), data
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, "//form[input[@name='address' and @value="
                        "'c.one@example.test']]/button").click()
    _wait_replaced(driver, old)
    assert accounts()["carol@example.test"] == ["carol@example.test"]
    fill({"confirm": "wrong"}, "delete", row="carol@example.test")
    assert "to confirm" in driver.page_source and "carol@example.test" in accounts()
    driver.get(base + "/accounts")
    fill({"confirm": "carol@example.test"}, "delete", row="carol@example.test")
    assert "carol@example.test" not in accounts()

    driver.get(base + "/domains")
    records = server.mxd("dns", "records", "example.test")
    assert records.returncode == 0, records.stderr
    text = driver.find_element(By.TAG_NAME, "body").text
    checked = 0
    for line in records.stdout.splitlines():  # zone lines: NAME TTL IN TYPE VALUE
        fields = line.split(None, 4)
        if len(fields) == 5 and fields[2] == "IN" and fields[3] in ("MX", "TXT"):
            assert fields[0].rstrip(".") in text and fields[4].strip('"')[:20] in text, line
            checked += 1
    assert checked >= 3, records.stdout
    # The DNS check from the page: its results next to the records, as `mxd dns check`
    # reports them (this server's resolver is unreachable: every lookup fails).
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, "//button[text()='run the DNS check now']").click()
    _wait_replaced(driver, old)
    cli = json.loads(server.mxd("dns", "check", "example.test", "--json").stdout)
    mx_cli = next(r for r in cli["results"] if r["check"] == "mx")
    mx_row = driver.find_element(By.XPATH, "//tr[td[4][text()='mx']]").text
    assert mx_cli["status"] in mx_row and mx_cli["detail"] in mx_row, (mx_row, mx_cli)
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "other checks" in text and "dnssec" in text
    driver.save_screenshot(str(shots / "admin-domains.png"))
    driver.get(base + "/tls")
    assert driver.find_element(By.TAG_NAME, "h1").text == "TLS support per recipient domain"
    driver.get(base + "/reports")
    assert "DMARC aggregate reports received" in driver.page_source
    assert "DMARC aggregate reports sent" in driver.page_source
    assert "TLS reports sent" in driver.page_source
    assert driver.find_element(By.LINK_TEXT, "accounts")
