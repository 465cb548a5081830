"""The SMTP server against independent clients (swaks, smtplib, raw sockets).

Runs the real store, directory, SASL server and queue in a subprocess
(``tests/integration/_smtp_harness.py``) on free loopback ports, which lets these tests
look at the queue tables too.  The acceptance runs against ``twistd mxd`` (swaks
submission read back over IMAP, gsasl SCRAM-PLUS, Cyrus smtptest, open relay, SIGKILL)
are in test_smtp_twistd.py.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess

import pytest

from tests.integration._smtp_harness import Harness, smtp_harness  # noqa: F401 - fixture
from tests.integration.tools import require_tool

pytestmark = pytest.mark.integration


def swaks(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("swaks")
    return subprocess.run([exe, "--server", "127.0.0.1", "--helo", "client.example", *args],
                          capture_output=True, text=True, timeout=60)


def tls_context(h: Harness) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(h.ca_file))
    return ctx


def test_swaks_inbound_plain_and_starttls(smtp_harness: Harness) -> None:  # noqa: F811
    """Inbound port 25: a plain and a STARTTLS delivery land in INBOX as ESMTP / ESMTPS."""
    h = smtp_harness
    r = swaks(h, "--port", str(h.ports["smtp"]), "--from", "x@remote.example", "--to", h.user)
    assert r.returncode == 0, r.stdout
    r = swaks(h, "--port", str(h.ports["smtp"]), "--tls", "--tls-ca-path", str(h.ca_file),
              "--from", "x@remote.example", "--to", h.user)
    assert r.returncode == 0, r.stdout
    vias = [m["via"] for m in h.inbox(h.user)]
    assert vias == ["ESMTP", "ESMTPS"]


def test_smtplib_requiretls_and_tls_required_header(smtp_harness: Harness) -> None:  # noqa: F811
    """smtplib with mail_options=["REQUIRETLS"]: the stored local copy and the queued copy
    both carry REQUIRETLS; the TLS-Required: No header is recorded as well."""
    h = smtp_harness
    with smtplib.SMTP("127.0.0.1", h.ports["submission"], timeout=30) as s:
        s.starttls(context=tls_context(h))
        s.ehlo()
        assert s.has_extn("requiretls")
        s.login(h.user, h.password)
        s.sendmail(h.user, [h.user2, "far@remote.example"],
                   "Subject: rt\r\nTLS-Required: No\r\n\r\nbody\r\n", mail_options=["REQUIRETLS"])
    (msg,) = h.inbox(h.user2)
    assert msg["requiretls"] and msg["tls_required_no"]
    assert b"(requiretls)" in msg["body"]
    (q,) = h.queued()
    assert q["requiretls"] == 1 and q["tls_required_no"] == 1


def test_smtplib_requiretls_not_offered_in_plaintext(smtp_harness: Harness) -> None:  # noqa: F811
    """Before STARTTLS the EHLO reply has no REQUIRETLS (RFC 8689 §4)."""
    h = smtp_harness
    with smtplib.SMTP("127.0.0.1", h.ports["smtp"], timeout=30) as s:
        s.ehlo()
        assert not s.has_extn("requiretls") and s.has_extn("starttls")


def test_smtplib_smtputf8(smtp_harness: Harness) -> None:  # noqa: F811
    """An internationalised sender address is accepted with SMTPUTF8 and recorded."""
    h = smtp_harness
    with smtplib.SMTP("127.0.0.1", h.ports["smtp"], timeout=30) as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        s.sendmail("发件人@例子.test", [h.user], b"Subject: utf8\r\n\r\nhi\r\n",
                   mail_options=["SMTPUTF8"])
    (msg,) = h.inbox(h.user)
    assert msg["mail_from"] == "发件人@例子.test"
    assert b"with UTF8SMTP" in msg["body"]


def test_smtplib_bdat(smtp_harness: Harness) -> None:  # noqa: F811
    """BDAT by hand: two chunks, the second LAST, make one message."""
    h = smtp_harness
    with smtplib.SMTP("127.0.0.1", h.ports["smtp"], timeout=30) as s:
        s.ehlo()
        assert s.has_extn("chunking")
        assert s.mail("x@remote.example")[0] == 250
        assert s.rcpt(h.user)[0] == 250
        one, two = b"Subject: chunks\r\n\r\n.first\r\n", b"second\r\n"
        s.send(f"BDAT {len(one)}\r\n".encode() + one)
        assert s.getreply()[0] == 250
        s.send(f"BDAT {len(two)} LAST\r\n".encode() + two)
        assert s.getreply()[0] == 250
    (msg,) = h.inbox(h.user)
    assert msg["body"].endswith(b"\r\n\r\n.first\r\nsecond\r\n")


def test_starttls_injection_over_real_tls(smtp_harness: Harness) -> None:  # noqa: F811
    """A command sent in the same packet as STARTTLS is not executed after the handshake:
    the first reply inside TLS answers our EHLO, not the injected NOOP."""
    h = smtp_harness
    raw = socket.create_connection(("127.0.0.1", h.ports["smtp"]), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"220 ")
    raw.sendall(b"EHLO c.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nNOOP injected\r\n")
    assert f.readline().startswith(b"220 ")
    tls = tls_context(h).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"EHLO c.example\r\n")
    first = tls.recv(4096)
    assert first.startswith(b"250-mx.example.test"), first
    tls.close()


def test_smtp_smuggling_over_tcp(smtp_harness: Harness) -> None:  # noqa: F811
    """The 2023 smuggling payload (\\n.\\n then a second transaction) sent over TCP is
    refused as one message with 550 5.6.0; nothing reaches the mailbox."""
    h = smtp_harness
    s = socket.create_connection(("127.0.0.1", h.ports["smtp"]), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    s.sendall(b"EHLO attacker.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    s.sendall(b"MAIL FROM:<a@attacker.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    s.sendall(b"Subject: one\r\n\r\nhi\n.\nMAIL FROM:<ceo@example.test>\r\n"
              b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
              b"QUIT\r\n")
    assert f.readline().startswith(b"550 5.6.0")
    assert f.readline().startswith(b"221 ")
    s.close()
    assert h.inbox(h.user) == []
