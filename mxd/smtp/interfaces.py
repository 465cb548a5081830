"""The SMTP server's collaborators: directory, message-authentication checker, metrics.

Small structural interfaces (``typing.Protocol``) with no-op defaults, so the server can
be composed with the real directory/store/SASL objects in ``tap.py`` or with fakes in
tests.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from mxd.smtp.replies import Reply
from mxd.store.interfaces import Account


class IDirectory(Protocol):
    """Who receives and who may send (``mxd.directory.local.LocalDirectory`` provides it).

    Addresses are passed normalised: ``local@domain`` with the domain a lowercase A-label.
    """

    def resolve_recipient(self, address: str) -> Deferred[Account | None]:
        """The account that receives mail for ``address`` (catch-all and localpart
        separators applied), or None."""

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for ``domain`` is delivered here."""

    def may_send_as(self, account_name: str, address: str) -> Deferred[bool]:
        """True when the authenticated ``account_name`` owns ``address``."""


@attrs.frozen
class SessionInfo:
    """What a message-authentication checker may know about the SMTP session."""

    role: str  # "smtp" | "submission" | "submissions"
    remote_ip: str
    helo: str
    mail_from: str  # "" for the null reverse-path
    recipients: tuple[str, ...]
    tls_version: str | None = None
    tls_cipher: str | None = None
    authenticated_as: str | None = None
    requiretls: bool = False
    # Set when the message is forwarded on (mxd.forwarding): the domain whose key adds
    # an ARC set (RFC 8617 §5.1) to what is queued.
    forwarding_domain: str | None = None


@attrs.frozen
class Verdict:
    """What a message check decided, at the end of the message data.

    ``fields``: header fields (``Authentication-Results: ...``, ``DKIM-Signature: ...``,
    without CRLF) that the server puts on top of the message, below its own ``Received:``;
    ``header_section``: a replacement for the received header section (forged
    Authentication-Results removed), or None to keep it; ``remote_host``: the client's
    verified reverse name, for ``Received:``; ``mailbox``: the mailbox local copies go to
    (``Junk``), None for INBOX; ``reject``: refuse the message with this reply instead.
    """

    fields: tuple[str, ...] = ()
    header_section: bytes | None = None
    remote_host: str | None = None
    mailbox: str | None = None
    reject: Reply | None = None


class IMessageCheck(Protocol):
    """The checks of one message: sees the body as it arrives, decides at its end."""

    def feed(self, data: bytes) -> None:
        """Body bytes (after the empty line that ends the header section, unstuffed) in
        arrival order."""

    def finish(self) -> Deferred[Verdict]:
        """The end of the message data: fires with the verdict (an errback is logged and
        the message accepted unchanged, so that no mail is lost to a bug)."""


class IMessageChecker(Protocol):
    """The seam where SPF, DKIM, DMARC and iprev run on port 25 (``mxd.msgauth.inbound``)
    and DKIM signing on submission (``mxd.msgauth.signing``).

    ``begin`` is called once the header section is complete, with the header section as
    received (submission: with the Date and Message-ID the server adds).  It returns None
    when it has nothing to do for this message: the body is then written straight to the
    store as it arrives.  Otherwise the body is kept aside (memory, then a temporary file)
    until ``finish`` has decided, because the fields it adds go on top of the message.
    """

    def begin(self, session: SessionInfo, headers: bytes) -> IMessageCheck | None: ...


class NoChecks:
    """The default checker: no message authentication, no added fields."""

    def begin(self, session: SessionInfo, headers: bytes) -> IMessageCheck | None:
        return None


class IOutbound(Protocol):
    """The outbound queue as the SMTP server sees it.

    The server accepts a message with ``IMailStore.accept``, queue rows included, in one
    transaction; it then tells the queue that new work is due.  Relaying (a submission
    recipient that is not local) is offered only when there is a queue."""

    def wake(self) -> None: ...
