"""DMARC (mxd.msgauth.dmarc): records, organizational domains, alignment, policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.dns.testing import FakeResolver
from mxd.msgauth.dkim import DKIMResult, Result
from mxd.msgauth.dmarc import (
    DMARCResult,
    DMARCSyntaxError,
    Found,
    Policy,
    aligned,
    evaluate,
    lookup,
    organizational_domain,
    parse_record,
)
from mxd.msgauth.spf import SPFOutcome, SPFResult


@pytest.mark.parametrize(("domain", "org"), [
    ("example.com", "example.com"),
    ("mail.example.com", "example.com"),
    ("a.b.example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),
])
def test_organizational_domain(domain: str, org: str) -> None:
    """RFC 7489 §3.2 with the Public Suffix List."""
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(("a", "b", "mode", "ok"), [
    ("example.com", "example.com", "s", True),
    ("mail.example.com", "example.com", "s", False),
    ("mail.example.com", "example.com", "r", True),
    ("example.co.uk", "other.co.uk", "r", False),
])
def test_alignment(a: str, b: str, mode: str, ok: bool) -> None:
    """§3.1.1/§3.1.2: strict and relaxed identifier alignment."""
    assert aligned(a, b, mode) is ok


@pytest.mark.parametrize(("txt", "policy", "pct", "sp"), [
    ("v=DMARC1; p=reject", Policy.REJECT, 100, None),
    ("v=DMARC1;p=quarantine;pct=20;sp=none", Policy.QUARANTINE, 20, Policy.NONE),
    ("v=DMARC1; p=bogus; rua=mailto:d@example.com", Policy.NONE, 100, None),
    ("v=DMARC1; p=reject; pct=200", Policy.REJECT, 100, None),
])
def test_parse_record(txt: str, policy: Policy, pct: int, sp: Policy | None) -> None:
    """§6.3: p, pct, sp; an invalid p= with rua= is p=none (§6.6.3)."""
    r = parse_record(txt)
    assert (r.policy, r.pct, r.subdomain_policy) == (policy, pct, sp)


@pytest.mark.parametrize("txt", ["v=DMARC1; p=bogus", "p=reject; v=DMARC1", "v=spf1 -all"])
def test_bad_records(txt: str) -> None:
    with pytest.raises(DMARCSyntaxError):
        parse_record(txt)


@given(st.text(max_size=200))
def test_parser_total(txt: str) -> None:
    """Any TXT gives a record or DMARCSyntaxError."""
    try:
        parse_record(txt)
    except DMARCSyntaxError:
        pass


def _spf(result: SPFResult, domain: str, authentic: bool = True) -> SPFOutcome:
    return SPFOutcome(result, domain, "mailfrom", authentic=authentic)


def _dkim(result: Result, domain: str) -> DKIMResult:
    return DKIMResult(result, domain, "s", authentic=True)


REJECT = Found(parse_record("v=DMARC1; p=reject; sp=quarantine"), "example.com", True)


@pytest.mark.parametrize(("from_domain", "spf", "dkim", "result", "disposition"), [
    ("example.com", _spf(SPFResult.PASS, "example.com"), [], DMARCResult.PASS, Policy.NONE),
    ("example.com", _spf(SPFResult.PASS, "bounce.example.com"), [], DMARCResult.PASS, Policy.NONE),
    ("example.com", _spf(SPFResult.PASS, "evil.test"), [], DMARCResult.FAIL, Policy.REJECT),
    ("example.com", None, [_dkim(Result.PASS, "example.com")], DMARCResult.PASS, Policy.NONE),
    ("example.com", None, [_dkim(Result.PASS, "evil.test")], DMARCResult.FAIL, Policy.REJECT),
    ("example.com", None, [_dkim(Result.FAIL, "example.com")], DMARCResult.FAIL, Policy.REJECT),
    ("sub.example.com", None, [], DMARCResult.FAIL, Policy.QUARANTINE),  # sp=
])
def test_evaluate(from_domain: str, spf: SPFOutcome | None, dkim: list[DKIMResult],
                  result: DMARCResult, disposition: Policy) -> None:
    """§6.6.2: an aligned SPF or DKIM pass is a DMARC pass; else the policy applies."""
    out = evaluate(from_domain, REJECT, spf, dkim, lambda: 0.0)
    assert out.result is result and out.disposition is disposition


def test_pct_sampling_downgrades() -> None:
    """§6.6.4: outside the pct sample, reject becomes quarantine."""
    found = Found(parse_record("v=DMARC1; p=reject; pct=10"), "example.com", True)
    assert evaluate("example.com", found, None, [], lambda: 0.05).disposition is Policy.REJECT
    assert evaluate("example.com", found, None, [], lambda: 0.5).disposition is Policy.QUARANTINE


def test_lookup_falls_back_to_organizational_domain() -> None:
    """§6.6.3: no record at _dmarc.FROM → the organizational domain's, with its status."""
    fake = FakeResolver()
    fake.add("_dmarc.example.com", "TXT", [b"v=DMARC1; p=reject"], authentic=True)
    found = lookup(fake, "mail.example.com")
    import twisted.internet.defer as d

    res = d.Deferred.fromCoroutine(found).result
    assert res.domain == "example.com" and res.record.policy is Policy.REJECT
    fake.fail("_dmarc.slow.test", "TXT", "timeout")
    res = d.Deferred.fromCoroutine(lookup(fake, "slow.test")).result
    assert res.error is DMARCResult.TEMPERROR
    fake.add("_dmarc.two.test", "TXT", [b"v=DMARC1; p=reject", b"v=DMARC1; p=none"])
    res = d.Deferred.fromCoroutine(lookup(fake, "two.test")).result
    assert res.record is None  # several records: no policy


def test_np_applies_to_nonexistent_subdomains() -> None:
    """RFC 9091: np= applies when the From domain has NXDOMAIN for A, AAAA and MX; an
    existing subdomain gets sp=."""
    import twisted.internet.defer as d

    fake = FakeResolver()
    fake.add("_dmarc.example.com", "TXT", [b"v=DMARC1; p=none; sp=quarantine; np=reject"])
    fake.add("real.example.com", "A", ["192.0.2.1"])
    gone = d.Deferred.fromCoroutine(lookup(fake, "ghost.example.com")).result
    real = d.Deferred.fromCoroutine(lookup(fake, "real.example.com")).result
    assert gone.nonexistent and not real.nonexistent
    assert evaluate("ghost.example.com", gone, None, [], lambda: 0.0).disposition is Policy.REJECT
    assert evaluate("real.example.com", real, None, [], lambda: 0.0).disposition is Policy.QUARANTINE
