"""What one delivery attempt means for each recipient, and what the queue does next.

Pure functions over values (no I/O, no clock, no store): the runner gathers a
``RcptOutcome`` per recipient from a transport, ``decide`` turns them into a ``Decision``
(finish, defer until when, which DSNs to send: RFC 3461 §4.1, §6.2, RFC 3464 §2.3.3;
retries by RFC 5321 §4.5.4.1 through ``mxd.queue.schedule``), and the runner writes that
decision in one store transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import attrs

from mxd.queue import mx
from mxd.queue.schedule import RetrySettings, delay_dsn_due, give_up_time, next_attempt
from mxd.smtp import dsn as dsnmod
from mxd.smtp.client import SMTPReplyError, TransactionResult
from mxd.store import queuedb as qs


class RcptKind(enum.StrEnum):
    """A recipient's outcome of one attempt."""

    DELIVERED = "delivered"  # 2yz: handed on (or into a local mailbox)
    TEMPORARY = "temporary"  # 4yz or no answer: try again later (RFC 5321 §4.5.4.1)
    PERMANENT = "permanent"  # 5yz: a failure DSN, never retried


@attrs.frozen
class RcptOutcome:
    recipient: qs.QueuedRecipient
    kind: RcptKind
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    host: str | None = None
    peer_dsn: bool = False  # the peer took NOTIFY (so no "relayed" DSN from us)
    final: bool = False  # delivered into a local mailbox (RFC 3464 "delivered")

    @property
    def diagnostic(self) -> str | None:
        """The reply as one line ("550 5.1.1 no such user") for logs and DSNs."""
        if not self.code:
            return self.text
        return f"{self.code} {self.enhanced or ''} {self.text or ''}".replace("  ", " ").strip()


def temporary(enhanced: str | None) -> str:
    """RFC 3463 §3.1: the class follows the verdict: a 5.x.y that only defers is 4.x.y."""
    if not enhanced:
        return "4.4.1"
    return "4" + enhanced[1:] if enhanced[0] == "5" else enhanced


def reply_fields(e: BaseException) -> tuple[int | None, str | None, str]:
    """(code, enhanced status, text) of an error that ended an attempt."""
    if isinstance(e, SMTPReplyError):
        return e.code, e.enhanced, " ".join(e.lines)
    if isinstance(e, mx.MXError):
        return (550 if e.permanent else 451), e.enhanced, str(e)
    return None, getattr(e, "enhanced", "4.4.1"), str(e) or e.__class__.__name__


def for_all(m: qs.QueuedMessage, kind: RcptKind, code: int | None, enhanced: str | None,
            text: str, host: str | None = None) -> list[RcptOutcome]:
    """The same outcome for every recipient of ``m``."""
    return [RcptOutcome(r, kind, code, enhanced, text, host) for r in m.recipients]


def from_transaction(m: qs.QueuedMessage, result: TransactionResult, host: str,
                     peer_dsn: bool) -> list[RcptOutcome]:
    """Each recipient's outcome of a transaction that ran (its RCPT reply, or the end of
    data's for the accepted ones)."""
    by_addr = {r.address: r for r in result.recipients}
    out = []
    for r in m.recipients:
        rr = by_addr.get(r.address)
        if rr is None:
            out.append(RcptOutcome(r, RcptKind.TEMPORARY, 451, "4.3.0", "no reply", host))
            continue
        reply = rr.reply
        # RecipientResult.permanent: RFC 5321 §4.5.3.1.10 makes a 552 to RCPT temporary.
        kind = (RcptKind.DELIVERED if reply.ok else
                RcptKind.PERMANENT if rr.permanent else RcptKind.TEMPORARY)
        enhanced = reply.enhanced
        if kind is RcptKind.TEMPORARY and enhanced and enhanced[0] == "5":
            enhanced = temporary(enhanced)
        out.append(RcptOutcome(r, kind, reply.code, enhanced, " ".join(reply.lines), host,
                               peer_dsn))
    return out


class Verdict(enum.StrEnum):
    """What the queue does with a recipient after an attempt."""

    DELIVERED = "delivered"  # leaves the queue
    BOUNCED = "bounced"  # leaves the queue: failed for good or gave up
    DEFERRED = "deferred"  # stays, due again at ``next_attempt``


@attrs.frozen
class RcptDecision:
    outcome: RcptOutcome
    verdict: Verdict
    diagnostic: str | None
    next_attempt: float | None = None  # DEFERRED only
    delay_dsn_sent: bool = False  # DEFERRED only: a delayed DSN went (now or before)


@attrs.frozen
class Decision:
    """The result of one attempt for the message, ready to be written."""

    recipients: tuple[RcptDecision, ...]
    reports: tuple[dsnmod.RecipientReport, ...]  # the DSN to send ("" sender: none)
    attempts: int  # the highest attempt count among the recipients, this one included

    @property
    def finished(self) -> list[int]:
        return [d.outcome.recipient.id for d in self.recipients
                if d.verdict is not Verdict.DEFERRED]

    @property
    def deferred(self) -> list[RcptDecision]:
        return [d for d in self.recipients if d.verdict is Verdict.DEFERRED]

    @property
    def next_attempt(self) -> float | None:
        times = [d.next_attempt for d in self.deferred if d.next_attempt is not None]
        return min(times) if times else None


def decide(m: qs.QueuedMessage, outcomes: Sequence[RcptOutcome], now: float,
           retry: RetrySettings, random: Callable[[], float]) -> Decision:
    """Finish, bounce or defer each recipient, and collect the DSN reports it calls for."""
    decisions: list[RcptDecision] = []
    reports: list[dsnmod.RecipientReport] = []
    for o in outcomes:
        r = o.recipient
        diag = o.diagnostic
        if o.kind is RcptKind.DELIVERED:
            decisions.append(RcptDecision(o, Verdict.DELIVERED, diag))
            # RFC 3461 §6.2.1: final delivery is "delivered"; handing on to an MTA without
            # DSN support is "relayed" (one that has it reports itself).
            action = dsnmod.Action.DELIVERED if o.final else dsnmod.Action.RELAYED
            if (o.final or not o.peer_dsn) and r.notify is not None \
                    and dsnmod.wants_dsn(m.mail_from, r.notify, action):
                reports.append(dsnmod.RecipientReport(
                    r.address, action, o.enhanced or "2.0.0", r.orcpt, o.host, diag, now))
            continue
        attempts_n = r.attempts + 1
        nxt = None if o.kind is RcptKind.PERMANENT else next_attempt(
            m.queued_at, now, attempts_n, retry, random)
        if nxt is None:
            status = o.enhanced or ("5.0.0" if o.kind is RcptKind.PERMANENT else "4.4.7")
            if o.kind is not RcptKind.PERMANENT:
                diag = f"{diag} (gave up after {attempts_n} attempts)"
            decisions.append(RcptDecision(o, Verdict.BOUNCED, diag))
            if dsnmod.wants_dsn(m.mail_from, r.notify, dsnmod.Action.FAILED):
                reports.append(dsnmod.RecipientReport(
                    r.address, dsnmod.Action.FAILED, status, r.orcpt, o.host, diag, now))
            continue
        send_delay = delay_dsn_due(attempts_n, retry, r.delay_dsn_sent)
        decisions.append(RcptDecision(o, Verdict.DEFERRED, diag, nxt,
                                      r.delay_dsn_sent or send_delay))
        if send_delay and dsnmod.wants_dsn(m.mail_from, r.notify, dsnmod.Action.DELAYED):
            reports.append(dsnmod.RecipientReport(
                r.address, dsnmod.Action.DELAYED, o.enhanced or "4.0.0", r.orcpt, o.host, diag,
                now, give_up_time(m.queued_at, retry)))
    if m.is_dsn or not m.mail_from:
        reports = []  # RFC 3461 §6.2: never a DSN about a DSN
    attempts = max((o.recipient.attempts + 1 for o in outcomes), default=1)
    return Decision(tuple(decisions), tuple(reports), attempts)
