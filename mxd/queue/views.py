"""JSON views of queue rows, shared by ``mxd queue --json`` and the admin API."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from mxd.store import queuedb as qs


def iso(t: float | None) -> str | None:
    """A UTC timestamp as ISO 8601 (``None`` stays ``None``)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reply(*parts: Any) -> str | None:
    return " ".join(str(x) for x in parts if x is not None) or None


def message_dict(m: qs.QueuedMessage,
                 attempts: Iterable[qs.AttemptRecord] | None = None) -> dict[str, Any]:
    """A queued message with its recipients (and, when given, its delivery attempts)."""
    out: dict[str, Any] = {
        "queue_id": m.queue_id, "from": m.mail_from, "size": m.size, "body": m.body,
        "queued_at": iso(m.queued_at), "requiretls": m.requiretls, "smtputf8": m.smtputf8,
        "tls_required_no": m.tls_required_no, "tls_override": m.tls_override or "default",
        "dsn": m.is_dsn, "ret": m.ret, "envid": m.envid,
        "recipients": [{
            "address": r.address, "state": r.state, "held": r.hold, "attempts": r.attempts,
            "next_attempt": iso(r.next_attempt), "last_attempt": iso(r.last_attempt),
            "last_result": _reply(r.last_code, r.last_enhanced, r.last_text),
            "last_host": r.last_host, "transport": r.transport,
        } for r in m.recipients],
    }
    if attempts is not None:
        out["attempts"] = [{
            "at": iso(a.at), "transport": a.transport or "direct", "route": a.route,
            "host": a.host, "ip": a.ip, "result": a.result,
            "reply": _reply(a.code, a.enhanced, a.text) or "",
            "tls": {"used": a.tls_used, "verified": a.tls_verified, "version": a.tls_version,
                    "cipher": a.tls_cipher, "policy": a.tls_policy_type,
                    "policy_domain": a.tls_policy_domain, "failure": a.tls_failure,
                    "result_type": a.tls_result_type, "overridden": a.tls_overridden},
        } for a in attempts]
    return out


def domain_tls_dict(d: qs.DomainTLS) -> dict[str, Any]:
    """The last TLS result seen for a recipient domain."""
    return {"domain": d.domain, "at": iso(d.at), "mx_host": d.mx_host, "ip": d.ip,
            "starttls": d.starttls, "requiretls": d.requiretls, "tls": d.tls_used,
            "verified": d.verified, "policy": d.policy_type, "failure": d.result_type,
            "tls_version": d.tls_version}
