"""New messages on PostgreSQL in one statement each (SMTP delivery, IMAP APPEND).

The SQLite store's operations (mxd.store.sqlite: ``accept``, ``append``, ``append_to``)
run a statement per step: the body's row, its derived values, the mailbox, the quota,
the next UID and modseq, the message row, the notice to other nodes.  On SQLite a
statement is a function call; on PostgreSQL each is a round trip to the server (0.3 to
0.5 ms under load), and a batch's transaction holds its mailboxes' row locks through all
of them.  Here the same steps are one call of the server-side function
``mxd_store_message`` (mxd.store.pgschema, component ``routines``), and the operation a
``Statement`` (mxd.store.pgconn): the calls of one group commit travel to the server
together with its COMMIT, in one round trip.

The semantics are the SQLite store's: one transaction per batch (each message all or
nothing), UIDs allocated under the mailbox's row lock in commit order, the account's use
kept by the message triggers, the quota checked against it, derived values computed
before the transaction (not while it holds locks), and the same errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from mxd.store import names
from mxd.store.blobs import BlobError, FileBlobWriter
from mxd.store.interfaces import (
    MailboxChange,
    MessageProps,
    NoSuchAccount,
    NoSuchMailbox,
    QuotaExceeded,
    StoreError,
)
from mxd.store.writer import OpContext

STORE_MESSAGE = "SELECT * FROM mxd_store_message(" + ", ".join(["%s"] * 19) + ")"


@attrs.frozen
class Target:
    """One mailbox a new message goes to: by id, or by account and name."""

    mailbox_id: int | None
    account_id: int | None
    name: str | None  # as the caller gave it (for the error)
    flags: frozenset[str]


@attrs.frozen
class Stored:
    """One message row made: its mailbox, the mailbox's UIDVALIDITY, UID and modseq."""

    mailbox_id: int
    uidvalidity: int
    uid: int
    modseq: int


def build(w: FileBlobWriter, targets: Sequence[Target], props: MessageProps,
          when: datetime, saved: datetime, *, check_account: bool,
          default_quota: int | None, values: dict[str, bytes], fresh: bool,
          channel: str | None, node: str) -> tuple[str, Sequence[Any]]:
    """The call of ``mxd_store_message`` that stores body ``w`` into ``targets``.

    ``check_account``: a mailbox not found is NoSuchAccount when its account is missing
    too (delivery), else always NoSuchMailbox (APPEND).  ``values``: the body's derived
    values (stored only with a body ``fresh`` to this operation, as on SQLite)."""
    kinds = sorted(values)
    return STORE_MESSAGE, (
        w.blob_id, w.size, fresh,
        [t.mailbox_id for t in targets], [t.account_id for t in targets],
        [None if t.name is None else names.normalize_mailbox_name(t.name) for t in targets],
        check_account, [names.flags_to_text(names.clean_flags(t.flags)) for t in targets],
        when.isoformat(), saved.isoformat(), int(props.requiretls),
        int(props.tls_required_no), props.mail_from, props.received_via, default_quota,
        kinds, [values[k] for k in kinds], channel, node)


def finish(rows: list[Any], w: FileBlobWriter, targets: Sequence[Target],
           ctx: OpContext) -> list[Stored]:
    """The rows of one call: the messages stored (and their changes recorded in
    ``ctx``), or the operation's error, worded as the SQLite store's."""
    if rows and rows[0][0] != "ok":
        status, index, account, quota = rows[0][0], rows[0][1], rows[0][6], rows[0][7]
        t = targets[index - 1] if 0 < index <= len(targets) else None
        if status == "no-blob":
            raise BlobError(f"blob {w.blob_id} no longer exists")
        if t is not None and status == "no-account":
            raise NoSuchAccount(f"no account with id {t.account_id}")
        if t is not None and status == "no-mailbox":
            if t.name is None:
                raise NoSuchMailbox(f"no mailbox with id {t.mailbox_id}")
            raise NoSuchMailbox(f"no mailbox {t.name!r}")
        if t is not None and status == "quota":
            raise QuotaExceeded(f"account {account} is over its quota of {quota} bytes")
        if status == "no-uids":
            raise StoreError("mailbox has run out of UIDs; it must be recreated")
        raise StoreError(f"storing the message failed: {status}")
    if len(rows) != len(targets):
        raise StoreError(f"stored {len(rows)} message(s) for {len(targets)} target(s)")
    out = [Stored(int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]
    for s in out:
        ctx.changes.append(MailboxChange(s.mailbox_id, "exists", (s.uid,), s.modseq))
    return out
