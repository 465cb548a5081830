"""What a delivery attempt leaves in the queue's tables: the attempt row with its RFC 8460
§4.4 session fields, and the recipient domain's TLS support record (pure functions)."""

from __future__ import annotations

import attrs

from mxd.queue.outcome import reply_fields
from mxd.queue.tlspolicy import HostRefusal
from mxd.smtp.client import TLSPolicy, TLSResult, TransactionResult
from mxd.store import queuedb as qs
from mxd.tlsrpt.results import FailureDetail, PolicyInfo, ResultType, TLSAttempt


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
    refusal: HostRefusal | None = None  # not connected: the TLS policy refused the host
    transport: str | None = None  # the transport of this attempt and why (routes)
    route: str | None = None
    report_tls: bool = True  # False: a smarthost session, not the recipient domain's MX


def tls_report(m: qs.QueuedMessage, a: Attempt, now: float) -> TLSAttempt | None:
    """The RFC 8460 record of the attempt's session (None: no TLS session to report: not
    connected, or the server never got to EHLO)."""
    if a.refusal is not None:
        return a.refusal.attempt(now)
    if a.tls is None or a.peer_helo is None:
        return None
    verifier = a.policy.verifier if a.policy is not None else None
    if verifier is not None:
        return verifier.attempt(a.tls, now, sending_ip=a.local_ip, receiving_ip=a.ip,
                                helo=a.peer_helo)
    # No policy (the plain opportunistic path): RFC 8460 §4.4 "no-policy-found".
    info = PolicyInfo.none_found(m.recipients[0].domain)
    if a.tls.used and a.tls.failure is None:
        return TLSAttempt(info, True, now)
    return TLSAttempt(info, False, now, FailureDetail(
        a.tls.failure or ResultType.STARTTLS_NOT_SUPPORTED, a.local_ip, a.host, a.peer_helo,
        a.ip, None, a.tls.detail[:200] or None))


def _overridden(a: Attempt) -> bool:
    """Whether DANE/MTA-STS verification failed and was ignored (``TLS-Required: No``)."""
    verifier = a.policy.verifier if a.policy is not None else None
    return verifier is not None and a.tls is not None and verifier.overridden(a.tls)


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
    # RFC 8460 §3: the delivery of a TLS report must not produce TLS results of its own
    # (a broken receiver would otherwise get a report about its report, every day).
    r = tls_report(m, a, now) if a.report_tls and not m.tls_report else None
    fd = r.failure if r is not None else None
    return qs.AttemptRecord(
        queue_id=m.queue_id, domain=m.recipients[0].domain,
        recipients=tuple(r.address for r in m.recipients), at=now, result=result, host=a.host,
        ip=a.ip or None, code=code, enhanced=enhanced, text=text,
        tls_used=bool(t and t.used), tls_verified=bool(t and t.verified),
        tls_version=t.version if t else None, tls_cipher=t.cipher if t else None,
        tls_policy_type=(r.policy.type.value if r else t.policy_type.value if t else None),
        tls_policy_domain=(r.policy.domain if r else t.policy_domain if t else None),
        tls_failure=(t.failure.value if t and t.failure else None if t
                     else fd.result_type.value if fd else None),
        tls_session=a.new_session, tls_success=None if r is None else r.success,
        tls_policy_strings=r.policy.strings if r else (),
        tls_policy_mx=r.policy.mx_host if r else (),
        tls_result_type=fd.result_type.value if fd else None,
        tls_detail=fd.failure_reason_code if fd else None,  # RFC 8460 §4.4: the reason
        sending_ip=a.local_ip, receiving_helo=a.peer_helo, tls_overridden=_overridden(a),
        transport=a.transport, route=a.route,
    )


def attempt_metrics(m: qs.QueuedMessage, rec: qs.AttemptRecord
                    ) -> list[tuple[str, dict[str, str]]]:
    """The counters an attempt row adds to: ``tls_results`` (RFC 8460 sessions by policy
    type and result type), ``tls_required_no_overrides`` (delivered despite a failed
    verification, RFC 8689 §5), ``requiretls_failures`` (a REQUIRETLS message not
    delivered for a TLS reason, RFC 8689 §4.2)."""
    out: list[tuple[str, dict[str, str]]] = []
    ptype = rec.tls_policy_type or "no-policy-found"
    if rec.tls_session and rec.tls_success is not None:
        result = "success" if rec.tls_success else rec.tls_result_type or "validation-failure"
        out.append(("tls_results", {"policy_type": ptype, "result": result}))
    if rec.tls_overridden:
        out.append(("tls_required_no_overrides", {"policy_type": ptype}))
    if m.requiretls and rec.result not in ("delivered", "partial"):
        enhanced = rec.enhanced or ""
        if rec.tls_result_type:
            reason = rec.tls_result_type  # the TLS policy failed (DANE, MTA-STS)
        elif enhanced[1:] == ".7.30":
            reason = "requiretls-not-supported"  # the MX did not offer REQUIRETLS
        elif enhanced[1:] == ".7.10" or (rec.host and not rec.tls_used and rec.code):
            reason = "no-tls"
        else:
            reason = ""
        if reason:
            out.append(("requiretls_failures", {"reason": reason}))
    return out


def domain_tls(m: qs.QueuedMessage, a: Attempt, now: float) -> qs.DomainTLS | None:
    """The per-domain support record of a connection that got to EHLO (None otherwise)."""
    if a.peer_helo is None or a.tls is None or not a.report_tls:
        return None
    return qs.DomainTLS(
        domain=m.recipients[0].domain, at=now, mx_host=a.host, ip=a.ip, starttls=a.starttls,
        requiretls=a.requiretls, tls_used=a.tls.used,
        verified=a.tls.used and a.tls.verified and a.tls.failure is None,
        policy_type=a.tls.policy_type.value,
        result_type=a.tls.failure.value if a.tls.failure else None, tls_version=a.tls.version)
