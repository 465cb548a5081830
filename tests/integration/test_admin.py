"""The admin listener of a running `twistd mxd`: status, queue API and CSRF protection."""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.error
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


def _get(server: MxdServer, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.ports['admin']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
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


def test_queue_api_lists_and_holds_with_admin_header(mxd_server: MxdServer):
    """GET /api/queue lists a queued message; a POST without the admin header or CSRF token
    is refused (403) and changes nothing; with the header, hold takes effect."""
    _queue_one(mxd_server)
    code, body = _get(mxd_server, "/api/queue")
    assert code == 200
    (msg,) = json.loads(body)
    qid = msg["queue_id"]
    assert msg["recipients"][0]["held"] is False

    code, _ = _post(mxd_server, f"/api/queue/{qid}/hold")
    assert code == 403
    assert json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])["recipients"][0]["held"] is False

    code, body = _post(mxd_server, f"/api/queue/{qid}/hold", {"X-Mxd-Admin": "1"})
    assert code == 200 and json.loads(body)["recipients"] == 1
    shown = json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])
    assert shown["recipients"][0]["held"] is True

    code, _ = _post(mxd_server, f"/api/queue/{qid}/explode", {"X-Mxd-Admin": "1"})
    assert code == 404
    assert _get(mxd_server, "/api/queue/nonexistent")[0] == 404


def test_queue_page_escapes_and_form_token_works(mxd_server: MxdServer):
    """The HTML queue page carries a CSP and a CSRF token; posting the form with that token
    releases the message, a wrong token does not."""
    _queue_one(mxd_server)
    qid = json.loads(_get(mxd_server, "/api/queue")[1])[0]["queue_id"]
    _post(mxd_server, f"/api/queue/{qid}/hold", {"X-Mxd-Admin": "1"})
    code, page = _get(mxd_server, "/queue")
    assert code == 200 and qid in page
    token = page.split('name=csrf value=', 1)[1].split(">", 1)[0]
    assert len(token) == 64
    code, _ = _post(mxd_server, f"/api/queue/{qid}/release", data=b"csrf=" + b"0" * 64)
    assert code == 403
    _post(mxd_server, f"/api/queue/{qid}/release", data=b"csrf=" + token.encode())
    shown = json.loads(_get(mxd_server, f"/api/queue/{qid}")[1])
    assert shown["recipients"][0]["held"] is False


def test_status_page_counts(mxd_server: MxdServer):
    """The status page shows the accounts and the queue counts."""
    code, page = _get(mxd_server, "/")
    assert code == 200
    assert "<th>accounts</th><td>2</td>" in page


def test_requiretls_override_and_tls_domains(mxd_server: MxdServer):
    """POST /api/queue/ID/requiretls changes the message's REQUIRETLS state (RFC 8689 admin
    override); bad settings get 400, unknown ids 404; the TLS domain endpoints answer."""
    _queue_one(mxd_server)
    qid = json.loads(_get(mxd_server, "/api/queue")[1])[0]["queue_id"]
    code, _ = _post(mxd_server, f"/api/queue/{qid}/requiretls?setting=yes")
    assert code == 403
    hdr = {"X-Mxd-Admin": "1"}
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
