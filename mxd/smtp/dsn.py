"""Delivery Status Notifications: RFC 3464 reports, RFC 3461 parameters, RFC 6533 for SMTPUTF8.

A DSN is a ``multipart/report; report-type=delivery-status`` (RFC 6522; ``global-delivery-status``
for RFC 6533) with three parts:
a human-readable explanation, a ``message/delivery-status`` (RFC 3464 §2) and the returned
message: its headers (``text/rfc822-headers``, RET=HDRS and the default) or all of it
(``message/rfc822``, RET=FULL; RFC 3461 §4.3).  For a message sent with SMTPUTF8 the
RFC 6533 types are used: ``message/global-delivery-status``, ``message/global-headers`` and
``message/global``, with ``utf-8`` address types for non-ASCII addresses (RFC 6533 §3).

Never a DSN about a message with a null reverse-path (RFC 3461 §6.2, RFC 5321 §4.5.5), and
only for the conditions the recipient's NOTIFY asked for (RFC 3461 §4.1; the default is
FAILURE and DELAY).  The DSN itself goes out with a null reverse-path.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import formatdate

import attrs

from mxd.errors import MxdError
from mxd.smtp import xtext

# A returned message larger than this is returned as headers only (RFC 3461 §4.3 lets an
# MTA truncate the returned content).
MAX_RETURNED_FULL = 10 * 1024 * 1024


class DSNError(MxdError):
    """A DSN could not be built from the given values."""


class Action(enum.StrEnum):
    """RFC 3464 §2.3.3."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


_NOTIFY_FOR = {
    Action.FAILED: "FAILURE",
    Action.DELAYED: "DELAY",
    Action.DELIVERED: "SUCCESS",
    Action.RELAYED: "SUCCESS",
    Action.EXPANDED: "SUCCESS",
}


def wants_dsn(mail_from: str, notify: frozenset[str] | None, action: Action) -> bool:
    """Whether a DSN with ``action`` is sent for a recipient (RFC 3461 §4.1, §6.2)."""
    if not mail_from:
        return False  # RFC 3461 §6.2: never a DSN about a DSN (null reverse-path)
    if notify is None:
        return action in (Action.FAILED, Action.DELAYED)
    upper = {n.upper() for n in notify}
    if "NEVER" in upper:
        return False
    return _NOTIFY_FOR[action] in upper


@attrs.frozen
class RecipientReport:
    """The per-recipient fields of RFC 3464 §2.3."""

    final_recipient: str
    action: Action
    status: str  # RFC 3463 "x.y.z"
    original_recipient: str | None = None  # ORCPT as received: "rfc822;xtext"
    remote_mta: str | None = None
    diagnostic: str | None = None  # the SMTP reply, e.g. "550 5.1.1 no such user"
    last_attempt: float | None = None
    will_retry_until: float | None = None


@attrs.frozen
class ReportContext:
    """What the human part says about the schedule (computed by the queue from its settings)."""

    attempts: int = 0
    queued_at: float | None = None
    next_attempt: float | None = None
    give_up_at: float | None = None


def _clean(value: str) -> str:
    """Field values must not break the header structure."""
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


def _address_field(address: str, smtputf8: bool) -> str:
    if address.isascii():
        return f"rfc822;{_clean(address)}"
    if not smtputf8:
        raise DSNError("a non-ASCII address in a DSN needs SMTPUTF8 (RFC 6533)")
    return f"utf-8;{_clean(address)}"  # RFC 6533 §3


def _original_recipient(orcpt: str, smtputf8: bool) -> str:
    addr_type, _sep, value = orcpt.partition(";")
    if not _sep:
        return f"rfc822;{_clean(xtext.decode_lenient(orcpt))}"
    decoded = xtext.decode_lenient(value)
    if addr_type.strip().lower() == "utf-8" or not decoded.isascii():
        return f"utf-8;{_clean(decoded)}" if smtputf8 else f"{addr_type.strip()};{_clean(value)}"
    return f"{addr_type.strip()};{_clean(decoded)}"


def _date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def human_text(
    reporting_mta: str, recipients: Sequence[RecipientReport], context: ReportContext,
) -> str:
    """The first part: what happened, in words, with times from the real schedule."""

    failed = [r for r in recipients if r.action is Action.FAILED]
    delayed = [r for r in recipients if r.action is Action.DELAYED]
    done = [r for r in recipients if r.action in (Action.DELIVERED, Action.RELAYED)]
    lines = [f"This is the mail system at {reporting_mta}.", ""]
    if failed:
        lines.append("Your message could not be delivered to the following recipients:")
        lines.append("")
        for r in failed:
            lines.append(f"  <{r.final_recipient}>")
            if r.diagnostic:
                via = f" (from {r.remote_mta})" if r.remote_mta else ""
                lines.append(f"    {r.diagnostic}{via}")
        lines.append("")
        if context.attempts > 1 and context.queued_at is not None:
            last = max((r.last_attempt or 0.0) for r in failed) or context.queued_at
            lines.append(
                f"Delivery was attempted {context.attempts} times over "
                f"{format_duration(last - context.queued_at)} before giving up."
            )
            lines.append("")
    if delayed:
        lines.append("Delivery to the following recipients has been delayed:")
        lines.append("")
        for r in delayed:
            lines.append(f"  <{r.final_recipient}>")
            if r.diagnostic:
                lines.append(f"    {r.diagnostic}")
        lines.append("")
        if context.next_attempt is not None:
            lines.append(f"The next attempt is planned for {format_time(context.next_attempt)}.")
        if context.give_up_at is not None:
            lines.append(
                f"The mail system will keep trying until {format_time(context.give_up_at)}; "
                "you do not need to send the message again."
            )
        lines.append("")
    if done:
        lines.append("Your message was delivered to the following recipients:")
        lines.append("")
        lines.extend(f"  <{r.final_recipient}>" for r in done)
        lines.append("")
    return "\r\n".join(lines) + "\r\n"


def delivery_status(
    reporting_mta: str,
    recipients: Sequence[RecipientReport],
    *,
    envid: str | None,
    arrival: float | None,
    smtputf8: bool,
) -> str:
    """The message/delivery-status body (RFC 3464 §2.1: per-message, then per-recipient)."""
    fields = []
    if envid:
        fields.append(f"Original-Envelope-Id: {_clean(envid)}")  # RFC 3464 §2.2.1
    fields.append(f"Reporting-MTA: dns;{_clean(reporting_mta)}")  # §2.2.2
    if arrival is not None:
        fields.append(f"Arrival-Date: {_date(arrival)}")  # §2.2.5
    groups = ["\r\n".join(fields) + "\r\n"]
    for r in recipients:
        f = []
        if r.original_recipient:
            f.append(f"Original-Recipient: {_original_recipient(r.original_recipient, smtputf8)}")
        f.append(f"Final-Recipient: {_address_field(r.final_recipient, smtputf8)}")  # §2.3.2
        f.append(f"Action: {r.action}")  # §2.3.3
        f.append(f"Status: {r.status}")  # §2.3.4
        if r.remote_mta:
            f.append(f"Remote-MTA: dns;{_clean(r.remote_mta)}")  # §2.3.5
        if r.diagnostic:
            f.append(f"Diagnostic-Code: smtp;{_clean(r.diagnostic)}")  # §2.3.6
        if r.last_attempt is not None:
            f.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")  # §2.3.7
        if r.will_retry_until is not None and r.action is Action.DELAYED:
            f.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")  # §2.3.9
        groups.append("\r\n".join(f) + "\r\n")
    return "\r\n".join(groups)


def header_section(message: bytes) -> bytes:
    """The header section of a message (up to the first empty line), CRLF-terminated."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = message.find(sep)
        if idx >= 0:
            return message[: idx + len(sep) // 2]
    return message if message.endswith(b"\n") else message + b"\r\n"


def _subject(recipients: Sequence[RecipientReport]) -> str:
    actions = {r.action for r in recipients}
    if Action.FAILED in actions:
        return "Undelivered Mail Returned to Sender"
    if Action.DELAYED in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[RecipientReport],
    original: bytes,
    ret: str | None = None,
    envid: str | None = None,
    arrival: float | None = None,
    smtputf8: bool = False,
    now: float,
    context: ReportContext | None = None,
    boundary: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """The complete DSN message (RFC 5322 bytes, CRLF line ends) to send to ``sender``.

    ``original`` is the returned message as stored (headers and body); with RET=FULL the
    whole message is returned when it is at most MAX_RETURNED_FULL bytes, else only its
    headers.  Raises DSNError for a null sender or no recipients.
    """
    if not sender:
        raise DSNError("no DSN for a null reverse-path (RFC 3461 §6.2)")
    if not recipients:
        raise DSNError("a DSN needs at least one recipient report")
    context = context or ReportContext()
    boundary = boundary or f"mxd-dsn-{secrets.token_hex(12)}"
    message_id = message_id or f"<dsn-{secrets.token_hex(12)}@{reporting_mta}>"
    full = (ret or "").upper() == "FULL" and len(original) <= MAX_RETURNED_FULL
    status_type = "message/global-delivery-status" if smtputf8 else "message/delivery-status"
    if full:
        returned_type = "message/global" if smtputf8 else "message/rfc822"
        returned = original if original.endswith(b"\n") else original + b"\r\n"
    else:
        returned_type = "message/global-headers" if smtputf8 else "text/rfc822-headers"
        returned = header_section(original)
    eight_bit = smtputf8 or not returned.isascii()
    cte = "8bit" if eight_bit else "7bit"
    text = human_text(reporting_mta, recipients, context)
    status = delivery_status(reporting_mta, recipients, envid=envid, arrival=arrival,
                             smtputf8=smtputf8)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_clean(sender)}>",
        f"Subject: {_subject(recipients)}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        # RFC 6522 §3: report-type is the subtype of the second part (RFC 6533 §6.3).
        f'Content-Type: multipart/report; report-type={status_type.split("/")[1]}; '
        f'boundary="{boundary}"',
        f"Content-Transfer-Encoding: {cte}",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        'Content-Type: text/plain; charset="utf-8"',
        f"Content-Transfer-Encoding: {'8bit' if not text.isascii() else '7bit'}",
        "",
    ]
    parts = "\r\n".join(head).encode("utf-8") + b"\r\n" + text.encode("utf-8")
    parts += (
        f"\r\n--{boundary}\r\nContent-Description: Delivery report\r\n"
        f"Content-Type: {status_type}\r\n"
        f"Content-Transfer-Encoding: {'8bit' if smtputf8 else '7bit'}\r\n\r\n"
    ).encode() + status.encode("utf-8")
    desc = "Undelivered message" if full else "Undelivered message headers"
    parts += (
        f"\r\n--{boundary}\r\nContent-Description: {desc}\r\n"
        f"Content-Type: {returned_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode() + returned
    if not parts.endswith(b"\r\n"):
        parts += b"\r\n"
    parts += f"\r\n--{boundary}--\r\n".encode()
    return parts


def dsn_is_8bit(dsn: bytes) -> bool:
    """Whether the DSN must be sent with BODY=8BITMIME (RFC 6152)."""
    return not dsn.isascii()


def format_duration(seconds: float) -> str:
    """'3 days 4 hours', '7 minutes', for the human part of a DSN."""
    seconds = max(0, int(round(seconds)))
    parts: list[str] = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    if not parts:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return " ".join(parts[:2])


def format_time(ts: float) -> str:
    """An RFC 5322 style UTC date for the human part of a DSN."""
    return datetime.fromtimestamp(ts, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
