"""Opening the embedded store's database (writer thread): the data directory's lock,
WAL and synchronous=FULL, schema migrations, and the crash clean-up that only a process
alone on the directory may run (see the ``mxd.store.sqlite`` module docstring)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from twisted.logger import Logger

from mxd.store import unsynced
from mxd.store.blobs import BlobFiles
from mxd.store.interfaces import StoreError
from mxd.store.schema import SchemaError, migrate

log = Logger(namespace="mxd.store.sqlite")

LOCK_NAME = "mxd.lock"


class DatabaseOpener:
    """Opens one connection for the writer thread and holds the directory's lock."""

    def __init__(self, data_dir: Path, db_path: Path, files: BlobFiles, busy_timeout_ms: int,
                 scan_orphans: bool, schemas: dict[str, list[str]]) -> None:
        self.data_dir = data_dir
        self.db_path = db_path
        self._files = files
        self._busy_timeout_ms = busy_timeout_ms
        self._scan_orphans = scan_orphans
        self._schemas = schemas
        self._lock_fd: int | None = None

    def _lock(self) -> bool:
        """Take the data directory's lock; True when this process is its only user.

        Every process that opens the store (the server, an ``mxd account`` command) holds
        a shared flock on ``mxd.lock`` while open.  Crash cleanup removes tmp files and
        unreferenced bodies, which would destroy another live process's work in
        progress, so it runs only when an exclusive lock can be had at open.
        """
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if not alone:
                fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return alone

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def connect(self) -> sqlite3.Connection:
        """Writer thread: lock, open, configure, migrate and (when alone) clean up."""
        self._files.ensure_dirs()
        try:
            alone = self._lock()
        except OSError as e:
            raise StoreError(f"cannot lock {self.data_dir / LOCK_NAME}: {e}") from e
        try:
            conn = self._open_db(alone)
        except BaseException:
            self.unlock()
            raise
        if alone and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # others may open it from now on
        return conn

    def _open_db(self, alone: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, isolation_level=None, check_same_thread=False,
            timeout=self._busy_timeout_ms / 1000,
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot put {self.db_path} in WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            for name, steps in self._schemas.items():
                n = migrate(conn, name, steps)
                if n:
                    log.info("schema {name} migrated by {steps} step(s)", name=name, steps=n)
            if alone:
                self._cleanup(conn)
            else:
                log.info("{dir} is open in another process: crash cleanup skipped",
                         dir=str(self.data_dir))
        except sqlite3.Error as e:
            conn.close()
            raise SchemaError(f"cannot open {self.db_path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _cleanup(self, conn: sqlite3.Connection) -> None:
        """Remove what a crash may leave: tmp files, unreferenced and orphan bodies."""
        n_tmp = self._files.clean_tmp()
        # Bodies fsynced alongside their commit when the crash came: kept if intact,
        # else their (never acknowledged) messages go (mxd.store.unsynced).
        unsynced.recover(conn, self._files)
        conn.execute("BEGIN IMMEDIATE")
        zero = [r[0] for r in conn.execute("SELECT id FROM blobs WHERE refcount = 0")]
        conn.execute("DELETE FROM blobs WHERE refcount = 0")
        conn.execute("COMMIT")
        self._files.unlink(zero)
        orphans: list[str] = []
        if self._scan_orphans:
            known = {r[0] for r in conn.execute("SELECT id FROM blobs")}
            on_disk = set(self._files.iter_blob_ids())
            orphans = sorted(on_disk - known)
            self._files.unlink(orphans)
            missing = known - on_disk
            if missing:
                log.error("{n} message bodies are missing from {dir}", n=len(missing),
                          dir=str(self._files.blob_dir))
        if n_tmp or zero or orphans:
            log.info("cleanup: removed {tmp} tmp files, {zero} unreferenced and "
                     "{orphans} orphan bodies", tmp=n_tmp, zero=len(zero), orphans=len(orphans))


WRITE_LOCK_NAME = "mxd.write.lock"


class WriteLock:
    """An exclusive flock on ``<data_dir>/mxd.write.lock``, held by a process's writer
    thread around each batch's transaction.

    SQLite itself serialises writers of several processes (``BEGIN IMMEDIATE`` and the
    busy timeout), but its busy handler retries with sleeps of up to 100 ms, so under
    steady load from two workers each batch could wait a sleep rather than the other's
    commit.  A blocking flock wakes the waiter as soon as the holder releases it.  The
    busy timeout still covers other programs (an ``sqlite3`` shell) that do not take
    this lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
