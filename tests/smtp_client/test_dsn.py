"""DSN messages (mxd.smtp.dsn): RFC 3464 structure, RFC 3461 conditions, RFC 6533."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from mxd.smtp import dsn
from mxd.smtp.dsn import Action, RecipientReport, ReportContext

ORIGINAL = (b"From: a@example.org\r\nTo: b@remote.test\r\nSubject: hello\r\n"
            b"Message-ID: <1@example.org>\r\n\r\nbody line\r\nsecret body\r\n")


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _status_groups(part: EmailMessage) -> list[dict[str, str]]:
    # message/delivery-status parses as a list of header blocks
    payload = part.get_payload()
    assert isinstance(payload, list)
    return [{k.lower(): str(v) for k, v in block.items()} for block in payload]


def _build(**kw: object) -> bytes:
    args: dict[str, object] = dict(
        reporting_mta="mx.example.org", sender="a@example.org", original=ORIGINAL, now=1_700_000_000.0,
        recipients=[RecipientReport(
            final_recipient="b@remote.test", action=Action.FAILED, status="5.1.1",
            original_recipient="rfc822;B+2Bx@remote.test", remote_mta="mx.remote.test",
            diagnostic="550 5.1.1 no such user", last_attempt=1_700_000_000.0)],
        envid="env-42", arrival=1_699_990_000.0,
    )
    args.update(kw)
    return dsn.build_dsn(**args)  # type: ignore[arg-type]


def test_failure_dsn_is_a_multipart_report_with_rfc3464_fields() -> None:
    """Three parts; the status part has per-message and per-recipient fields decoded right."""
    msg = _parse(_build())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    per_message, per_rcpt = _status_groups(parts[1])  # type: ignore[arg-type]
    assert per_message["reporting-mta"] == "dns;mx.example.org"
    assert per_message["original-envelope-id"] == "env-42"
    assert "arrival-date" in per_message
    assert per_rcpt["final-recipient"] == "rfc822;b@remote.test"
    assert per_rcpt["original-recipient"] == "rfc822;B+x@remote.test"  # xtext "+2B" decoded
    assert per_rcpt["action"] == "failed" and per_rcpt["status"] == "5.1.1"
    assert per_rcpt["diagnostic-code"] == "smtp;550 5.1.1 no such user"
    assert per_rcpt["remote-mta"] == "dns;mx.remote.test"


def test_ret_hdrs_returns_headers_only_and_ret_full_the_whole_message() -> None:
    """Default/HDRS returns no body; FULL returns message/rfc822 with the body."""
    hdrs = _build()
    assert b"Subject: hello" in hdrs and b"secret body" not in hdrs
    full = _parse(_build(ret="FULL"))
    returned = list(full.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]  # type: ignore[index]
    assert inner["Subject"] == "hello" and "secret body" in inner.get_content()


def test_delayed_dsn_text_names_the_schedule() -> None:
    """A delayed DSN says when the next attempt is and until when it retries."""
    ctx = ReportContext(attempts=4, queued_at=1_700_000_000.0, next_attempt=1_700_010_000.0,
                        give_up_at=1_700_432_000.0)
    rep = RecipientReport(final_recipient="b@remote.test", action=Action.DELAYED, status="4.4.1",
                          will_retry_until=1_700_432_000.0)
    msg = _parse(_build(recipients=[rep], context=ctx))
    assert msg["Subject"].startswith("Delayed Mail")
    text = list(msg.iter_parts())[0].get_content()
    assert "Wed, 15 Nov 2023 01:00:00 +0000" in text  # next_attempt
    assert "Sun, 19 Nov 2023 22:13:20 +0000" in text  # give_up_at
    rcpt = _status_groups(list(msg.iter_parts())[1])[1]  # type: ignore[arg-type]
    assert rcpt["action"] == "delayed" and "will-retry-until" in rcpt


def test_smtputf8_uses_rfc6533_types_and_utf8_address_type() -> None:
    """SMTPUTF8 messages get global-* part types and utf-8 addresses."""
    rep = RecipientReport(final_recipient="bö@rémote.test", action=Action.FAILED, status="5.1.1")
    raw = _build(recipients=[rep], smtputf8=True, sender="ä@example.org")
    assert b"message/global-delivery-status" in raw
    assert b"message/global-headers" in raw
    assert "Final-Recipient: utf-8;bö@rémote.test".encode() in raw
    with pytest.raises(dsn.DSNError):
        _build(recipients=[rep], smtputf8=False)


@pytest.mark.parametrize(("mail_from", "notify", "action", "expected"), [
    ("", None, Action.FAILED, False),
    ("a@x", None, Action.FAILED, True),
    ("a@x", None, Action.DELAYED, True),
    ("a@x", None, Action.RELAYED, False),
    ("a@x", frozenset({"NEVER"}), Action.FAILED, False),
    ("a@x", frozenset({"SUCCESS"}), Action.FAILED, False),
    ("a@x", frozenset({"SUCCESS"}), Action.RELAYED, True),
    ("a@x", frozenset({"failure"}), Action.DELAYED, False),
])
def test_notify_conditions(mail_from: str, notify: frozenset[str] | None, action: Action,
                           expected: bool) -> None:
    """NOTIFY decides which DSNs go out; never any for a null sender."""
    assert dsn.wants_dsn(mail_from, notify, action) is expected


def test_null_sender_and_header_injection_are_refused() -> None:
    """No DSN to the null path; CR/LF in field values cannot add fields."""
    with pytest.raises(dsn.DSNError):
        _build(sender="")
    raw = _build(envid="x\r\nBcc: evil@x")
    assert b"\r\nBcc:" not in raw


@pytest.mark.parametrize(("smtputf8", "report_type", "status_type"), [
    (False, "delivery-status", "message/delivery-status"),
    (True, "global-delivery-status", "message/global-delivery-status"),
])
def test_report_type_names_the_second_part(smtputf8: bool, report_type: str,
                                           status_type: str) -> None:
    """RFC 6522 §3: report-type is the subtype of the second part, so an RFC 6533 DSN is
    multipart/report; report-type=global-delivery-status."""
    msg = _parse(_build(smtputf8=smtputf8))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == report_type
    assert list(msg.iter_parts())[1].get_content_type() == status_type
