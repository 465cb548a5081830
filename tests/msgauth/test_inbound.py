"""The port-25 checks end to end in the SMTP server (FakeResolver, no sockets):
Authentication-Results with DNSSEC status, Received with the iprev name, DMARC verdicts,
forged Authentication-Results removed."""

from __future__ import annotations

import time

import pytest
from twisted.internet import task

from mxd.dns.testing import FakeResolver
from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import sign_message
from mxd.msgauth.inbound import InboundChecker, InboundSettings
from tests.smtp.helpers import Session

NOW = time.time()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DKIMKey:
    return generate_key(tmp_path_factory.mktemp("k"), "b.example", "s1", "ed25519")


def _resolver(key: DKIMKey, authentic: bool = True) -> FakeResolver:
    f = FakeResolver(default_authentic=authentic)
    f.add("7.2.0.192.in-addr.arpa", "PTR", ["mail.b.example."], authentic=authentic)
    f.add("mail.b.example", "A", ["192.0.2.7"], authentic=authentic)
    f.add("b.example", "TXT", [b"v=spf1 ip4:192.0.2.7 -all"], authentic=authentic)
    f.add("_dmarc.b.example", "TXT", [b"v=DMARC1; p=reject"], authentic=authentic)
    f.add(key.dns_name, "TXT", [key.txt.encode()], authentic=authentic)
    f.add("_dmarc.bank.example", "TXT", [b"v=DMARC1; p=reject"], authentic=authentic)
    f.add("_dmarc.shop.example", "TXT", [b"v=DMARC1; p=quarantine"], authentic=authentic)
    return f


def _session(resolver: FakeResolver, dmarc_reject: str = "reject") -> Session:
    clock = task.Clock()
    clock.advance(NOW)
    checker = InboundChecker(resolver, clock, InboundSettings("mx.example.test", dmarc_reject))
    s = Session(checker=checker)
    s.ehlo("mail.b.example")
    return s


def _send(s: Session, message: bytes, mail_from: str = "a@b.example") -> int:
    s.send(f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    s.send(message.replace(b"\r\n.", b"\r\n..").decode() + ".\r\n")
    s.last = s.replies()
    return int(s.last[-1][:3])


MSG = (b"From: A <a@b.example>\r\nTo: alice@example.test\r\nSubject: hi\r\n"
       b"Date: Sat, 05 Dec 2026 07:00:00 +0000\r\n\r\nhello\r\n")


@pytest.mark.parametrize(("authentic", "status"), [(True, b"secure"), (False, b"insecure")])
def test_pass_with_dnssec_status(key: DKIMKey, authentic: bool, status: bytes) -> None:
    """SPF, DKIM and DMARC pass; each method names the DNSSEC status of its lookups, and
    Received gains the forward-confirmed reverse name."""
    s = _session(_resolver(key, authentic))
    assert _send(s, sign_message([key], MSG, int(NOW))) == 250
    body = s.store.delivered[0].body
    head = body.split(b"\r\n\r\n", 1)[0]
    assert b"from mail.b.example (mail.b.example [192.0.2.7])" in head
    ar = head.split(b"Authentication-Results: ", 1)[1]
    assert ar.startswith(b"mx.example.test;")
    assert b"iprev=pass policy.iprev=192.0.2.7 (mail.b.example; dnssec=" + status in ar
    assert b"spf=pass smtp.mailfrom=a@b.example (dnssec=" + status + b")" in ar
    assert b"dkim=pass header.d=b.example header.s=s1 header.a=ed25519-sha256" in ar
    assert b"dmarc=pass header.from=b.example (p=reject dnssec=" + status + b")" in ar
    assert [t.mailbox for t in s.store.delivered[0].targets] == ["INBOX"]


def test_spoofed_from_with_p_reject_is_refused(key: DKIMKey) -> None:
    """RFC 7489 §6.6.4/§10.3: an unaligned From whose domain says p=reject gets 550 5.7.1
    at the end of DATA and nothing is stored."""
    s = _session(_resolver(key))
    spoof = MSG.replace(b"From: A <a@b.example>", b"From: CEO <ceo@bank.example>")
    assert _send(s, spoof) == 550
    assert s.last[-1].startswith("550 5.7.1 Rejected by DMARC policy of bank.example")
    assert s.store.delivered == []


def test_p_reject_can_go_to_junk_instead(key: DKIMKey) -> None:
    """dmarc_reject = "junk" delivers such a message to Junk with dmarc=fail recorded."""
    s = _session(_resolver(key), dmarc_reject="junk")
    spoof = MSG.replace(b"From: A <a@b.example>", b"From: CEO <ceo@bank.example>")
    assert _send(s, spoof) == 250
    d = s.store.delivered[0]
    assert [t.mailbox for t in d.targets] == ["Junk"] and b"dmarc=fail" in d.body


def test_quarantine_goes_to_junk(key: DKIMKey) -> None:
    """p=quarantine → the Junk mailbox."""
    s = _session(_resolver(key))
    assert _send(s, MSG.replace(b"a@b.example>", b"x@shop.example>")) == 250
    assert [t.mailbox for t in s.store.delivered[0].targets] == ["Junk"]


def test_forged_authentication_results_removed(key: DKIMKey) -> None:
    """RFC 8601 §5: fields claiming our authserv-id are removed; others are kept; the
    DKIM signature over the remaining fields still verifies."""
    forged = (b"Authentication-Results: MX.example.test; dkim=pass header.d=bank.example\r\n"
              b"Authentication-Results: other.example; spf=pass\r\n")
    s = _session(_resolver(key))
    assert _send(s, forged + sign_message([key], MSG, int(NOW))) == 250
    body = s.store.delivered[0].body
    assert b"dkim=pass header.d=bank.example" not in body
    assert b"Authentication-Results: other.example; spf=pass" in body
    assert body.count(b"Authentication-Results: mx.example.test;") == 1
    assert b"dkim=pass header.d=b.example" in body


def test_dns_failure_is_temperror_and_mail_is_kept(key: DKIMKey) -> None:
    """DNS timeouts give temperror results, never a lost message."""
    f = _resolver(key)
    for name in ("7.2.0.192.in-addr.arpa", "b.example", "_dmarc.b.example", key.dns_name):
        f.fail(name, None, "timeout")
    s = _session(f)
    assert _send(s, sign_message([key], MSG, int(NOW))) == 250
    body = s.store.delivered[0].body
    for method in (b"iprev", b"spf", b"dkim", b"dmarc"):
        assert method + b"=temperror" in body


def test_arc_chain_reported(key: DKIMKey) -> None:
    """A message sealed by a forwarder (here with mxd's own sealer) shows arc=pass with the
    chain length and DNSSEC status; a chain broken in transit shows arc=fail."""
    from mxd.msgauth.arc import ARCResult, seal
    from mxd.msgauth.dkim import body_hash
    from mxd.msgauth.headers import split_fields

    idx = MSG.find(b"\r\n\r\n")
    fields = split_fields(MSG[: idx + 2])
    made = seal(key, fields, body_hash(MSG[idx + 4:], True), authserv_id="fwd.b.example",
                auth_results="spf=pass smtp.mailfrom=a@b.example", cv=ARCResult.NONE,
                signed_headers=("from", "to", "subject", "date"), now=int(NOW))
    sealed = "".join(h + "\r\n" for h in reversed(made)).encode() + MSG
    s = _session(_resolver(key))
    assert _send(s, sealed) == 250
    assert b"arc=pass (i=1; dnssec=secure)" in s.store.delivered[0].body
    s = _session(_resolver(key))
    assert _send(s, sealed.replace(b"hello", b"jello")) == 250
    assert b"arc=fail reason=" in s.store.delivered[0].body


def test_dmarc_report_mail_is_stored(key: DKIMKey, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mail to a configured report address is delivered and its report parsed and stored."""
    import gzip

    from mxd.msgauth.reportstore import ReportStore
    from tests.msgauth.test_dmarcreport import _mail, _xml

    store = ReportStore(tmp_path_factory.mktemp("reports"))
    clock = task.Clock()
    clock.advance(NOW)
    checker = InboundChecker(_resolver(key), clock, InboundSettings(
        "mx.example.test", report_addresses=frozenset({"alice@example.test"})), reports=store)
    s = Session(checker=checker)
    s.ehlo("mail.b.example")
    assert _send(s, _mail(gzip.compress(_xml("from-b")))) == 250
    assert len(s.store.delivered) == 1
    (report,) = store.reports()
    assert report["report_id"] == "from-b" and report["source"] == "192.0.2.7"
