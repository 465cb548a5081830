"""The SMTP server's collaborators: directory, message-authentication checker, metrics.

Small structural interfaces (``typing.Protocol``) with no-op defaults, so the server can
be composed with the real directory/store/SASL objects in ``tap.py`` or with fakes in
tests.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, succeed

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


class IInboundChecker(Protocol):
    """The seam where SPF, DKIM, DMARC and iprev run before an inbound message is accepted.

    ``check`` is called once the message's header section is complete (reading pauses
    meanwhile) with the header section as received.  It fires with complete header field
    lines (``Authentication-Results: ...`` without CRLF) that the server puts at the top of
    the stored message, below its own ``Received:``.
    """

    def check(self, session: SessionInfo, headers: bytes) -> Deferred[list[str]]: ...


class NoChecks:
    """The default checker: no message authentication, no added fields."""

    def check(self, session: SessionInfo, headers: bytes) -> Deferred[list[str]]:
        return succeed([])


class IOutbound(Protocol):
    """The outbound queue as the SMTP server sees it.

    The server accepts a message with ``IMailStore.accept``, queue rows included, in one
    transaction; it then tells the queue that new work is due.  Relaying (a submission
    recipient that is not local) is offered only when there is a queue."""

    def wake(self) -> None: ...


class IMetrics(Protocol):
    def inc(self, name: str, **labels: str) -> None: ...


class NoMetrics:
    def inc(self, name: str, **labels: str) -> None:
        pass
