"""Real IMAP clients against `twistd mxd` (the composed server): imapclient's live test,
gsasl and aiosasl SCRAM-PLUS, Cyrus imtest refusal, mbsync,
and IDLE across two sessions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import imaplib
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mxdserver import MxdServer as IMAPServer
from tests.integration.runqueue import RunQueueWatch, watch_session, within
from tests.integration.tools import require_module, require_tool

pytestmark = pytest.mark.integration


def _ctx(srv: IMAPServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(srv.ca_file))


def _imaps(srv: IMAPServer) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=_ctx(srv), timeout=10)


MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\nbody %s\r\n"

# imapclient-livetest failures that are not the server's doing (Dovecot 2.3.19 shows the
# same): test_fetch compares its Envelope dataclass with assertSequenceEqual (always fails
# in imapclient 4.x); non-UID test_move calls imaplib's unknown "move" attribute; the
# socket-timeout tests expect the server to be slower than 1 ms.
KNOWN_CLIENT_SIDE = {"test_fetch", "test_move", "test_small_read_timeout_fail",
                     "test_small_connection_timeout_fail"}


def test_imapclient_livetest(mxd_server_module: IMAPServer, tmp_path: Path) -> None:
    """imapclient's live test suite passes except for its known client-side failures."""
    require_module("imapclient")
    venv_tool = Path(sys.executable).parent / "imapclient-livetest"
    tool = str(venv_tool) if venv_tool.exists() else require_tool("imapclient-livetest")
    ini = tmp_path / "livetest.ini"
    ini.write_text(f"[DEFAULT]\nhost = localhost\nport = {mxd_server_module.ports['imaps']}\nssl = true\n"
                   f"ssl_ca_file = {mxd_server_module.ca_file}\nusername = {mxd_server_module.user}\n"
                   f"password = {mxd_server_module.password}\n")
    proc = subprocess.run([tool, str(ini)], capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert re.search(r"Ran 59 tests", out), out[-3000:]
    bad = set(re.findall(r"^(?:FAIL|ERROR): (\w+) ", out, re.M))
    assert bad <= KNOWN_CLIENT_SIDE, out[-6000:]


@pytest.mark.parametrize("port,mech", [("imap", "SCRAM-SHA-256-PLUS"), ("imap", "SCRAM-SHA-1-PLUS"),
                                       ("imap_tls12", "SCRAM-SHA-256-PLUS")])
def test_gsasl_scram_plus(mxd_server_module: IMAPServer, port: str, mech: str) -> None:
    """gsasl authenticates with SCRAM-*-PLUS over STARTTLS: tls-exporter on TLS 1.3,
    tls-unique on the TLS 1.2-capped listener."""
    gsasl = require_tool("gsasl")
    proc = subprocess.run(
        [gsasl, "--imap", f"--connect=127.0.0.1:{mxd_server_module.ports[port]}", "--starttls",
         f"--x509-ca-file={mxd_server_module.ca_file}", "--hostname=localhost", "-m", mech,
         "-a", mxd_server_module.user, "-p", mxd_server_module.password, "--verbose"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cb = "tls-unique" if port == "imap_tls12" else "tls-exporter"
    assert base64.b64encode(f"p={cb},".encode()).decode()[:8] in proc.stdout + proc.stderr


def test_imtest_nonconformant_scram_refused(mxd_server_module: IMAPServer) -> None:
    """Cyrus imtest sends p= under a non-PLUS SCRAM name; the server refuses it."""
    imtest = require_tool("imtest")
    proc = subprocess.run(
        [imtest, "-p", str(mxd_server_module.ports["imap"]), "-t", "", "-m", "SCRAM-SHA-256-PLUS",
         "-a", mxd_server_module.user, "-w", mxd_server_module.password, "127.0.0.1"],
        input=". LOGOUT\n", capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert "Authentication failed" in out and "Logged in" not in out, out


def test_aiosasl_tls_server_end_point(mxd_server_module: IMAPServer) -> None:
    """aiosasl SCRAM-SHA-256-PLUS with tls-server-end-point logs in over implicit TLS."""
    aiosasl = require_module("aiosasl")
    from aiosasl.channel_binding import ChannelBindingProvider

    sock = _ctx(mxd_server_module).wrap_socket(
        socket.create_connection(("127.0.0.1", mxd_server_module.ports["imaps"]), timeout=10),
        server_hostname="localhost")
    f = sock.makefile("rwb")
    greeting = f.readline()
    assert b"AUTH=SCRAM-SHA-256-PLUS" in greeting
    cert = sock.getpeercert(binary_form=True)
    assert cert is not None

    class EndPoint(ChannelBindingProvider):  # type: ignore[misc]
        @property
        def cb_name(self) -> bytes:
            return b"tls-server-end-point"

        def extract_cb_data(self) -> bytes:
            return hashlib.sha256(cert).digest()  # RFC 5929 §4.1: ECDSA-SHA256 certificate

    class IMAPInterface(aiosasl.SASLInterface):  # type: ignore[misc]
        def _read(self) -> Any:
            line = f.readline().rstrip(b"\r\n")
            if line.startswith(b"+ "):
                return aiosasl.SASLState.CHALLENGE, base64.b64decode(line[2:])
            if line.startswith(b"A OK"):
                return aiosasl.SASLState.SUCCESS, None
            raise aiosasl.SASLFailure("not-authorized", text=line.decode())

        async def initiate(self, mechanism: str, payload: bytes | None = None) -> Any:
            ir = b" " + base64.b64encode(payload) if payload else b""
            f.write(b"A AUTHENTICATE " + mechanism.encode() + ir + b"\r\n")
            f.flush()
            return self._read()

        async def respond(self, payload: bytes) -> Any:
            f.write(base64.b64encode(payload) + b"\r\n")
            f.flush()
            return self._read()

        async def abort(self) -> None:
            f.write(b"*\r\n")
            f.flush()

    async def go() -> None:
        async def creds() -> tuple[str, str]:
            return mxd_server_module.user, mxd_server_module.password

        mech = aiosasl.SCRAMPLUS(creds, EndPoint())
        sm = aiosasl.SASLStateMachine(IMAPInterface())
        token = mech.any_supported(["SCRAM-SHA-256-PLUS"])
        assert token is not None
        await mech.authenticate(sm, token)

    asyncio.run(go())
    f.write(b"B NAMESPACE\r\n")
    f.flush()
    assert f.readline().startswith(b"* NAMESPACE")
    sock.close()


def _watch(srv: IMAPServer, m: imaplib.IMAP4_SSL) -> RunQueueWatch:
    """CPU waits of the process serving ``m`` (with workers, the other session's commit
    reaches it by mxd.store.watch) and of this thread, from now on: a 1 s bound on a
    notification is the server's, not that of a machine busy with other tests."""
    assert srv.proc is not None
    return watch_session(srv.proc.pid, m.sock, srv.ports["imaps"])


def test_idle_sees_append_and_expunge(mxd_server_module: IMAPServer) -> None:
    """A session in IDLE sees EXISTS within a second of another session's APPEND, and
    EXPUNGE after the other session expunges."""
    a = _imaps(mxd_server_module)
    b = _imaps(mxd_server_module)
    for c in (a, b):
        c.login(mxd_server_module.user, mxd_server_module.password)
        c.select("INBOX")
    tag = a._new_tag().decode()
    a.send(f"{tag} IDLE\r\n".encode())
    assert a.readline().startswith(b"+ ")
    a.sock.settimeout(30)
    watch = _watch(mxd_server_module, a)
    t0 = time.monotonic()
    b.append("INBOX", None, None, MSG % (b"idle", b"1"))
    line = a.readline()
    assert re.match(rb"\* \d+ EXISTS", line), line
    assert within(watch, t0, time.monotonic(), 1.0)  # net of waits for a CPU
    typ, data = b.search(None, "ALL")
    first = data[0].split()[0]
    b.store(first, "+FLAGS", "\\Deleted")
    b.expunge()
    seen = b""
    deadline = time.monotonic() + 5
    while b"EXPUNGE" not in seen and time.monotonic() < deadline:
        seen += a.readline()
    assert b"* %s EXPUNGE" % first in seen, seen
    a.send(b"DONE\r\n")
    while True:
        line = a.readline()
        if line.startswith(tag.encode()):
            break
    assert line.startswith(f"{tag} OK".encode())
    a.logout()
    b.logout()


def test_idle_sees_smtp_delivery(mxd_server_module: IMAPServer) -> None:
    """A session in IDLE sees EXISTS within a second of a delivery over SMTP (the 250
    reply means the message is stored)."""
    import smtplib

    a = _imaps(mxd_server_module)
    a.login(mxd_server_module.user, mxd_server_module.password)
    a.select("INBOX")
    tag = a._new_tag().decode()
    a.send(f"{tag} IDLE\r\n".encode())
    assert a.readline().startswith(b"+ ")
    a.sock.settimeout(30)
    watch = _watch(mxd_server_module, a)
    with smtplib.SMTP("127.0.0.1", mxd_server_module.ports["smtp"], local_hostname="client.test",
                      timeout=10) as smtp:
        smtp.sendmail("sender@remote.test", [mxd_server_module.user], MSG % (b"via smtp", b"2"))
    t0 = time.monotonic()
    line = a.readline()
    assert re.match(rb"\* \d+ EXISTS", line), line
    assert within(watch, t0, time.monotonic(), 1.0)  # net of waits for a CPU
    a.send(b"DONE\r\n")
    while not a.readline().startswith(tag.encode()):
        pass
    typ, data = a.search(None, "SUBJECT", '"via smtp"')
    assert typ == "OK" and data[0]
    a.logout()


def test_mbsync_both_ways(mxd_server_module: IMAPServer, tmp_path: Path) -> None:
    """mbsync copies server mail to a Maildir and local mail to the server."""
    mbsync = require_tool("mbsync")
    c = _imaps(mxd_server_module)
    c.login(mxd_server_module.user2, mxd_server_module.password2)
    for i in range(3):
        c.append("INBOX", None, None, MSG % (b"to-local-%d" % i, b"x"))
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    cfg = tmp_path / "mbsyncrc"
    cfg.write_text(f"""IMAPAccount mxd
Host localhost
Port {mxd_server_module.ports['imaps']}
User {mxd_server_module.user2}
Pass {mxd_server_module.password2}
SSLType IMAPS
CertificateFile {mxd_server_module.ca_file}

IMAPStore remote
Account mxd

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel inbox
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run() -> None:
        p = subprocess.run([mbsync, "-c", str(cfg), "-a"], capture_output=True, text=True,
                           timeout=60, env=env)
        assert p.returncode == 0, p.stdout + p.stderr

    run()
    local = list((maildir / "INBOX" / "new").iterdir()) + list((maildir / "INBOX" / "cur").iterdir())
    assert len(local) == 3
    assert any(b"to-local-1" in p.read_bytes() for p in local)
    (maildir / "INBOX" / "new" / "1700000000.1_1.local").write_bytes(MSG % (b"to-server", b"y"))
    run()
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", "to-server")
    assert typ == "OK" and len(data[0].split()) == 1
    c.logout()
