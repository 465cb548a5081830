"""SQL for the embedded store's tables (mxd.store.schema), run on the writer thread.

Plain functions over a ``Conn`` inside the writer's transaction; the
``SQLiteStore`` methods (mxd.store.sqlite) compose them into operations.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from mxd.store import names
from mxd.store.blobs import FileBlobWriter
from mxd.store.interfaces import (
    Account,
    AddressInUse,
    MailboxChange,
    MailboxExists,
    MailboxInfo,
    MessageColumns,
    MessageInfo,
    MessageProps,
    NoSuchAccount,
    NoSuchMailbox,
    SpecialUse,
    StoreError,
)
from mxd.store.sqlbase import INTEGRITY_ERRORS, Conn
from mxd.store.writer import OpContext

MAX_UID = 2**32 - 1
CHUNK = 500  # host parameters per IN (...) list

MAILBOX_SELECT = (
    "SELECT m.id, m.account_id, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, "
    "m.special_use, m.subscribed, "
    "(SELECT count(*) FROM messages WHERE mailbox_id = m.id), "
    "(SELECT count(*) FROM messages WHERE mailbox_id = m.id AND instr(flags, ' \\Seen ') = 0), "
    "(SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM messages WHERE mailbox_id = m.id), "
    "(SELECT count(*) FROM messages WHERE mailbox_id = m.id AND instr(flags, ' \\Deleted ') > 0) "
    "FROM mailboxes m"
)
# The same columns without the three scans of the mailbox's messages (exists, unseen and
# size read as 0): for callers that need only the mailbox's identity and counters.
MAILBOX_SELECT_NO_COUNTS = (
    "SELECT m.id, m.account_id, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, "
    "m.special_use, m.subscribed, 0, 0, 0, 0 FROM mailboxes m"
)
MESSAGE_SELECT = (
    "SELECT uid, modseq, flags, internal_date, size, mailbox_id, blob_id, requiretls, "
    "tls_required_no, mail_from, received_via FROM messages"
)


def check_account_name(name: str) -> None:
    if not name or len(name) > 255 or name != name.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise StoreError(f"invalid account name {name!r}")


def mailbox_info(r: Any) -> MailboxInfo:
    return MailboxInfo(
        id=r[0], account_id=r[1], name=r[2], uidvalidity=r[3], uidnext=r[4],
        highestmodseq=r[5], special_use=SpecialUse(r[6]) if r[6] else None,
        subscribed=bool(r[7]), exists=r[8], unseen=r[9], size=r[10], deleted=r[11],
    )


def message_info(r: Any) -> MessageInfo:
    return MessageInfo(
        uid=r[0], modseq=r[1], flags=names.flags_from_text(r[2]),
        internal_date=datetime.fromisoformat(r[3]), size=r[4], blob_id=r[6],
    )


def plan_flag_changes(rows: Iterable[Any], clean: frozenset[str], mode: str,
                      unchanged_since: int | None,
                      ) -> tuple[list[tuple[MessageInfo, frozenset[str]]], list[int]]:
    """A flag STORE on message rows: (message, its new flags) for each message whose
    flags change, and the UIDs refused by UNCHANGEDSINCE (RFC 7162 §3.1.3: a message
    changed since that modseq fails)."""
    todo: list[tuple[MessageInfo, frozenset[str]]] = []
    failed: list[int] = []
    for row in rows:
        info = message_info(row)
        if unchanged_since is not None and info.modseq > unchanged_since:
            failed.append(info.uid)
            continue
        new = names.apply_flags(info.flags, clean, mode)
        if not names.flags_equal(new, info.flags):
            todo.append((info, new))
    return todo, failed


def message_columns(conn: Conn, mailbox_id: int) -> MessageColumns:
    """A mailbox's messages as columns (see MessageColumns); flag texts and UTC offsets
    are parsed once per distinct value."""
    uids, modseqs, flag_ids, sizes = array("I"), array("Q"), array("I"), array("Q")
    dates, tzs = array("d"), array("h")
    flag_sets: list[frozenset[str]] = []
    by_text: dict[str, int] = {}
    by_set: dict[frozenset[str], int] = {}
    blob_ids: list[str] = []
    packed = bytearray()
    hex_ids = True
    rows = conn.execute("SELECT uid, modseq, flags, internal_date, size, blob_id FROM messages "
                        "WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,))
    for uid, modseq, flags, when, size, blob_id in rows:
        uids.append(uid)
        modseqs.append(modseq)
        fid = by_text.get(flags)
        if fid is None:
            fs = names.flags_from_text(flags)
            fid = by_set.get(fs)
            if fid is None:
                fid = by_set[fs] = len(flag_sets)
                flag_sets.append(fs)
            by_text[flags] = fid
        flag_ids.append(fid)
        sizes.append(size)
        dt = datetime.fromisoformat(when)
        off = dt.utcoffset()
        dates.append(dt.timestamp())
        tzs.append(int(off.total_seconds() // 60) if off is not None else 0)
        if hex_ids:
            try:
                raw = bytes.fromhex(blob_id)
            except ValueError:
                raw = b""
            if len(raw) == 16 and len(blob_id) == 32 and blob_id == raw.hex():
                packed += raw
            else:
                hex_ids = False
                blob_ids = [bytes(packed[i:i + 16]).hex() for i in range(0, len(packed), 16)]
        if not hex_ids:
            blob_ids.append(blob_id)
    return MessageColumns(uids, modseqs, flag_sets, flag_ids, sizes, dates, tzs,
                          None if hex_ids else blob_ids, bytes(packed) if hex_ids else None)


def account(conn: Conn, account_id: int, name: str) -> Account:
    addrs = tuple(r[0] for r in conn.execute(
        "SELECT address FROM addresses WHERE account_id = ? ORDER BY address", (account_id,)))
    return Account(account_id, name, addrs)


def account_id(conn: Conn, name: str) -> int:
    row = conn.execute("SELECT id FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NoSuchAccount(f"no account {name!r}")
    return int(row[0])


def check_account(conn: Conn, account_id: int) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise NoSuchAccount(f"no account with id {account_id}")


def check_mailbox(conn: Conn, mailbox_id: int) -> None:
    if conn.execute("SELECT 1 FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone() is None:
        raise NoSuchMailbox(f"no mailbox with id {mailbox_id}")


def insert_address(conn: Conn, account_id: int, address: str) -> None:
    if not address or "@" not in address:
        raise StoreError(f"invalid address {address!r}")
    try:
        conn.execute("INSERT INTO addresses (address, account_id) VALUES (?, ?)",
                     (address, account_id))
    except INTEGRITY_ERRORS:
        raise AddressInUse(f"address {address!r} belongs to an account") from None


def find_mailbox(conn: Conn, account_id: int, name: str) -> int | None:
    row = conn.execute("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                       (account_id, name)).fetchone()
    return int(row[0]) if row else None


def mailbox_id(conn: Conn, account_id: int, name: str) -> int:
    mailbox_id = find_mailbox(conn, account_id, names.normalize_mailbox_name(name))
    if mailbox_id is None:
        check_account(conn, account_id)
        raise NoSuchMailbox(f"no mailbox {name!r}")
    return mailbox_id


def next_uidvalidity(conn: Conn) -> int:
    # RFC 3501 §2.3.1.1: never reuse a UIDVALIDITY for a name; a growing counter cannot.
    # One UPDATE ... RETURNING: concurrent transactions (PostgreSQL) never read one value.
    value = int(conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'next_uidvalidity' "
                             "RETURNING value - 1").fetchone()[0])
    if not 0 < value <= MAX_UID:
        value = 1
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_uidvalidity'", (value + 1,))
    return value


def create_one(conn: Conn, account_id: int, name: str,
                special_use: SpecialUse | None, *, subscribed: bool) -> int:
    try:
        row = conn.execute(
            "INSERT INTO mailboxes (account_id, name, uidvalidity, special_use, subscribed) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (account_id, name, next_uidvalidity(conn),
             str(special_use) if special_use else None, int(subscribed))).fetchone()
    except INTEGRITY_ERRORS:
        raise MailboxExists(f"mailbox {name!r} exists") from None
    return int(row[0])


def bump_modseq(conn: Conn, mailbox_id: int) -> int:
    conn.execute("UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?", (mailbox_id,))
    return int(conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?",
                            (mailbox_id,)).fetchone()[0])


def alloc_uids(conn: Conn, mailbox_id: int, n: int) -> int:
    first = int(conn.execute("SELECT uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()[0])
    if first + n - 1 > MAX_UID:
        raise StoreError("mailbox has run out of UIDs; it must be recreated")
    conn.execute("UPDATE mailboxes SET uidnext = ? WHERE id = ?", (first + n, mailbox_id))
    return first


def next_uid_modseq(conn: Conn, mailbox_id: int) -> tuple[int, int]:
    """The UID and modseq of one new message: ``bump_modseq`` then ``alloc_uids(conn,
    mailbox_id, 1)`` in one statement (each delivery runs it)."""
    row = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1, uidnext = uidnext + 1 "
        "WHERE id = ? AND uidnext <= ? RETURNING uidnext - 1, highestmodseq",
        (mailbox_id, MAX_UID)).fetchone()
    if row is None:
        check_mailbox(conn, mailbox_id)
        raise StoreError("mailbox has run out of UIDs; it must be recreated")
    return int(row[0]), int(row[1])


def deliver_slot(conn: Conn, account_id: int, name: str) -> tuple[int, int, int, Any]:
    """The mailbox ``name`` of an account and the UID and modseq of one new message in
    it (as ``next_uid_modseq``), with the account's (used_bytes, quota_bytes): one
    statement, as each delivery needs all of them.  Raises as ``mailbox_id`` and
    ``next_uid_modseq`` do."""
    row = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1, uidnext = uidnext + 1 "
        "WHERE account_id = ? AND name = ? AND uidnext <= ? "
        "RETURNING id, uidnext - 1, highestmodseq, "
        "(SELECT used_bytes FROM accounts WHERE id = ?), "
        "(SELECT quota_bytes FROM accounts WHERE id = ?)",
        (account_id, names.normalize_mailbox_name(name), MAX_UID, account_id, account_id),
    ).fetchone()
    if row is None:  # no such mailbox (or account), or out of UIDs: the precise error
        mailbox = mailbox_id(conn, account_id, name)
        next_uid_modseq(conn, mailbox)
        raise StoreError(f"cannot deliver to mailbox {name!r}")  # pragma: no cover
    return int(row[0]), int(row[1]), int(row[2]), (row[3], row[4])


def insert_new(conn: Conn, mailbox_id: int, w: FileBlobWriter,
                flags: frozenset[str], when: datetime, props: MessageProps,
                saved: datetime | None = None) -> tuple[int, int]:
    """Insert a new message; ``saved`` is its save date (RFC 8514), now when None."""
    uid, modseq = next_uid_modseq(conn, mailbox_id)
    insert_row(conn, mailbox_id, uid, modseq, w, flags, when, props, saved)
    return uid, modseq


def insert_row(conn: Conn, mailbox_id: int, uid: int, modseq: int, w: FileBlobWriter,
               flags: frozenset[str], when: datetime, props: MessageProps,
               saved: datetime | None = None) -> None:
    """The row of a new message whose UID and modseq are allocated already."""
    conn.execute(
        "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size, blob_id, "
        "requiretls, tls_required_no, mail_from, received_via, save_date) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (mailbox_id, uid, modseq, names.flags_to_text(flags), when.isoformat(), w.size,
         w.blob_id, int(props.requiretls), int(props.tls_required_no), props.mail_from,
         props.received_via, _saved_text(saved)))


def _saved_text(saved: datetime | None) -> str:
    if saved is None:
        saved = datetime.fromtimestamp(int(time.time()), UTC)
    return saved.isoformat()


def save_dates(conn: Conn, mailbox_id: int,
               uids: Sequence[int] | None) -> dict[int, datetime]:
    """RFC 8514 save dates of a mailbox's messages (all, or those of ``uids``)."""
    out: dict[int, datetime] = {}
    if uids is None:
        rows: Any = conn.execute("SELECT uid, save_date FROM messages WHERE mailbox_id = ?",
                                 (mailbox_id,))
    else:
        wanted = sorted(set(uids))
        rows = []
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i:i + CHUNK]
            rows.extend(conn.execute(
                "SELECT uid, save_date FROM messages WHERE mailbox_id = ? AND uid IN "
                f"({','.join('?' * len(chunk))})", (mailbox_id, *chunk)).fetchall())
    for uid, text in rows:
        if text is not None:
            out[int(uid)] = datetime.fromisoformat(text)
    return out


def rows_for_uids(conn: Conn, mailbox_id: int, uids: Sequence[int]) -> list[Any]:
    out: list[Any] = []
    wanted = sorted(set(uids))
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i:i + CHUNK]
        out.extend(conn.execute(
            MESSAGE_SELECT + f" WHERE mailbox_id = ? AND uid IN ({','.join('?' * len(chunk))})"
            " ORDER BY uid", (mailbox_id, *chunk)).fetchall())
    return out


def copy(conn: Conn, ctx: OpContext, src: int, uids: Sequence[int],
          dest: int, saved: datetime | None = None) -> list[tuple[int, int]]:
    check_mailbox(conn, src)
    check_mailbox(conn, dest)
    rows = rows_for_uids(conn, src, uids)
    if not rows:
        return []
    modseq = bump_modseq(conn, dest)
    first = alloc_uids(conn, dest, len(rows))
    saved_text = _saved_text(saved)
    pairs = []
    for i, r in enumerate(rows):
        new_uid = first + i
        # RFC 3501 §6.4.7: flags and internal date are preserved in the copy; RFC 8514
        # §2: the save date is the moment of the copy.
        conn.execute(
            "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size, "
            "blob_id, requiretls, tls_required_no, mail_from, received_via, save_date) "
            "SELECT ?, ?, ?, flags, internal_date, size, blob_id, requiretls, "
            "tls_required_no, mail_from, received_via, ? FROM messages "
            "WHERE mailbox_id = ? AND uid = ?", (dest, new_uid, modseq, saved_text, src, r[0]))
        pairs.append((int(r[0]), new_uid))
    ctx.changes.append(MailboxChange(dest, "exists", tuple(p[1] for p in pairs), modseq))
    return pairs


def remove(conn: Conn, ctx: OpContext, mailbox_id: int, uids: list[int]) -> None:
    modseq = bump_modseq(conn, mailbox_id)
    for uid in uids:
        conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid))
        conn.execute("INSERT INTO vanished (mailbox_id, uid, modseq) VALUES (?, ?, ?) "
                     "ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
                     (mailbox_id, uid, modseq))
    ctx.changes.append(MailboxChange(mailbox_id, "expunge", tuple(uids), modseq))


def move(conn: Conn, ctx: OpContext, src: int, uids: Sequence[int],
          dest: int, saved: datetime | None = None) -> list[tuple[int, int]]:
    # RFC 6851 §3.3: copy, then expunge the source messages, atomically.  Into the same
    # mailbox too: the messages get new UIDs (as in Dovecot, with COPYUID).
    pairs = copy(conn, ctx, src, uids, dest, saved)
    if pairs:
        remove(conn, ctx, src, [p[0] for p in pairs])
    return pairs
