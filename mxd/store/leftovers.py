"""Bodies a process leaves behind when it dies while it shares a body directory with
others (``[server] workers``, PostgreSQL nodes), and how the others find them.

When several processes share a store, the one that drops a body's last reference keeps
the file for a grace period (``StoreSettings.unlink_grace``; mxd.store.blobs "Pins")
and only then removes it.  Killed in between, it would leave the file for good: its
timer died with it, and the crash clean-up of a store opened alone never comes on a busy
installation.  So each such process lists those bodies in a *doomed list*,
``tmp/<host>-<pid>.<random>.doomed``, one id a line:

* an id is appended inside the transaction that deletes the body's ``blobs`` row, before
  it commits (``DoomedList.note``), so no commit leaves a body unlisted; an id whose
  transaction then rolled back is listed although its row is still there, which is why
  whoever reads a list checks the rows first;
* it leaves the list once the file is removed (``DoomedList.done``; the file is rewritten
  now and then, and removed when nothing is left, at the latest at close);
* appends are not fsynced: a process killed alone leaves the page cache behind, and after
  a crash of the machine every process starts again and the store's full clean-up runs.

A body whose ``blobs`` row is gone is never referenced again (no operation can create a
reference to an id without a row: copies read the id from a message row, the queue's
``ref_blob`` and a writer's further use check the row, and the foreign key of
``messages.blob_id`` refuses a copy that raced with the drop on PostgreSQL), and its pins
are hard links that its removal does not touch.  So a listed body without a row may be removed by anyone once
a full grace period has passed since it was seen without its row: the other processes
have had that time to pin it (the process that listed it may have died at any point of
its own grace period, so its start is unknown).  Who does it:

* the main process, for a worker it has reaped (``BlobFiles.clean_dead`` hands the
  dead worker's listed bodies without a row to the store, which lists them as its own
  and removes them a grace period later);
* on PostgreSQL, the periodic sweep of every node's lists (mxd.store.orphans: a listed
  body unreferenced at two sweeps ``hold_off`` > grace apart, whatever its age).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

from twisted.logger import Logger

log = Logger(namespace="mxd.store.leftovers")

DOOMED = ".doomed"
COMPACT_AFTER = 256  # rewrite a list once this many removed ids still sit in its file


def is_list_of(name: str, proc_name: str, suffix: str) -> bool:
    """Is file ``name`` (in tmp/) a list of process ``proc_name`` (``<host>-<pid>``)?"""
    return name.startswith(proc_name + ".") and name.endswith(suffix)


def list_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that wrote list file ``name``, or None."""
    host, sep, rest = name.rpartition("-")
    if not sep:
        return None
    pid = rest.partition(".")[0]
    return (host, int(pid)) if pid.isdigit() else None


def read_ids(path: Path) -> list[str]:
    """The ids in a list file (none when it is gone or unreadable)."""
    from mxd.store.blobs import is_blob_id

    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    return list(dict.fromkeys(b for b in text.split() if is_blob_id(b)))


class DoomedList:
    """This process's doomed list (see the module doc).  Thread-safe: the SQLite writer
    thread and the PostgreSQL store's pool threads note, the store's file thread marks
    done."""

    def __init__(self, tmp_dir: Path, proc_name: str) -> None:
        self.path = tmp_dir / f"{proc_name}.{secrets.token_hex(4)}{DOOMED}"
        self._lock = threading.Lock()
        self._listed: set[str] = set()
        self._gone = 0  # ids still in the file but no longer listed

    def note(self, blob_ids: Iterable[str]) -> None:
        """Add ids (before the commit that deletes their rows).  A failed write is
        logged: the body then stays behind if this process dies in its grace period."""
        with self._lock:
            new = [b for b in dict.fromkeys(blob_ids) if b not in self._listed]
            if not new:
                return
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
                try:
                    os.write(fd, "".join(b + "\n" for b in new).encode("ascii"))
                finally:
                    os.close(fd)
            except OSError as e:
                log.warn("cannot list bodies to remove in {path}: {error}", path=str(self.path),
                         error=e)
                return
            self._listed.update(new)

    def done(self, blob_ids: Iterable[str]) -> None:
        """The files of these ids are removed (or were never this list's)."""
        with self._lock:
            before = len(self._listed)
            self._listed.difference_update(blob_ids)
            self._gone += before - len(self._listed)
            if not self._listed:
                if self._gone:
                    _unlink_quietly(self.path)
                self._gone = 0
            elif self._gone >= max(COMPACT_AFTER, len(self._listed)):
                new = self.path.with_name(self.path.name + ".new")
                try:
                    new.write_text("".join(b + "\n" for b in self._listed), encoding="ascii")
                    os.replace(new, self.path)
                    self._gone = 0
                except OSError as e:
                    log.warn("cannot rewrite {path}: {error}", path=str(self.path), error=e)

    @property
    def listed(self) -> set[str]:
        with self._lock:
            return set(self._listed)

    def close(self) -> None:
        """At close, once every listed body is removed."""
        with self._lock:
            self._listed.clear()
            self._gone = 0
            _unlink_quietly(self.path)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
