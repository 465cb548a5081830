"""mxd.threadsched: the store's helper threads run under SCHED_BATCH (a woken helper
does not preempt the reactor thread), the reactor thread keeps the default policy."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from mxd.store.interfaces import Delivery, MessageProps
from mxd.threadsched import mark_background
from tests.store.helpers import open_store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux policy")


def _policies() -> dict[int, int]:
    """Thread id -> scheduling policy of this process's threads (/proc, field 41)."""
    out = {}
    for t in Path("/proc/self/task").iterdir():
        try:
            fields = (t / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(t.name)] = int(fields[38])
    return out


def test_a_thread_marked_background_is_sched_batch_and_the_others_are_not() -> None:
    seen: list[int] = []

    def run() -> None:
        assert mark_background()
        seen.append(os.sched_getscheduler(0))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the calling thread is untouched


def test_the_main_thread_is_never_marked() -> None:
    """The reactor runs on the main thread; a store run inline (tools, tests) calls
    mark_background there, which must leave it alone."""
    assert not mark_background()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_the_store_writer_and_fsync_threads_run_as_background(tmp_path: Path) -> None:
    before = {tid for tid, p in _policies().items() if p == os.SCHED_BATCH}
    h = open_store(tmp_path / "data")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        w = h.store.new_blob()
        w.write(b"Subject: x\r\n\r\nbody\r\n")
        h.run(h.store.deliver(w, [Delivery(acct.id)], MessageProps()))
        batch = {tid for tid, p in _policies().items() if p == os.SCHED_BATCH} - before
        # The writer thread, and the helper that fsynced the body.
        assert len(batch) >= 2, _policies()
        assert _policies()[threading.get_native_id()] == os.SCHED_OTHER
    finally:
        h.close()
