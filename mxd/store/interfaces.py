"""The storage contract shared by the SMTP server, the IMAP server and the queue.

Two backends implement it: the embedded one (``mxd.store.sqlite``) keeps metadata in
SQLite (WAL) and one file per message body under the data directory; the server-grade one
(``mxd.store.postgres``) keeps metadata in PostgreSQL and bodies as files in a directory
that several mxd nodes share.  Every method returns a Deferred, UIDs/modseqs are allocated
by the backend inside its transaction, and change notification goes through ``subscribe``
rather than shared in-process objects.  No database connection crosses this contract:
the queue has its own (``mxd.queue.storage.IQueueStore``), and the SQL both backends run
is theirs alone (``mxd.store.sqlbase``).

Durability (DESIGN.md "Contracts"): a Deferred from ``deliver``/``append`` fires only
after the body file and the metadata commit are both fsynced.  A crash at any point
leaves either the whole message visible or none of it.

Derived data (``register_deriver``, ``get_derived``, ``backfill_derived``): what a
protocol computes from a message body (IMAP's rendered ENVELOPE and SORT/THREAD keys,
a PREVIEW) is stored with the body, computed once when the body arrives (deliver,
accept, append; on the store's thread, never the reactor's) and read back per mailbox
in one query.  A store may put off the values of delivered bodies (``accept``) until it
is quiet, so that a burst of incoming mail is taken in first (the embedded store does,
mxd.store.derived.Later), at most DERIVED_MAX_DELAY seconds unless overloaded; a reader
handles a message without values as one stored before its deriver existed, by computing
what it needs from the body.  Values are opaque octets under a *kind* name chosen by their producer
("imap.envelope.1"); a new format takes a new kind, so a stored value never needs to be
rewritten.  Bodies are shared by COPY and MOVE, so their copies share the values; the
values go with the body.  Bodies stored before a deriver was registered (an older
store) get theirs from ``backfill_derived``, in small batches.  The store never imports
a protocol: the producer passes its function in.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import BinaryIO, Protocol

import attrs
from twisted.internet.defer import Deferred

from mxd.errors import MxdError

# Seconds a store may put off the derived values of a delivered body while deliveries
# keep coming (see the module docstring).
DERIVED_MAX_DELAY = 5.0


class StoreError(MxdError):
    """A storage operation failed."""


class StoreUnavailable(StoreError):
    """The store's database cannot be reached now (restarting, network): a temporary
    failure; nothing was stored, try again later (SMTP 451, IMAP NO [UNAVAILABLE])."""


class NoSuchAccount(StoreError):
    pass


class AccountExists(StoreError):
    pass


class AddressInUse(StoreError):
    pass


class NoSuchMailbox(StoreError):
    pass


class MailboxExists(StoreError):
    pass


class QuotaExceeded(StoreError):
    pass


class MailboxHasChildren(StoreError):
    """RFC 3501 §6.3.4: the mailbox has inferiors (mxd has no \\Noselect mailboxes)."""


class CannotDeleteInbox(StoreError):
    """RFC 3501 §6.3.4: deleting INBOX is an error."""


class InvalidMailboxName(StoreError):
    """A mailbox name is empty, has an empty level, or control characters (a client's
    mistake, not a server fault)."""


class MessageGone(StoreError):
    """The message a command names is no longer in its mailbox (REPLACE, RFC 8508)."""


class InvalidFlag(StoreError):
    """A flag is not an IMAP atom (or \\Recent, which is never stored), or too long."""


class SpecialUse(enum.StrEnum):
    """RFC 6154 special-use attributes created for every account."""

    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    JUNK = "\\Junk"
    ARCHIVE = "\\Archive"


# Mailboxes every new account gets: name -> special-use (None for INBOX).
DEFAULT_MAILBOXES: dict[str, SpecialUse | None] = {
    "INBOX": None,
    "Sent": SpecialUse.SENT,
    "Drafts": SpecialUse.DRAFTS,
    "Trash": SpecialUse.TRASH,
    "Junk": SpecialUse.JUNK,
    "Archive": SpecialUse.ARCHIVE,
}

HIERARCHY_SEPARATOR = "/"


@attrs.frozen
class Account:
    id: int
    name: str  # login name, e.g. "mxd@localhost" or "alice"
    addresses: tuple[str, ...] = ()  # normalised "local@domain" (domain in ASCII/A-label)


@attrs.frozen
class MailboxInfo:
    id: int
    account_id: int
    name: str  # full name with "/" as separator; "INBOX" is case-insensitive
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: SpecialUse | None
    subscribed: bool
    exists: int = 0  # number of messages
    unseen: int = 0
    size: int = 0  # sum of message sizes (STATUS=SIZE)
    deleted: int = 0  # messages flagged \\Deleted (RFC 9051 STATUS DELETED)


@attrs.frozen
class MessageInfo:
    """One message in one mailbox (IMAP's view)."""

    uid: int
    modseq: int
    flags: frozenset[str]  # system flags ("\\Seen" ...) and keywords together
    internal_date: datetime  # timezone-aware
    size: int
    blob_id: str  # the body file; shared by copies and by queue rows


@attrs.frozen(eq=False)
class MessageColumns:
    """Every message of a mailbox in UID order, column by column: what an IMAP server
    keeps per selected mailbox, without an object per message.  The receiver owns the
    arrays."""

    uids: array[int]  # "I"
    modseqs: array[int]  # "Q"
    flag_sets: list[frozenset[str]]  # the distinct flag sets
    flag_ids: array[int]  # "I": index into flag_sets
    sizes: array[int]  # "Q"
    dates: array[float]  # "d": internal date, POSIX seconds
    tz_minutes: array[int]  # "h": the internal date's UTC offset
    blob_ids: list[str] | None  # or, when every id is 32 hex digits:
    blobs_packed: bytes | None  # 16 octets per message


@attrs.frozen
class MessageProps:
    """Properties recorded with a delivered message, beyond the IMAP ones."""

    requiretls: bool = False  # RFC 8689: received with REQUIRETLS
    tls_required_no: bool = False  # RFC 8689 §5 header present
    mail_from: str | None = None
    received_via: str | None = None  # e.g. "ESMTPS" for logging and admin


@attrs.frozen
class OutboundRecipient:
    """A recipient the outbound queue delivers to."""

    address: str  # as given in RCPT TO, UTF-8 allowed when smtputf8
    notify: frozenset[str] | None = None  # RFC 3461 §4.1: {"SUCCESS","FAILURE","DELAY"} or {"NEVER"}
    orcpt: str | None = None  # RFC 3461 §4.2, "addr-type;xtext" as received


@attrs.frozen
class OutboundMessage:
    """The envelope of a message for the outbound queue (kept in its rows)."""

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
    is_dsn: bool = False  # generated here (a DSN): never answered with another DSN
    tls_report: bool = False  # an RFC 8460 report: its sessions record no TLS results (§3)


@attrs.frozen
class Accepted:
    """What ``IMailStore.accept`` made durable."""

    uids: tuple[int, ...]  # one per local target, in order
    queue_id: str | None  # the queue's id for the outbound part, None without one


@attrs.frozen
class Appended:
    """What ``IMailStore.append_to`` stored: the mailbox it went to and the new UID."""

    mailbox_id: int
    uidvalidity: int
    uid: int


@attrs.frozen
class Delivery:
    """One target of a ``deliver`` call: a mailbox of an account."""

    account_id: int
    mailbox: str = "INBOX"
    flags: frozenset[str] = frozenset()


@attrs.frozen
class MailboxChange:
    """Sent to ``subscribe`` listeners after a commit that changed a mailbox."""

    mailbox_id: int
    kind: str  # "exists" | "expunge" | "flags" | "deleted" | "renamed"
    uids: tuple[int, ...] = ()
    highestmodseq: int = 0


@attrs.frozen
class AccountChange:
    """A change to an account's mailbox names, subscriptions or annotations, as another
    process of the same store reports it (mxd.store.watch): what RFC 5465 §5.4-§5.7
    calls MailboxName, SubscriptionChange and Mailbox/ServerMetadataChange events."""

    account_id: int
    kind: str  # "name" | "subscription" | "metadata"
    name: str | None  # the mailbox (None: server annotations)
    old: str | None = None  # a rename's old name
    exists: bool = True  # "name": created or renamed (True), deleted (False)
    subscribed: bool = False  # "subscription": subscribed now
    entries: tuple[str, ...] = ()  # "metadata": the entry names set or removed


class BlobWriter(Protocol):
    """Receives a message body as it arrives (SMTP DATA, IMAP APPEND literal).

    Bytes go straight to a temporary file in the data directory, so a large message never
    sits whole in memory.  ``abort`` removes it; ``close`` (via deliver/append/enqueue)
    fsyncs it and makes it a blob.
    """

    def write(self, data: bytes) -> None: ...

    @property
    def size(self) -> int: ...

    def abort(self) -> None: ...


# A deriver computes derived data of one body from ``read_head(n)``, the body's first
# ``n`` octets (all of it when shorter): ``{kind: value}``.  It must be pure and fast
# (it runs per stored message) and may raise; a failing deriver stores nothing.
ReadHead = Callable[[int], bytes]
Deriver = Callable[[ReadHead], Mapping[str, bytes]]


class IAccountStore(Protocol):
    def add_account(self, name: str, secrets_text: str, addresses: Iterable[str] = ()) -> Deferred[Account]: ...

    def delete_account(self, name: str) -> Deferred[None]: ...

    def set_secrets(self, name: str, secrets_text: str) -> Deferred[None]: ...

    def get_account(self, name: str) -> Deferred[Account | None]: ...

    def get_secrets(self, name: str) -> Deferred[str | None]:
        """The account's ``StoredSecrets.to_text()``; None when there is no such account."""

    def list_accounts(self) -> Deferred[list[Account]]: ...

    def add_address(self, name: str, address: str) -> Deferred[None]: ...

    def remove_address(self, address: str) -> Deferred[None]: ...

    def account_for_address(self, address: str) -> Deferred[Account | None]:
        """Exact lookup of a normalised address (catch-all/separator logic is the caller's)."""

    def set_quota(self, name: str, quota_bytes: int | None) -> Deferred[None]:
        """The account's own limit in bytes (None: the store's default)."""


class IMailStore(Protocol):
    # -- bodies -----------------------------------------------------------------------
    def new_blob(self) -> BlobWriter: ...

    def new_blob_nowait(self) -> BlobWriter | None:
        """A writer for a new body if one can be had without any system call (a file
        made ahead of time), else None: the caller then calls ``new_blob`` where
        blocking is allowed.  The reactor thread's way to skip a thread hop."""

    def open_blob(self, blob_id: str) -> BinaryIO:
        """A readable file for a stored body (synchronous: local files or a cache)."""

    def read_blob_head(self, blob_id: str, length: int) -> bytes:
        """The first ``length`` octets of a stored body (all of it when shorter), read
        synchronously without a file object: FETCH ENVELOPE calls this per message."""

    # -- delivery ---------------------------------------------------------------------
    def deliver(
        self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
        internal_date: datetime | None = None,
    ) -> Deferred[list[int]]:
        """Store one body into each target mailbox in one transaction; fires with the UIDs
        (in ``targets`` order) once durable.  Errbacks with NoSuchAccount, NoSuchMailbox,
        QuotaExceeded or StoreError, and then nothing was stored."""

    def accept(
        self, blob: BlobWriter, targets: Sequence[Delivery], props: MessageProps,
        outbound: OutboundMessage | None = None, queue_id: str | None = None,
    ) -> Deferred[Accepted]:
        """Accept one message in one transaction (DESIGN.md "Contracts"): the local copies
        (one per target), the outbound queue rows (``outbound`` under ``queue_id``) and the
        body's references commit together, or nothing does.  Fires once durable; errbacks
        like ``deliver`` (or with a StoreError for a duplicate ``queue_id``)."""

    # -- mailboxes --------------------------------------------------------------------
    def list_mailboxes(self, account_id: int) -> Deferred[list[MailboxInfo]]: ...

    def get_mailbox(self, account_id: int, name: str, counts: bool = True) -> Deferred[MailboxInfo]:
        """Errbacks with NoSuchMailbox.  ``counts=False``: ``exists``, ``unseen`` and
        ``size`` are not computed (0), which spares a backend a scan of the messages."""

    def create_mailbox(self, account_id: int, name: str, special_use: SpecialUse | None = None) -> Deferred[MailboxInfo]: ...

    def delete_mailbox(self, account_id: int, name: str) -> Deferred[None]: ...

    def rename_mailbox(self, account_id: int, old: str, new: str) -> Deferred[None]: ...

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> Deferred[None]: ...

    # -- messages ---------------------------------------------------------------------
    def list_messages(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[MessageInfo]]:
        """All messages in UID order (or those changed after ``since_modseq``)."""

    def newest_messages(self, mailbox_id: int, limit: int, *, offset: int = 0,
                        before_uid: int | None = None) -> Deferred[list[MessageInfo]]:
        """Up to ``limit`` messages in descending UID order (newest first), skipping
        ``offset``, only those below ``before_uid`` when given (for paging through a
        large mailbox without loading all of it).  Errbacks with NoSuchMailbox."""

    def get_message(self, mailbox_id: int, uid: int) -> Deferred[MessageInfo | None]:
        """The message ``uid`` of the mailbox (as ``list_messages`` gives it), or None
        when there is none: one row, not the mailbox's list.  Errbacks with
        NoSuchMailbox."""

    def append(
        self, mailbox_id: int, blob: BlobWriter, flags: frozenset[str],
        internal_date: datetime | None = None,
    ) -> Deferred[int]:
        """IMAP APPEND: fires with the new UID once durable."""

    def append_to(
        self, account_id: int, name: str, blob: BlobWriter, flags: frozenset[str],
        internal_date: datetime | None = None,
    ) -> Deferred[Appended]:
        """IMAP APPEND to the account's mailbox ``name``, looked up in the same operation
        as the message is stored (one round trip to the store instead of ``get_mailbox``
        then ``append``); fires once durable.  Errbacks with NoSuchMailbox (nothing
        stored), QuotaExceeded or StoreError."""

    def append_many(
        self, mailbox_id: int, items: Sequence[tuple[BlobWriter, frozenset[str], datetime | None]],
    ) -> Deferred[list[int]]:
        """IMAP MULTIAPPEND (RFC 3502): all messages in one transaction, or none (the
        quota is checked against their total); fires with the new UIDs in order."""

    def replace(
        self, mailbox_id: int, uid: int, dest_mailbox_id: int, blob: BlobWriter,
        flags: frozenset[str], internal_date: datetime | None = None,
    ) -> Deferred[int]:
        """IMAP REPLACE (RFC 8508 §3.4): append to ``dest_mailbox_id`` and expunge
        ``uid`` of ``mailbox_id`` in one transaction; fires with the new UID.  Errbacks
        with MessageGone (nothing appended) when ``uid`` is no longer there."""

    def store_flags(
        self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str], mode: str,
        unchanged_since: int | None = None,
    ) -> Deferred[tuple[list[MessageInfo], list[int]]]:
        """mode is "set" | "add" | "remove".  Fires with (changed messages with their new
        modseq, UIDs that failed the CONDSTORE UNCHANGEDSINCE test)."""

    def copy(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]:
        """Fires with (source UID, destination UID) pairs; bodies are shared, not copied."""

    def move(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int) -> Deferred[list[tuple[int, int]]]: ...

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> Deferred[list[int]]:
        """Remove messages flagged \\Deleted (restricted to ``uids`` when given)."""

    def save_dates(self, mailbox_id: int,
                   uids: Sequence[int] | None = None) -> Deferred[dict[int, datetime]]:
        """RFC 8514: when each message (all, or those of ``uids``) was saved into the
        mailbox (delivery, APPEND, COPY, MOVE), by UID; a message without one is left
        out.  Errbacks with NoSuchMailbox."""

    def list_vanished(self, mailbox_id: int, since_modseq: int = 0) -> Deferred[list[int]]:
        """UIDs expunged with a modseq above ``since_modseq`` (RFC 7162 VANISHED)."""

    def get_message_props(self, mailbox_id: int, uid: int) -> Deferred[MessageProps | None]: ...

    def get_mailbox_by_id(self, mailbox_id: int) -> Deferred[MailboxInfo]:
        """Errbacks with NoSuchMailbox."""

    def get_account_by_id(self, account_id: int) -> Deferred[Account | None]: ...

    def get_usage(self, account_id: int) -> Deferred[tuple[int, int | None]]:
        """(bytes used, the account's limit or None) (RFC 9208 STORAGE)."""

    # -- derived data (see the module docstring) ----------------------------------------
    def register_deriver(self, name: str, kinds: Iterable[str], fn: Deriver) -> None:
        """Compute ``fn``'s ``kinds`` for each body stored from now on.  ``name``
        identifies the deriver (registering it again replaces it)."""

    def get_derived(self, mailbox_id: int, kind: str, first_uid: int = 1,
                    last_uid: int = 0xFFFFFFFF) -> Deferred[dict[int, bytes]]:
        """UID -> the ``kind`` value of the mailbox's messages in the UID range that have
        one (a message without one is left out: the caller computes it itself)."""

    def flush_derived(self) -> Deferred[None]:
        """Compute now the values of delivered bodies that the store put off until it is
        quiet (``accept`` may: see the module docstring); fires when none is left."""

    def backfill_derived(self, limit: int = 256) -> Deferred[int]:
        """Compute the registered derivers' values for up to ``limit`` stored bodies
        that lack one (off the reactor); fires with how many bodies were done, 0 when
        none is left (a batch that found nothing to do in a part of a big store may
        report 1: call again until 0)."""

    # -- notifications ----------------------------------------------------------------
    def subscribe(self, mailbox_id: int, listener: Callable[[MailboxChange], None]) -> Callable[[], None]:
        """Call ``listener`` after each committed change; returns an unsubscribe function."""

    def close(self) -> Deferred[None]: ...
