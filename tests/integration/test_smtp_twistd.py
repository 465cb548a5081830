"""SMTP through the real composition: ``twistd -n mxd`` (tests/integration/mxdserver.py).

The acceptance checks of the SMTP server against the process users run: swaks, smtplib,
gsasl and Cyrus smtptest as clients, the message read back over IMAP, and a SIGKILL
during a burst.  (tests/integration/test_smtp_clients.py runs more cases against the
lighter SMTP-only harness.)"""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.integration._smtp_harness import read_mailbox
from tests.integration.mxdserver import MxdServer, mxd_server  # noqa: F401 - fixture
from tests.integration.tools import require_tool

pytestmark = pytest.mark.integration


def imap_fetch_headers(s: MxdServer, user: str, password: str) -> list[bytes]:
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    with imaplib.IMAP4_SSL("127.0.0.1", s.ports["imaps"], ssl_context=ctx) as m:
        m.login(user, password)
        m.select("INBOX")
        typ, data = m.search(None, "ALL")
        assert typ == "OK"
        out = []
        for num in data[0].split():
            typ, parts = m.fetch(num, "(BODY.PEEK[HEADER])")
            assert typ == "OK"
            out.append(parts[0][1])
        return out


def test_swaks_submission_read_back_over_imap(mxd_server: MxdServer) -> None:  # noqa: F811
    """swaks over STARTTLS + AUTH PLAIN + PIPELINING to twistd mxd; bob reads it over IMAPS
    with a Received field naming ESMTPSA, the TLS version and cipher."""
    exe = require_tool("swaks")
    s = mxd_server
    r = subprocess.run(
        [exe, "--server", "127.0.0.1", "--port", str(s.ports["submission"]), "--tls",
         "--tls-verify", "--tls-ca-path", str(s.ca_file), "--tls-sni", "localhost",
         "--auth", "PLAIN", "--auth-user", s.user, "--auth-password", s.password,
         "--from", s.user, "--to", s.user2, "--pipeline", "--header", "Subject: via twistd"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = imap_fetch_headers(s, s.user2, s.password2)
    assert head.startswith(b"Received: from ")
    assert b"with ESMTPSA (version=TLSv1.3 cipher=" in head
    assert b"Subject: via twistd" in head


def test_swaks_implicit_tls(mxd_server: MxdServer) -> None:  # noqa: F811
    """swaks --tlsc on the submissions port (465 role) authenticates and delivers."""
    exe = require_tool("swaks")
    s = mxd_server
    r = subprocess.run(
        [exe, "--server", "127.0.0.1", "--port", str(s.ports["submissions"]), "--tlsc",
         "--tls-verify", "--tls-ca-path", str(s.ca_file), "--tls-sni", "localhost",
         "--auth", "PLAIN", "--auth-user", s.user, "--auth-password", s.password,
         "--from", s.user, "--to", s.user],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(read_mailbox(s.data_dir, s.user)) == 1


@pytest.mark.parametrize("port_name", ["smtp", "submission"])
def test_open_relay_refused(mxd_server: MxdServer, port_name: str) -> None:  # noqa: F811
    """Unauthenticated mail to a foreign domain: 554 5.7.1 on 25, 530 on 587."""
    exe = require_tool("swaks")
    s = mxd_server
    args = [exe, "--server", "127.0.0.1", "--port", str(s.ports[port_name]),
            "--from", "x@remote.example", "--to", "victim@elsewhere.example"]
    if port_name == "submission":
        args += ["--tls", "--tls-ca-path", str(s.ca_file)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert ("554 5.7.1" if port_name == "smtp" else "530 5.7.0") in r.stdout


def test_requiretls_marked_in_store(mxd_server: MxdServer) -> None:  # noqa: F811
    """smtplib with mail_options=["REQUIRETLS"]: the stored copy is marked REQUIRETLS and
    its Received field says (requiretls)."""
    s = mxd_server
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    with smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=30) as c:
        c.starttls(context=ctx)
        c.ehlo()
        assert c.has_extn("requiretls")
        c.login(s.user, s.password)
        c.sendmail(s.user, [s.user2], "Subject: rt\r\n\r\nbody\r\n", mail_options=["REQUIRETLS"])
    (msg,) = read_mailbox(s.data_dir, s.user2)
    assert msg["requiretls"]
    assert b"(requiretls)" in msg["body"]


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
@pytest.mark.parametrize("listener", ["submission", "submission_tls12"])
def test_gsasl_scram_plus(mxd_server: MxdServer, mech: str, listener: str) -> None:  # noqa: F811
    """gsasl SCRAM-*-PLUS over STARTTLS: TLS 1.3 (tls-exporter) and TLS 1.2 (tls-unique)."""
    exe = require_tool("gsasl")
    s = mxd_server
    r = subprocess.run(
        [exe, "--smtp", f"--connect=127.0.0.1:{s.ports[listener]}", "--starttls",
         f"--x509-ca-file={s.ca_file}", "--hostname=localhost", "-m", mech,
         "-a", s.user, "-p", s.password],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cyrus_smtptest_refused(mxd_server: MxdServer) -> None:  # noqa: F811
    """Cyrus smtptest -m SCRAM-SHA-256-PLUS (p= under a non-PLUS name) is refused with 535."""
    exe = require_tool("smtptest")
    s = mxd_server
    r = subprocess.run(
        [exe, "-p", str(s.ports["submission"]), "-t", "", "-m", "SCRAM-SHA-256-PLUS",
         "-a", s.user, "-w", s.password, "127.0.0.1"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert "C: AUTH SCRAM-SHA-256 " in out, out
    assert "235 " not in out and "535 5.7.8" in out, out


def test_sigkill_during_burst(mxd_server: MxdServer) -> None:  # noqa: F811
    """SIGKILL twistd mxd during a 4-client burst on port 25; after a restart every message
    a client saw 250 for is in the mailbox exactly once."""
    s = mxd_server
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", s.ports["smtp"], timeout=10) as c:
                while not stop.is_set():
                    tag = f"c{k}-{n}"
                    c.sendmail("load@remote.example", [s.user],
                               f"Subject: crash {tag}\r\n\r\n" + "x" * 2000)
                    with lock:
                        acked.append(tag)
                    n += 1
        except (smtplib.SMTPException, OSError):
            return

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(acked) >= 60, s.log_tail()
    s.kill()
    stop.set()
    for t in threads:
        t.join(15)
    with lock:
        seen = list(acked)
    s.start()
    tags: Counter[str] = Counter()
    for msg in read_mailbox(s.data_dir, s.user):
        m = re.search(rb"Subject: crash (c\d+-\d+)", msg["body"])
        assert m is not None
        tags[m.group(1).decode()] += 1
    assert [t for t in seen if tags[t] != 1] == []
    assert max(tags.values()) == 1
