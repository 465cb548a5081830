"""``mxd store migrate``: move an installation between the SQLite and PostgreSQL stores.

Everything the store and the queue keep moves as it is: accounts (with their secrets and
quotas), addresses, mailboxes (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, subscriptions), every
message (UID, modseq, flags, internal and save dates, properties), expunged UIDs for
QRESYNC, derived data, the UIDVALIDITY counter, and the queue (messages, recipients with
their leases and attempts, the attempt log, TLS records).  Rows keep their ids.  Message
bodies are copied (hard-linked when both sides are on one file system) into the target's
body directory and fsynced before the target's rows commit, in one transaction.

Then the target is checked against the source: the row count and a checksum of every
table's rows (the sum of each row's SHA-256, so row order does not matter; values
normalised so that SQLite's and PostgreSQL's types compare), and a SHA-256 of every body
file.  A mismatch is an error.

The source must be at the schema version of this mxd (start it once to upgrade), and not
in use (stop mxd first: a server writing meanwhile would be copied half-way).  A target
that holds any account, message or queue entry is refused unless ``replace`` is given,
which empties it first.  Both sides' triggers (body reference counts, storage use) fire
while rows are copied; the copied counters are written last, so they are the source's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from mxd.store import pgschema, schema
from mxd.store.blobs import BlobFiles, fsync_dir
from mxd.store.interfaces import StoreError


class TransferError(StoreError):
    """The migration cannot start, or its result does not match the source."""


# Tables in an order that satisfies foreign keys, each with its primary key (for ordering
# the checksum) and the identity column whose sequence PostgreSQL must move past.
TABLES: list[tuple[str, str, str | None]] = [
    ("meta", "key", None),
    ("accounts", "id", "id"),
    ("addresses", "address", None),
    ("mailboxes", "id", "id"),
    ("metadata", "account_id, mailbox_id, name", None),
    ("blobs", "id", None),
    ("blob_data", "blob_id, kind", None),
    ("messages", "mailbox_id, uid", None),
    ("vanished", "mailbox_id, uid", None),
    ("orphan_subscriptions", "account_id, name", None),
    ("queue_messages", "id", "id"),
    ("queue_recipients", "id", "id"),
    ("queue_attempts", "id", "id"),
    ("queue_tls_domains", "domain", None),
    ("queue_tls_accounts", "account, domain", None),
]
# Tables that must be empty in a source at rest, and are not copied: bodies whose fsync
# a crash may have cut short (mxd.store.unsynced), checked by the next start.
MUST_BE_EMPTY = ["unsynced_blobs"]
# Tables of a running installation's processes, not copied: account_changes (SQLite's
# change notices between worker processes, mxd.store.watch) matter to no later start.
TRANSIENT = ["account_changes"]
# Counters the triggers change while rows are copied: set to the source's values last.
COUNTERS = [("blobs", "id", "refcount"), ("accounts", "id", "used_bytes")]


@attrs.frozen
class Endpoint:
    """One side: ``sqlite:DATA_DIR`` or ``postgresql:DSN`` (with its body directory)."""

    kind: str  # "sqlite" | "postgresql"
    where: str  # the data directory or the DSN
    blob_root: Path  # the directory holding blobs/

    @staticmethod
    def parse(spec: str, blob_dir: Path | None) -> Endpoint:
        kind, sep, where = spec.partition(":")
        if not sep or not where:
            raise TransferError(f"{spec!r}: expected sqlite:DATA_DIR or postgresql:DSN")
        if kind == "sqlite":
            return Endpoint(kind, where, Path(where))
        if kind in ("postgresql", "postgres"):
            if blob_dir is None:
                raise TransferError("a postgresql side needs --blob-dir (its [store] blob_dir)")
            return Endpoint("postgresql", where, blob_dir)
        raise TransferError(f"{spec!r}: unknown store kind {kind!r} (sqlite or postgresql)")

    def describe(self) -> str:
        return f"{self.kind}:{self.where}"


@attrs.frozen
class Report:
    rows: dict[str, int]  # per table
    bodies: int
    body_bytes: int


class _Side:
    """A DB-API connection of either engine with ``?`` placeholders and one transaction."""

    def __init__(self, ep: Endpoint, create: bool) -> None:
        self.ep = ep
        if ep.kind == "sqlite":
            path = Path(ep.where) / "mxd.sqlite3"
            if not create and not path.exists():
                raise TransferError(f"no SQLite store at {path}")
            Path(ep.where).mkdir(parents=True, exist_ok=True)
            self.conn: Any = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        else:
            import psycopg

            try:
                self.conn = psycopg.connect(ep.where, autocommit=True)
            except psycopg.Error as e:
                raise TransferError(f"cannot connect to {ep.where!r}: {e}") from e

    def sql(self, text: str) -> str:
        if self.ep.kind == "sqlite":
            return text
        from mxd.store.pgconn import translate

        return translate(text)

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        if not params:
            return self.conn.execute(text)
        return self.conn.execute(self.sql(text), params)

    def executemany(self, text: str, rows: list[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.ep.kind == "sqlite":
            self.conn.executemany(text, rows)
        else:
            with self.conn.cursor() as cur:
                cur.executemany(self.sql(text), rows)

    def versions(self) -> dict[str, int]:
        try:
            return {str(n): int(v) for n, v in
                    self.execute("SELECT name, version FROM schema_version").fetchall()}
        except Exception:  # noqa: BLE001 - no table yet: an empty database
            self.rollback_if_failed()
            return {}

    def rollback_if_failed(self) -> None:
        if self.ep.kind == "postgresql":
            return  # autocommit: nothing to roll back
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def migrate(self) -> None:
        if self.ep.kind == "sqlite":
            from mxd.store.sqlite import SQLITE_SCHEMAS

            for name, steps in SQLITE_SCHEMAS.items():
                schema.migrate(self.conn, name, steps)
        else:
            pgschema.migrate(self.conn)

    def columns(self, table: str) -> list[str]:
        cur = self.conn.execute(f"SELECT * FROM {table} LIMIT 0")
        return [d[0] for d in cur.description]

    def rows(self, table: str, order: str, cols: list[str]) -> Iterator[tuple[Any, ...]]:
        cur = self.conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
        while True:
            chunk = cur.fetchmany(1000)
            if not chunk:
                return
            yield from (tuple(r) for r in chunk)

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.ep.kind == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        else:
            with self.conn.transaction():
                yield

    def close(self) -> None:
        self.conn.close()


    def tables(self) -> set[str]:
        if self.ep.kind == "sqlite":
            rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                     "AND name NOT LIKE 'sqlite_%'").fetchall()
        else:
            rows = self.conn.execute("SELECT tablename FROM pg_tables "
                                     "WHERE schemaname = current_schema()").fetchall()
        return {str(r[0]) for r in rows}


def expected_versions(kind: str) -> dict[str, int]:
    if kind == "sqlite":
        from mxd.store.sqlite import SQLITE_SCHEMAS

        return {k: len(v) for k, v in SQLITE_SCHEMAS.items()}
    return {k: len(v) for k, v in pgschema.SCHEMAS.items()}


def _norm(v: Any) -> Any:
    """One representation per value across engines (bool/int/float/bytes/str/None)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, memoryview):
        return bytes(v)
    return v


def table_digest(side: _Side, table: str, order: str, cols: list[str]) -> tuple[int, str]:
    """(rows, checksum) of a table: the sum of each row's SHA-256 modulo 2**256, so the
    engines' different text orderings (collations) do not matter."""
    total = 0
    n = 0
    for row in side.rows(table, order, cols):
        digest = hashlib.sha256(repr(tuple(_norm(v) for v in row)).encode()).digest()
        total = (total + int.from_bytes(digest, "big")) % (1 << 256)
        n += 1
    return n, f"{total:064x}"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def migrate_store(src_ep: Endpoint, dst_ep: Endpoint, *, replace: bool = False,
                  progress: Callable[[str], None] = lambda line: None) -> Report:
    """Copy everything from ``src_ep`` to ``dst_ep`` and verify it (see module doc)."""
    if src_ep == dst_ep:
        raise TransferError("source and target are the same store")
    src = _Side(src_ep, create=False)
    dst = _Side(dst_ep, create=True)
    try:
        have = src.versions()
        want = expected_versions(src_ep.kind)
        if have != want:
            raise TransferError(
                f"the source schema is {have or 'missing'}, this mxd writes {want}: start "
                "this mxd once on the source (it upgrades it), stop it, and migrate then")
        present = src.tables()
        unknown = (present - {t for t, _, _ in TABLES}
                   - {"schema_version", *MUST_BE_EMPTY, *TRANSIENT, *pgschema.NODE_TABLES})
        if unknown:
            raise TransferError(f"this mxd does not know how to move table(s) {sorted(unknown)}")
        for table in MUST_BE_EMPTY:
            if table in present and src.count(table):
                raise TransferError(f"the source has {table} left by a crash: start mxd once "
                                    "on it (it checks them), stop it, and migrate then")
        dst.migrate()
        if dst.versions() != expected_versions(dst_ep.kind):
            raise TransferError("the target schema is not this mxd's")
        busy = {t: dst.count(t) for t in ("accounts", "blobs", "queue_messages")}
        if any(busy.values()) and not replace:
            raise TransferError(
                f"the target is not empty ({', '.join(f'{n} {t}' for t, n in busy.items())});"
                " pass --replace to empty it first")
        plan = []
        for table, order, _ in TABLES:
            cols = src.columns(table)
            missing = set(cols) - set(dst.columns(table))
            if missing:
                raise TransferError(f"the target's {table} lacks {sorted(missing)}")
            plan.append((table, order, cols))
        # 1. Bodies first, durable before any row points at them.
        src_files, dst_files = BlobFiles(src_ep.blob_root), BlobFiles(dst_ep.blob_root)
        dst_files.ensure_dirs()
        blob_ids = [r[0] for r in src.rows("blobs", "id", ["id"])]
        body_bytes = 0
        dirs: set[Path] = set()
        for i, blob_id in enumerate(blob_ids, 1):
            body_bytes += _copy_body(src_files.path(blob_id), dst_files.path(blob_id), dirs)
            if i % 1000 == 0:
                progress(f"{i} of {len(blob_ids)} bodies copied")
        for d in sorted(dirs):
            fsync_dir(d)
        fsync_dir(dst_files.blob_dir)
        progress(f"{len(blob_ids)} bodies ({body_bytes} bytes) in {dst_files.blob_dir}")
        # 2. Rows, in one transaction.
        with dst.transaction():
            # A new database has its own counters (meta): the source's replace them.
            for table, _, _ in reversed(TABLES if replace else TABLES[:1]):
                dst.execute(f"DELETE FROM {table}")
            for table, order, cols in plan:
                marks = ", ".join("?" * len(cols))
                insert = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"
                batch: list[Sequence[Any]] = []
                n = 0
                for row in src.rows(table, order, cols):
                    batch.append(row)
                    if len(batch) >= 1000:
                        dst.executemany(insert, batch)
                        n += len(batch)
                        batch = []
                dst.executemany(insert, batch)
                n += len(batch)
                progress(f"{table}: {n} rows")
            for table, key, col in COUNTERS:
                dst.executemany(f"UPDATE {table} SET {col} = ? WHERE {key} = ?",
                                [(r[1], r[0]) for r in src.rows(table, key, [key, col])])
            if dst_ep.kind == "postgresql":
                for table, _, ident in TABLES:
                    if ident:
                        dst.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table}', '{ident}'), "
                            f"coalesce((SELECT max({ident}) FROM {table}), 0) + 1, false)")
        # 3. Verify: counts and checksums of every table, and of every body.
        rows: dict[str, int] = {}
        for table, order, cols in plan:
            a = table_digest(src, table, order, cols)
            b = table_digest(dst, table, order, cols)
            if a != b:
                raise TransferError(f"{table} differs after the copy: source {a[0]} rows "
                                    f"{a[1][:16]}, target {b[0]} rows {b[1][:16]}")
            rows[table] = a[0]
        for blob_id in blob_ids:
            if file_digest(src_files.path(blob_id)) != file_digest(dst_files.path(blob_id)):
                raise TransferError(f"body {blob_id} differs after the copy")
        progress("verified: every table's rows and every body match the source")
        return Report(rows, len(blob_ids), body_bytes)
    finally:
        src.close()
        dst.close()


def _copy_body(src: Path, dst: Path, dirs: set[Path]) -> int:
    """Copy (or hard-link) one body file; fsync it.  Returns its size."""
    if not src.exists():
        raise TransferError(f"body file {src} is missing from the source")
    size = src.stat().st_size
    if dst.exists() and dst.stat().st_size == size:
        return size  # the same directory on both sides, or a copy left by an earlier run
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".migrating")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    dirs.add(dst.parent)
    return size
