"""`mxd sendmail` / `mxd-sendmail` submitting to a running `twistd mxd`: git send-email
style (-i, recipients as arguments) and mail style (-oi -t -f), SCRAM-SHA-256-PLUS over
STARTTLS and SCRAM-SHA-1-PLUS over a TLS 1.2-capped listener and implicit TLS, and one
failure per exit status (sysexits.h), each with a one-line error."""

from __future__ import annotations

import imaplib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mxdserver import VENV_BIN, MxdServer
from tests.integration.tools import free_port

pytestmark = pytest.mark.integration


def _write_config(base: Path, server: MxdServer, *, port_name: str = "submission",
                  tls: str = "starttls", password: str | None = None, user: str | None = None,
                  mode: int = 0o600, extra: str = "", ca: Path | None = None) -> Path:
    base = base / f"c{len(list(base.glob('c*')))}"
    base.mkdir()
    pw = base / "password"
    pw.write_text((password or server.password) + "\n")
    os.chmod(pw, mode)
    conf = base / "sendmail.toml"
    conf.write_text(f'''
host = "127.0.0.1"
port = {server.ports[port_name] if port_name in server.ports else port_name}
tls = "{tls}"
tls_server_name = "localhost"
ca_file = "{ca or server.ca_file}"
username = "{user or server.user}"
password_file = "{pw}"
hostname = "client.example.test"
timeout = 20
{extra}
''')
    return conf


def _sendmail(args: list[str], stdin: bytes, script: str = "mxd-sendmail"
              ) -> subprocess.CompletedProcess[str]:
    cmd = [str(VENV_BIN / "mxd-sendmail")] if script == "mxd-sendmail" else \
        [str(VENV_BIN / "mxd"), "sendmail"]
    r = subprocess.run([*cmd, *args], input=stdin.decode("utf-8", "surrogateescape"),
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _inbox(server: MxdServer, user: str, password: str) -> list[bytes]:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    try:
        m.login(user, password)
        m.select("INBOX")
        _typ, data = m.search(None, "ALL")
        out = []
        for num in data[0].split():
            _t, msg = m.fetch(num, "(RFC822)")
            out.append(msg[0][1])  # type: ignore[index]
        return out
    finally:
        m.logout()


def _wait_for(server: MxdServer, user: str, password: str, marker: bytes) -> bytes:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for msg in _inbox(server, user, password):
            if marker in msg:
                return msg
        time.sleep(0.1)
    raise AssertionError(f"{marker!r} did not arrive")


def _auth_logged(server: MxdServer, mechanism: str, account: str) -> bool:
    return f"mechanism={mechanism} account={account}" in server.log_path.read_text(
        errors="replace")


def test_git_send_email_style(mxd_server_module: MxdServer, tmp_path: Path) -> None:
    """`sendmail -i RCPT...` as git send-email runs it: a patch mail with a lone "." line
    (kept with -i) reaches bob's INBOX; we authenticated with SCRAM-SHA-256-PLUS (TLS 1.3,
    tls-exporter) and added Date (git sets Message-ID)."""
    s = mxd_server_module
    conf = _write_config(tmp_path, s)
    msg = (b"From: Alice <alice@example.test>\nTo: bob@example.test\n"
           b"Subject: [PATCH] git-style-1\nMessage-ID: <git-1@client.example.test>\n\n"
           b"diff line\n.\nafter the dot\n")
    r = _sendmail(["--config", str(conf), "-i", "bob@example.test"], msg)
    assert r.returncode == 0, r.stderr
    got = _wait_for(s, s.user2, s.password2, b"git-style-1")
    assert b"\r\n.\r\nafter the dot" in got and b"\r\nDate: " in got
    assert got.count(b"Message-ID:") == 1
    assert _auth_logged(s, "SCRAM-SHA-256-PLUS", s.user)


def test_mail_style_extract_recipients(mxd_server_module: MxdServer, tmp_path: Path) -> None:
    """`mxd sendmail -oi -t -f SENDER` as mail(1) runs it: recipients from To/Bcc, Bcc
    removed, Message-ID and From added (with -F's name)."""
    s = mxd_server_module
    conf = _write_config(tmp_path, s)
    msg = b"To: bob@example.test\nBcc: alice@example.test\nSubject: mail-style-2\n\nhi\n"
    r = _sendmail(["--config", str(conf), "-oi", "-t", "-f", s.user, "-F", "Alice A"], msg,
                  script="mxd")
    assert r.returncode == 0, r.stderr
    for user, pw in ((s.user2, s.password2), (s.user, s.password)):
        got = _wait_for(s, user, pw, b"mail-style-2")
        assert b"Bcc" not in got and b"Message-ID: <" in got
        assert b'From: "Alice A" <alice@example.test>' in got


@pytest.mark.parametrize(("port_name", "tls", "mechanism"), [
    ("submission_tls12", "starttls", "SCRAM-SHA-1-PLUS"),
    ("submissions", "implicit", "SCRAM-SHA-256-PLUS"),
    ("submission", "starttls", "SCRAM-SHA-256"),
    ("submission", "starttls", "CRAM-MD5"),
    ("submission", "starttls", "PLAIN"),
])
def test_mechanisms(mxd_server_module: MxdServer, tmp_path: Path, port_name: str, tls: str,
                    mechanism: str) -> None:
    """Each mechanism forced by config works (SCRAM-SHA-1-PLUS over TLS 1.2: tls-unique;
    implicit TLS on the submissions port)."""
    s = mxd_server_module
    conf = _write_config(tmp_path, s, port_name=port_name, tls=tls,
                         extra=f'mechanisms = ["{mechanism}"]')
    marker = f"mech-{mechanism}-{port_name}".encode()
    r = _sendmail(["--config", str(conf), "-i", "bob@example.test"],
                  b"Subject: " + marker + b"\n\nx\n")
    assert r.returncode == 0, r.stderr
    _wait_for(s, s.user2, s.password2, marker)
    assert _auth_logged(s, mechanism, s.user)


@pytest.fixture
def garbage_server() -> Iterator[int]:
    """A TCP server that answers with something that is not SMTP."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            time.sleep(0.2)
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port
    stop.set()
    t.join(2)
    srv.close()


def test_exit_codes(mxd_server_module: MxdServer, tmp_path: Path, tls_ca: object,
                    garbage_server: int) -> None:
    """One failure per sysexits.h status, each a single line on stderr."""
    s = mxd_server_module
    good = _write_config(tmp_path, s)
    msg = b"Subject: failing\n\nx\n"
    other_ca = tmp_path / "other-ca.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(other_ca))
    cases = [
        (["--config", str(good)], msg, 64, "no recipients"),  # EX_USAGE
        (["--config", str(good), "-bp"], msg, 64, "-bp is not supported"),
        (["--config", str(good), "bob@example.test"], b"To: x\nbroken\n\nx\n", 65,
         "malformed header line"),  # EX_DATAERR
        (["--config", str(good), "-i", "nobody-here@example.test"], msg, 67,
         "nobody-here@example.test"),  # EX_NOUSER
        (["--config", str(_write_config(tmp_path, s, ca=other_ca)), "bob@example.test"], msg,
         69, "TLS"),  # EX_UNAVAILABLE: certificate not trusted
        (["--config", str(_write_config(tmp_path, s, port_name=str(free_port()))),
          "bob@example.test"], msg, 75, "cannot connect"),  # EX_TEMPFAIL
        (["--config", str(_write_config(tmp_path, s, port_name=str(garbage_server))),
          "bob@example.test"], msg, 76, "not an SMTP reply"),  # EX_PROTOCOL
        (["--config", str(_write_config(tmp_path, s, password="wrong")),
          "bob@example.test"], msg, 77, "authentication failed"),  # EX_NOPERM
        (["--config", str(_write_config(tmp_path, s, mode=0o644)), "bob@example.test"], msg,
         78, "readable by others"),  # EX_CONFIG
        (["--config", str(tmp_path / "missing.toml"), "bob@example.test"], msg, 78,
         "config file not found"),
    ]
    for args, stdin, code, text in cases:
        r = _sendmail(args, stdin)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("mxd-sendmail: ")
    # EX_IOERR: stdin cannot be read (opened write-only)
    fd = os.open(tmp_path / "write-only", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        r = subprocess.run([str(VENV_BIN / "mxd-sendmail"), "--config", str(good),
                            "bob@example.test"], stdin=fd, capture_output=True, text=True,
                           timeout=60)
    finally:
        os.close(fd)
    assert r.returncode == 74, r.stderr
    assert r.stderr.startswith("mxd-sendmail: cannot read the message") and \
        r.stderr.count("\n") == 1


def test_plaintext_plain_server_is_refused(tmp_path: Path, mxd_server_module: MxdServer
                                           ) -> None:
    """A server that offers only PLAIN without STARTTLS: with tls = "none" to a loopback
    server, mxd-sendmail still never sends PLAIN (EX_UNAVAILABLE), and nothing with the
    password crosses the wire."""
    got: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        c, _ = srv.accept()
        c.sendall(b"220 plain.test ESMTP\r\n")
        f = c.makefile("rb")
        for line in f:
            got.append(line)
            if line.upper().startswith(b"EHLO"):
                c.sendall(b"250-plain.test\r\n250 AUTH PLAIN LOGIN\r\n")
            elif line.upper().startswith(b"QUIT"):
                c.sendall(b"221 bye\r\n")
                break
            else:
                c.sendall(b"502 no\r\n")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    conf = _write_config(tmp_path, mxd_server_module, port_name=str(srv.getsockname()[1]),
                         tls="none")
    r = _sendmail(["--config", str(conf), "bob@example.test"], b"Subject: x\n\nx\n")
    t.join(10)
    srv.close()
    assert r.returncode == 69, r.stderr
    assert "offers only PLAIN LOGIN without TLS" in r.stderr
    assert not any(line.upper().startswith(b"AUTH") for line in got)


def test_scram_y_flag_accepted_by_server_without_plus(mxd_server_factory: object,
                                                      tmp_path: Path) -> None:
    """A server that offers SCRAM without -PLUS: we can bind, so we send gs2 "y"
    (RFC 5802 §6); mxd, which did not offer -PLUS, accepts it."""
    s: MxdServer = mxd_server_factory(  # type: ignore[operator]
        extra_config='[auth]\nmechanisms = ["SCRAM-SHA-256", "PLAIN"]\n')
    conf = _write_config(tmp_path, s)
    r = _sendmail(["--config", str(conf), "-i", "bob@example.test"],
                  b"Subject: y-flag\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert _auth_logged(s, "SCRAM-SHA-256", s.user)
