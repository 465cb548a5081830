"""DKIM verification and signing (mxd.msgauth.dkim, dkimsign), with dkimpy as an oracle."""

from __future__ import annotations

import base64
import time

import dkim as dkimpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.dns.testing import FakeResolver
from mxd.msgauth.dkim import (
    BodyCanonicalizer,
    DKIMSyntaxError,
    Result,
    body_hash,
    canon_header,
    parse_signature,
    verify_message,
)
from mxd.msgauth.dkimkeys import DKIMKey, generate_key
from mxd.msgauth.dkimsign import header_list, sign_message
from mxd.msgauth.headers import split_fields

NOW = int(time.time())  # dkimpy refuses t= in the future
MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Hello\r\n"
       b"Date: Sat, 05 Dec 2026 07:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
       b"Hi Bob,\r\n\r\n  this is  a test.  \r\n\r\n\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DKIMKey]:
    d = tmp_path_factory.mktemp("dkim")
    return {"rsa": generate_key(d, "example.org", "r1", "rsa"),
            "ed25519": generate_key(d, "example.org", "e1", "ed25519"),
            "rsa1024": generate_key(d, "example.org", "small", "rsa", rsa_bits=1024)}


def _resolver(keys: dict[str, DKIMKey], authentic: bool = True) -> FakeResolver:
    fake = FakeResolver()
    for k in keys.values():
        fake.add(k.dns_name, "TXT", [k.txt.encode()], authentic=authentic)
    return fake


def _verify(fake: FakeResolver, msg: bytes) -> list:  # type: ignore[type-arg]
    return verify_message(fake, msg, NOW).result  # FakeResolver fires synchronously


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
def test_own_signature_verifies_with_dnssec_status(keys: dict[str, DKIMKey], alg: str) -> None:
    """A message mxd signs verifies in mxd; the result carries the key record's AD status."""
    signed = sign_message([keys[alg]], MSG, NOW)
    (res,) = _verify(_resolver(keys, authentic=True), signed)
    assert res.result is Result.PASS, res
    assert res.authentic and res.domain == "example.org" and res.selector == keys[alg].selector
    (res,) = _verify(_resolver(keys, authentic=False), signed)
    assert res.result is Result.PASS and not res.authentic


def test_rsa_and_ed25519_together(keys: dict[str, DKIMKey]) -> None:
    """RFC 8463 §3: both signatures on one message; each verifies on its own."""
    signed = sign_message([keys["rsa"], keys["ed25519"]], MSG, NOW)
    results = _verify(_resolver(keys), signed)
    assert [r.result for r in results] == [Result.PASS, Result.PASS]
    assert {r.algorithm for r in results} == {"rsa-sha256", "ed25519-sha256"}


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
def test_dkimpy_verifies_mxd_signatures(keys: dict[str, DKIMKey], alg: str) -> None:
    """dkimpy (independent) verifies what mxd signs."""
    signed = sign_message([keys[alg]], MSG, NOW)
    records = {k.dns_name + ".": k.txt.encode() for k in keys.values()}
    assert dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: records[name.decode()])


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"relaxed", b"relaxed"),
                                   (b"relaxed", b"simple"), (b"simple", b"relaxed")])
def test_dkimpy_signatures_verify_in_mxd(keys: dict[str, DKIMKey], alg: str,
                                         canon: tuple[bytes, bytes]) -> None:
    """Messages dkimpy signs (RSA and Ed25519, every canonicalisation) verify in mxd."""
    k = keys[alg]
    assert k.path is not None
    # dkimpy reads Ed25519 private keys as the base64 of the 32-octet seed.
    private = (base64.b64encode(k.private_key.private_bytes_raw()) if alg == "ed25519"
               else k.path.read_bytes())
    sig = dkimpy.sign(MSG, k.selector.encode(), b"example.org", private,
                      canonicalize=canon, signature_algorithm=(
                          b"ed25519-sha256" if alg == "ed25519" else b"rsa-sha256"),
                      include_headers=[b"from", b"to", b"subject", b"date"])
    (res,) = _verify(_resolver(keys), sig + MSG)
    assert res.result is Result.PASS, res


@pytest.mark.parametrize("tamper", [
    lambda m: m.replace(b"this is", b"this was"),
    lambda m: m.replace(b"Subject: Hello", b"Subject: Hellp"),
    lambda m: m.replace(b"From: Alice", b"From: Mallory"),
    lambda m: m.replace(b"\r\n\r\nHi", b"\r\nFrom: evil@example.com\r\n\r\nHi"),  # oversigned
])
def test_tampered_fails(keys: dict[str, DKIMKey], tamper) -> None:  # type: ignore[no-untyped-def]
    """A changed body or signed header, or an added From, fails verification."""
    signed = sign_message([keys["ed25519"]], MSG, NOW)
    (res,) = _verify(_resolver(keys), tamper(signed))
    assert res.result is Result.FAIL


def test_rsa_sha1_and_small_keys_fail(keys: dict[str, DKIMKey]) -> None:
    """RFC 8301: rsa-sha1 signatures and RSA keys under 1024 bits are never a pass; a
    1024-bit key is still accepted."""
    k = keys["rsa"]
    assert k.path is not None
    sig = dkimpy.sign(MSG, b"r1", b"example.org", k.path.read_bytes(),
                      signature_algorithm=b"rsa-sha1", include_headers=[b"from"])
    (res,) = _verify(_resolver(keys), sig + MSG)
    assert res.result is Result.FAIL and "8301" in res.reason
    small = keys["rsa1024"]
    (res,) = _verify(_resolver(keys), sign_message([small], MSG, NOW))
    assert res.result is Result.PASS


def test_l_tag_records_unsigned_content(keys: dict[str, DKIMKey]) -> None:
    """With l=, content after the signed length verifies but is reported as unsigned."""
    k = keys["rsa"]
    assert k.path is not None
    sig = dkimpy.sign(MSG, b"r1", b"example.org", k.path.read_bytes(), length=True,
                      include_headers=[b"from"])
    (res,) = _verify(_resolver(keys), sig + MSG + b"appended by an attacker\r\n")
    assert res.result is Result.PASS and res.unsigned_body > 0 and "l=" in res.reason


@pytest.mark.parametrize(("mutate", "result"), [
    (lambda r: r.fail("e1._domainkey.example.org", "TXT", "timeout"), Result.TEMPERROR),
    (lambda r: r.fail("e1._domainkey.example.org", "TXT", "nxdomain"), Result.PERMERROR),
    (lambda r: r.add("e1._domainkey.example.org", "TXT", [b"v=DKIM1; k=ed25519; p="]),
     Result.PERMERROR),
    (lambda r: r.add("e1._domainkey.example.org", "TXT", [b"v=DKIM1; k=ed25519; p=!!"]),
     Result.PERMERROR),
])
def test_key_problems(keys: dict[str, DKIMKey], mutate, result: Result) -> None:  # type: ignore[no-untyped-def]
    """Timeouts are temperror; missing, revoked or broken keys are permerror."""
    fake = _resolver(keys)
    mutate(fake)
    (res,) = _verify(fake, sign_message([keys["ed25519"]], MSG, NOW))
    assert res.result is result


@pytest.mark.parametrize("value", [
    b" v=1; a=rsa-sha256; d=example.org; s=x; h=to; bh=AAAA; b=AAAA",  # no From in h=
    b" v=1; a=rsa-sha256; d=example.org; s=x; h=from; bh=AAAA",  # no b=
    b" v=2; a=rsa-sha256; d=example.org; s=x; h=from; bh=AAAA; b=AAAA",
    b" v=1; a=rsa-md5; d=example.org; s=x; h=from; bh=AAAA; b=AAAA",
    b" v=1; a=rsa-sha256; d=example.org; s=x; h=from; bh=A!A; b=AAAA",  # broken base64
    b" v=1; a=rsa-sha256; d=example.org; i=@evil.test; s=x; h=from; bh=AAAA; b=AAAA",
    b" v=1; v=1; a=rsa-sha256; d=example.org; s=x; h=from; bh=AAAA; b=AAAA",
])
def test_malformed_signatures_are_permerror(value: bytes) -> None:
    """Malformed DKIM-Signature fields are a permerror each, never an exception."""
    msg = b"DKIM-Signature:" + value + b"\r\nFrom: a@example.org\r\n\r\nbody\r\n"
    (res,) = _verify(FakeResolver(), msg)
    assert res.result is Result.PERMERROR


def test_canonicalization_examples() -> None:
    """RFC 6376 §3.4.5 examples."""
    fields = split_fields(b"A: X\r\nB : Y\t\r\n\tZ  \r\n")
    assert [canon_header(f, True) for f in fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert [canon_header(f, False) for f in fields] == [b"A: X\r\n", b"B : Y\t\r\n\tZ  \r\n"]
    body = b" C \r\nD \t E\r\n\r\n\r\n"
    relaxed = BodyCanonicalizer(True)
    assert relaxed.feed(body) + relaxed.finish() == b" C\r\nD E\r\n"
    simple = BodyCanonicalizer(False)
    assert simple.feed(body) + simple.finish() == b" C \r\nD \t E\r\n"


def test_empty_bodies() -> None:
    """RFC 6376 §3.4.3/§3.4.4: empty simple body is CRLF, empty relaxed body is empty."""
    assert body_hash(b"", False) == __import__("hashlib").sha256(b"\r\n").digest()
    assert body_hash(b"", True) == __import__("hashlib").sha256(b"").digest()


@settings(max_examples=200)
@given(st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"xy", b"  \r\n"]), max_size=40),
       st.integers(min_value=1, max_value=7))
def test_streamed_body_hash_equals_one_shot(parts: list[bytes], step: int) -> None:
    """Body hashing in arbitrary chunks (as DATA arrives) equals hashing it at once."""
    body = b"".join(parts) + b"\r\n"  # SMTP message data always ends in CRLF
    for relaxed in (True, False):
        c = BodyCanonicalizer(relaxed)
        streamed = b"".join(c.feed(body[i:i + step]) for i in range(0, len(body), step))
        streamed += c.finish()
        whole = BodyCanonicalizer(relaxed)
        assert streamed == whole.feed(body) + whole.finish()
        # and against dkimpy's canonicalisation
        from dkim.canonicalization import Relaxed, Simple
        ref = (Relaxed if relaxed else Simple).canonicalize_body(body)
        if not relaxed and ref == b"":
            ref = b"\r\n"  # RFC 6376 §3.4.3 (dkimpy leaves the empty body empty)
        assert streamed == ref


def test_header_list_oversigns() -> None:
    """From/Subject/To are listed once more than they occur; unknown fields are not."""
    fields = split_fields(b"From: a@x.org\r\nTo: b@y\r\nSubject: s\r\nX-Foo: 1\r\n")
    h = header_list(fields)
    assert h.count("from") == 2 and h.count("to") == 2 and h.count("subject") == 2
    assert h.count("cc") == 1 and "x-foo" not in h


def test_parse_signature_fields() -> None:
    """Tags are read in the RFC's terms (defaults for c= and i=)."""
    raw = (b"DKIM-Signature: v=1; a=ed25519-sha256; d=Example.ORG; s=sel;\r\n"
           b"\th=from : to; bh=" + base64.b64encode(b"x" * 32) + b"; b=AAAA\r\n")
    sig = parse_signature(split_fields(raw)[0])
    assert (sig.domain, sig.selector, sig.auid) == ("example.org", "sel", "@example.org")
    assert sig.signed_headers == ("from", "to") and sig.header_canon == "simple"
    with pytest.raises(DKIMSyntaxError):
        parse_signature(split_fields(raw.replace(b"from : to", b"to"))[0])


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=200))
def test_signature_parser_total(value: str) -> None:
    """Any DKIM-Signature value parses or raises DKIMSyntaxError, nothing else."""
    field = split_fields(b"DKIM-Signature: " + value.encode() + b"\r\n")[0]
    try:
        parse_signature(field)
    except DKIMSyntaxError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_key_parser_total(txt: bytes) -> None:
    """Any key record parses or raises DKIMSyntaxError."""
    from mxd.msgauth.dkim import parse_key

    try:
        parse_key(txt)
    except DKIMSyntaxError:
        pass
