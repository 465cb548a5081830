"""ARC sealing of forwarded mail (RFC 8617 §5.1): the SMTP server forwards alias@ to
another domain, the inbound checker adds an ARC set sealed with the forwarding domain's
RSA key; the queued copy's chain verifies with mxd's validator and with dkimpy's
independent ``arc_verify``."""

from __future__ import annotations

import time

import pytest
from twisted.internet import task

from mxd.dns.testing import FakeResolver
from mxd.forwarding import Forwarder, ForwardRule
from mxd.msgauth import arc
from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import sign_message
from mxd.msgauth.inbound import InboundChecker, InboundSettings
from mxd.msgauth.signing import KeyRing
from mxd.srs import SRS
from tests.smtp.helpers import Session

NOW = time.time()
MSG = (b"From: A <a@b.example>\r\nTo: alias@example.test\r\nSubject: forward me\r\n"
       b"Date: Sat, 05 Dec 2026 07:00:00 +0000\r\nMessage-ID: <f1@b.example>\r\n\r\n"
       b"hello\r\nsecond line  with  spaces\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DKIMKey]:
    d = tmp_path_factory.mktemp("k")
    return {"sender": generate_key(d, "b.example", "s1", "ed25519"),
            "ours": generate_key(d, "example.test", "arc1", "rsa"),
            "ours_ed": generate_key(d, "example.test", "e1", "ed25519"),
            "hop": generate_key(d, "hop.example", "h1", "rsa")}


def _resolver(keys: dict[str, DKIMKey]) -> FakeResolver:
    f = FakeResolver(default_authentic=True)
    f.add("7.2.0.192.in-addr.arpa", "PTR", ["mail.b.example."])
    f.add("mail.b.example", "A", ["192.0.2.7"])
    f.add("b.example", "TXT", [b"v=spf1 ip4:192.0.2.7 -all"])
    f.add("_dmarc.b.example", "TXT", [b"v=DMARC1; p=reject"])
    for k in keys.values():
        f.add(k.dns_name, "TXT", [k.txt.encode()])
    return f


def _forward(keys: dict[str, DKIMKey], message: bytes, ring: list[DKIMKey]) -> bytes:
    clock = task.Clock()
    clock.advance(NOW)
    checker = InboundChecker(_resolver(keys), clock, InboundSettings("mx.example.test"),
                             sealer=KeyRing({"example.test": ring}))
    fwd = Forwarder([ForwardRule("alias@example.test", ("someone@elsewhere.example",))],
                    SRS(b"k"), clock)
    s = Session(checker=checker, forwarder=fwd)
    s.ehlo("mail.b.example")
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alias@example.test>\r\nDATA\r\n")
    s.send(message.replace(b"\r\n.", b"\r\n..").decode() + ".\r\n")
    assert s.codes()[-1] == 250
    ((body, out),) = s.store.queued
    assert out.mail_from.startswith("SRS0=")
    return body


def _dnsfunc(keys: dict[str, DKIMKey]):  # type: ignore[no-untyped-def]
    table = {k.dns_name.encode() + b".": k.txt.encode() for k in keys.values()}
    table.update({k.dns_name.encode(): k.txt.encode() for k in keys.values()})
    return lambda name, timeout=5: table.get(name, b"")


def test_forwarded_copy_carries_a_verifiable_arc_set(keys: dict[str, DKIMKey]) -> None:
    import dkim as dkimpy

    body = _forward(keys, sign_message([keys["sender"]], MSG, int(NOW)), [keys["ours_ed"],
                                                                          keys["ours"]])
    head = body.split(b"\r\n\r\n", 1)[0]
    assert b"ARC-Seal: a=rsa-sha256;" in head and b"cv=none; d=example.test; i=1;" in head
    assert b"ARC-Authentication-Results: i=1; mx.example.test;" in head
    aar = head.split(b"ARC-Authentication-Results: ", 1)[1]
    assert b"dkim=pass header.d=b.example" in aar and b"spf=pass" in aar
    # mxd's own validator (RFC 8617 §5.2) over the queued copy.
    outcome = FakeResolverRun(keys).validate(body)
    assert outcome.result is arc.ARCResult.PASS and outcome.instances == 1
    # dkimpy, an independent implementation.
    cv, _results, reason = dkimpy.arc_verify(body, dnsfunc=_dnsfunc(keys))
    assert cv == dkimpy.CV_Pass, reason
    # Changed in transit after us: the chain breaks.
    cv, _results, _ = dkimpy.arc_verify(body.replace(b"hello", b"jello"),
                                        dnsfunc=_dnsfunc(keys))
    assert cv == dkimpy.CV_Fail


def test_existing_chain_is_continued_with_cv_pass(keys: dict[str, DKIMKey]) -> None:
    """A message that arrives sealed by an earlier hop gets i=2 with cv=pass."""
    import dkim as dkimpy

    from mxd.msgauth.dkim import body_hash
    from mxd.msgauth.headers import split_fields

    idx = MSG.find(b"\r\n\r\n")
    made = arc.seal(keys["hop"], split_fields(MSG[: idx + 2]), body_hash(MSG[idx + 4:], True),
                    authserv_id="hop.example", auth_results="spf=pass smtp.mailfrom=a@b.example",
                    cv=arc.ARCResult.NONE, signed_headers=("from", "to", "subject", "date"),
                    now=int(NOW))
    sealed = "".join(h + "\r\n" for h in reversed(made)).encode() + MSG
    body = _forward(keys, sealed, [keys["ours"]])
    assert b"cv=pass; d=example.test; i=2;" in body
    cv, _results, reason = dkimpy.arc_verify(body, dnsfunc=_dnsfunc(keys))
    assert cv == dkimpy.CV_Pass, reason


def test_ed25519_only_domain_forwards_without_a_seal(keys: dict[str, DKIMKey]) -> None:
    """RFC 8617 defines rsa-sha256 only: no RSA key, no ARC set (the copy still goes)."""
    body = _forward(keys, MSG, [keys["ours_ed"]])
    assert b"ARC-Seal" not in body and b"Authentication-Results: mx.example.test" in body


def test_mail_not_forwarded_is_not_sealed(keys: dict[str, DKIMKey]) -> None:
    clock = task.Clock()
    clock.advance(NOW)
    checker = InboundChecker(_resolver(keys), clock, InboundSettings("mx.example.test"),
                             sealer=KeyRing({"example.test": [keys["ours"]]}))
    s = Session(checker=checker)
    s.ehlo("mail.b.example")
    s.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           + MSG.decode() + ".\r\n")
    assert s.codes()[-1] == 250
    assert b"ARC-Seal" not in s.store.delivered[0].body


class FakeResolverRun:
    """Runs mxd's ARC validator synchronously over FakeResolver answers."""

    def __init__(self, keys: dict[str, DKIMKey]) -> None:
        self.resolver = _resolver(keys)

    def validate(self, message: bytes) -> arc.ARCOutcome:
        from twisted.internet.defer import Deferred

        box: list[arc.ARCOutcome] = []
        Deferred.fromCoroutine(arc.validate_message(self.resolver, message)).addCallback(
            box.append)
        return box[0]
