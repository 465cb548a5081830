"""What the PostgreSQL store does beyond the shared contract (tests/store/test_contract.py):
its shared body directory, migrations by several nodes at once, change notification
between nodes, and a database that goes away and comes back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mxd.config import ConfigError, parse_config
from mxd.store.interfaces import Delivery, MailboxChange, MessageProps
from mxd.store.pgschema import SCHEMAS
from mxd.store.postgres import (
    MAX_UIDS_PER_NOTICE,
    BlobDirError,
    change_payloads,
    check_blob_dir,
    parse_payload,
)
from tests.integration.pglab import PGCluster
from tests.store.helpers import open_pg_store


def test_blob_dir_missing_or_read_only_is_refused(tmp_path: Path) -> None:
    """A node refuses a body directory it cannot write, with the reason."""
    with pytest.raises(BlobDirError, match="does not exist"):
        check_blob_dir(tmp_path / "nope")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        import os

        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        with pytest.raises(BlobDirError, match="not writable"):
            check_blob_dir(ro)
    finally:
        ro.chmod(0o755)
    check_blob_dir(tmp_path)  # fine


def test_read_only_mount_is_refused(tmp_path: Path) -> None:
    """Even root is refused a body directory on a read-only file system (checked by
    writing, not by permission bits)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    target = tmp_path / "ro"
    target.mkdir()
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount -t tmpfs -o ro tmpfs {target} && {sys_python()} -c "
                        f"'from mxd.store.postgres import check_blob_dir; from pathlib import Path;"
                        f" check_blob_dir(Path(\"{target}\"))'"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "not writable" in r.stderr, r.stderr


def sys_python() -> str:
    import sys

    return sys.executable


def test_config_requires_dsn_and_blob_dir() -> None:
    """backend = "postgresql" without dsn or blob_dir is a config error naming the key."""
    base = ('hostname = "mx.example.test"\ndata_dir = "/tmp/mxd-t"\n[store]\n'
            'backend = "postgresql"\n')
    with pytest.raises(ConfigError, match="store.dsn: required"):
        parse_config(base, "t.toml")
    with pytest.raises(ConfigError, match="store.blob_dir: required"):
        parse_config(base + 'dsn = "dbname=mxd"\n', "t.toml")
    cfg = parse_config(base + 'dsn = "dbname=mxd"\nblob_dir = "/srv/b"\n', "t.toml")
    assert cfg.store.blob_dir == Path("/srv/b")


def test_payloads_round_trip_and_split() -> None:
    """A change with many UIDs goes out in several payloads under PostgreSQL's limit."""
    uids = tuple(range(1, 2 * MAX_UIDS_PER_NOTICE + 10))
    payloads = change_payloads("n1", [MailboxChange(7, "expunge", uids, 99)])
    assert len(payloads) == 3 and all(len(p) < 8000 for p in payloads)
    back = [parse_payload(p) for p in payloads]
    assert all(b is not None and b[0] == "n1" for b in back)
    assert tuple(u for b in back if b for u in b[1].uids) == uids
    assert parse_payload("not json") is None


def test_nodes_starting_together_migrate_once(pg_dsn: str) -> None:
    """Four nodes migrating one empty database at once: one applies the steps, the
    others find nothing left (the advisory lock), and nobody fails."""
    import psycopg

    from mxd.store.pgschema import migrate

    results: list[Any] = []
    start = threading.Barrier(4)

    def node() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            start.wait()
            try:
                results.append(migrate(conn))
            except Exception as e:
                results.append(e)

    threads = [threading.Thread(target=node) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [r for r in results if isinstance(r, Exception)], results
    applied = sorted(r["store"] for r in results)
    assert applied == [0, 0, 0, len(SCHEMAS["store"])]
    with psycopg.connect(pg_dsn) as conn:
        versions = dict(conn.execute("SELECT name, version FROM schema_version").fetchall())
    assert versions == {k: len(v) for k, v in SCHEMAS.items()}


def _watch_inbox(a: Any, b: Any) -> tuple[Any, Any, list[MailboxChange], list[MailboxChange]]:
    """An account made on node A, its INBOX watched on both nodes: (account, inbox, the
    changes node A's listener hears, those node B's hears)."""
    acct = a.run(a.store.add_account("alice", "{}"))
    inbox = a.run(a.store.get_mailbox(acct.id, "INBOX"))
    seen_a: list[MailboxChange] = []
    seen_b: list[MailboxChange] = []
    b.store.subscribe(inbox.id, seen_b.append)
    a.store.subscribe(inbox.id, seen_a.append)
    return acct, inbox, seen_a, seen_b


def test_every_kind_of_change_reaches_the_other_node_once(
        pg_dsn: str, tmp_path: Path) -> None:
    """The notices sent by the statements themselves (a delivery, an APPEND, a flag
    change on many messages, split over several notices) reach node B once each, with
    the UIDs and modseqs node A's own listener hears; a flag store that changes
    nothing sends nothing."""
    a = open_pg_store(pg_dsn, tmp_path / "blobs", listen=True)
    b = open_pg_store(pg_dsn, tmp_path / "blobs", listen=True)
    try:
        acct, inbox, seen_a, seen_b = _watch_inbox(a, b)
        assert b.store.listening(5)  # type: ignore[attr-defined]
        [first] = a.deliver_bytes(b"Subject: hi\r\n\r\nx\r\n", [Delivery(acct.id)])
        n = MAX_UIDS_PER_NOTICE + 5
        ws = []
        for i in range(n - 1):
            w = a.store.new_blob()
            w.write(b"Subject: %d\r\n\r\n" % i)
            ws.append((w, frozenset(), None))
        a.run(a.store.append_many(inbox.id, ws), timeout=60)
        uids = list(range(first, first + n))
        changed, failed = a.run(a.store.store_flags(inbox.id, uids, frozenset({"\\Seen"}),
                                                    "add"))
        assert [m.uid for m in changed] == uids and failed == []
        modseq = changed[0].modseq
        assert {m.modseq for m in changed} == {modseq}
        assert a.run(a.store.store_flags(inbox.id, uids, frozenset({"\\Seen"}), "add")) == (
            [], [])
        a.settle()
        want = [(c.kind, c.uids, c.highestmodseq) for c in seen_a]
        flags = [c for c in seen_a if c.kind == "flags"]
        assert sum(len(c.uids) for c in flags) == n
        assert {c.highestmodseq for c in flags} == {modseq}
        t0 = time.monotonic()
        while len(seen_b) < len(want) and time.monotonic() - t0 < 10:
            b.calls.pump_once(0.02)
        got = [(c.kind, c.uids, c.highestmodseq) for c in seen_b]
        # Node A's listeners hear each change as one; node B as its notices (the UIDs
        # of one change split over several).
        assert [g for g in got if g[0] == "exists"] == [w for w in want if w[0] == "exists"]
        assert sorted(u for g in got if g[0] == "flags" for u in g[1]) == uids
        assert {g[2] for g in got if g[0] == "flags"} == {modseq}
        assert a.run(a.store.get_message(inbox.id, first)).flags == frozenset({"\\Seen"})
    finally:
        a.close()
        b.close()


def test_a_change_on_one_node_reaches_the_other_within_a_second(
        pg_dsn: str, tmp_path: Path) -> None:
    """A delivery committed by node A reaches node B's mailbox listener (LISTEN/NOTIFY)
    well within a second, with its UID; node A's own listener hears it once."""
    a = open_pg_store(pg_dsn, tmp_path / "blobs", listen=True)
    b = open_pg_store(pg_dsn, tmp_path / "blobs", listen=True)
    try:
        acct, inbox, seen_a, seen_b = _watch_inbox(a, b)
        assert b.store.listening(5)  # type: ignore[attr-defined]  # LISTEN: not retroactive
        t0 = time.monotonic()
        [uid] = a.deliver_bytes(b"Subject: hi\r\n\r\nx\r\n", [Delivery(acct.id)])
        while not seen_b and time.monotonic() - t0 < 5:
            b.calls.pump_once(0.02)
        elapsed = time.monotonic() - t0
        assert [(c.kind, c.uids) for c in seen_b] == [("exists", (uid,))]
        assert elapsed < 1.0, elapsed
        a.settle()
        assert [(c.kind, c.uids) for c in seen_a] == [("exists", (uid,))]  # not twice
    finally:
        a.close()
        b.close()


def test_flag_changes_and_expunges_reach_the_other_node(pg_dsn: str, tmp_path: Path) -> None:
    """Flags stored and messages expunged on node A reach node B's listener with their
    UIDs and modseqs, so B's IMAP sessions can send FETCH FLAGS and EXPUNGE."""
    a = open_pg_store(pg_dsn, tmp_path / "blobs", listen=True)
    b = open_pg_store(pg_dsn, tmp_path / "blobs", listen=True)
    try:
        acct = a.run(a.store.add_account("alice", "{}"))
        inbox = a.run(a.store.get_mailbox(acct.id, "INBOX"))
        uids = [a.deliver_bytes(b"Subject: %d\r\n\r\n" % i, [Delivery(acct.id)])[0]
                for i in range(3)]
        seen: list[MailboxChange] = []
        b.store.subscribe(inbox.id, seen.append)
        assert b.store.listening(5)  # type: ignore[attr-defined]
        changed, _ = a.run(a.store.store_flags(inbox.id, uids[:2], frozenset({"\\Deleted"}),
                                               "add"))
        gone = a.run(a.store.expunge(inbox.id))
        assert gone == uids[:2]
        deadline = time.monotonic() + 5
        while not any(c.kind == "expunge" for c in seen) and time.monotonic() < deadline:
            b.calls.pump_once(0.02)
        # (the deliveries' notices may arrive too: B subscribed while they were on the way)
        later = [c for c in seen if c.kind != "exists"]
        assert [(c.kind, c.uids) for c in later] == [("flags", tuple(uids[:2])),
                                                     ("expunge", tuple(uids[:2]))]
        assert later[1].highestmodseq > later[0].highestmodseq == changed[0].modseq
    finally:
        a.close()
        b.close()


def test_database_restart_is_a_temporary_error_then_recovers(
        pg_cluster: PGCluster, tmp_path: Path) -> None:
    """While PostgreSQL is down an operation fails with StoreUnavailable (temporary) and
    nothing half-stored remains; after it is back the same store works again without
    being reopened, and what was acknowledged before is all there."""
    from mxd.store.pgconn import StoreUnavailable

    dsn = pg_cluster.create_database("restart")
    h = open_pg_store(dsn, tmp_path / "blobs")
    try:
        acct = h.run(h.store.add_account("alice", "{}"))
        uids = [h.deliver_bytes(b"Subject: %d\r\n\r\n" % i, [Delivery(acct.id)])[0]
                for i in range(5)]
        pg_cluster.stop()
        try:
            w = h.store.new_blob()
            w.write(b"Subject: lost\r\n\r\n")
            err = h.fail(h.store.deliver(w, [Delivery(acct.id)], MessageProps()), timeout=30)
            assert isinstance(err, StoreUnavailable), err
        finally:
            pg_cluster.start()
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        assert inbox.exists == 5
        assert [m.uid for m in h.run(h.store.list_messages(inbox.id))] == uids
        [uid] = h.deliver_bytes(b"Subject: after\r\n\r\n", [Delivery(acct.id)])
        assert uid == uids[-1] + 1 or uid > uids[-1]
        assert len(h.body_files()) == 6  # the refused body was not left behind
    finally:
        h.close()
