"""Message body files ("blobs") under the data directory.

Layout: ``<data_dir>/blobs/<first 2 hex digits>/<id>`` for durable bodies and
``<data_dir>/tmp/<id>.tmp`` for bodies still arriving.  A body becomes durable in three
steps (DESIGN.md "Contracts"): flush and ``fsync`` the file, ``rename`` it into place,
``fsync`` the directory that now holds it.  Only after that may a database row point at
it; so after a crash a file may exist without a row (an orphan, removed at the next
start) but a row never lacks its file.

The blocking parts (fsync, rename, unlink) are plain synchronous functions: the SQLite
store calls them on its writer thread, never on the reactor thread.
"""

from __future__ import annotations

import enum
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from twisted.logger import Logger

from mxd.store.interfaces import StoreError

log = Logger()

T = TypeVar("T")
FSYNC_THREADS = 8  # parallel fsyncs of one group commit

_BLOB_ID = re.compile(r"\A[0-9a-f]{32}\Z")


class BlobError(StoreError):
    """A body file could not be written, made durable or found."""


class BlobState(enum.Enum):
    OPEN = "open"  # accepting writes
    SEALED = "sealed"  # handed to the store; no more writes
    DURABLE = "durable"  # fsynced and renamed into place; ``blob_id`` is final
    ABORTED = "aborted"


def is_blob_id(blob_id: str) -> bool:
    """True for the ids this module makes (32 lowercase hex digits); guards file paths."""
    return bool(_BLOB_ID.match(blob_id))


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobFiles:
    """The blob and tmp directories of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / "blobs"
        self.tmp_dir = self.data_dir / "tmp"

    def ensure_dirs(self) -> None:
        """Create tmp/ and all 256 fan-out directories up front (and fsync them), so that
        making a body durable never has to create, and fsync, a new directory."""
        created = False
        for d in (self.data_dir, self.blob_dir, self.tmp_dir):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                created = True
        for i in range(256):
            sub = self.blob_dir / f"{i:02x}"
            if not sub.is_dir():
                sub.mkdir(exist_ok=True)
                created = True
        if created:
            fsync_dir(self.blob_dir)
            fsync_dir(self.data_dir)

    def path(self, blob_id: str) -> Path:
        if not is_blob_id(blob_id):
            raise BlobError(f"malformed blob id {blob_id!r}")
        return self.blob_dir / blob_id[:2] / blob_id

    def new_writer(self) -> FileBlobWriter:
        """A writer for a new body (opens a file in tmp/; cheap, no fsync)."""
        return FileBlobWriter(self, secrets.token_hex(16))

    def open(self, blob_id: str) -> BinaryIO:
        try:
            return open(self.path(blob_id), "rb")
        except FileNotFoundError as e:
            raise BlobError(f"blob {blob_id} is missing") from e

    def size(self, blob_id: str) -> int | None:
        try:
            return self.path(blob_id).stat().st_size
        except FileNotFoundError:
            return None

    def make_durable(self, writers: Iterable[FileBlobWriter]) -> list[BaseException | None]:
        """Make several sealed writers durable, fsyncing each touched directory once.

        Returns one entry per writer: None on success, else the error (the writer is then
        aborted).  Writers already durable are left alone.  The fsyncs of a batch run in
        parallel (they release the GIL and the disk can merge them).  Blocking: writer
        thread only.
        """
        writers = list(writers)
        errors: dict[int, BaseException] = {}
        todo = [w for w in dict.fromkeys(writers) if w.state is not BlobState.DURABLE]
        for w, err in zip(todo, self._each(FileBlobWriter._sync, todo), strict=True):
            if err is not None:
                errors[id(w)] = err
        dirs: set[Path] = set()
        for w in todo:
            if id(w) in errors:
                w._abort_quietly()
                continue
            try:
                dirs.add(w._rename())
            except OSError as e:
                errors[id(w)] = e
                w._abort_quietly()
        dir_list = sorted(dirs)
        dir_errors = [e for e in self._each(fsync_dir, dir_list) if e is not None]
        if dir_errors:  # pragma: no cover - disk failure
            return [errors.get(id(w), dir_errors[0]) for w in writers]
        return [errors.get(id(w)) for w in writers]

    def _each(self, fn: Callable[[T], object], items: list[T]) -> list[BaseException | None]:
        """Call ``fn`` on each item (in parallel when there are several); the errors."""
        def call(item: T) -> BaseException | None:
            try:
                fn(item)
            except (OSError, BlobError) as e:
                return e
            return None

        if len(items) <= 1:
            return [call(i) for i in items]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=FSYNC_THREADS,
                                                thread_name_prefix="mxd-fsync")
        return list(self._executor.map(call, items))

    def close(self) -> None:
        """Stop the fsync helper threads (the store calls this when it closes)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def unlink(self, blob_ids: Iterable[str]) -> None:
        """Remove body files (after the commit that dropped their last reference)."""
        dirs: set[Path] = set()
        for blob_id in blob_ids:
            p = self.path(blob_id)
            try:
                p.unlink()
                dirs.add(p.parent)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("cannot remove blob {blob_id}: {error}", blob_id=blob_id, error=e)
        for d in dirs:
            try:
                fsync_dir(d)
            except OSError as e:  # pragma: no cover - disk failure
                log.warn("cannot fsync {dir}: {error}", dir=str(d), error=e)

    def iter_blob_ids(self) -> Iterator[str]:
        """Every body file on disk (ignoring names this module would not make)."""
        if not self.blob_dir.is_dir():
            return
        for sub in self.blob_dir.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if is_blob_id(f.name) and f.name[:2] == sub.name:
                    yield f.name

    def clean_tmp(self) -> int:
        """Remove every leftover in tmp/ (bodies whose delivery never completed)."""
        n = 0
        if not self.tmp_dir.is_dir():
            return 0
        for f in self.tmp_dir.iterdir():
            try:
                if f.is_dir():
                    continue
                f.unlink()
                n += 1
            except OSError as e:
                log.warn("cannot remove {path}: {error}", path=str(f), error=e)
        return n


class FileBlobWriter:
    """Implements ``interfaces.BlobWriter``: a body arriving into ``tmp/``.

    Written on the reactor thread; once handed to the store (``deliver``, ``append``,
    ``commit_blob``) it is sealed and the writer thread finishes it.  After that
    ``blob_id`` names the durable body and the same writer may be passed to further
    store calls, which then share the one file.
    """

    def __init__(self, files: BlobFiles, blob_id: str) -> None:
        self._files = files
        self.blob_id = blob_id
        self._tmp = files.tmp_dir / f"{blob_id}.tmp"
        self._f: BinaryIO | None = open(self._tmp, "xb")
        self._size = 0
        self.state = BlobState.OPEN

    @property
    def size(self) -> int:
        return self._size

    @property
    def durable(self) -> bool:
        return self.state is BlobState.DURABLE

    def write(self, data: bytes) -> None:
        if self.state is not BlobState.OPEN or self._f is None:
            raise BlobError(f"blob writer is {self.state.value}, cannot write")
        self._f.write(data)
        self._size += len(data)

    def seal(self) -> None:
        """No more writes; called on the reactor thread when handed to the store."""
        if self.state is BlobState.ABORTED:
            raise BlobError("blob writer was aborted")
        if self.state is BlobState.OPEN:
            self.state = BlobState.SEALED

    def abort(self) -> None:
        """Drop the body (client aborted, size limit, error).  Once the writer has been
        handed to the store (sealed or durable) this does nothing: the store then owns
        the body, removes it if the operation fails, and reference counts decide after."""
        if self.state is BlobState.OPEN:
            self._abort_quietly()

    def discard(self) -> None:
        """The store's abort: drop a body that did not become durable (sealed or not)."""
        if self.state in (BlobState.OPEN, BlobState.SEALED):
            self._abort_quietly()

    def _abort_quietly(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
        try:
            self._tmp.unlink()
        except OSError:
            pass
        self.state = BlobState.ABORTED

    def _sync(self) -> None:
        """Durability step 1: flush, fsync and close the tmp file."""
        if self.state is not BlobState.SEALED or self._f is None:
            raise BlobError(f"blob writer is {self.state.value}, cannot make it durable")
        f = self._f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None

    def _rename(self) -> Path:
        """Durability step 2: rename into place; returns the directory to fsync (step 3)."""
        dest = self._files.path(self.blob_id)
        dest.parent.mkdir(exist_ok=True)
        os.rename(self._tmp, dest)
        self.state = BlobState.DURABLE
        return dest.parent
