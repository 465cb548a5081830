"""Message authentication end to end: ``twistd mxd`` on port 25 with the DNSSEC lab.

Zones: ``signed.test`` (DNSSEC-signed) and ``unsigned.test`` publish SPF for 127.0.0.1, a
DKIM key and DMARC p=reject; ``bank.test`` publishes p=reject and ``shop.test``
p=quarantine (both signed). Messages go in with smtplib, come out with imaplib, and the
stored Authentication-Results is read back.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import sign_message
from tests.integration.dnslab import DNSLab, ZoneSpec
from tests.integration.mxdserver import MxdServer, make_server

pytestmark = pytest.mark.integration


def _rr(key: DKIMKey) -> str:
    owner, rdata = key.zone_line().split(". IN ", 1)
    return owner.removesuffix("." + key.domain) + " IN " + rdata


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]
          ) -> Iterator[tuple[MxdServer, dict[str, DKIMKey]]]:
    tmp = tmp_path_factory.mktemp("msgauth")
    keys = {d: generate_key(tmp / "keys", d, "s1", "ed25519")
            for d in ("signed.test", "unsigned.test")}
    zones = {
        d: ZoneSpec(records=['@ TXT "v=spf1 ip4:127.0.0.1 -all"',
                             '_dmarc TXT "v=DMARC1; p=reject"', _rr(keys[d])],
                    signed=(d == "signed.test"))
        for d in keys
    }
    zones["bank.test"] = ZoneSpec(records=['_dmarc TXT "v=DMARC1; p=reject"'])
    zones["shop.test"] = ZoneSpec(records=['_dmarc TXT "v=DMARC1; p=quarantine"'])
    lab = DNSLab(tmp / "lab").start(zones)
    (tmp / "mxd").mkdir()
    server = make_server(tmp / "mxd", tls_files, resolver=lab.resolver_address)
    try:
        server.start()
        yield server, keys
    finally:
        server.stop()
        lab.stop()


def _send(server: MxdServer, mail_from: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.ehlo("client.signed.test")
        s.sendmail(mail_from, [MxdServer.user], message)


def _fetch(server: MxdServer, mailbox: str, subject: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    try:
        m.login(MxdServer.user, MxdServer.password)
        deadline = time.monotonic() + 10
        while True:
            m.select(mailbox)
            typ, data = m.search(None, "SUBJECT", f'"{subject}"')
            if data[0]:
                break
            assert time.monotonic() < deadline, f"{subject} not in {mailbox}"
            time.sleep(0.1)
        typ, msg = m.fetch(data[0].split()[-1], "(BODY.PEEK[HEADER])")
        return msg[0][1]  # type: ignore[index,no-any-return]
    finally:
        m.logout()


def _message(from_addr: str, subject: str) -> bytes:
    return (f"From: <{from_addr}>\r\nTo: <{MxdServer.user}>\r\nSubject: {subject}\r\n"
            f"Date: Sat, 05 Dec 2026 07:00:00 +0000\r\n\r\nhello\r\n").encode()


@pytest.mark.parametrize(("domain", "status"), [("signed.test", "secure"),
                                                ("unsigned.test", "insecure")])
def test_spf_dkim_dmarc_pass_with_dnssec_status(world, domain: str, status: str) -> None:  # type: ignore[no-untyped-def]
    """SPF, DKIM and DMARC pass; the DNSSEC status is secure for the signed zone and
    insecure for the unsigned one."""
    server, keys = world
    subject = f"pass-{domain}"
    msg = sign_message([keys[domain]], _message(f"a@{domain}", subject), int(time.time()))
    _send(server, f"a@{domain}", msg)
    head = _fetch(server, "INBOX", subject).decode()
    ar = head.split("Authentication-Results: mx.example.test;", 1)[1].split("\r\nSubject")[0]
    assert f"spf=pass smtp.mailfrom=a@{domain} (dnssec={status})" in ar, ar
    assert f"dkim=pass header.d={domain} header.s=s1" in ar and f"(dnssec={status})" in ar
    assert f"dmarc=pass header.from={domain} (p=reject dnssec={status})" in ar, ar


def test_spoofed_from_p_reject_refused_with_571(world) -> None:  # type: ignore[no-untyped-def]
    """A From of a p=reject domain without aligned SPF/DKIM is refused at the end of DATA."""
    server, _ = world
    with pytest.raises(smtplib.SMTPDataError) as e:
        _send(server, "a@signed.test", _message("ceo@bank.test", "spoof"))
    assert e.value.smtp_code == 550 and b"5.7.1" in e.value.smtp_error


def test_p_quarantine_lands_in_junk(world) -> None:  # type: ignore[no-untyped-def]
    """A DMARC failure under p=quarantine is delivered to Junk, dmarc=fail recorded."""
    server, _ = world
    _send(server, "a@signed.test", _message("sales@shop.test", "quarantined"))
    head = _fetch(server, "Junk", "quarantined").decode()
    assert "dmarc=fail header.from=shop.test (p=quarantine dnssec=secure)" in head


def test_submission_is_dkim_signed_and_verifies_with_dkimpy(tmp_path: Path,
                                                            tls_files: dict[str, Path]) -> None:
    """With [dkim] selectors for example.test, a message submitted on 587 carries RSA and
    Ed25519 signatures (over the Date/Message-ID mxd added) that dkimpy verifies; a config
    naming a missing key file stops start-up with an error naming it."""
    import dkim as dkimpy

    keydir = tmp_path / "dkim"
    keys = [generate_key(keydir, "example.test", "r1", "rsa"),
            generate_key(keydir, "example.test", "e1", "ed25519")]
    (tmp_path / "bad").mkdir()
    bad = make_server(tmp_path / "bad", tls_files, extra_config=(
        f'[dkim]\nkey_dir = "{keydir}"\nselectors = {{ "example.test" = ["missing"] }}\n'))
    with pytest.raises(RuntimeError, match="missing.pem"):
        bad.start()
    (tmp_path / "good").mkdir()
    server = make_server(tmp_path / "good", tls_files, extra_config=(
        f'[dkim]\nkey_dir = "{keydir}"\nselectors = {{ "example.test" = ["r1", "e1"] }}\n'))
    server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
            s.starttls(context=ctx)
            s.login(server.user, server.password)
            s.sendmail(server.user, [server.user2],
                       f"From: <{server.user}>\r\nTo: <{server.user2}>\r\n"
                       "Subject: signed-submission\r\n\r\nhello\r\n".encode())
        ctx2 = ssl.create_default_context(cafile=str(server.ca_file))
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx2)
        m.login(server.user2, server.password2)
        deadline = time.monotonic() + 10
        while True:
            m.select("INBOX")
            _, data = m.search(None, "SUBJECT", '"signed-submission"')
            if data[0] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        _, msg = m.fetch(data[0].split()[-1], "(BODY.PEEK[])")
        m.logout()
        raw: bytes = msg[0][1]  # type: ignore[index]
    finally:
        server.stop()
    # The stored copy starts with our Received; DKIM covers what follows it.
    signed = raw.split(b"\r\n", 1)[1]
    while signed[:1] in (b" ", b"\t"):
        signed = signed.split(b"\r\n", 1)[1]
    assert signed.count(b"DKIM-Signature:") == 2
    records = {k.dns_name + ".": k.txt.encode() for k in keys}
    d = dkimpy.DKIM(signed)
    for i in range(2):
        assert d.verify(idx=i, dnsfunc=lambda name, timeout=5: records[name.decode()]), i


def test_incoming_dmarc_report_listed_by_cli_and_admin_api(tmp_path: Path,
                                                           tls_files: dict[str, Path]) -> None:
    """A gzip report mailed to the configured address is delivered, stored, and listed by
    `mxd dmarc reports` and GET /api/dmarc/reports."""
    import gzip
    import json
    import urllib.request

    from tests.msgauth.test_dmarcreport import _mail, _xml

    (tmp_path / "m").mkdir()
    server = make_server(tmp_path / "m", tls_files, extra_config=(
        f'[msgauth]\ndmarc_report_addresses = ["{MxdServer.user}"]\n'))
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("noreply@reporter.example", [MxdServer.user],
                       _mail(gzip.compress(_xml("e2e-1"))))
        deadline = time.monotonic() + 10
        while True:
            out = server.mxd("dmarc", "reports", "--json")
            if out.returncode == 0 and json.loads(out.stdout):
                break
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.1)
        assert json.loads(out.stdout)[0]["report_id"] == "e2e-1"
        url = f"http://127.0.0.1:{server.ports['admin']}/api/dmarc/reports"
        req = urllib.request.Request(url, headers=server.admin_headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            listed = json.loads(r.read())
        assert [x["report_id"] for x in listed] == ["e2e-1"] and listed[0]["messages"] == 4
    finally:
        server.stop()
