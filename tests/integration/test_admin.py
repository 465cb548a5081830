"""The admin listener of a running `twistd mxd`: login, sessions, CSRF and Host checks,
the local token of the CLI, status and the queue API."""

from __future__ import annotations

import http.cookiejar
import json
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.integration.mxdserver import MxdServer

pytestmark = pytest.mark.integration


def _queue_one(server: MxdServer) -> None:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(server.user, server.password)
        s.sendmail(server.user, ["dave@remote.example"],
                   b"Subject: <b>admin</b>\r\n\r\nbody\r\n")


def _get(server: MxdServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.ports['admin']}{path}"
    req = urllib.request.Request(url, headers=server.admin_headers() if headers is None
                                 else headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _post(server: MxdServer, path: str, headers: dict[str, str] | None = None,
          data: bytes = b"") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.ports['admin']}{path}", data=data,
                                 headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_queue_api_needs_the_local_token(mxd_server: MxdServer):
    """GET /api/queue lists a queued message only with the local token; a POST without it
    (or with the old ``X-Mxd-Admin: 1`` header alone) is refused (401) and changes
    nothing; with it, hold takes effect."""
    _queue_one(mxd_server)
    assert _get(mxd_server, "/api/queue", headers={})[0] == 401
    code, body = _get(mxd_server, "/api/queue")
    assert code == 200
    (msg,) = json.loads(body)
    qid = msg["queue_id"]
    assert msg["recipients"][0]["held"] is False
    token_file = mxd_server.data_dir / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600

    assert _post(mxd_server, f"/api/queue/{qid}/hold")[0] == 401
    assert _post(mxd_server, f"/api/queue/{qid}/hold", {"X-Mxd-Admin": "1"})[0] == 401
    assert json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])["recipients"][0]["held"] is False

    code, body = _post(mxd_server, f"/api/queue/{qid}/hold", mxd_server.admin_headers())
    assert code == 200 and json.loads(body)["recipients"] == 1
    shown = json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])
    assert shown["recipients"][0]["held"] is True

    code, _ = _post(mxd_server, f"/api/queue/{qid}/explode", mxd_server.admin_headers())
    assert code == 404
    assert _get(mxd_server, "/api/queue/nonexistent")[0] == 404


def test_dns_rebinding_request_refused(mxd_server: MxdServer):
    """The request of the DNS-rebinding attack (Host and Origin of another site) gets 421
    and the message stays as it was, even when it carries a valid credential."""
    _queue_one(mxd_server)
    qid = json.loads(_get(mxd_server, "/api/queue")[1])[0]["queue_id"]
    evil = {"Host": "evil.example", "Origin": "http://evil.example", "X-Mxd-Admin": "1"}
    assert _post(mxd_server, f"/api/queue/{qid}/hold", evil)[0] == 421
    assert _post(mxd_server, f"/api/queue/{qid}/hold",
                 {**evil, **mxd_server.admin_headers()})[0] == 421
    assert _get(mxd_server, "/login", headers={"Host": "evil.example"})[0] == 421
    assert json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])["recipients"][0]["held"] is False


class _Browser:
    """urllib with a cookie jar, like a browser on the admin pages."""

    def __init__(self, server: MxdServer) -> None:
        self.base = f"http://127.0.0.1:{server.ports['admin']}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def open(self, path: str, data: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def _set_password(server: MxdServer, password: str) -> None:
    r = server.mxd("admin", "password", "--password-stdin", stdin=password + "\n")
    assert r.returncode == 0, r.stderr
    assert (server.data_dir / "admin-password").stat().st_mode & 0o777 == 0o600


def test_login_queue_form_and_logout(mxd_server: MxdServer):
    """`mxd admin password` sets the password; the login form starts a session whose
    queue page carries its CSRF token; a wrong token or a cross-site Origin is refused,
    the right one releases the message; after logout the cookie opens nothing."""
    _set_password(mxd_server, "adm1n-pass")
    _queue_one(mxd_server)
    qid = json.loads(_get(mxd_server, "/api/queue")[1])[0]["queue_id"]
    _post(mxd_server, f"/api/queue/{qid}/hold", mxd_server.admin_headers())
    b = _Browser(mxd_server)
    code, page = b.open("/queue")
    assert code == 200 and "admin password" in page and qid not in page  # the login form
    assert b.open("/login", {"password": "wrong"})[0] == 403
    code, page = b.open("/login", {"password": "adm1n-pass"})
    assert code == 200 and "log out" in page
    cookie = next(iter(b.jar))
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr(
        "SameSite") == "Strict"
    code, page = b.open("/queue")
    assert code == 200 and qid in page
    token = page.split('name=csrf value="', 1)[1].split('"', 1)[0]
    assert len(token) >= 40
    assert b.open(f"/api/queue/{qid}/release", {"csrf": "0" * 43})[0] == 403
    assert b.open(f"/api/queue/{qid}/release", {})[0] == 403
    assert b.open(f"/api/queue/{qid}/release", {"csrf": token},
                  {"Origin": "http://evil.example"})[0] == 403
    assert json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])["recipients"][0]["held"] is True
    b.open(f"/api/queue/{qid}/release", {"csrf": token})
    shown = json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])
    assert shown["recipients"][0]["held"] is False
    code, page = b.open("/logout", {"csrf": token})
    assert code == 200 and "admin password" in page
    forged = _Browser(mxd_server)
    assert forged.open("/api/queue", headers={"Cookie": f"mxd_admin={cookie.value}"})[0] == 401
    assert forged.open("/api/queue", headers={"Cookie": "mxd_admin=forged"})[0] == 401


def test_wrong_admin_passwords_are_limited(mxd_server: MxdServer):
    """After the free allowance of wrong passwords, logins from the address get 429, the
    right password included."""
    _set_password(mxd_server, "adm1n-pass")
    b = _Browser(mxd_server)
    codes = [b.open("/login", {"password": f"guess{i}"})[0] for i in range(7)]
    assert codes[:5] == [403] * 5 and codes[-1] == 429
    assert b.open("/login", {"password": "adm1n-pass"})[0] == 429


def test_status_page_counts(mxd_server: MxdServer):
    """The status page shows the accounts and the queue counts (here with the token)."""
    code, page = _get(mxd_server, "/")
    assert code == 200
    assert "<th>accounts</th><td>2</td>" in page


def test_requiretls_override_and_tls_domains(mxd_server: MxdServer):
    """POST /api/queue/ID/requiretls changes the message's REQUIRETLS state (RFC 8689 admin
    override); bad settings get 400, unknown ids 404; the TLS domain endpoints answer."""
    _queue_one(mxd_server)
    qid = json.loads(_get(mxd_server, "/api/queue")[1])[0]["queue_id"]
    code, _ = _post(mxd_server, f"/api/queue/{qid}/requiretls?setting=yes")
    assert code == 401
    hdr = mxd_server.admin_headers()
    assert _post(mxd_server, f"/api/queue/{qid}/requiretls?setting=maybe", hdr)[0] == 400
    assert _post(mxd_server, "/api/queue/nope/requiretls?setting=yes", hdr)[0] == 404
    code, _ = _post(mxd_server, f"/api/queue/{qid}/requiretls?setting=yes", hdr)
    assert code == 200
    assert json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])["requiretls"] is True
    _post(mxd_server, f"/api/queue/{qid}/requiretls?setting=no", hdr)
    shown = json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])
    assert shown["requiretls"] is False and shown["tls_required_no"] is True
    code, body = _get(mxd_server, "/api/tls/domains")
    assert code == 200 and json.loads(body) == []
    code, body = _get(mxd_server, "/api/tls/domains?account=alice")
    assert code == 200 and json.loads(body) == []
    code, body = _get(mxd_server, "/api/tls/requiretls-ready?domain=remote.example")
    assert code == 200 and json.loads(body) == {"domains": {"remote.example": False},
                                                 "all": False}


def test_cli_kick_wakes_the_running_server(mxd_server: MxdServer):
    """`mxd queue kick` changes the database and wakes the running server through its admin
    listener, so a deferred message is attempted again at once, not at its next retry."""
    import time

    _queue_one(mxd_server)

    def attempts() -> int:
        r = mxd_server.mxd("queue", "list", "--json")
        return int(json.loads(r.stdout)[0]["recipients"][0]["attempts"])

    deadline = time.monotonic() + 20
    while attempts() < 1:  # the resolver is unreachable: the first attempt defers
        assert time.monotonic() < deadline, "first attempt never happened"
        time.sleep(0.2)
    qid = json.loads(_get(mxd_server, "/api/queue")[1])[0]["queue_id"]
    assert json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])["recipients"][0]["next_attempt"]
    r = mxd_server.mxd("queue", "kick", qid)
    assert r.returncode == 0, r.stderr
    assert "did not answer" not in r.stderr
    deadline = time.monotonic() + 20
    while attempts() < 2:
        assert time.monotonic() < deadline, "kick did not lead to a new attempt"
        time.sleep(0.2)
