"""Per-host TLS policy for outbound delivery (mxd.queue.tlspolicy): DANE, MTA-STS,
REQUIRETLS and TLS-Required: No together (RFC 7672 §2.2, RFC 8461 §4-5, RFC 8689 §4-5)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mxd import dane
from mxd.dns.testing import FakeResolver
from mxd.mtasts.policy import parse_policy
from mxd.mtasts.resolve import STSLookup
from mxd.queue import tlspolicy
from mxd.queue.mx import HostAddress, MXHost, MXPlan
from mxd.queue.tlspolicy import HostRefusal, HostRefused, HostTLSPolicy, PolicyMode
from mxd.smtp.client import TLSConnectionInfo, TLSMode
from mxd.tlsrpt.results import PolicyType, ResultType
from tests.dane.certs import NOW, mx_chain, self_signed

ENFORCE = parse_policy("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n")
TESTING = parse_policy("version: STSv1\nmode: testing\nmx: mx.example.test\nmax_age: 86400\n")
CHAIN = mx_chain("mx.example.test")
OTHER = mx_chain("mx.example.test", intermediate=False)  # same name, another leaf
GOOD_TLSA = dane.tlsa_text(dane.tlsa_for_certificate(CHAIN.certs[0])).lower()
BAD_TLSA = "3 1 1 " + "00" * 32


def _run(coro: Any) -> Any:
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def _resolver(tlsa: str | None = GOOD_TLSA, kind: str | None = None,
              authentic: bool = True) -> FakeResolver:
    r = FakeResolver(default_authentic=True)  # names not in the table: authentic NXDOMAIN
    if kind is not None:
        r.fail("_25._tcp.mx.example.test", "TLSA", kind, authentic=authentic)  # type: ignore[arg-type]
    elif tlsa is not None:
        r.add("_25._tcp.mx.example.test", "TLSA", [tlsa], authentic=authentic)
    return r


def _sts(policy: Any = None, failure: ResultType | None = None) -> STSLookup:
    return STSLookup("example.test", policy, "1" if policy else None, False, failure)


def _decide(r: FakeResolver, sts: STSLookup | None = None, *, mx_auth: bool = True,
            addr_auth: bool = True, requiretls: bool = False, trn: bool = False,
            host: str = "mx.example.test") -> HostTLSPolicy | HostRefusal:
    return _run(tlspolicy.policy_for_host(r, sts, "example.test", host, mx_auth, addr_auth,
                                          requiretls, trn, roots=[CHAIN.root]))


# -- the decision table ----------------------------------------------------------------------

@pytest.mark.parametrize("case,kw,expect", [
    ("dane usable", dict(r=dict()), PolicyMode.DANE),
    ("dane wins over sts", dict(r=dict(), sts=ENFORCE), PolicyMode.DANE),
    ("only unusable tlsa", dict(r=dict(tlsa="1 1 1 " + "00" * 32)), PolicyMode.REQUIRED_UNVERIFIED),
    ("unusable tlsa, sts enforce", dict(r=dict(tlsa="1 1 1 " + "00" * 32), sts=ENFORCE),
     PolicyMode.STS_ENFORCE),
    ("authentic denial", dict(r=dict(kind="nxdomain")), PolicyMode.OPPORTUNISTIC),
    ("denial, sts enforce", dict(r=dict(kind="nodata"), sts=ENFORCE), PolicyMode.STS_ENFORCE),
    ("denial, sts testing", dict(r=dict(kind="nodata"), sts=TESTING), PolicyMode.STS_TESTING),
    ("insecure mx", dict(r=dict(), mx_auth=False), PolicyMode.OPPORTUNISTIC),
    ("insecure address", dict(r=dict(), addr_auth=False), PolicyMode.OPPORTUNISTIC),
    ("bogus tlsa", dict(r=dict(kind="servfail")), "refuse-4.7.5"),
    ("non-authentic tlsa", dict(r=dict(authentic=False)), "refuse-4.7.5"),
    ("bogus tlsa, TLS-Required: No", dict(r=dict(kind="servfail"), trn=True),
     PolicyMode.OPPORTUNISTIC),
    ("mx not in enforced policy", dict(r=dict(kind="nxdomain"), sts=ENFORCE,
                                       host="rogue.example.test"), "refuse-4.7.5"),
    ("mx not in enforced policy, TLS-Required: No",
     dict(r=dict(kind="nxdomain"), sts=ENFORCE, host="rogue.example.test", trn=True),
     PolicyMode.OPPORTUNISTIC),
    ("mx not in testing policy", dict(r=dict(kind="nxdomain"), sts=TESTING,
                                      host="rogue.example.test"), PolicyMode.STS_TESTING),
    ("requiretls with dane", dict(r=dict(), requiretls=True), PolicyMode.DANE),
    ("requiretls with sts enforce", dict(r=dict(kind="nxdomain"), sts=ENFORCE, requiretls=True),
     PolicyMode.STS_ENFORCE),
    ("requiretls, opportunistic only", dict(r=dict(kind="nxdomain"), requiretls=True),
     "refuse-5.7.30"),
    ("requiretls, sts testing", dict(r=dict(kind="nxdomain"), sts=TESTING, requiretls=True),
     "refuse-5.7.30"),
    ("requiretls ignores TLS-Required: No", dict(r=dict(kind="servfail"), requiretls=True,
                                                 trn=True), "refuse-4.7.5"),
])
def test_policy_for_host(case: str, kw: dict[str, Any], expect: PolicyMode | str) -> None:
    """The combined DANE / MTA-STS / REQUIRETLS / TLS-Required: No decision per host."""
    kw = dict(kw)
    r = _resolver(**kw.pop("r"))
    sts = _sts(kw.pop("sts")) if "sts" in kw else None
    got = _decide(r, sts, **kw)
    if not isinstance(expect, PolicyMode):
        assert isinstance(got, HostRefusal), case
        assert f"refuse-{got.enhanced}" == expect, case
        assert got.permanent is (expect == "refuse-5.7.30"), case
        if "policy" in case:
            assert "MTA-STS" in got.reason and got.result_type is ResultType.VALIDATION_FAILURE
        if "tlsa" in case:
            assert got.result_type is ResultType.DNSSEC_INVALID
    else:
        assert isinstance(got, HostTLSPolicy), case
        assert got.mode is expect, case


def test_no_tlsa_lookup_for_insecure_hosts() -> None:
    """RFC 7672 §2.2: no TLSA query when the MX or address records are not authentic."""
    r = _resolver()
    _decide(r, addr_auth=False)
    _decide(r, mx_auth=False)
    assert r.queries == []
    _decide(r)
    assert [d.ascii for d, _t in r.queries] == ["_25._tcp.mx.example.test"]


def test_refusal_and_notes_are_reportable() -> None:
    """A bogus TLSA refusal reports dnssec-invalid for the TLSA policy; a downgraded one
    keeps the failure as a note; an STS fetch failure is a note too."""
    refusal = _decide(_resolver(kind="servfail"))
    assert isinstance(refusal, HostRefusal)
    rec = refusal.attempt(NOW.timestamp())
    assert rec is not None and rec.failure is not None
    assert rec.policy.type is PolicyType.TLSA
    assert rec.failure.result_type is ResultType.DNSSEC_INVALID
    downgraded = _decide(_resolver(kind="servfail"), trn=True)
    assert isinstance(downgraded, HostTLSPolicy)
    assert [n.result_type for n in downgraded.notes] == [ResultType.DNSSEC_INVALID]
    fetch = _decide(_resolver(kind="nxdomain"), _sts(ENFORCE, ResultType.STS_POLICY_FETCH_ERROR))
    assert isinstance(fetch, HostTLSPolicy) and fetch.mode is PolicyMode.STS_ENFORCE
    assert [n.result_type for n in fetch.notes] == [ResultType.STS_POLICY_FETCH_ERROR]


# -- check() ----------------------------------------------------------------------------------

@pytest.mark.parametrize("setup,chain,ok,verified,result_type,downgraded", [
    (dict(r=dict()), CHAIN, True, True, None, False),
    (dict(r=dict()), OTHER, False, False, ResultType.VALIDATION_FAILURE, False),
    (dict(r=dict(), trn=True), OTHER, True, False, ResultType.VALIDATION_FAILURE, True),
    (dict(r=dict(kind="nxdomain"), sts=ENFORCE), CHAIN, True, True, None, False),
    (dict(r=dict(kind="nxdomain"), sts=ENFORCE), mx_chain("other.test"), False, False,
     ResultType.CERTIFICATE_HOST_MISMATCH, False),
    (dict(r=dict(kind="nxdomain"), sts=TESTING), mx_chain("other.test"), True, False,
     ResultType.CERTIFICATE_HOST_MISMATCH, False),
    (dict(r=dict(kind="nxdomain")), OTHER, True, False, None, False),
])
def test_check(setup: dict[str, Any], chain: Any, ok: bool, verified: bool,
               result_type: ResultType | None, downgraded: bool) -> None:
    """check() judges the peer chain per mode, downgrading under TLS-Required: No."""
    setup = dict(setup)
    r = _resolver(**setup.pop("r"))
    sts = _sts(setup.pop("sts")) if "sts" in setup else None
    policy = _decide(r, sts, **setup)
    assert isinstance(policy, HostTLSPolicy)
    result = policy.check(chain.der, None, NOW.timestamp())
    assert (result.ok, result.verified, result.result_type, result.downgraded) == (
        ok, verified, result_type, downgraded)


def test_sts_untrusted_root() -> None:
    """Under sts-enforce a chain from an unknown CA is certificate-not-trusted."""
    policy = _run(tlspolicy.policy_for_host(_resolver(kind="nxdomain"), _sts(ENFORCE),
                                            "example.test", "mx.example.test", True, True,
                                            roots=[self_signed("another CA", ca=True)[0]]))
    got = policy.check(CHAIN.der, None, NOW.timestamp())
    assert not got.ok and got.result_type is ResultType.CERTIFICATE_NOT_TRUSTED


# -- the client policy ------------------------------------------------------------------------

@pytest.mark.parametrize("setup,mode,has_verify,policy_type", [
    (dict(r=dict()), TLSMode.VERIFIED, True, "tlsa"),
    (dict(r=dict(), trn=True), TLSMode.OPPORTUNISTIC, True, "tlsa"),
    (dict(r=dict(tlsa="0 0 1 " + "00" * 32)), TLSMode.REQUIRED, False, "tlsa"),
    (dict(r=dict(kind="nxdomain"), sts=ENFORCE), TLSMode.VERIFIED, True, "sts"),
    (dict(r=dict(kind="nxdomain"), sts=TESTING), TLSMode.OPPORTUNISTIC, True, "sts"),
    (dict(r=dict(kind="nxdomain")), TLSMode.OPPORTUNISTIC, False, "no-policy-found"),
])
def test_client_policy_mapping(setup: dict[str, Any], mode: TLSMode, has_verify: bool,
                               policy_type: str) -> None:
    """The SMTP client gets VERIFIED only when verification is required; REQUIRED for
    unusable-only TLSA; the verifier checks the chain wherever a check or report is due
    (it always reports)."""
    setup = dict(setup)
    r = _resolver(**setup.pop("r"))
    sts = _sts(setup.pop("sts")) if "sts" in setup else None
    policy = _decide(r, sts, **setup)
    assert isinstance(policy, HostTLSPolicy)
    cp = policy.client_policy(Clock())
    assert cp.mode is mode and cp.verifier is not None
    info = TLSConnectionInfo("TLSv1.3", "x", OTHER.certs, "mx.example.test")
    assert (cp.verifier.verify(info).result_type is not None) is has_verify
    assert cp.policy_type is PolicyType(policy_type)
    assert isinstance(cp.client_options, tlspolicy.UnverifiedSNIOptions)


def test_client_verifier_uses_clock_and_gives_the_reason() -> None:
    """The verifier verifies a DANE match, and otherwise gives the RFC 8460 result type
    with its reason in words (for the queue, the admin and DSNs)."""
    policy = _decide(_resolver())
    assert isinstance(policy, HostTLSPolicy) and policy.sni == "mx.example.test"
    clock = Clock()
    clock.advance(NOW.timestamp())
    verifier = policy.client_policy(clock).verifier
    assert verifier is not None
    good = verifier.verify(TLSConnectionInfo("TLSv1.3", "x", CHAIN.certs, "mx.example.test"))
    assert good.ok and good.verified and good.result_type is None
    bad = verifier.verify(TLSConnectionInfo("TLSv1.3", "x", OTHER.certs, "mx.example.test"))
    assert not bad.ok and bad.result_type is ResultType.VALIDATION_FAILURE
    assert "DANE-EE" in bad.detail


def test_attempt_records() -> None:
    """attempt() gives a success record, or the failure with the MX host and IPs."""
    policy = _decide(_resolver())
    assert isinstance(policy, HostTLSPolicy)
    ok = policy.attempt(policy.check(CHAIN.der, None, NOW.timestamp()), 1.0)
    assert ok.success and ok.policy.type is PolicyType.TLSA
    assert ok.policy.strings == (GOOD_TLSA.upper().replace("3 1 1 ", "3 1 1 "),)
    bad = policy.attempt(policy.check(OTHER.der, None, NOW.timestamp()), 2.0,
                         sending_ip="192.0.2.1", receiving_ip="127.0.0.1")
    assert not bad.success and bad.failure is not None
    assert bad.failure.receiving_mx_hostname == "mx.example.test"
    assert bad.failure.receiving_ip == "127.0.0.1"
    missing = policy.attempt(None, 3.0, starttls_missing=True)
    assert missing.failure is not None
    assert missing.failure.result_type is ResultType.STARTTLS_NOT_SUPPORTED


# -- the runner adapter -----------------------------------------------------------------------

PLAN = MXPlan("example.test", (), True, "example.test")
HOST = MXHost("mx.example.test", 10)
AUTHENTIC = (HostAddress("127.0.0.1", True, "mx.example.test"),)


def test_make_policy_factory() -> None:
    """The factory takes the addresses' authenticity from the caller (no second lookup)
    and returns a client policy, or errbacks with HostRefused for a refused host."""
    factory = tlspolicy.make_policy_factory(_resolver(), None, Clock(), roots=[CHAIN.root])
    out: list[Any] = []
    factory("example.test", PLAN, HOST, addresses=AUTHENTIC).addBoth(out.append)
    assert out[0].mode is TLSMode.VERIFIED and out[0].policy_type == "tlsa"
    out.clear()
    tlspolicy.make_policy_factory(_resolver(kind="servfail"), None, Clock())(
        "example.test", PLAN, HOST, addresses=AUTHENTIC).addBoth(out.append)
    assert out[0].check(HostRefused) and out[0].value.enhanced == "4.7.5"
    out.clear()
    tlspolicy.make_policy_factory(_resolver(), None, Clock())(
        "example.test", PLAN, HOST, addresses=(HostAddress("127.0.0.1", False),),
        requiretls=True).addBoth(out.append)
    assert out[0].check(HostRefused) and out[0].value.enhanced == "5.7.30"


def test_implicit_mx_accepts_the_recipient_domain_name() -> None:
    """For an implicit MX the recipient domain is a DANE-TA reference identifier too."""
    r = _resolver()
    out: list[Any] = []
    tlspolicy.make_policy_factory(r, None, Clock())(
        "example.test", PLAN, MXHost("mx.example.test", 0, implicit=True),
        addresses=AUTHENTIC).addBoth(out.append)
    assert out[0].mode is TLSMode.VERIFIED
    policy = _run(tlspolicy.policy_for_host(r, None, "example.test", "mx.example.test", True,
                                            True, extra_names=("example.test",)))
    assert policy.reference_names == ("mx.example.test", "example.test")


def test_attempt_from_client_tls_result() -> None:
    """The client's TLSResult becomes a TLS report record: success when verified as
    required, the recorded failure word otherwise, starttls-not-supported without TLS."""
    from mxd.smtp.client import TLSResult

    policy = _decide(_resolver())
    assert isinstance(policy, HostTLSPolicy)
    ok = policy.attempt_from_client(TLSResult(PolicyType.TLSA, "mx.example.test", TLSMode.VERIFIED,
                                              used=True, verified=True), 1.0)
    assert ok.success
    bad = policy.attempt_from_client(TLSResult(PolicyType.TLSA, "mx.example.test", TLSMode.VERIFIED,
                                               used=True, failure=ResultType.CERTIFICATE_EXPIRED), 1.0,
                                     receiving_ip="127.0.0.1")
    assert bad.failure is not None and bad.failure.result_type is ResultType.CERTIFICATE_EXPIRED
    plain = policy.attempt_from_client(TLSResult(PolicyType.TLSA, "mx.example.test", TLSMode.VERIFIED,
                                                 used=False), 1.0)
    assert plain.failure is not None and plain.failure.result_type is ResultType.VALIDATION_FAILURE
    opportunistic = _decide(_resolver(kind="nxdomain"))
    assert isinstance(opportunistic, HostTLSPolicy)
    none = opportunistic.attempt_from_client(
        TLSResult(PolicyType.NO_POLICY_FOUND, "example.test", TLSMode.OPPORTUNISTIC, used=False), 1.0)
    assert none.failure is not None
    assert none.failure.result_type is ResultType.STARTTLS_NOT_SUPPORTED
    assert none.policy.type is PolicyType.NO_POLICY_FOUND
    assert opportunistic.attempt_from_client(
        TLSResult(PolicyType.NO_POLICY_FOUND, "example.test", TLSMode.OPPORTUNISTIC, used=True), 1.0
    ).success
