"""Server and mailbox annotations (RFC 5464 METADATA) kept by the store.

Entries belong to an account: server entries (RFC 5464 §3.1, mailbox "") and entries of
one of its mailboxes.  mxd has no shared namespace, so a ``/shared`` entry is seen by
the account's own sessions only, like a ``/private`` one (§3.3 lets a server decide who
may see shared entries).  Names are stored in lower case: §3.2 "Entry names are
case-insensitive".

Limits (§4.3): a value larger than ``max_entry_size`` fails with ``MetadataTooLarge``
(IMAP: ``NO [METADATA MAXSIZE n]``); more than ``max_entries`` entries or
``max_total`` octets of values for one account fail with ``MetadataTooMany`` (``NO
[METADATA TOOMANY]``).  A SETMETADATA is all or nothing (§4.3: "If the server is unable
to set an annotation ..., the server MUST NOT change any of the annotations").

``SQLiteMetadata`` keeps its table in the store's database (the "metadata" schema
component, built into both backends: ``METADATA_MIGRATIONS`` for SQLite,
``PG_METADATA_MIGRATIONS`` for PostgreSQL); ``MemoryMetadata`` is the fake with the same
behaviour (one contract suite runs against all three).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from mxd.store.interfaces import AccountChange, StoreError
from mxd.store.sqlbase import Conn

T = TypeVar("T")


class Database(Protocol):
    """The store's transactions (SQLiteStore and PostgresStore both have it)."""

    def transact(self, fn: Callable[[Conn], T]) -> Deferred[T]: ...

SERVER = 0  # the mailbox id of server entries


class MetadataError(StoreError):
    """An annotation could not be set."""


class MetadataTooLarge(MetadataError):
    """RFC 5464 §4.3: a value is larger than the server accepts (``limit`` octets)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"value larger than {limit} octets")
        self.limit = limit


class MetadataTooMany(MetadataError):
    """RFC 5464 §4.3: the account's entries would exceed their number or total size."""


class Depth(enum.IntEnum):
    """RFC 5464 §4.2.2 DEPTH: the entry, its children, or everything below it."""

    ZERO = 0
    ONE = 1
    INFINITY = 2


@attrs.frozen
class MetadataLimits:
    max_entry_size: int = 16 * 1024  # octets of one value (below the literal limit)
    max_entries: int = 1000  # entries per account (server and mailboxes together)
    max_total: int = 1024 * 1024  # octets of all values of an account


def below(name: str, requested: str, depth: Depth) -> bool:
    """Is entry ``name`` returned for ``requested`` at ``depth`` (RFC 5464 §4.2.2)?
    Both in lower case."""
    if name == requested:
        return True
    if depth == Depth.ZERO or not name.startswith(requested + "/"):
        return False
    return depth == Depth.INFINITY or "/" not in name[len(requested) + 1:]


class IMetadataStore(Protocol):
    limits: MetadataLimits

    def get_metadata(self, account_id: int, mailbox_id: int, names: Sequence[str],
                     depth: Depth = Depth.ZERO) -> Deferred[list[tuple[str, bytes]]]:
        """The entries named (lower case), and with ``depth`` those below them, sorted by
        name; ``mailbox_id`` 0 for server entries."""

    def set_metadata(self, account_id: int, mailbox_id: int,
                     items: Sequence[tuple[str, bytes | None]]) -> Deferred[None]:
        """Set (or with None remove) entries, all or none.  Errbacks with
        MetadataTooLarge or MetadataTooMany."""


def _check_sizes(limits: MetadataLimits, items: Sequence[tuple[str, bytes | None]]) -> None:
    for _, v in items:
        if v is not None and len(v) > limits.max_entry_size:
            raise MetadataTooLarge(limits.max_entry_size)


METADATA_MIGRATIONS: list[str] = [
    # 1: one row per entry; mailbox_id 0 holds server entries (RFC 5464 §3.1).
    """
    CREATE TABLE metadata (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        mailbox_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (account_id, mailbox_id, name)
    ) WITHOUT ROWID;
    -- RFC 5464 §3.2: a deleted mailbox's annotations go with it.
    CREATE TRIGGER metadata_mailbox_gone AFTER DELETE ON mailboxes BEGIN
        DELETE FROM metadata WHERE account_id = OLD.account_id AND mailbox_id = OLD.id;
    END;
    """,
]


PG_METADATA_MIGRATIONS: list[str] = [
    # 1: as METADATA_MIGRATIONS step 1.
    """
    CREATE TABLE metadata (
        account_id bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        mailbox_id bigint NOT NULL,
        name text NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (account_id, mailbox_id, name)
    );
    CREATE FUNCTION metadata_mailbox_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM metadata WHERE account_id = OLD.account_id AND mailbox_id = OLD.id;
        RETURN OLD;
    END $$;
    CREATE TRIGGER metadata_mailbox_gone AFTER DELETE ON mailboxes
        FOR EACH ROW EXECUTE FUNCTION metadata_mailbox_gone();
    """,
]


def _like_below(name: str) -> str:
    return name.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "/%"


class SQLiteMetadata:
    """Annotations in the store's database through its ``transact``: SQLite, or
    PostgreSQL (the SQL is the subset both run, mxd.store.sqlbase)."""

    def __init__(self, db: Database, limits: MetadataLimits = MetadataLimits()) -> None:
        self._db = db
        self.limits = limits

    def get_metadata(self, account_id: int, mailbox_id: int, names: Sequence[str],
                     depth: Depth = Depth.ZERO) -> Deferred[list[tuple[str, bytes]]]:
        wanted = tuple(names)

        def op(conn: Conn) -> list[tuple[str, bytes]]:
            found: dict[str, bytes] = {}
            for req in wanted:
                if depth == Depth.ZERO:
                    rows = conn.execute(
                        "SELECT name, value FROM metadata WHERE account_id = ? AND "
                        "mailbox_id = ? AND name = ?", (account_id, mailbox_id, req))
                else:
                    rows = conn.execute(
                        "SELECT name, value FROM metadata WHERE account_id = ? AND "
                        "mailbox_id = ? AND (name = ? OR name LIKE ? ESCAPE '!')",
                        (account_id, mailbox_id, req, _like_below(req)))
                for name, value in rows:
                    if below(name, req, depth):
                        found[name] = bytes(value)
            return sorted(found.items())

        return self._db.transact(op)

    def set_metadata(self, account_id: int, mailbox_id: int,
                     items: Sequence[tuple[str, bytes | None]]) -> Deferred[None]:
        try:
            _check_sizes(self.limits, items)
        except MetadataError as e:
            return fail(e)
        todo = list(items)
        limits = self.limits

        def op(conn: Conn) -> None:
            for name, value in todo:
                if value is None:
                    conn.execute("DELETE FROM metadata WHERE account_id = ? AND mailbox_id = ? "
                                 "AND name = ?", (account_id, mailbox_id, name))
                else:
                    conn.execute(
                        "INSERT INTO metadata (account_id, mailbox_id, name, value) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, mailbox_id, name) "
                        "DO UPDATE SET value = excluded.value",
                        (account_id, mailbox_id, name, value))
            count, total = conn.execute(
                "SELECT count(*), CAST(coalesce(sum(length(value)), 0) AS BIGINT) FROM metadata "
                "WHERE account_id = ?", (account_id,)).fetchone()
            if count > limits.max_entries or total > limits.max_total:
                raise MetadataTooMany(f"{count} entries, {total} octets")  # rolls back
            note = getattr(self._db, "record_account_change", None)
            if note is not None:  # other processes' NOTIFY sessions (RFC 5465 §5.6, §5.7)
                row = None if mailbox_id == SERVER else conn.execute(
                    "SELECT name FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
                if mailbox_id == SERVER or row is not None:
                    note(conn, AccountChange(
                        account_id, "metadata", None if row is None else str(row[0]),
                        entries=tuple(dict.fromkeys(n for n, _ in todo))))

        return self._db.transact(op)


class MemoryMetadata:
    """The in-memory fake of ``IMetadataStore``.  ``forget_mailbox`` stands for the
    SQLite trigger (the memory store does not tell it of deletions)."""

    def __init__(self, limits: MetadataLimits = MetadataLimits()) -> None:
        self.limits = limits
        self.entries: dict[tuple[int, int], dict[str, bytes]] = {}

    def get_metadata(self, account_id: int, mailbox_id: int, names: Sequence[str],
                     depth: Depth = Depth.ZERO) -> Deferred[list[tuple[str, bytes]]]:
        have = self.entries.get((account_id, mailbox_id), {})
        found = {n: v for n, v in have.items() if any(below(n, r, depth) for r in names)}
        return succeed(sorted(found.items()))

    def set_metadata(self, account_id: int, mailbox_id: int,
                     items: Sequence[tuple[str, bytes | None]]) -> Deferred[None]:
        try:
            _check_sizes(self.limits, items)
        except MetadataError as e:
            return fail(e)
        box = dict(self.entries.get((account_id, mailbox_id), {}))
        for name, value in items:
            if value is None:
                box.pop(name, None)
            else:
                box[name] = value
        count = total = 0
        for (acc, mb), entries in self.entries.items():
            if acc == account_id and mb != mailbox_id:
                count += len(entries)
                total += sum(len(v) for v in entries.values())
        count += len(box)
        total += sum(len(v) for v in box.values())
        if count > self.limits.max_entries or total > self.limits.max_total:
            return fail(MetadataTooMany(f"{count} entries, {total} octets"))
        self.entries[(account_id, mailbox_id)] = box
        return succeed(None)

    def forget_mailbox(self, account_id: int, mailbox_id: int) -> None:
        self.entries.pop((account_id, mailbox_id), None)

