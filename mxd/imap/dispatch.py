"""What the IMAP command table is made of: connection states, tagged replies and
command specs (RFC 3501 §3, §7.1).

``mxd.imap.commands`` builds the table (``COMMANDS``) as a literal from these types;
the session (``mxd.imap.server``) dispatches through it.  Handlers and the session
both import this module, so neither needs the other at import time.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger

from mxd.store.interfaces import (
    CannotDeleteInbox,
    InvalidFlag,
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    NoSuchMailbox,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession
    from mxd.imap.values import Command


log = Logger()


class State(enum.StrEnum):
    """RFC 3501 §3 connection states."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class CommandDetached(Exception):
    """Raised by a handler that has completed its command itself (LOGOUT, STARTTLS,
    IDLE) or when the session closes under a running command."""


@attrs.frozen
class Reply:
    """The tagged completion of a command."""

    status: str  # "OK" | "NO" | "BAD"
    text: str
    code: str | None = None


def ok(text: str, code: str | None = None) -> Reply:
    return Reply("OK", text, code)


def no(text: str, code: str | None = None) -> Reply:
    return Reply("NO", text, code)


def bad(text: str, code: str | None = None) -> Reply:
    return Reply("BAD", text, code)


Handler = Callable[["IMAPSession", "Command"], Awaitable[Reply]]


@attrs.frozen
class CommandSpec:
    states: frozenset[State]
    handler: Handler
    # May untagged EXPUNGE be sent when this command completes?  RFC 3501 §7.4.1 forbids
    # it after FETCH, STORE and SEARCH (their UID forms allow it).
    expunge_ok: bool = True


ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


def store_error_reply(e: StoreError) -> Reply:
    """A store error as a tagged NO with an RFC 5530 response code.

    Errors the client caused (a name or flag the store refuses) are answered and not
    logged as faults; only an unexpected store error is logged at error level."""
    if isinstance(e, NoSuchMailbox):
        return no("Mailbox does not exist", "NONEXISTENT")
    if isinstance(e, MailboxExists):
        return no("Mailbox already exists", "ALREADYEXISTS")
    if isinstance(e, QuotaExceeded):
        return no("Quota exceeded", "OVERQUOTA")
    if isinstance(e, MailboxHasChildren):
        return no("Mailbox has inferior mailboxes", "HASCHILDREN")
    if isinstance(e, CannotDeleteInbox):
        return no("INBOX cannot be deleted", "CANNOT")
    if isinstance(e, InvalidMailboxName):
        return no(f"Invalid mailbox name: {e}", "CANNOT")
    if isinstance(e, InvalidFlag):
        return no(f"Invalid flag: {e}", "CANNOT")
    if isinstance(e, StoreUnavailable):  # RFC 5530 §3: a subsystem is down, try later
        log.warn("imap store unavailable: {error}", error=str(e))
        return no("The mail store is unavailable; try again later", "UNAVAILABLE")
    log.error("imap store error: {error}", error=str(e))
    return no("The operation failed", "SERVERBUG")
