"""Sending from the web client: build the message (``mxd.webmail.compose``), submit it
through the submission path (``mxd.smtp.inprocess``: sender rights, DKIM signing,
REQUIRETLS, ``TLS-Required: No``, durable accept into the queue before success), then
keep a copy in the account's Sent mailbox (RFC 6154 ``\\Sent``) flagged ``\\Seen``.

The TLS choice of the compose form (RFC 8689):

* ``default``: the server's outbound policy (DANE, MTA-STS, opportunistic STARTTLS);
* ``requiretls``: MAIL FROM ... REQUIRETLS: every hop must use verified TLS or the
  message bounces (§4);
* ``insecure``: the ``TLS-Required: No`` header field: the recipient domain's TLS
  policy (DANE, MTA-STS) may be ignored so that the message gets through (§5).

What is sent is what the form says: "default" is never upgraded to REQUIRETLS behind the
user's back (a domain's REQUIRETLS support is what the last delivery saw, and a message
that cannot be delivered with REQUIRETLS bounces).  The compose page selects
``requiretls`` itself, visibly, when every recipient domain is known to support it, and
the user's own choice of the select wins over that.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mxd.smtp.inprocess import InProcessSubmission, SubmissionRefused
from mxd.store.interfaces import Account, SpecialUse
from mxd.webmail.compose import Composed, ComposeForm, Limits, build

__all__ = ["SendResult", "TLSChoice", "WebSubmitter", "SubmissionRefused"]

log = Logger(namespace="mxd.webmail")


class TLSChoice(enum.StrEnum):
    DEFAULT = "default"
    REQUIRETLS = "requiretls"  # RFC 8689 §4
    INSECURE = "insecure"  # RFC 8689 §5, "TLS-Required: No"


@attrs.frozen
class SendResult:
    queue_id: str
    message_id: str
    recipients: tuple[str, ...]
    sent_uid: int | None  # the copy in Sent, or None when it could not be saved
    sent_error: str | None = None


class WebSubmitter:
    """What the compose page calls to send.  ``store`` is the mail store (for the Sent
    copy); ``run_blocking`` runs blocking file work off the reactor thread."""

    def __init__(self, submission: InProcessSubmission, store: Any, *, clock: Any,
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]],
                 limits: Limits = Limits()) -> None:
        self.submission = submission
        self.store = store
        self.clock = clock
        self.run_blocking = run_blocking
        self.limits = limits

    def compose(self, account: Account, form: ComposeForm, tls: TLSChoice) -> Composed:
        """The message for ``form`` (raises compose.ComposeError)."""
        if tls is TLSChoice.INSECURE:
            form = attrs.evolve(form, tls_required_no=True)
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        return build(form, allowed_from=account.addresses, now=now,
                     hostname=self.submission.hostname, unique=secrets.token_hex(12),
                     limits=self.limits)

    async def send(self, account: Account, form: ComposeForm, tls: TLSChoice, *,
                   client_ip: str, protected: bool) -> SendResult:
        """Compose, submit and keep the Sent copy.  Raises compose.ComposeError (the form)
        or SubmissionRefused (the submission session's reply)."""
        # Building encodes every attachment (base64): a pure function, run off the
        # reactor thread so a large upload does not stall other sessions.
        composed: Composed = await self.run_blocking(lambda: self.compose(account, form, tls))
        submitted = await self.submission.submit(
            account=account.name, mail_from=composed.envelope_from,
            recipients=composed.recipients, data=composed.message, client_ip=client_ip,
            protected=protected, requiretls=tls is TLSChoice.REQUIRETLS,
            smtputf8=composed.smtputf8, eight_bit=composed.eight_bit)
        log.info("webmail {account} sent {queue_id} to {n} recipient(s) tls={tls}",
                 account=account.name, queue_id=submitted.queue_id,
                 n=len(composed.recipients), tls=str(tls))
        try:
            uid: int | None = await self.save_sent(account.id, composed.sent_copy)
            error = None
        except Exception as e:  # noqa: BLE001 - the message is sent; say what failed
            log.failure("webmail {account}: the Sent copy of {queue_id} was not saved",
                        account=account.name, queue_id=submitted.queue_id)
            uid, error = None, str(e) or type(e).__name__
        return SendResult(submitted.queue_id, composed.message_id, composed.recipients, uid,
                          error)

    async def save_sent(self, account_id: int, data: bytes) -> int:
        """Append ``data`` to the account's \\Sent mailbox (made when missing) with
        \\Seen; fires with the UID once durable."""
        boxes = await self.store.list_mailboxes(account_id)
        sent = next((b for b in boxes if b.special_use == SpecialUse.SENT), None)
        if sent is None:
            sent = next((b for b in boxes if b.name == "Sent"), None)
        if sent is None:
            sent = await self.store.create_mailbox(account_id, "Sent", SpecialUse.SENT)

        def write() -> Any:
            blob = self.store.new_blob()
            try:
                blob.write(data)
            except BaseException:
                blob.abort()
                raise
            return blob

        blob = await self.run_blocking(write)
        return int(await self.store.append(sent.id, blob, frozenset({"\\Seen"})))
