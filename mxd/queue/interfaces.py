"""What the SMTP server hands the outbound queue (the seam between submission and delivery)."""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from mxd.store.interfaces import BlobWriter


@attrs.frozen
class OutboundRecipient:
    address: str  # as given in RCPT TO, UTF-8 allowed when smtputf8
    notify: frozenset[str] | None = None  # RFC 3461 §4.1: {"SUCCESS","FAILURE","DELAY"} or {"NEVER"}
    orcpt: str | None = None  # RFC 3461 §4.2, "addr-type;xtext" as received


@attrs.frozen
class OutboundMessage:
    mail_from: str  # "" is the null reverse-path (then no DSN is ever sent about it)
    recipients: tuple[OutboundRecipient, ...]
    ret: str | None = None  # RFC 3461 §4.3: "FULL" | "HDRS"
    envid: str | None = None  # RFC 3461 §4.4, xtext-decoded
    requiretls: bool = False  # RFC 8689 §4: MAIL FROM ... REQUIRETLS
    tls_required_no: bool = False  # RFC 8689 §5: "TLS-Required: No" header
    smtputf8: bool = False  # RFC 6531
    body: str = "7BIT"  # "7BIT" | "8BITMIME" | "BINARYMIME"
    sender_account: str | None = None  # authenticated submitter, for admin and DSN routing
    size: int = 0


class IOutbound(Protocol):
    def enqueue(self, blob: BlobWriter, message: OutboundMessage) -> Deferred[str]:
        """Queue ``message`` with the body in ``blob``; fires with the queue id once durable.

        The blob may already have been made durable by a local delivery of the same
        message (``IMailStore.deliver``); the queue then references the same file rather
        than copying it.  Errbacks with a StoreError and then nothing was queued.
        """
