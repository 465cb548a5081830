"""What a delivery attempt leaves in the queue's tables: the attempt row with its RFC 8460
§4.4 session fields, and the recipient domain's TLS support record (pure functions)."""

from __future__ import annotations

from typing import Any

import attrs

from mxd.queue.outcome import reply_fields
from mxd.smtp.client import TLSPolicy, TLSResult, TransactionResult
from mxd.store import queuedb as qs
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, PolicyType, ResultType, TLSAttempt


@attrs.frozen
class Attempt:
    """One connection attempt to one host address (or a host refused before connecting)."""

    host: str
    ip: str
    result: TransactionResult | None = None
    error: Exception | None = None
    tls: TLSResult | None = None
    peer_dsn: bool = False
    policy: TLSPolicy | None = None
    new_session: bool = True  # False: a message on a reused connection
    local_ip: str | None = None
    peer_helo: str | None = None  # None: the session never got to EHLO
    starttls: bool = False  # offered before TLS
    requiretls: bool = False  # offered (after TLS) (RFC 8689 §3)
    refusal: Any = None  # mxd.queue.tlspolicy.HostRefusal: not connected
    transport: str | None = None  # the transport of this attempt and why (routes)
    route: str | None = None
    report_tls: bool = True  # False: a smarthost session, not the recipient domain's MX


def tls_report(m: qs.QueuedMessage, a: Attempt, now: float) -> TLSAttempt | None:
    """The RFC 8460 record of the attempt's session (None: no TLS session to report: not
    connected, or the server never got to EHLO)."""
    if a.refusal is not None:
        return a.refusal.attempt(now)  # type: ignore[no-any-return]
    if a.tls is None or a.peer_helo is None:
        return None
    report = a.policy.report if a.policy is not None else None
    if report is not None and hasattr(report, "attempt_from_client"):
        attempt: TLSAttempt = report.attempt_from_client(
            a.tls, now, sending_ip=a.local_ip, receiving_ip=a.ip, helo=a.peer_helo)
        return _with_notes(attempt, getattr(report, "notes", ()), a, now)
    # No policy object (the plain opportunistic path): RFC 8460 §4.4 "no-policy-found".
    info = PolicyInfo.none_found(m.recipients[0].domain)
    if a.tls.used and not a.tls.failure:
        return TLSAttempt(info, True, now)
    try:
        rtype = ResultType(a.tls.failure or "starttls-not-supported")
    except ValueError:
        rtype = ResultType.VALIDATION_FAILURE
    return TLSAttempt(info, False, now, FailureDetail(rtype, a.local_ip, a.host, a.peer_helo,
                                                      a.ip))


def _with_notes(attempt: TLSAttempt, notes: Any, a: Attempt, now: float) -> TLSAttempt:
    """A policy failure found before connecting (``HostTLSPolicy.notes``: a bogus TLSA
    answer or an unlisted MX ignored under ``TLS-Required: No``, unusable TLSA records, an
    MTA-STS testing-mode mismatch) makes the session a failure of that policy (RFC 8460
    §4.3.2) when the session itself succeeded or ran without a policy.  A failed policy
    refresh while a cached policy was used is not one: that policy was applied."""
    if attempt.success is False and attempt.policy.type is not PolicyType.NO_POLICY_FOUND:
        return attempt
    for note in notes or ():
        if note.result_type is ResultType.STS_POLICY_FETCH_ERROR:
            continue
        return TLSAttempt(note.policy, False, now, FailureDetail(
            note.result_type, a.local_ip, a.host, a.peer_helo, a.ip, note.detail[:200] or None))
    return attempt


def _overridden(a: Attempt) -> bool:
    """Whether DANE/MTA-STS verification failed and was ignored (``TLS-Required: No``)."""
    report = a.policy.report if a.policy is not None else None
    if report is None or not getattr(report, "tls_required_no", False):
        return False
    return bool((a.tls is not None and a.tls.failure) or getattr(report, "notes", ()))


def attempt_record(m: qs.QueuedMessage, a: Attempt, now: float) -> qs.AttemptRecord:
    """The ``queue_attempts`` row of an attempt."""
    if a.result is not None:
        oks = [r.reply.ok for r in a.result.recipients]
        result = "delivered" if all(oks) else "partial" if any(oks) else "failed"
        reply = a.result.data_reply or (a.result.recipients[0].reply if a.result.recipients else None)
        code, enhanced, text = (reply.code, reply.enhanced, " ".join(reply.lines)) if reply else (None, None, None)
    else:
        result = "refused" if a.refusal is not None else "error"
        code, enhanced, text = reply_fields(a.error or Exception("unknown"))
    t = a.tls
    r = tls_report(m, a, now) if a.report_tls else None
    fd = r.failure if r is not None else None
    return qs.AttemptRecord(
        queue_id=m.queue_id, domain=m.recipients[0].domain,
        recipients=tuple(r.address for r in m.recipients), at=now, result=result, host=a.host,
        ip=a.ip or None, code=code, enhanced=enhanced, text=text,
        tls_used=bool(t and t.used), tls_verified=bool(t and t.verified),
        tls_version=t.version if t else None, tls_cipher=t.cipher if t else None,
        tls_policy_type=(r.policy.type.value if r else t.policy_type if t else None),
        tls_policy_domain=(r.policy.domain if r else t.policy_domain if t else None),
        tls_failure=(t.failure if t else fd.result_type.value if fd else None),
        tls_session=a.new_session, tls_success=None if r is None else r.success,
        tls_policy_strings=r.policy.strings if r else (),
        tls_policy_mx=r.policy.mx_host if r else (),
        tls_result_type=fd.result_type.value if fd else None,
        tls_detail=fd.additional_information if fd else None,
        sending_ip=a.local_ip, receiving_helo=a.peer_helo, tls_overridden=_overridden(a),
        transport=a.transport, route=a.route,
    )


def domain_tls(m: qs.QueuedMessage, a: Attempt, now: float) -> qs.DomainTLS | None:
    """The per-domain support record of a connection that got to EHLO (None otherwise)."""
    if a.peer_helo is None or a.tls is None or not a.report_tls:
        return None
    return qs.DomainTLS(
        domain=m.recipients[0].domain, at=now, mx_host=a.host, ip=a.ip, starttls=a.starttls,
        requiretls=a.requiretls, tls_used=a.tls.used,
        verified=a.tls.used and a.tls.verified and a.tls.failure is None,
        policy_type=a.tls.policy_type, result_type=a.tls.failure, tls_version=a.tls.version)
