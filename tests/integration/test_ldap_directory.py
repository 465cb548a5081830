"""`twistd mxd` with accounts from a real slapd (ldaps, with a dead first URI for failover):
swaks PLAIN, IMAP LOGIN, gsasl SCRAM-SHA-256-PLUS from RFC 5803 values, aliases, 550 for
unknown addresses, 451 4.4.3 while slapd is down and recovery after its restart, filter
injection and a user outside the login group."""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ldaplab import PASSWORDS, SERVICE_DN, SERVICE_PASSWORD, SlapdLab
from tests.integration.mxdserver import VENV_BIN, MxdServer
from tests.integration.tools import free_port, require_tool

pytestmark = pytest.mark.integration


def _scram_values() -> list[str]:
    """carol's authPassword values, as an admin makes them: `mxd account scram-keys`."""
    r = subprocess.run([str(VENV_BIN / "mxd"), "account", "scram-keys", "--password-stdin"],
                       input=PASSWORDS["carol"] + "\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    values = [line.split(": ", 1)[1] for line in r.stdout.splitlines()]
    assert [v.split("$")[0] for v in values] == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    return values


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory,
        tls_files: dict[str, Path]) -> Iterator[SlapdLab]:
    lab = SlapdLab(tmp_path_factory.mktemp("slapd"), tls_files, _scram_values())
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def mxd(tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path],
        lab: SlapdLab) -> Iterator[MxdServer]:
    # The first URI has nobody listening: every connection fails over to the second.
    dead = f"ldaps://127.0.0.1:{free_port()}"
    extra = lab.mxd_config(uris=[dead, f"ldaps://127.0.0.1:{lab.ldaps_port}"])
    server = MxdServer(tmp_path_factory.mktemp("mxd-ldap"), tls_files, extra_config=extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class _IMAP4FromIP(imaplib.IMAP4_SSL):
    """IMAPS from a chosen loopback source address: tests that fail logins on purpose use
    their own, so the login limiter's per-IP back-off of one test does not reach another."""

    source = "127.0.0.1"

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname="localhost")


def _imap_login(server: MxdServer, user: str, password: str,
                source: str = "127.0.0.1") -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    cls = type("IMAP4FromIP", (_IMAP4FromIP,), {"source": source})
    m = cls("127.0.0.1", server.ports["imaps"], ssl_context=ctx, timeout=30)
    m.login(user, password)
    return m


def _login_error(server: MxdServer, user: str, password: str, source: str) -> str:
    with pytest.raises(imaplib.IMAP4.error) as e:
        _imap_login(server, user, password, source).logout()
    return str(e.value)


def _gsasl(server: MxdServer, mech: str, user: str, password: str,
           *extra: str) -> subprocess.CompletedProcess[str]:
    gsasl = require_tool("gsasl")
    return subprocess.run(
        [gsasl, "--imap", f"--connect=127.0.0.1:{server.ports['imap']}", "--starttls",
         f"--x509-ca-file={server.ca_file}", "--hostname=localhost", "-m", mech,
         "-a", user, "-p", password, *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def _inbox_subjects(server: MxdServer, user: str, password: str) -> list[str]:
    m = _imap_login(server, user, password)
    try:
        typ, data = m.select("INBOX")
        assert typ == "OK"
        if int(data[0]) == 0:
            return []
        typ, msgs = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [part[1].decode().strip() for part in msgs if isinstance(part, tuple)]
    finally:
        m.logout()


def test_swaks_plain_submission_for_ldap_user(mxd: MxdServer) -> None:
    """swaks (STARTTLS + AUTH PLAIN) as an LDAP user, checked by a bind as that user;
    the message to another LDAP user lands in her INBOX, read with IMAP LOGIN."""
    swaks = require_tool("swaks")
    r = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(mxd.ports["submission"]), "--tls",
         "--tls-verify", "--tls-ca-path", str(mxd.ca_file), "--tls-sni", "localhost",
         "--auth", "PLAIN", "--auth-user", "alice@example.test",
         "--auth-password", PASSWORDS["alice"], "--from", "alice@example.test",
         "--to", "carol@example.test", "--header", "Subject: ldap-submit"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout and "250 2.0.0" in r.stdout
    assert "Subject: ldap-submit" in _inbox_subjects(mxd, "carol", PASSWORDS["carol"])
    auth = re.findall(r"^<~  250[- ]AUTH (.*)$", r.stdout, re.M)  # after STARTTLS
    assert auth and "PLAIN" in auth[0] and "CRAM-MD5" not in auth[0]  # no LDAP account has it


def test_inbound_mail_to_alias_lands_in_owner_mailbox(mxd: MxdServer) -> None:
    """Port 25: sales@ (a mailLocalAddress of alice, with a +tag) is delivered to alice's
    INBOX; an address LDAP does not know gets 550 5.1.1."""
    with smtplib.SMTP("127.0.0.1", mxd.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example.net")
        assert s.mail("someone@example.net")[0] == 250
        code, msg = s.rcpt("nobody-here@example.test")
        assert code == 550 and msg.startswith(b"5.1.1")
        assert s.rcpt("Sales+news@example.test")[0] == 250
        assert s.data(b"Subject: to-alias\r\n\r\nfor sales\r\n")[0] == 250
    assert "Subject: to-alias" in _inbox_subjects(mxd, "alice", PASSWORDS["alice"])
    # Any of the account's addresses is a login name (an alias too): the same mailbox.
    assert "Subject: to-alias" in _inbox_subjects(mxd, "Sales@example.test", PASSWORDS["alice"])
    r = mxd.mxd("account", "list")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^alice\talice@example.test sales@example.test info@example.test$",
                     r.stdout, re.M), r.stdout


def test_gsasl_scram_sha256_plus_with_rfc5803_values(mxd: MxdServer) -> None:
    """gsasl SCRAM-SHA-256-PLUS (tls-exporter) and SCRAM-SHA-1-PLUS succeed for carol,
    whose entry has authPassword values; a wrong password fails."""
    for mech in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"):
        r = _gsasl(mxd, mech, "carol", PASSWORDS["carol"])
        assert r.returncode == 0, mech + r.stdout + r.stderr
    assert _gsasl(mxd, "SCRAM-SHA-256-PLUS", "carol", "wrong-pass").returncode != 0


def test_scram_refused_without_authpassword_but_plain_works(mxd: MxdServer) -> None:
    """alice has no SCRAM secrets: gsasl SCRAM-SHA-256-PLUS fails with her right
    password, PLAIN over the same TLS succeeds."""
    r = _gsasl(mxd, "SCRAM-SHA-256-PLUS", "alice", PASSWORDS["alice"])
    assert r.returncode != 0
    assert _gsasl(mxd, "PLAIN", "alice", PASSWORDS["alice"]).returncode == 0
    assert "has no SHA-256 secret" in mxd.log_tail(400)


def test_user_outside_login_group_is_refused(mxd: MxdServer) -> None:
    """dave's password is right but the group filter does not match him: LOGIN fails
    like a wrong password; mail to him is still delivered."""
    assert "AUTHENTICATIONFAILED" in _login_error(mxd, "dave", PASSWORDS["dave"], "127.0.0.3")
    assert "dave is not in the login group" in mxd.log_tail(400)
    with smtplib.SMTP("127.0.0.1", mxd.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example.net")
        s.mail("someone@example.net")
        assert s.rcpt("dave@example.test")[0] == 250


@pytest.mark.parametrize("login", ["*", "*)(uid=*", "alice)(|(uid=*", "al*", "(uid=alice)"])
def test_filter_injection_never_matches_another_user(mxd: MxdServer, lab: SlapdLab,
                                                     login: str) -> None:
    """Login names with filter syntax, given alice's password, never log in; slapd receives
    them escaped (RFC 4515) and its search finds no entry."""
    before = len(lab.log_text())
    quoted = '"' + login.replace("\\", "\\\\").replace('"', '\\"') + '"'  # imaplib sends atoms as is
    try:
        m = _imap_login(mxd, quoted, PASSWORDS["alice"], "127.0.0.4")
    except imaplib.IMAP4.error:
        pass
    except (UnicodeEncodeError, ValueError):
        return  # the client itself cannot send this name
    else:
        m.logout()
        pytest.fail(f"{login!r} logged in")
    log = lab.log_text()[before:]
    searches = re.findall(r'conn=(\d+) op=(\d+) SRCH base="ou=people[^"]*".*filter="([^"]*)"', log)
    assert searches, log
    for conn, op, flt in searches:
        assert "*" not in flt, flt  # no wildcard reached slapd
        assert re.search(rf"conn={conn} op={op} SEARCH RESULT .*nentries=0", log), flt
    assert 'BIND dn="uid=alice' not in log


def test_nul_in_login_name_is_refused_before_ldap(mxd: MxdServer, lab: SlapdLab) -> None:
    """AUTH LOGIN with a NUL in the user name (base64 can carry it) is refused as
    malformed (SASLprep, RFC 4013 §2.3) without any search reaching slapd."""
    before = len(lab.log_text())
    ctx = ssl.create_default_context(cafile=str(mxd.ca_file))
    with smtplib.SMTP("127.0.0.1", mxd.ports["submission"], timeout=30,
                      source_address=("127.0.0.6", 0)) as s:
        s.starttls(context=ctx)
        s.ehlo("client.example.net")
        code, msg = s.docmd("AUTH", "LOGIN " + base64.b64encode(b"alice\x00*").decode())
        if code == 334:  # the name is checked with the password
            code, msg = s.docmd(base64.b64encode(PASSWORDS["alice"].encode()).decode())
        assert code == 535, msg
    assert "SRCH" not in lab.log_text()[before:]


def test_slapd_down_gives_451_and_temporary_login_failure_then_recovers(
        mxd: MxdServer, lab: SlapdLab) -> None:
    """slapd stopped: RCPT to an address not cached gets 451 4.4.3 and LOGIN fails with
    [UNAVAILABLE]; slapd restarted on the same ports: both work, mxd not restarted."""
    lab.stop()
    try:
        with smtplib.SMTP("127.0.0.1", mxd.ports["smtp"], timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("someone@example.net")
            code, msg = s.rcpt("info@example.test")
            assert (code, msg[:5]) == (451, b"4.4.3"), (code, msg)
        err = _login_error(mxd, "carol", PASSWORDS["carol"], "127.0.0.5")
        assert "UNAVAILABLE" in err, err
        ctx = ssl.create_default_context(cafile=str(mxd.ca_file))
        with smtplib.SMTP("127.0.0.1", mxd.ports["submission"], timeout=30,
                          source_address=("127.0.0.5", 0)) as sub:
            sub.starttls(context=ctx)
            sub.ehlo("client.example.net")
            code, msg = sub.docmd("AUTH", "PLAIN " + base64.b64encode(
                b"\0carol\0" + PASSWORDS["carol"].encode()).decode())
            assert (code, msg[:5]) == (454, b"4.7.0"), (code, msg)  # RFC 4954 temporary
    finally:
        lab.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", mxd.ports["smtp"], timeout=30) as s:
                s.ehlo("client.example.net")
                s.mail("someone@example.net")
                code, msg = s.rcpt("info@example.test")
            if code == 250 or time.monotonic() > deadline:
                break
        except smtplib.SMTPException:
            pass
        time.sleep(0.2)
    assert code == 250, msg
    _imap_login(mxd, "carol", PASSWORDS["carol"], "127.0.0.5").logout()


def test_orphans_and_config_check(mxd: MxdServer, lab: SlapdLab) -> None:
    """`mxd config check --ldap-test` shows what a login finds; `account list --orphans`
    lists store accounts that LDAP no longer has; password commands are refused."""
    r = mxd.mxd("config", "check", "--ldap-test", "carol@example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "uid=carol,ou=people" in r.stdout and "SCRAM secrets SHA-1, SHA-256" in r.stdout
    r = mxd.mxd("account", "show", "carol")
    assert r.returncode == 0, r.stderr
    assert "ldap uid=carol,ou=people" in r.stdout and "scram SHA-1, SHA-256" in r.stdout
    r = mxd.mxd("config", "check", "--ldap-test", "*")
    assert r.returncode == 1 and "no entry" in r.stdout
    r = mxd.mxd("account", "passwd", "alice", "--password-stdin", stdin="new-password-1\n")
    assert r.returncode == 1 and "LDAP" in r.stderr
    ldapdelete = require_tool("ldapdelete")
    subprocess.run([ldapdelete, "-H", f"ldap://127.0.0.1:{lab.ldap_port}", "-x", "-D",
                    "cn=admin,dc=example,dc=test", "-w", "admin-secret",
                    "uid=dave,ou=people,dc=example,dc=test"], check=True, timeout=30,
                   capture_output=True)
    r = mxd.mxd("account", "list", "--orphans")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["dave"], r.stdout
    _ = (SERVICE_DN, SERVICE_PASSWORD)


def test_hung_directory_times_out_to_451(mxd: MxdServer, lab: SlapdLab) -> None:
    """slapd frozen (SIGSTOP: connections open, nothing answers): RCPT for an uncached
    address gets 451 4.4.3 once the LDAP timeouts (3 s here) expire, not a hang, and
    works again when slapd resumes."""
    import os
    import signal as sig

    assert lab.proc is not None
    os.kill(lab.proc.pid, sig.SIGSTOP)
    try:
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", mxd.ports["smtp"], timeout=60) as s:
            s.ehlo("client.example.net")
            s.mail("someone@example.net")
            code, msg = s.rcpt("hung-check@example.test")
        elapsed = time.monotonic() - t0
        assert (code, msg[:5]) == (451, b"4.4.3"), (code, msg)
        assert elapsed < 45, elapsed
    finally:
        os.kill(lab.proc.pid, sig.SIGCONT)
    with smtplib.SMTP("127.0.0.1", mxd.ports["smtp"], timeout=60) as s:
        s.ehlo("client.example.net")
        s.mail("someone@example.net")
        assert s.rcpt("carol+after@example.test")[0] == 250
    assert "LDAP" in mxd.log_tail(400)


def test_starttls_directory(tmp_path: Path, tls_files: dict[str, Path], lab: SlapdLab) -> None:
    """The same directory over ldap:// with StartTLS (RFC 4513 §3): IMAP LOGIN works and
    slapd saw a TLS session (STARTTLS) before the binds."""
    server = MxdServer(tmp_path, tls_files, extra_config=lab.mxd_config(starttls=True))
    before = len(lab.log_text())
    server.start()
    try:
        _imap_login(server, "carol@example.test", PASSWORDS["carol"], "127.0.0.7").logout()
    finally:
        server.stop()
    log = lab.log_text()[before:]
    assert "EXT oid=1.3.6.1.4.1.1466.20037" in log  # the StartTLS extended operation
    assert 'BIND dn="uid=carol,ou=people,dc=example,dc=test" mech=SIMPLE' in log
