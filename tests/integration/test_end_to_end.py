"""The whole server as composed by `twistd mxd`: submission, inbound, IMAP, queue, CLI."""

from __future__ import annotations

import imaplib
import json
import smtplib
import ssl
import subprocess

import pytest

from tests.integration.mxdserver import MxdServer
from tests.integration.tools import require_tool

pytestmark = pytest.mark.integration


def _imap(server: MxdServer, user: str, password: str) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    m.login(user, password)
    return m


def test_swaks_submission_reaches_imap_inbox(mxd_server: MxdServer):
    """A message submitted with swaks (STARTTLS + AUTH PLAIN) to a local recipient is in
    that recipient's INBOX over IMAPS, with an ESMTPSA Received header naming TLS."""
    swaks = require_tool("swaks")
    r = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(mxd_server.ports["submission"]),
         "--tls", "--tls-verify", "--tls-ca-path", str(mxd_server.ca_file), "--tls-sni", "localhost",
         "--auth", "PLAIN", "--auth-user", mxd_server.user, "--auth-password", mxd_server.password,
         "--from", mxd_server.user, "--to", mxd_server.user2, "--header", "Subject: e2e-1",
         "--body", "hello bob"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0" in r.stdout
    m = _imap(mxd_server, mxd_server.user2, mxd_server.password2)
    try:
        typ, data = m.select("INBOX")
        assert typ == "OK" and int(data[0]) == 1
        typ, msg = m.fetch("1", "(BODY.PEEK[])")
        raw = msg[0][1].decode()
    finally:
        m.logout()
    assert "Subject: e2e-1" in raw and "hello bob" in raw
    received = raw.split("\r\n\r\n", 1)[0]
    assert "with ESMTPSA" in received and "TLSv1.3" in received


def test_inbound_delivery_and_no_open_relay(mxd_server: MxdServer):
    """Port 25 accepts mail for local users without AUTH, refuses unknown local users with
    550 5.1.1 and refuses relaying to other domains."""
    with smtplib.SMTP("127.0.0.1", mxd_server.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example.net")
        code, _ = s.mail("someone@example.net")
        assert code == 250
        code, msg = s.rcpt("nobody@example.test")
        assert code == 550 and msg.startswith(b"5.1.1")
        code, msg = s.rcpt("victim@elsewhere.example")
        assert code in (550, 554) and msg.startswith(b"5.7.1")
        code, _ = s.rcpt(mxd_server.user)
        assert code == 250
        code, _ = s.data(b"Subject: inbound\r\n\r\nfrom outside\r\n")
        assert code == 250
    m = _imap(mxd_server, mxd_server.user, mxd_server.password)
    try:
        typ, data = m.select("INBOX")
        assert int(data[0]) == 1
    finally:
        m.logout()


def test_submission_to_remote_is_queued_and_listed(mxd_server: MxdServer):
    """Remote recipients of a submission wait in the outbound queue (resolver unreachable
    here), and `mxd queue list` shows them."""
    ctx = ssl.create_default_context(cafile=str(mxd_server.ca_file))
    with smtplib.SMTP("127.0.0.1", mxd_server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(mxd_server.user, mxd_server.password)
        s.sendmail(mxd_server.user, ["carol@remote.example"],
                   b"Subject: out\r\nTLS-Required: No\r\n\r\nhello\r\n")
    r = mxd_server.mxd("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    msgs = json.loads(r.stdout)
    assert len(msgs) == 1
    assert msgs[0]["from"] == mxd_server.user
    assert [x["address"] for x in msgs[0]["recipients"]] == ["carol@remote.example"]
    assert msgs[0]["tls_required_no"] is True


def test_auth_refused_without_tls_on_submission(mxd_server: MxdServer):
    """Before STARTTLS the submission port offers no AUTH and refuses MAIL."""
    with smtplib.SMTP("127.0.0.1", mxd_server.ports["submission"], timeout=30) as s:
        s.ehlo("client.example.net")
        assert not s.has_extn("auth")
        code, _ = s.mail(mxd_server.user)
        assert code == 530


def test_failed_logins_back_off_per_ip(mxd_server_factory):
    """After [auth] ip_free_failures bad passwords from one IP, even the right password is
    refused for a while (rate limited), over IMAP as configured."""
    server = mxd_server_factory(extra_config="[auth]\nip_free_failures = 2\n")
    for _ in range(3):
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"],
                              ssl_context=ssl.create_default_context(cafile=str(server.ca_file)))
        with pytest.raises(imaplib.IMAP4.error):
            m.login(server.user, "wrong-password")
        m.logout()
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"],
                          ssl_context=ssl.create_default_context(cafile=str(server.ca_file)))
    with pytest.raises(imaplib.IMAP4.error) as ei:
        m.login(server.user, server.password)
    m.logout()
    assert "too many failed attempts" in str(ei.value).lower() or "UNAVAILABLE" in str(ei.value)
