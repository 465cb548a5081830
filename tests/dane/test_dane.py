"""DANE for SMTP (mxd.dane): TLSA usability, chain verification, the per-host decision."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from mxd import dane
from mxd.dane import TLSA, Decision, TLSALookup, TLSAOutcome
from mxd.dns.results import ExtendedError
from mxd.dns.testing import FakeResolver
from mxd.tlsrpt.results import ResultType
from tests.dane.certs import NOW, der, issued_by, mx_chain, self_signed

D256 = b"\x01" * 32
D512 = b"\x02" * 64


# -- usability (RFC 7672 §3.1, RFC 7671 §4) --------------------------------------------------

@pytest.mark.parametrize("record,usable", [
    (TLSA(3, 1, 1, D256), True),
    (TLSA(3, 0, 1, D256), True),
    (TLSA(3, 1, 2, D512), True),
    (TLSA(3, 1, 0, b"\x30\x00"), True),
    (TLSA(2, 0, 1, D256), True),
    (TLSA(2, 1, 2, D512), True),
    (TLSA(0, 0, 1, D256), False),  # PKIX-TA unusable for SMTP (RFC 7672 §3.1.3)
    (TLSA(1, 1, 1, D256), False),  # PKIX-EE unusable
    (TLSA(4, 1, 1, D256), False),  # unknown usage
    (TLSA(3, 2, 1, D256), False),  # unknown selector
    (TLSA(3, 1, 3, D256), False),  # unknown matching type
    (TLSA(3, 1, 1, b"\x01" * 31), False),  # SHA-256 of the wrong length
    (TLSA(3, 1, 2, D256), False),  # SHA-512 of the wrong length
    (TLSA(3, 1, 0, b""), False),  # empty full data
])
def test_usability(record: TLSA, usable: bool) -> None:
    """Only DANE-TA/DANE-EE with known selector and matching type (and right sizes) are usable."""
    assert dane.is_usable(record) is usable


def test_classify_keeps_order() -> None:
    """classify splits an RRset into usable and unusable records, each in original order."""
    rrset = [TLSA(1, 1, 1, D256), TLSA(3, 1, 1, D256), TLSA(0, 0, 1, D256), TLSA(2, 0, 2, D512)]
    usable, unusable = dane.classify(rrset)
    assert usable == (rrset[1], rrset[3])
    assert unusable == (rrset[0], rrset[2])


def test_tlsa_text_has_no_spaces_in_data() -> None:
    """The RFC 8460 §4.4 policy string: four fields, data in one hex word."""
    assert dane.tlsa_text(TLSA(3, 1, 1, b"\xab\xcd")) == "3 1 1 ABCD"


# -- DANE-EE (RFC 7672 §3.1.1) --------------------------------------------------------------

@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_leaf_every_selector_and_matching_type(selector: int, mtype: int) -> None:
    """DANE-EE matches the leaf with any selector (0/1) and matching type (0/1/2)."""
    chain = mx_chain("mx.example.test")
    record = dane.tlsa_for_certificate(chain.certs[0], 3, selector, mtype)
    result = dane.verify_chain([record], chain.der, ["mx.example.test"], NOW)
    assert result.verified and result.matched == record and result.result_type is None


def test_dane_ee_ignores_names_and_expiry() -> None:
    """DANE-EE needs no name match and accepts an expired leaf (RFC 7672 §3.1.1)."""
    cert, _key = self_signed("something.else", not_after=NOW - datetime.timedelta(days=5))
    record = dane.tlsa_for_certificate(cert, 3, 1, 1)
    result = dane.verify_chain([record], [der(cert)], ["mx.example.test"], NOW)
    assert result.verified


def test_dane_ee_mismatch_is_validation_failure() -> None:
    """A DANE-EE record for another key does not authenticate the server."""
    chain = mx_chain("mx.example.test")
    other, _ = self_signed("other")
    record = dane.tlsa_for_certificate(other, 3, 1, 1)
    result = dane.verify_chain([record], chain.der, ["mx.example.test"], NOW)
    assert not result.verified
    assert result.result_type is ResultType.VALIDATION_FAILURE


def test_dane_ee_matches_leaf_only() -> None:
    """A DANE-EE record for the intermediate does not match (EE is the leaf, RFC 7671 §5.1)."""
    chain = mx_chain("mx.example.test")
    record = dane.tlsa_for_certificate(chain.certs[1], 3, 0, 1)
    assert not dane.verify_chain([record], chain.der, ["mx.example.test"], NOW).verified


def test_one_matching_record_among_several_suffices() -> None:
    """Any usable record matching authenticates; unusable ones are skipped."""
    chain = mx_chain("mx.example.test")
    good = dane.tlsa_for_certificate(chain.certs[0], 3, 1, 1)
    rrset = [TLSA(1, 1, 1, good.data), TLSA(3, 1, 1, D256), good]
    assert dane.verify_chain(rrset, chain.der, [], NOW).matched == good


def test_only_unusable_records_is_tlsa_invalid() -> None:
    """An RRset without usable records cannot authenticate: tlsa-invalid."""
    chain = mx_chain("mx.example.test")
    pkix = dane.tlsa_for_certificate(chain.certs[0], 1, 1, 1)
    result = dane.verify_chain([pkix], chain.der, ["mx.example.test"], NOW)
    assert not result.verified and result.result_type is ResultType.TLSA_INVALID


def test_empty_and_garbage_chains_fail_cleanly() -> None:
    """No certificate or an unreadable one is a validation failure, not an exception."""
    record = TLSA(3, 1, 1, D256)
    assert dane.verify_chain([record], [], [], NOW).result_type is ResultType.VALIDATION_FAILURE
    bad = dane.verify_chain([record], [b"not a certificate"], [], NOW)
    assert not bad.verified and bad.result_type is ResultType.VALIDATION_FAILURE


# -- DANE-TA (RFC 7672 §3.1.2, §3.2) --------------------------------------------------------

def _ta(chain: Any, depth: int, selector: int = 0, mtype: int = 1) -> TLSA:
    return dane.tlsa_for_certificate(chain.certs[depth], 2, selector, mtype)


@pytest.mark.parametrize("names,leaf_names,ok,result_type", [
    (["mx.example.test"], ("mx.example.test",), True, None),
    (["mx.example.test", "example.test"], ("example.test",), True, None),  # 2nd reference id
    (["mx.example.test"], ("*.example.test",), True, None),  # wildcard, one label
    (["a.mx.example.test"], ("*.example.test",), False, ResultType.CERTIFICATE_HOST_MISMATCH),
    (["mx.example.test"], ("other.example.test",), False, ResultType.CERTIFICATE_HOST_MISMATCH),
])
def test_dane_ta_name_checks(names: list[str], leaf_names: tuple[str, ...], ok: bool,
                             result_type: ResultType | None) -> None:
    """DANE-TA checks the leaf's DNS-IDs against the reference identifiers (RFC 7672 §3.2)."""
    chain = mx_chain(*leaf_names)
    result = dane.verify_chain([_ta(chain, 1)], chain.der, names, NOW)
    assert result.verified is ok
    assert result.result_type is result_type


@pytest.mark.parametrize("selector,mtype", [(0, 0), (0, 1), (1, 1), (1, 2), (1, 0)])
def test_dane_ta_matches_intermediate_cert_or_key(selector: int, mtype: int) -> None:
    """DANE-TA matches a chain certificate by certificate or public key, any matching type."""
    chain = mx_chain("mx.example.test")
    result = dane.verify_chain([_ta(chain, 1, selector, mtype)], chain.der,
                               ["mx.example.test"], NOW)
    assert result.verified


def test_dane_ta_root_in_chain() -> None:
    """A trust anchor two levels up (the root, sent in the chain) validates the whole path."""
    chain = mx_chain("mx.example.test")
    full = [*chain.der, der(chain.root)]
    record = dane.tlsa_for_certificate(chain.root, 2, 1, 1)
    assert dane.verify_chain([record], full, ["mx.example.test"], NOW).verified


def test_dane_ta_bare_public_key_of_missing_root() -> None:
    """A ``2 1 0`` record holding the root's key validates a chain that omits the root."""
    chain = mx_chain("mx.example.test")
    spki = chain.root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert dane.verify_chain([TLSA(2, 1, 0, spki)], chain.der, ["mx.example.test"], NOW).verified
    digest_only = dane.tlsa_for_certificate(chain.root, 2, 1, 1)
    assert not dane.verify_chain([digest_only], chain.der, ["mx.example.test"], NOW).verified


def test_dane_ta_expired_leaf() -> None:
    """Under DANE-TA an expired leaf fails with certificate-expired."""
    chain = mx_chain("mx.example.test", not_before=NOW - datetime.timedelta(days=30),
                     not_after=NOW - datetime.timedelta(days=1))
    result = dane.verify_chain([_ta(chain, 1)], chain.der, ["mx.example.test"], NOW)
    assert not result.verified and result.result_type is ResultType.CERTIFICATE_EXPIRED


def test_dane_ta_not_yet_valid_leaf() -> None:
    """Under DANE-TA a leaf valid only in the future fails with certificate-expired."""
    chain = mx_chain("mx.example.test", not_before=NOW + datetime.timedelta(days=1),
                     not_after=NOW + datetime.timedelta(days=30))
    result = dane.verify_chain([_ta(chain, 1)], chain.der, ["mx.example.test"], NOW.timestamp())
    assert result.result_type is ResultType.CERTIFICATE_EXPIRED


def test_dane_ta_broken_link() -> None:
    """A leaf not issued by the matched anchor fails validation."""
    chain = mx_chain("mx.example.test")
    other = mx_chain("mx.example.test", intermediate=False)  # leaf issued by the root
    mixed = [other.der[0], chain.der[1]]
    result = dane.verify_chain([_ta(chain, 1)], mixed, ["mx.example.test"], NOW)
    assert not result.verified and result.result_type is ResultType.VALIDATION_FAILURE


def test_dane_ta_issuer_must_be_a_ca() -> None:
    """An anchor without the CA flag cannot issue the leaf (RFC 5280 §4.2.1.9)."""
    issuer, key = self_signed("not a ca", ca=False)
    leaf = issued_by(issuer, key, "mx.example.test", ("mx.example.test",))
    record = dane.tlsa_for_certificate(issuer, 2, 0, 1)
    result = dane.verify_chain([record], [der(leaf), der(issuer)], ["mx.example.test"], NOW)
    assert not result.verified and "not a CA" in result.detail
    ca, ca_key = self_signed("a ca", ca=True)
    leaf2 = issued_by(ca, ca_key, "mx.example.test", ("mx.example.test",))
    ok = dane.verify_chain([dane.tlsa_for_certificate(ca, 2, 0, 1)], [der(leaf2), der(ca)],
                           ["mx.example.test"], NOW)
    assert ok.verified


def test_dane_ta_partial_label_wildcard_refused() -> None:
    """A partial-label wildcard (``m*.example.test``) matches nothing (RFC 7672 §3.2.3)."""
    ca, ca_key = self_signed("a ca", ca=True)
    leaf = issued_by(ca, ca_key, "x", ("m*.example.test",))
    record = dane.tlsa_for_certificate(ca, 2, 0, 1)
    result = dane.verify_chain([record], [der(leaf), der(ca)], ["mx.example.test"], NOW)
    assert result.result_type is ResultType.CERTIFICATE_HOST_MISMATCH


def test_dane_ta_cn_used_without_san() -> None:
    """With no DNS-ID in the certificate the CN is the presented name."""
    ca, ca_key = self_signed("a ca", ca=True)
    leaf = issued_by(ca, ca_key, "mx.example.test")
    record = dane.tlsa_for_certificate(ca, 2, 0, 1)
    assert dane.verify_chain([record], [der(leaf), der(ca)], ["mx.example.test"], NOW).verified
    assert not dane.verify_chain([record], [der(leaf), der(ca)], ["mx.other.test"], NOW).verified


def test_dane_ta_record_for_leaf_still_checks_names() -> None:
    """A DANE-TA record matching the leaf itself authenticates it, with name checks."""
    cert, _ = self_signed("mx", san=("mx.example.test",))
    record = dane.tlsa_for_certificate(cert, 2, 1, 1)
    assert dane.verify_chain([record], [der(cert)], ["mx.example.test"], NOW).verified
    miss = dane.verify_chain([record], [der(cert)], ["other.test"], NOW)
    assert miss.result_type is ResultType.CERTIFICATE_HOST_MISMATCH


def test_dane_ta_no_match() -> None:
    """A DANE-TA record matching nothing in the chain is a validation failure."""
    chain = mx_chain("mx.example.test")
    result = dane.verify_chain([TLSA(2, 0, 1, D256)], chain.der, ["mx.example.test"], NOW)
    assert not result.verified and result.result_type is ResultType.VALIDATION_FAILURE


@pytest.mark.parametrize("pattern,name,ok", [
    ("mx.example.test", "MX.Example.Test.", True),
    ("*.example.test", "mx.example.test", True),
    ("*.example.test", "example.test", False),
    ("*.example.test", "a.b.example.test", False),
    ("*.test", "example.test", False),  # no wildcard directly under a one-label name
    ("mx*.example.test", "mx1.example.test", False),
    ("", "example.test", False),
])
def test_match_name(pattern: str, name: str, ok: bool) -> None:
    """Name matching: exact (case-insensitive) or a whole leftmost-label wildcard."""
    assert dane.match_name(pattern, name) is ok


def test_reference_names_order_and_dedup() -> None:
    """The TLSA base domain comes first, then the MX host, without duplicates."""
    assert dane.reference_names("MX.example.test.", "mx.cdn.test") == (
        "mx.cdn.test", "mx.example.test")
    assert dane.reference_names("mx.example.test", "mx.example.test") == ("mx.example.test",)


# -- the per-host decision (RFC 7672 §2.2) ---------------------------------------------------

USABLE = (TLSA(3, 1, 1, D256),)
UNUSABLE = (TLSA(1, 1, 1, D256),)


@pytest.mark.parametrize("mx_auth,addr_auth,lookup,decision,usable,result_type", [
    (False, True, None, Decision.NO_DANE, (), None),
    (True, False, None, Decision.NO_DANE, (), None),
    (True, True, TLSALookup(TLSAOutcome.RECORDS, "mx", USABLE), Decision.DANE_REQUIRED,
     USABLE, None),
    (True, True, TLSALookup(TLSAOutcome.RECORDS, "mx", UNUSABLE), Decision.DANE_REQUIRED,
     (), ResultType.TLSA_INVALID),
    (True, True, TLSALookup(TLSAOutcome.RECORDS, "mx", USABLE + UNUSABLE),
     Decision.DANE_REQUIRED, USABLE, None),
    (True, True, TLSALookup(TLSAOutcome.DENIAL, "mx"), Decision.NO_DANE, (), None),
    (True, True, TLSALookup(TLSAOutcome.INSECURE, "mx"), Decision.TEMPORARY_FAILURE, (),
     ResultType.DNSSEC_INVALID),
    (True, True, TLSALookup(TLSAOutcome.FAILURE, "mx", detail="SERVFAIL"),
     Decision.TEMPORARY_FAILURE, (), ResultType.DNSSEC_INVALID),
])
def test_decide(mx_auth: bool, addr_auth: bool, lookup: TLSALookup | None,
                decision: Decision, usable: tuple[TLSA, ...],
                result_type: ResultType | None) -> None:
    """The RFC 7672 §2.2 table: authentic MX and addresses lead to the TLSA outcome."""
    d = dane.decide(mx_auth, addr_auth, lookup)
    assert d.decision is decision
    assert d.usable == usable
    assert d.result_type is result_type
    assert d.authenticated is (decision is Decision.DANE_REQUIRED and bool(usable))


def test_decide_needs_lookup_for_authentic_addresses() -> None:
    """Calling decide without the TLSA lookup for an authentic host is a programming error."""
    with pytest.raises(dane.DANEError):
        dane.decide(True, True, None)


# -- the resolver adapter ---------------------------------------------------------------------

def _run(d: Deferred[Any] | Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(d).addBoth(out.append)
    assert out, "did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_lookup_tlsa_outcomes() -> None:
    """lookup_tlsa turns resolver outcomes into TLSAOutcome values."""
    r = FakeResolver()
    r.add("_25._tcp.signed.test", "TLSA", ["3 1 1 " + "ab" * 32], authentic=True)
    r.add("_25._tcp.plain.test", "TLSA", ["3 1 1 " + "ab" * 32], authentic=False)
    r.fail("_25._tcp.none.test", "TLSA", "nxdomain", authentic=True)
    r.fail("_25._tcp.unproven.test", "TLSA", "nodata", authentic=False)
    r.fail("_25._tcp.bogus.test", "TLSA", "servfail", ede=[ExtendedError(6)])
    r.fail("_25._tcp.slow.test", "TLSA", "timeout")
    signed = _run(dane.lookup_tlsa(r, "signed.test"))
    assert signed.outcome is TLSAOutcome.RECORDS and signed.records[0].data == b"\xab" * 32
    assert _run(dane.lookup_tlsa(r, "plain.test")).outcome is TLSAOutcome.INSECURE
    assert _run(dane.lookup_tlsa(r, "none.test")).outcome is TLSAOutcome.DENIAL
    assert _run(dane.lookup_tlsa(r, "unproven.test")).outcome is TLSAOutcome.INSECURE
    bogus = _run(dane.lookup_tlsa(r, "bogus.test"))
    assert bogus.outcome is TLSAOutcome.FAILURE and "EDE 6" in bogus.detail
    assert _run(dane.lookup_tlsa(r, "slow.test")).outcome is TLSAOutcome.FAILURE


def test_lookup_tlsa_prefers_cname_target_then_original() -> None:
    """RFC 7672 §2.2.2: TLSA at the CNAME-expanded name first, the original when denied."""
    r = FakeResolver()
    r.add("_25._tcp.mx.cdn.test", "TLSA", ["3 1 1 " + "cd" * 32], authentic=True)
    r.add("_25._tcp.mx.example.test", "TLSA", ["3 1 1 " + "ab" * 32], authentic=True)
    first = _run(dane.lookup_tlsa(r, "mx.example.test", "mx.cdn.test"))
    assert first.base_domain == "mx.cdn.test" and first.records[0].data == b"\xcd" * 32
    r.fail("_25._tcp.mx2.cdn.test", "TLSA", "nxdomain", authentic=True)
    r.add("_25._tcp.mx2.example.test", "TLSA", ["3 1 1 " + "ab" * 32], authentic=True)
    second = _run(dane.lookup_tlsa(r, "mx2.example.test", "mx2.cdn.test"))
    assert second.base_domain == "mx2.example.test" and second.outcome is TLSAOutcome.RECORDS
    r.fail("_25._tcp.mx3.cdn.test", "TLSA", "servfail")
    third = _run(dane.lookup_tlsa(r, "mx3.example.test", "mx3.cdn.test"))
    assert third.outcome is TLSAOutcome.FAILURE and third.base_domain == "mx3.cdn.test"


# -- robustness ---------------------------------------------------------------------------------

tlsa_records = st.builds(TLSA, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                         st.binary(max_size=70))


@settings(max_examples=150, deadline=None)
@given(st.lists(tlsa_records, max_size=4), st.lists(st.binary(max_size=200), max_size=3),
       st.lists(st.text(max_size=20), max_size=2))
def test_verify_chain_never_raises(records: list[TLSA], chain: list[bytes],
                                   names: list[str]) -> None:
    """Arbitrary records, certificate bytes and names give a result, never an exception."""
    result = dane.verify_chain(records, chain, names, NOW)
    assert not result.verified
    assert result.result_type is not None


@settings(max_examples=60, deadline=None)
@given(st.lists(tlsa_records, max_size=3), st.integers(0, 1), st.integers(0, 2))
def test_random_records_with_real_chain(records: list[TLSA], selector: int, mtype: int) -> None:
    """With a real chain, adding the right DANE-EE record always verifies, whatever else is
    in the RRset; without a matching record nothing verifies."""
    chain = mx_chain("mx.example.test")
    noise = [r for r in records if r.data not in (
        dane.association_data(c, r.selector, r.mtype) for c in chain.certs
        if r.selector in (0, 1) and r.mtype in (0, 1, 2))]
    assert not dane.verify_chain(noise, chain.der, ["mx.example.test"], NOW).verified
    good = dane.tlsa_for_certificate(chain.certs[0], 3, selector, mtype)
    assert dane.verify_chain([*noise, good], chain.der, ["x.test"], NOW).verified


def test_dane_ta_chain_out_of_order_with_extra_certificate() -> None:
    """DANE-TA finds the path through a chain sent out of order with an unrelated extra
    certificate (servers do this)."""
    chain = mx_chain("mx.example.test")
    stray, _ = self_signed("stray", ca=True)
    shuffled = [chain.der[0], der(stray), der(chain.root), chain.der[1]]
    record = dane.tlsa_for_certificate(chain.root, 2, 0, 1)
    assert dane.verify_chain([record], shuffled, ["mx.example.test"], NOW).verified
