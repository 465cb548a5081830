"""Removing body files that no row references from a body directory that several nodes
share (the PostgreSQL store's ``blob_dir``).

A node makes a body durable before the transaction that references it commits (a row
never points at a missing body), so a node killed in between leaves a file that no row
will ever reference; so does a commit whose answer was lost and that did not happen
(mxd.store.pgconn), and a body whose grace period (``StoreSettings.unlink_grace``) was
cut short by the node's death.  On SQLite the one process alone on its data directory
removes these at start; here another node may be writing a body right now, or keeping
an expunged one for its grace period, so the sweep removes a file only when all of:

* it is older than ``min_age`` (its modification time): a body being written is
  younger (each write moves its time, and SMTP and IMAP time out idle transfers long
  before);
* it is not empty: an empty file may be a pool file (mxd.store.blobs) that a live node
  pre-created and will hand out later (a crashed node's empty pool files stay: they
  take no space);
* no row of ``blobs`` names it, at two sweeps at least ``hold_off`` seconds apart
  (longer than ``unlink_grace``): a body id is never referenced again once its last
  reference went, so a file unreferenced then and now is one that no node keeps.

A body named in a node's doomed list (mxd.store.leftovers: it had a row, and the node
dropped it and keeps the file for its grace period) is durable and was referenced, so
the first two conditions are not needed for it: unreferenced at two sweeps ``hold_off``
apart, it goes whatever its age (a node killed in its grace period).  A list whose
bodies are all gone (or still referenced: a rolled-back drop) and that is older than
``min_age`` is removed.

A node's pool list (``<host>-<pid>.pool``, mxd.store.blobs) names its pre-created,
empty files.  Of a dead process, those no row references are removed with its tmp files,
lists and pins (``BlobFiles.clean_dead_name``).  Dead means: of this host, its pid is
not running (a node or worker restarted here); of another host (where the same pid may
be alive), its database connections, which carry its name as ``application_name``, were
seen by this sweeper and then were absent at two sweeps ``hold_off`` apart, and its
files are older than ``min_age``.  A live node always has one (its pool keeps one open);
one never seen connected (an older mxd during an upgrade) is never taken for dead, so
a node that died while no sweeper watched leaves its empty files.  Other leftovers in
``tmp/`` (bodies whose transfer never ended) older than ``min_age`` go too.
One node sweeps at a time: the sweep holds the PostgreSQL advisory lock ``LOCK_KEY`` on
its connection and a node that cannot take it skips its turn.  Every node of the
installation tries every ``interval`` seconds (a TimerService, mxd.components).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from mxd.store.blobs import BlobFiles, pid_running
from mxd.store.leftovers import DOOMED, list_owner, read_ids

log = Logger(namespace="mxd.store.orphans")

LOCK_KEY = 0x6D78645F6F727068  # pg_advisory_lock key ("mxd_orph")
CHUNK = 1000  # ids per query
_PROC_NAME = re.compile(r"(.+-[0-9]+)\.")  # <host>-<pid>. starts a process's file names


@attrs.frozen
class SweepSettings:
    interval: float = 1800.0  # seconds between a node's sweeps
    min_age: float = 3600.0  # a file modified more recently is never touched
    hold_off: float = 600.0  # unreferenced at two sweeps at least this far apart


@attrs.frozen
class SweepResult:
    locked: bool  # False: another node was sweeping (nothing done)
    unreferenced: int = 0  # old, non-empty body files no row names (now)
    removed: tuple[str, ...] = ()  # of those, the ones removed (seen before too)
    tmp_removed: int = 0
    lists_removed: int = 0  # doomed lists with nothing left to remove
    dead_pooled: int = 0  # pooled files of dead processes of this host, removed


class OrphanSweeper:
    """One node's sweeps; remembers when it first saw each unreferenced file."""

    def __init__(self, files: BlobFiles, settings: SweepSettings = SweepSettings()) -> None:
        self.files = files
        self.settings = settings
        self._first_seen: dict[str, float] = {}
        # Bodies of the doomed lists of dead processes whose lists clean_dead removed.
        self._carried: set[str] = set()
        self._seen_alive: set[str] = set()  # application names of processes seen connected
        self._absent_since: dict[str, float] = {}  # dead-looking processes of other hosts

    def sweep(self, pool: Any, now: float | None = None) -> SweepResult:
        """One sweep with a connection of ``pool`` (blocking: a pool thread).  ``now``:
        the time in seconds since the epoch (file times are compared with it)."""
        now = time.time() if now is None else now
        with pool.connection() as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
                return SweepResult(False)
            try:
                return self._sweep(conn, now)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    def _sweep(self, conn: Any, now: float) -> SweepResult:
        s = self.settings
        lists = self._doomed_lists()
        self._carried = {b for b in self._carried if self.files.path(b).exists()}
        listed = [b for ids in [*lists.values(), sorted(self._carried)] for b in ids
                  if self.files.path(b).exists()]
        old = list(dict.fromkeys([*self._old_bodies(now - s.min_age), *listed]))
        unreferenced = _unreferenced(conn, old)
        seen = {b: self._first_seen.get(b, now) for b in unreferenced}
        due = sorted(b for b, first in seen.items() if first <= now - s.hold_off)
        if due:  # once more, right before: nothing may have taken one of them
            due = _unreferenced(conn, due)
        self.files.unlink(due)
        gone = set(due)
        self._first_seen = {b: t for b, t in seen.items() if b not in gone}
        self._carried.intersection_update(seen)
        n_lists = self._clean_lists(conn, lists, now - s.min_age)
        n_pooled = self._clean_dead_processes(conn, now)
        n_tmp = self._clean_tmp(now - s.min_age)
        if due or n_tmp or n_pooled:
            log.info("removed {n} unreferenced bodies, {pooled} pooled files of dead "
                     "processes and {tmp} abandoned tmp files from {dir}", n=len(due),
                     pooled=n_pooled, tmp=n_tmp, dir=str(self.files.blob_dir))
        return SweepResult(True, len(unreferenced), tuple(due), n_tmp, n_lists, n_pooled)

    def _doomed_lists(self) -> dict[os.PathLike[str], list[str]]:
        tmp_dir = self.files.tmp_dir
        if not tmp_dir.is_dir():
            return {}
        return {f: read_ids(f) for f in tmp_dir.iterdir() if f.name.endswith(DOOMED)}

    def _clean_lists(self, conn: Any, lists: dict[os.PathLike[str], list[str]],
                     before: float) -> int:
        """Remove the doomed lists older than ``before`` whose bodies are all gone or
        referenced (their owner, if alive, makes a new one at its next drop)."""
        n = 0
        for f, ids in lists.items():
            try:
                if os.stat(f).st_mtime >= before:
                    continue
            except OSError:
                continue
            on_disk = [b for b in ids if self.files.path(b).exists()]
            if on_disk and _unreferenced(conn, on_disk):
                continue
            try:
                os.unlink(f)
                n += 1
            except OSError:
                pass
        return n

    def _clean_dead_processes(self, conn: Any, now: float) -> int:
        """``clean_dead_name`` for every process that left files here (pool and doomed
        lists, pin directories) and is dead: of this host, not running; of another host,
        seen connected before by this sweeper and absent from ``pg_stat_activity`` at two
        sweeps ``hold_off`` apart, its files older than ``min_age``.  Returns the pooled
        files removed."""
        s = self.settings
        host = socket.gethostname()
        live = {r[0] for r in conn.execute(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database()")}
        self._seen_alive.update(live)
        files = self._process_files()

        def referenced(ids: list[str]) -> set[str]:
            return set(ids) - set(_unreferenced(conn, ids))

        n = 0
        for name, paths in sorted(files.items()):
            owner = list_owner(name)
            if owner is None:
                continue
            if owner[0] == host:
                if owner[1] == os.getpid() or pid_running(owner[1]):
                    continue
            else:
                app = application_name(name)
                if app in live or app not in self._seen_alive:
                    self._absent_since.pop(name, None)
                    continue
                first = self._absent_since.setdefault(name, now)
                if first > now - s.hold_off or _newest(paths) >= now - s.min_age:
                    continue
            n += self.files.clean_dead_name(name, referenced, self._carried.update).pooled
            self._absent_since.pop(name, None)
        return n

    def _process_files(self) -> dict[str, list[Path]]:
        """Process name -> its lists in tmp/ and pin directories."""
        out: dict[str, list[Path]] = {}
        tmp_dir, held = self.files.tmp_dir, self.files.data_dir / "held"
        for d, pick in ((tmp_dir, lambda n: n.endswith((".pool", DOOMED))),
                        (held, lambda n: True)):
            if not d.is_dir():
                continue
            for f in d.iterdir():
                m = _PROC_NAME.match(f.name)  # a host name may hold dots and dashes
                if m and pick(f.name):
                    out.setdefault(m.group(1), []).append(f)
        return out

    def _old_bodies(self, before: float) -> Iterator[str]:
        """Non-empty body files last modified before ``before``."""
        for blob_id in self.files.iter_blob_ids():
            try:
                st = self.files.path(blob_id).stat()
            except OSError:
                continue  # removed meanwhile
            if st.st_size > 0 and st.st_mtime < before:
                yield blob_id

    def _clean_tmp(self, before: float) -> int:
        tmp_dir = self.files.tmp_dir
        if not tmp_dir.is_dir():
            return 0
        n = 0
        for f in tmp_dir.iterdir():
            if f.name.endswith((DOOMED, ".pool")):
                continue  # lists: see _clean_lists, _clean_dead_processes
            try:
                st = f.lstat()
                if os.path.isdir(f) or st.st_mtime >= before:
                    continue
                f.unlink()
                n += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warn("cannot remove {path}: {error}", path=str(f), error=e)
        return n


def application_name(proc_name: str) -> str:
    """The ``application_name`` of process ``proc_name``'s database connections (at most
    63 octets: longer ones are cut so by the server)."""
    return ("mxd " + proc_name).encode()[:63].decode(errors="ignore")


def _newest(paths: list[Path]) -> float:
    newest = 0.0
    for p in paths:
        try:
            newest = max(newest, p.stat().st_mtime)
        except OSError:
            pass
    return newest


def _unreferenced(conn: Any, blob_ids: list[str]) -> list[str]:
    """Of ``blob_ids``, those that no row of ``blobs`` names."""
    known: set[str] = set()
    for i in range(0, len(blob_ids), CHUNK):
        chunk = blob_ids[i:i + CHUNK]
        known.update(r[0] for r in conn.execute(
            "SELECT id FROM blobs WHERE id = ANY(%s)", (chunk,)))
    return [b for b in blob_ids if b not in known]
