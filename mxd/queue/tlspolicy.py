"""Per-attempt transport security for outbound SMTP: DANE (RFC 7672), MTA-STS (RFC 8461),
REQUIRETLS and ``TLS-Required: No`` (RFC 8689), results for TLS reporting (RFC 8460).

How the queue and the SMTP client use this module
=================================================

1. Per recipient domain, look up the MTA-STS policy once (``STSResolver.lookup``); per MX
   host (after the MX and address lookups of ``mxd.queue.mx``) call::

       decided = await policy_for_host(resolver, sts, domain, mx_host, mx_authentic,
                                       addr_authentic, requiretls, tls_required_no)

   ``sts`` is an ``STSResolver``, an already made ``STSLookup``, or None (MTA-STS off).

2. ``decided`` is a ``HostRefusal``: do not connect to this host.  ``permanent`` False
   (DNSSEC failure of the TLSA lookup, RFC 7672 §2.2; an MX not listed by an enforced
   MTA-STS policy, RFC 8461 §4.1) means try the next MX and retry later (4.7.5); True
   (REQUIRETLS cannot be met for this host, RFC 8689 §4.1) means the host can never take
   this message (5.7.30): when no host can, the message fails with a DSN that is itself sent
   without REQUIRETLS (RFC 8689 §4.1.1).  Record ``refusal.attempt(...)`` for TLS reporting.

3. Otherwise it is a ``HostTLSPolicy``.  ``client_policy(clock)`` gives the
   ``mxd.smtp.client.TLSPolicy`` for the SMTP client: SNI and an unverifying handshake, then
   ``check`` on the peer's chain after the handshake.  Rules the client must keep:

   * ``requires_tls``: no plaintext delivery, and no plaintext retry after a TLS failure
     (RFC 7672 §2.2, RFC 8461 §5); the client mode is ``REQUIRED`` or ``VERIFIED``.
   * ``requires_verification``: deliver only when ``check`` says ``ok`` (client mode
     ``VERIFIED``; a failure ends the attempt: try the next MX).
   * ``tls_required_no`` (RFC 8689 §5, only without REQUIRETLS): verification failures and
     DANE/MTA-STS policy failures are downgraded: deliver with TLS when offered (and
     without when not), and record the failure (``CheckResult.downgraded``).
   * ``requiretls``: MAIL FROM carries REQUIRETLS, which needs a verified connection (mode
     ``dane`` or ``sts-enforce``) and the peer's REQUIRETLS EHLO keyword (RFC 8689 §4.1);
     without the keyword the client fails the transaction with 5.7.30 (as mxd.smtp.client
     already does).
   * ``sts-testing`` only reports: a failed check is recorded, delivery goes on (RFC 8461 §5).

4. After the attempt record ``policy.attempt_from_client(client.tls_result, now, ...)`` (or
   ``policy.attempt(check_result, ...)``), a ``TLSAttempt``, plus the
   ``notes`` (problems found before connecting, e.g. an MTA-STS fetch error while a cached
   policy was used), for the daily TLS reports of ``mxd.tlsrpt.report``.

``check(chain_der, peer_name, now)`` is pure; ``policy_for_host`` does DNS (TLSA) and maybe
an MTA-STS lookup through the objects given.  ``make_policy_factory`` adapts all this to the
queue runner's ``TLSPolicyFactory`` seam.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mxd import dane
from mxd.dns.interfaces import IResolver
from mxd.dns.names import Domain
from mxd.dns.results import TLSA
from mxd.errors import MxdError
from mxd.mtasts.policy import Mode, Policy
from mxd.mtasts.resolve import STSLookup, STSResolver, mx_verdict
from mxd.mtasts.webpki import load_roots, verify_webpki
from mxd.queue.mx import HostAddress, MXHost, MXPlan
from mxd.smtp.client import TLSConnectionInfo, TLSMode, TLSPolicy, TLSResult
from mxd.tlsrpt.results import (
    CheckResult,
    FailureDetail,
    PolicyInfo,
    PolicyType,
    ResultType,
    TLSAttempt,
)

log = Logger()


class PolicyMode(enum.StrEnum):
    """What TLS a connection to one MX host must have."""

    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, unverified (RFC 7435)
    REQUIRED_UNVERIFIED = "required-unverified"  # only unusable TLSA records (RFC 7672 §2.2)
    DANE = "dane"  # verified by usable TLSA records (RFC 7672 §3)
    STS_ENFORCE = "sts-enforce"  # WebPKI-verified for the MX name (RFC 8461 §4.2)
    STS_TESTING = "sts-testing"  # checked and reported only (RFC 8461 §5)


@attrs.frozen
class PolicyNote:
    """A problem found before connecting, to report (RFC 8460 §4.3.2)."""

    policy: PolicyInfo
    result_type: ResultType
    detail: str = ""


def _failure(policy: PolicyInfo, result_type: ResultType, detail: str, mx_host: str,
             sending_ip: str | None, receiving_ip: str | None, helo: str | None,
             success: bool, now: float) -> TLSAttempt:
    reason = detail[:200] or None
    return TLSAttempt(policy, success, now, None if success else FailureDetail(
        result_type, sending_ip, mx_host, helo, receiving_ip, None, reason))


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedSNIOptions:
    """Client TLS that sends SNI and does not verify during the handshake: the chain is
    checked afterwards by ``HostTLSPolicy.check`` (so that failures get RFC 8460 result
    types and testing mode / ``TLS-Required: No`` can go on).  RFC 7672 §8.1: SNI is the
    TLSA base domain for DANE."""

    def __init__(self, server_name: str | None, minimum_tls12: bool = False) -> None:
        self.server_name = server_name
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        ctx.set_options(SSL.OP_NO_COMPRESSION)
        if minimum_tls12:
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        if self.server_name:
            conn.set_tlsext_host_name(self.server_name.encode("ascii"))
        conn.set_connect_state()
        return conn


@attrs.frozen
class HostTLSPolicy:
    """The TLS policy for connections to one MX host (see the module docstring)."""

    mode: PolicyMode
    mx_host: str
    policy_domain: str
    tlsa: tuple[TLSA, ...] = ()  # the whole RRset (usable and unusable)
    sts_policy: Policy | None = None
    reference_names: tuple[str, ...] = ()
    sni: str | None = None
    tls_required_no: bool = False
    requiretls: bool = False
    roots: tuple[x509.Certificate, ...] | None = None  # MTA-STS trust anchors; None: system
    notes: tuple[PolicyNote, ...] = ()

    @property
    def requires_tls(self) -> bool:
        return not self.tls_required_no and self.mode in (
            PolicyMode.REQUIRED_UNVERIFIED, PolicyMode.DANE, PolicyMode.STS_ENFORCE)

    @property
    def requires_verification(self) -> bool:
        return not self.tls_required_no and self.mode in (PolicyMode.DANE, PolicyMode.STS_ENFORCE)

    @property
    def policy_type(self) -> PolicyType:
        if self.mode in (PolicyMode.DANE, PolicyMode.REQUIRED_UNVERIFIED):
            return PolicyType.TLSA
        if self.mode in (PolicyMode.STS_ENFORCE, PolicyMode.STS_TESTING):
            return PolicyType.STS
        return PolicyType.NO_POLICY_FOUND

    def policy_info(self) -> PolicyInfo:
        """RFC 8460 §4.4 "policy" for this host's attempts."""
        t = self.policy_type
        if t is PolicyType.TLSA:
            return PolicyInfo(t, self.policy_domain, tuple(dane.tlsa_text(r) for r in self.tlsa),
                              (self.mx_host,))
        if t is PolicyType.STS and self.sts_policy is not None:
            return PolicyInfo(t, self.policy_domain, self.sts_policy.to_strings(),
                              tuple(p.text for p in self.sts_policy.mx))
        return PolicyInfo.none_found(self.policy_domain)

    def _roots(self) -> Sequence[x509.Certificate]:
        if self.roots is not None:
            return self.roots
        try:
            return load_roots()
        except OSError as e:
            log.error("cannot read the system CA store: {error}", error=str(e))
            return ()

    def check(self, chain_der: Sequence[bytes], peer_name: str | None = None,
              now: float = 0.0) -> CheckResult:
        """Judge the peer's chain (DER, leaf first) after the handshake.

        ``peer_name``: the name to verify for MTA-STS (default: the MX host); ``now``:
        POSIX seconds (certificate dates).
        """
        mode = self.mode
        if mode in (PolicyMode.OPPORTUNISTIC, PolicyMode.REQUIRED_UNVERIFIED):
            return CheckResult(True, False)
        if mode is PolicyMode.DANE:
            r = dane.verify_chain(self.tlsa, chain_der, self.reference_names, now)
            verified, result_type, detail = r.verified, r.result_type, r.detail
        else:
            w = verify_webpki(chain_der, peer_name or self.mx_host, self._roots(), now)
            verified, result_type, detail = w.ok, w.result_type, w.detail
        if verified:
            return CheckResult(True, True, None, detail)
        if mode is PolicyMode.STS_TESTING:
            return CheckResult(True, False, result_type, detail)
        if self.tls_required_no:  # RFC 8689 §5
            return CheckResult(True, False, result_type, detail, downgraded=True)
        return CheckResult(False, False, result_type, detail)

    def client_mode(self) -> TLSMode:
        if self.requires_verification:
            return TLSMode.VERIFIED
        if self.requires_tls:
            return TLSMode.REQUIRED
        return TLSMode.OPPORTUNISTIC

    def client_policy(self, clock: Any) -> TLSPolicy:
        """The ``mxd.smtp.client.TLSPolicy`` for one connection; ``clock`` gives the time
        for certificate checks (IReactorTime)."""
        strict = self.mode in (PolicyMode.DANE, PolicyMode.STS_ENFORCE)
        return TLSPolicy(
            mode=self.client_mode(),
            client_options=UnverifiedSNIOptions(self.sni or self.mx_host, minimum_tls12=strict),
            verifier=HostVerifier(self, clock),
            policy_type=self.policy_type,
            policy_domain=self.policy_domain,
        )

    def attempt(self, result: CheckResult | None, now: float, *,
                sending_ip: str | None = None, receiving_ip: str | None = None,
                helo: str | None = None,
                starttls_missing: bool = False) -> TLSAttempt:
        """The TLS report record of one connection: ``result`` of ``check`` (None when TLS
        was not reached), ``starttls_missing`` when the peer offered no STARTTLS."""
        info = self.policy_info()
        if starttls_missing:
            return _failure(info, ResultType.STARTTLS_NOT_SUPPORTED, "", self.mx_host,
                            sending_ip, receiving_ip, helo, False, now)
        if result is None or result.result_type is None:
            ok = result is not None and result.ok
            if ok:
                return TLSAttempt(info, True, now)
            return _failure(info, ResultType.VALIDATION_FAILURE, "no TLS session", self.mx_host,
                            sending_ip, receiving_ip, helo, False, now)
        return _failure(info, result.result_type, result.detail, self.mx_host, sending_ip,
                        receiving_ip, helo, False, now)

    def attempt_from_client(self, tls_result: TLSResult, now: float, *,
                            sending_ip: str | None = None, receiving_ip: str | None = None,
                            helo: str | None = None) -> TLSAttempt:
        """The TLS report record from the SMTP client's ``TLSResult`` of a connection made
        under this policy (without the notes: see ``HostVerifier.attempt``)."""
        info = self.policy_info()
        if tls_result.failure is not None:
            return _failure(info, tls_result.failure, tls_result.detail, self.mx_host,
                            sending_ip, receiving_ip, helo, False, now)
        if self.requires_verification and not tls_result.verified:
            return _failure(info, ResultType.VALIDATION_FAILURE, "not verified", self.mx_host,
                            sending_ip, receiving_ip, helo, False, now)
        if not tls_result.used:  # a session without TLS is a failure session (RFC 8460 §4.3.1)
            return _failure(info, ResultType.STARTTLS_NOT_SUPPORTED, "", self.mx_host,
                            sending_ip, receiving_ip, helo, False, now)
        return TLSAttempt(info, True, now)


@attrs.frozen
class HostVerifier:
    """``mxd.smtp.client.TLSVerifier`` for connections under a ``HostTLSPolicy``."""

    policy: HostTLSPolicy
    clock: Any = attrs.field(eq=False)  # IReactorTime: certificate dates

    def verify(self, info: TLSConnectionInfo) -> CheckResult:
        p = self.policy
        chain = [c if isinstance(c, bytes) else c.public_bytes(serialization.Encoding.DER)
                 for c in info.peer_chain]
        result = p.check(chain, None, self.clock.seconds())
        if result.result_type is not None:
            log.info("TLS policy {mode} for {host}: {result} ({detail}){downgraded}",
                     mode=p.mode.value, host=p.mx_host, result=result.result_type.value,
                     detail=result.detail,
                     downgraded=" ignored: TLS-Required: No" if result.downgraded else "")
        return result

    def attempt(self, result: TLSResult, now: float, *, sending_ip: str | None = None,
                receiving_ip: str | None = None, helo: str | None = None) -> TLSAttempt:
        """The session's RFC 8460 record.  A policy failure found before connecting (a
        note: a bogus TLSA answer or an unlisted MX ignored under ``TLS-Required: No``,
        unusable TLSA records, an MTA-STS testing-mode mismatch) makes the session a
        failure of that policy (RFC 8460 §4.3.2) when the session itself succeeded or ran
        without a policy.  A failed policy refresh while a cached policy was used is not
        one: that policy was applied."""
        attempt = self.policy.attempt_from_client(result, now, sending_ip=sending_ip,
                                                  receiving_ip=receiving_ip, helo=helo)
        if attempt.success is False and attempt.policy.type is not PolicyType.NO_POLICY_FOUND:
            return attempt
        for note in self.policy.notes:
            if note.result_type is ResultType.STS_POLICY_FETCH_ERROR:
                continue
            return TLSAttempt(note.policy, False, now, FailureDetail(
                note.result_type, sending_ip, self.policy.mx_host, helo, receiving_ip, None,
                note.detail[:200] or None))
        return attempt

    def overridden(self, result: TLSResult) -> bool:
        return self.policy.tls_required_no and bool(result.failure or self.policy.notes)


@attrs.frozen
class HostRefusal:
    """Do not connect to this host (see the module docstring)."""

    mx_host: str
    reason: str
    enhanced: str
    permanent: bool
    policy: PolicyInfo
    result_type: ResultType | None = None

    def attempt(self, now: float, *, sending_ip: str | None = None) -> TLSAttempt | None:
        """The TLS report record of the refusal (None when nothing is reportable)."""
        if self.result_type is None:
            return None
        return _failure(self.policy, self.result_type, self.reason, self.mx_host, sending_ip,
                        None, None, False, now)


class HostRefused(MxdError):
    """Raised by ``make_policy_factory``'s factory for a ``HostRefusal``."""

    def __init__(self, refusal: HostRefusal) -> None:
        self.refusal = refusal
        self.permanent = refusal.permanent
        self.enhanced = refusal.enhanced
        super().__init__(f"{refusal.mx_host}: {refusal.reason}")


def _name(name: str | Domain) -> str:
    return (name.ascii if isinstance(name, Domain) else str(name)).rstrip(".").lower()


async def policy_for_host(
    resolver: IResolver,
    sts_resolver: STSResolver | STSLookup | None,
    domain: str | Domain,
    mx_host: str | Domain,
    mx_authentic: bool,
    addr_authentic: bool,
    requiretls: bool = False,
    tls_required_no: bool = False,
    *,
    host_canonical: str | None = None,
    roots: Sequence[x509.Certificate] | None = None,
    extra_names: Sequence[str] = (),
) -> HostTLSPolicy | HostRefusal:
    """Decide the TLS policy for one MX host of the recipient ``domain``.

    DANE (RFC 7672 §2.2) first: a host with usable TLSA records gets ``dane`` (DANE wins
    over MTA-STS for it); only unusable records give ``required-unverified``.  Otherwise the
    domain's MTA-STS policy (RFC 8461 §4): enforce → ``sts-enforce`` for listed hosts and a
    refusal for others; testing → ``sts-testing``.  REQUIRETLS (RFC 8689 §4.1) refuses hosts
    without ``dane`` or ``sts-enforce``; ``tls_required_no`` (ignored with REQUIRETLS, RFC
    8689 §5) turns policy refusals into opportunistic TLS, keeping the failure as a note.
    ``host_canonical``: the host's name after an authentic CNAME (RFC 7672 §2.2.2);
    ``extra_names``: more DANE-TA reference identifiers, e.g. the recipient domain when the
    host is its implicit MX reached through a CNAME (RFC 7672 §3.2.2).
    """
    domain_s, host = _name(domain), _name(mx_host)
    trn = tls_required_no and not requiretls  # RFC 8689 §5: REQUIRETLS wins
    root_tuple = tuple(roots) if roots is not None else None
    notes: list[PolicyNote] = []

    def base(mode: PolicyMode, **kw: Any) -> HostTLSPolicy:
        return HostTLSPolicy(mode=mode, mx_host=host, tls_required_no=trn,
                             requiretls=requiretls, roots=root_tuple, notes=tuple(notes), **kw)

    # -- DANE (RFC 7672 §2.2) -------------------------------------------------------------
    lookup = None
    if mx_authentic and addr_authentic:
        lookup = await dane.lookup_tlsa(resolver, host, host_canonical)
    decision = dane.decide(mx_authentic, addr_authentic, lookup)
    tlsa_domain = decision.base_domain or host
    tlsa_info = PolicyInfo(PolicyType.TLSA, tlsa_domain,
                           tuple(dane.tlsa_text(r) for r in decision.usable + decision.unusable),
                           (host,))
    refs = dane.reference_names(host, tlsa_domain, extra_names)
    if decision.decision is dane.Decision.TEMPORARY_FAILURE:
        assert decision.result_type is not None
        if not trn:
            return HostRefusal(host, decision.reason, "4.7.5", False, tlsa_info,
                               decision.result_type)
        notes.append(PolicyNote(tlsa_info, decision.result_type, decision.reason))
    elif decision.decision is dane.Decision.DANE_REQUIRED:
        tlsa = decision.usable + decision.unusable
        if decision.authenticated:
            return base(PolicyMode.DANE, policy_domain=tlsa_domain, tlsa=tlsa,
                        reference_names=refs, sni=tlsa_domain)
        notes.append(PolicyNote(tlsa_info, ResultType.TLSA_INVALID, decision.reason))

    # -- MTA-STS (RFC 8461 §4, §5) -----------------------------------------------------------
    sts: STSLookup | None
    if isinstance(sts_resolver, STSResolver):
        sts = await sts_resolver.lookup(domain_s)
    else:
        sts = sts_resolver
    sts_info = sts.policy_info() if sts is not None else PolicyInfo.none_found(domain_s)
    if sts is not None and sts.failure is not None:
        notes.append(PolicyNote(sts_info, sts.failure, sts.detail))
    policy = sts.policy if sts is not None else None
    verdict = mx_verdict(policy, host)
    mode = PolicyMode.OPPORTUNISTIC
    if policy is not None and policy.mode is Mode.ENFORCE:
        if verdict.allowed:
            mode = PolicyMode.STS_ENFORCE
        elif not trn:
            return HostRefusal(host, f"{host} is not an MX host allowed by the MTA-STS policy "
                               f"of {domain_s}", "4.7.5", False, sts_info,
                               ResultType.VALIDATION_FAILURE)
        else:
            notes.append(PolicyNote(sts_info, ResultType.VALIDATION_FAILURE,
                                    f"{host} not in the MTA-STS policy"))
    elif policy is not None and policy.mode is Mode.TESTING:
        mode = PolicyMode.STS_TESTING
        if not verdict.matched:
            notes.append(PolicyNote(sts_info, ResultType.VALIDATION_FAILURE,
                                    f"{host} not in the MTA-STS policy (testing)"))
    if mode is PolicyMode.OPPORTUNISTIC and decision.decision is dane.Decision.DANE_REQUIRED:
        mode = PolicyMode.REQUIRED_UNVERIFIED  # RFC 7672 §2.2: only unusable TLSA records

    # -- REQUIRETLS (RFC 8689 §4.1) ------------------------------------------------------------
    if requiretls and mode is not PolicyMode.STS_ENFORCE:
        return HostRefusal(host, "REQUIRETLS needs a host verified by DANE or an enforced "
                           "MTA-STS policy", "5.7.30", True,
                           sts_info if policy is not None else tlsa_info, None)
    if mode is PolicyMode.REQUIRED_UNVERIFIED:
        return base(mode, policy_domain=tlsa_domain, tlsa=decision.usable + decision.unusable,
                    reference_names=refs, sni=tlsa_domain)
    return base(mode, policy_domain=domain_s, sts_policy=policy if mode in (
        PolicyMode.STS_ENFORCE, PolicyMode.STS_TESTING) else None, sni=host)


PolicyFactory = Callable[..., Deferred[TLSPolicy]]


def make_policy_factory(resolver: IResolver, sts_resolver: STSResolver | None,
                        clock: Any, *,
                        roots: Sequence[x509.Certificate] | None = None) -> PolicyFactory:
    """Adapter for the queue runner's ``tls_policy_factory(domain, plan, host, addresses=)``
    seam: returns the client ``TLSPolicy`` or errbacks with ``HostRefused``.  The MX
    answer's authenticity comes from ``plan.authentic``, the address records' from the
    ``addresses`` the caller resolved (``mxd.queue.mx.HostAddress``; not looked up again).
    Message flags come as keyword arguments ``requiretls`` and ``tls_required_no``."""

    async def make(domain: str, plan: MXPlan, host: MXHost, *,
                   addresses: Sequence[HostAddress], requiretls: bool = False,
                   tls_required_no: bool = False) -> TLSPolicy:
        name = _name(host.name)
        addr_auth = bool(addresses) and all(a.authentic for a in addresses)
        canonical = next((a.canonical_name for a in addresses if a.canonical_name), None)
        decided = await policy_for_host(
            resolver, sts_resolver, domain, name, plan.authentic, addr_auth, requiretls,
            tls_required_no, host_canonical=canonical if canonical != name else None,
            roots=roots, extra_names=(_name(domain),) if host.implicit else ())
        if isinstance(decided, HostRefusal):
            raise HostRefused(decided)
        return decided.client_policy(clock)

    def factory(domain: str, plan: MXPlan, host: MXHost, **kw: Any) -> Deferred[TLSPolicy]:
        return Deferred.fromCoroutine(make(domain, plan, host, **kw))

    return factory
