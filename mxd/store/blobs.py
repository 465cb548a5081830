"""Message body files ("blobs") under the data directory.

Layout: ``<data_dir>/blobs/<first 2 hex digits>/<id>`` for durable bodies and
``<data_dir>/tmp/<host>-<pid>.<id>.tmp`` for bodies still arriving.  A body becomes durable in three
steps (DESIGN.md "Contracts"): flush and ``fsync`` the file, ``rename`` it into place,
``fsync`` the directory that now holds it.  Only after that may a database row point at
it; so after a crash a file may exist without a row (an orphan, removed at the next
start) but a row never lacks its file.

With a file pool (``BlobFiles(pool_size=N)``, what the SQLite store uses) bodies skip
``tmp/``: empty files are created ahead of time under their final names, in one fan-out
directory per refill, and that directory is fsynced *before* any of them is handed out.
Making such a body durable is then a single ``fsync`` of the file (no rename, no
directory fsync, no ``open`` on the reactor thread).  The orphan rule is unchanged: a
pooled file that never got its row (unused at a crash) is an orphan, removed at the next
start; unused ones are removed at ``close``.

A process killed alone (a SIGKILLed worker of ``[server] workers = N``) leaves its files
in ``tmp/`` and its pooled files that never got a row, while other processes go on
writing theirs.  So each process's files carry its name (``<host>-<pid>``): its tmp
files by name, its pooled ids in ``tmp/<host>-<pid>.pool`` (written before the files
are made; ids of written, durable or removed bodies leave it at the next refill).
``clean_dead(pid)`` (the main process, once it has reaped that worker) removes that
process's tmp files, those of its listed ids that no row references and its pins, and
hands over the bodies it was keeping for their grace period (mxd.store.leftovers).

Pins (``<data_dir>/held/<host>-<pid>.<random>/<id>``): when several processes share one store, a
body whose last reference another process dropped may still be shown by a session of
this one (IMAP: until that session is told of the expunge, RFC 9051 §7.5.1).  The
process that dropped it leaves the file for a grace period (``StoreSettings.
unlink_grace``); meanwhile each process that still shows the message hard-links it into
its own pin directory, and reads fall back to that link once the file itself is gone.
A pin directory of a process that is no longer running is removed at the next start.

The blocking parts (fsync, rename, unlink, link) are plain synchronous functions: the
SQLite store calls them on its writer thread, never on the reactor thread.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import attrs
from twisted.logger import Logger

from mxd.store.interfaces import StoreError
from mxd.store.leftovers import DOOMED, DoomedList, is_list_of, read_ids
from mxd.threadsched import mark_background

log = Logger()

T = TypeVar("T")
FSYNC_THREADS = 8  # parallel fsyncs of one group commit
HEAD_KEEP = 64 * 1024  # a writer keeps its body's first octets for the store's derivers
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

_BLOB_ID = re.compile(r"\A[0-9a-f]{32}\Z")


@attrs.frozen
class DeadLeftovers:
    """What ``clean_dead`` found of a dead process."""

    tmp: int = 0  # its tmp files, removed
    pooled: int = 0  # its pooled files that no row references, removed
    pins: int = 0  # its pin directories, removed
    doomed: tuple[str, ...] = ()  # bodies it kept for their grace period, handed over


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

    def __init__(self, data_dir: Path, *, pool_size: int = 0) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / "blobs"
        self._blob_dir_s = str(self.blob_dir)  # for open(): a str join beats pathlib
        self.tmp_dir = self.data_dir / "tmp"
        # Pre-created, empty body files (id, open file), their directory already fsynced.
        self.pool_size = max(0, pool_size)
        self._pool: collections.deque[tuple[str, BinaryIO]] = collections.deque()
        self._refilling = False
        self._refilled = threading.Event()  # set while no refill runs
        self._refilled.set()
        self._closed = False
        self.pin_dir: Path | None = None  # see enable_pins
        self.doomed: DoomedList | None = None  # see enable_pins
        # This process's name on its tmp files and pool list (see the module doc).
        self.proc_name = f"{socket.gethostname()}-{os.getpid()}"
        self._handed: dict[str, FileBlobWriter] = {}  # pooled writers not finished yet
        self._pin_dir_s = ""

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
        """A writer for a new body: a pooled file when one is ready (no system call),
        else a new file in tmp/ (cheap, no fsync)."""
        w = self.pooled_writer()
        if w is not None:
            return w
        return FileBlobWriter(self, secrets.token_hex(16))

    def pooled_writer(self) -> FileBlobWriter | None:
        """A writer on a pooled file, made without any system call; None when the pool
        is empty (a refill is then under way)."""
        if not self.pool_size:
            return None
        try:
            blob_id, f = self._pool.popleft()
        except IndexError:
            self._start_refill()
            return None
        if len(self._pool) < self.pool_size // 2:
            self._start_refill()
        w = FileBlobWriter(self, blob_id, pooled=f)
        with self._lock:
            self._handed[blob_id] = w
        return w

    # -- the file pool -------------------------------------------------------------------
    def pooled_ids(self) -> set[str]:
        """Ids of the pooled files not handed out yet (empty files under blobs/); waits
        for a refill in progress first (for checks and tests)."""
        self._refilled.wait(10)
        return {blob_id for blob_id, _ in list(self._pool)}

    def _start_refill(self) -> None:
        with self._lock:
            if self._refilling or self._closed:
                return
            self._refilling = True
            self._refilled.clear()
            executor = self._get_executor()
        executor.submit(self._refill)

    def _refill(self) -> None:
        """Helper thread: top the pool up with new files in one fan-out directory, then
        fsync that directory once; only then are the files handed out."""
        try:
            want = self.pool_size - len(self._pool)
            if want <= 0:
                return
            prefix = secrets.token_hex(1)
            made: list[tuple[str, BinaryIO]] = []
            ids = [prefix + secrets.token_hex(15) for _ in range(want)]
            try:
                self._write_pool_list(ids)
                for blob_id in ids:
                    fd = os.open(self.blob_dir / prefix / blob_id, _O_NEW, 0o600)
                    made.append((blob_id, open(fd, "wb")))
                fsync_dir(self.blob_dir / prefix)
            except OSError as e:
                log.warn("cannot pre-create body files: {error}", error=e)
                for blob_id, f in made:
                    f.close()
                    self._unlink_quietly(self.blob_dir / prefix / blob_id)
                return
            self._pool.extend(made)
        finally:
            with self._lock:
                self._refilling = False
                self._refilled.set()
                closed = self._closed
            if closed:
                self._drain_pool()

    @property
    def pool_list(self) -> Path:
        return self.tmp_dir / f"{self.proc_name}.pool"

    def _write_pool_list(self, new: list[str]) -> None:
        """Helper thread: name in ``pool_list`` every pooled id this process may still
        have to remove: ``new``, the pool's, and handed-out ones not yet durable or
        aborted (replaced whole; not fsynced: after a crash of the machine the full
        orphan scan at the next start applies)."""
        with self._lock:
            for blob_id, w in list(self._handed.items()):
                if w.state in (BlobState.DURABLE, BlobState.ABORTED):
                    del self._handed[blob_id]
            ids = [*new, *(b for b, _ in list(self._pool)), *self._handed]
        tmp = self.tmp_dir / f"{self.proc_name}.pool.new"
        tmp.write_text("".join(b + "\n" for b in ids))
        os.replace(tmp, self.pool_list)

    def clean_dead(self, pid: int, referenced: Callable[[list[str]], set[str]],
                   adopt: Callable[[list[str]], None] | None = None) -> DeadLeftovers:
        """Remove what process ``pid`` of this host left (its tmp files; its pooled
        files whose ids ``referenced`` does not return; its pins) and pass ``adopt`` the
        bodies of its doomed lists that ``referenced`` does not return, before those
        lists are removed (mxd.store.leftovers); nothing while it runs.  Blocking: the
        writer thread."""
        if pid == os.getpid() or pid_running(pid):
            return DeadLeftovers()
        return self.clean_dead_name(f"{socket.gethostname()}-{pid}", referenced, adopt)

    def clean_dead_name(self, name: str, referenced: Callable[[list[str]], set[str]],
                        adopt: Callable[[list[str]], None] | None = None) -> DeadLeftovers:
        """``clean_dead`` for process ``name`` (``<host>-<pid>``), which the caller
        knows to be dead (another host's: mxd.store.orphans)."""
        if name == self.proc_name or not self.tmp_dir.is_dir():
            return DeadLeftovers()
        n_pins = self._clean_pins_of(name)
        lists = [f for f in self.tmp_dir.iterdir() if is_list_of(f.name, name, DOOMED)]
        doomed = list(dict.fromkeys(b for f in lists for b in read_ids(f)))
        if doomed:
            keep = referenced(doomed)
            doomed = [b for b in doomed if b not in keep]
        if doomed and adopt is not None:
            adopt(doomed)
        for f in lists:
            self._unlink_quietly(f)
        n_tmp = 0
        for f in self.tmp_dir.iterdir():
            if f.name.startswith(name + ".") and f.name.endswith(".tmp"):
                try:
                    f.unlink()
                    n_tmp += 1
                except OSError as e:
                    log.warn("cannot remove {path}: {error}", path=str(f), error=e)
        listed = self.tmp_dir / f"{name}.pool"
        try:
            ids = [b for b in listed.read_text().split() if is_blob_id(b)]
        except OSError:
            ids = []
        keep = referenced(ids) if ids else set()
        n_pool = 0
        for blob_id in ids:
            if blob_id in keep:
                continue
            try:
                self.path(blob_id).unlink()
                n_pool += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("cannot remove body file {blob_id}: {error}", blob_id=blob_id, error=e)
        for f in (listed, self.tmp_dir / f"{name}.pool.new"):
            self._unlink_quietly(f)
        return DeadLeftovers(n_tmp, n_pool, n_pins, tuple(doomed))

    def _drain_pool(self) -> None:
        """Remove the pooled files not handed out (at close)."""
        while True:
            try:
                blob_id, f = self._pool.popleft()
            except IndexError:
                return
            f.close()
            self._unlink_quietly(self.blob_dir / blob_id[:2] / blob_id)

    @staticmethod
    def _unlink_quietly(path: Path) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def open(self, blob_id: str) -> BinaryIO:
        """Open a body for reading (IMAP FETCH calls this per message: kept cheap)."""
        if not is_blob_id(blob_id):
            raise BlobError(f"malformed blob id {blob_id!r}")
        try:
            return open(f"{self._blob_dir_s}/{blob_id[:2]}/{blob_id}", "rb")
        except FileNotFoundError as e:
            if self._pin_dir_s:
                try:
                    return open(f"{self._pin_dir_s}/{blob_id}", "rb")
                except FileNotFoundError:
                    pass
            raise BlobError(f"blob {blob_id} is missing") from e

    def read_head(self, blob_id: str, length: int) -> bytes:
        """The first ``length`` octets of a body: one open, read and close of the file
        descriptor, about half the cost of a buffered file object for a small read."""
        if not is_blob_id(blob_id):
            raise BlobError(f"malformed blob id {blob_id!r}")
        try:
            fd = os.open(f"{self._blob_dir_s}/{blob_id[:2]}/{blob_id}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            if not self._pin_dir_s:
                raise BlobError(f"blob {blob_id} is missing") from e
            try:
                fd = os.open(f"{self._pin_dir_s}/{blob_id}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise BlobError(f"blob {blob_id} is missing") from e
        try:
            data = os.read(fd, length)
            while 0 < len(data) < length:
                more = os.read(fd, length - len(data))
                if not more:
                    break
                data += more
            return data
        finally:
            os.close(fd)

    def size(self, blob_id: str) -> int | None:
        try:
            return self.path(blob_id).stat().st_size
        except FileNotFoundError:
            if self.pin_dir is not None:
                try:
                    return (self.pin_dir / blob_id).stat().st_size
                except FileNotFoundError:
                    pass
            return None

    # -- pins (see the module docstring) ----------------------------------------------------
    def enable_pins(self) -> None:
        """Use pins, in a directory named after this host and process."""
        name = f"{socket.gethostname()}-{os.getpid()}.{secrets.token_hex(4)}"
        self.pin_dir = self.data_dir / "held" / name
        self._pin_dir_s = str(self.pin_dir)
        self.doomed = DoomedList(self.tmp_dir, self.proc_name)

    def pin(self, blob_ids: Iterable[str]) -> None:
        """Hard-link bodies into this process's pin directory; one already gone is not
        pinned (nothing left to keep)."""
        if self.pin_dir is None:
            return
        made = False
        for blob_id in blob_ids:
            if not made:
                self.pin_dir.mkdir(parents=True, exist_ok=True)
                made = True
            try:
                os.link(self.path(blob_id), self.pin_dir / blob_id)
            except (FileExistsError, FileNotFoundError):
                pass
            except OSError as e:
                log.warn("cannot pin blob {blob_id}: {error}", blob_id=blob_id, error=e)

    def unpin(self, blob_ids: Iterable[str]) -> None:
        if self.pin_dir is None:
            return
        for blob_id in blob_ids:
            if is_blob_id(blob_id):
                self._unlink_quietly(self.pin_dir / blob_id)

    def clear_pins(self) -> None:
        """Remove this process's pins (at close: no session shows anything any more)."""
        if self.pin_dir is not None:
            shutil.rmtree(self.pin_dir, ignore_errors=True)

    def clean_stale_pins(self) -> int:
        """Remove the pin directories of this host's processes that no longer run (a
        process killed while it held bodies); other hosts' directories are theirs."""
        held = self.data_dir / "held"
        if not held.is_dir():
            return 0
        prefix = socket.gethostname() + "-"
        n = 0
        for d in held.iterdir():
            pid = d.name[len(prefix):].partition(".")[0]
            if not d.name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
                continue
            if pid_running(int(pid)):
                continue
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def _clean_pins_of(self, proc_name: str) -> int:
        """Remove the pin directories of (dead) process ``proc_name``."""
        held = self.data_dir / "held"
        if not held.is_dir():
            return 0
        n = 0
        for d in held.iterdir():
            if d.name.startswith(proc_name + ".") and d != self.pin_dir:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n

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
                d = w._rename()
            except OSError as e:
                errors[id(w)] = e
                w._abort_quietly()
                continue
            if d is not None:
                dirs.add(d)
        dir_list = sorted(dirs)
        dir_errors = [e for e in self._each(fsync_dir, dir_list) if e is not None]
        if dir_errors:  # pragma: no cover - disk failure
            return [errors.get(id(w), dir_errors[0]) for w in writers]
        return [errors.get(id(w)) for w in writers]

    def start_durable(self, writers: Iterable[FileBlobWriter]) -> Future[list[BaseException | None]]:
        """``make_durable`` on a helper thread, so that the caller can commit the rows
        meanwhile; the Future gives its result.  Writer thread only."""
        writers = list(writers)
        with self._lock:
            executor = self._get_executor()
        return executor.submit(self.make_durable, writers)

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
        with self._lock:
            executor = self._get_executor()
        return list(executor.map(call, items))

    def _get_executor(self) -> ThreadPoolExecutor:
        """The helper threads (call with ``self._lock`` held)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=FSYNC_THREADS,
                                                thread_name_prefix="mxd-fsync",
                                                initializer=mark_background)
        return self._executor

    def close(self) -> None:
        """Stop the helper threads and remove unused pooled files (the store calls this
        when it closes)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._drain_pool()
        if self.pool_size:
            self._unlink_quietly(self.pool_list)
        if self.doomed is not None:
            self.doomed.close()

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


def pid_running(pid: int) -> bool:
    """Does a process ``pid`` run on this host (of any user)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileBlobWriter:
    """Implements ``interfaces.BlobWriter``: a body arriving into ``tmp/`` (or straight
    into its final, pre-created file when it came from the pool).

    Written on the reactor thread; once handed to the store (``deliver``, ``append``,
    ``commit_blob``) it is sealed and the writer thread finishes it.  After that
    ``blob_id`` names the durable body and the same writer may be passed to further
    store calls, which then share the one file.

    A body of at most HEAD_KEEP octets (most mail) stays in memory until it is made
    durable: the writer thread (or its fsync helper) writes it to the file just before
    the fsync, so the reactor thread makes no file system call for it, and its digest
    is computed when asked for (off the reactor too).  A larger body goes to the file
    as it arrives.
    """

    def __init__(self, files: BlobFiles, blob_id: str, pooled: BinaryIO | None = None) -> None:
        self._files = files
        self.blob_id = blob_id
        # A pooled file already sits at its final path, its directory entry durable.
        self._pooled = pooled is not None
        if pooled is not None:
            self._tmp = files.blob_dir / blob_id[:2] / blob_id
            self._f: BinaryIO | None = pooled
        else:
            self._tmp = files.tmp_dir / f"{files.proc_name}.{blob_id}.tmp"
            self._f = open(self._tmp, "xb")
        self._size = 0
        self._head = bytearray()  # the first HEAD_KEEP octets, for derived data
        # Whether the octets so far are in the file; if not, they are all in _head.
        self._spilled = False
        # A digest of the body as written: lets a restart check a body whose fsync ran
        # alongside its database commit (mxd.store.unsynced).  Kept up to date once the
        # body has spilled to the file; else computed from _head when asked for.
        self._digest: Any = None
        self.state = BlobState.OPEN

    @property
    def pooled(self) -> bool:
        """Does the body sit in a pool file (its directory entry durable already)?"""
        return self._pooled

    @property
    def digest(self) -> bytes:
        """BLAKE2b-128 of the body's octets (once sealed: of the whole body)."""
        if self._spilled:
            return bytes(self._digest.digest())
        return hashlib.blake2b(self._head, digest_size=16).digest()

    @property
    def size(self) -> int:
        return self._size

    def read_head(self, length: int) -> bytes:
        """The first ``length`` octets of the body: from memory when they arrived within
        the first HEAD_KEEP octets, else from the file (writer thread, once durable)."""
        if length <= len(self._head) or len(self._head) == self._size:
            return bytes(self._head[:length])
        return self._files.read_head(self.blob_id, length)

    @property
    def durable(self) -> bool:
        return self.state is BlobState.DURABLE

    def write(self, data: bytes) -> None:
        if self.state is not BlobState.OPEN or self._f is None:
            raise BlobError(f"blob writer is {self.state.value}, cannot write")
        if not self._spilled:
            if self._size + len(data) <= HEAD_KEEP:
                self._head += data  # written to the file by _sync
                self._size += len(data)
                return
            self._f.write(self._head)  # too big to keep: to the file from now on
            self._digest = hashlib.blake2b(self._head, digest_size=16)
            self._spilled = True
        self._f.write(data)
        self._digest.update(data)
        if self._size < HEAD_KEEP:
            self._head += data[:HEAD_KEEP - self._size]
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
        """Durability step 1: write what is still in memory, flush, fsync and close the
        tmp file."""
        if self.state is not BlobState.SEALED or self._f is None:
            raise BlobError(f"blob writer is {self.state.value}, cannot make it durable")
        f = self._f
        if not self._spilled and self._head:
            f.write(self._head)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None

    def _rename(self) -> Path | None:
        """Durability step 2: rename into place; returns the directory to fsync (step 3),
        or None for a pooled file (already in place, its directory fsynced at creation)."""
        if self._pooled:
            self.state = BlobState.DURABLE
            return None
        dest = self._files.path(self.blob_id)
        try:
            os.rename(self._tmp, dest)
        except FileNotFoundError:
            if not self._tmp.exists():
                raise
            self._files.ensure_dirs()  # a fan-out directory went missing: recreate it
            os.rename(self._tmp, dest)
        self.state = BlobState.DURABLE
        return dest.parent
