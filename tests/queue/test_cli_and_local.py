"""``mxd queue`` commands on the database file, and local delivery of DSNs into INBOX."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from twisted.internet.task import Clock

from mxd.queue import cli
from mxd.queue.local import StoreLocalDelivery
from mxd.queue.queue import Queue
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.store.helpers import open_store


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _run(data_dir: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(_parse(*argv), data_dir=data_dir, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _fill(data_dir: Path) -> list[str]:
    h = open_store(data_dir, inline=True, clock=Clock(), schemas={"queue": QUEUE_MIGRATIONS})
    q = Queue(SQLiteQueueStore(h.store), Clock())
    ids = []
    for rcpts in (("a@one.test", "b@two.test"), ("c@two.test",)):
        w = h.store.new_blob()
        w.write(b"Subject: x\r\n\r\nbody\r\n")
        msg = OutboundMessage("s@example.org", tuple(OutboundRecipient(r) for r in rcpts))
        ids.append(h.run(q.enqueue(w, msg)))
    h.close()
    return ids


def test_list_show_and_filters(data_dir: Path) -> None:
    """list prints every message (JSON filterable by domain); show prints one; unknown ids exit 1."""
    ids = _fill(data_dir)
    code, out, _ = _run(data_dir, "list")
    assert code == 0 and all(i in out for i in ids) and "2 message(s)" in out
    code, out, _ = _run(data_dir, "list", "--domain", "one.test", "--json")
    assert [m["queue_id"] for m in json.loads(out)] == [ids[0]]
    code, out, _ = _run(data_dir, "show", ids[1], "--json")
    assert json.loads(out)["recipients"][0]["address"] == "c@two.test"
    assert _run(data_dir, "show", "nope")[0] == cli.EXIT_NOMATCH


def test_hold_release_kick_drop_by_selector(data_dir: Path) -> None:
    """Selectors pick recipients; drop of a whole message removes it and its blob reference."""
    ids = _fill(data_dir)
    assert _run(data_dir, "hold", "--domain", "two.test")[0] == 0
    code, out, _ = _run(data_dir, "list", "--held", "--json")
    assert sorted(m["queue_id"] for m in json.loads(out)) == sorted(ids)
    assert _run(data_dir, "release", "--all")[1].startswith("release: 3")
    assert _run(data_dir, "kick", ids[0])[1].startswith("kick: 2")
    assert _run(data_dir, "drop", ids[1])[0] == 0
    code, out, _ = _run(data_dir, "list", "--json")
    assert [m["queue_id"] for m in json.loads(out)] == [ids[0]]
    assert _run(data_dir, "hold")[0] == cli.EXIT_ERROR  # no selector
    h = open_store(data_dir, inline=True, schemas={"queue": QUEUE_MIGRATIONS})
    blobs = h.run(h.store.transact(lambda c: c.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]))
    h.close()
    assert blobs == 1  # the dropped message's body was removed at the next start


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    """No database (or no queue tables) exits 2 with a message naming the path."""
    code, _, err = _run(tmp_path, "list")
    assert code == cli.EXIT_ERROR and str(tmp_path) in err


def test_store_local_delivery_into_inbox(data_dir: Path) -> None:
    """A local address gets the bytes in its INBOX; an unknown one fails permanently."""
    h = open_store(data_dir, inline=True)
    try:
        acct = h.run(h.store.add_account("alice", "{}", ["alice@example.org"]))
        local = StoreLocalDelivery(h.store, ["Example.ORG"])
        assert local.is_local("alice@EXAMPLE.org") and not local.is_local("bob@remote.test")
        h.run(local.deliver("alice@example.org", b"Subject: dsn\r\n\r\nx\r\n"))
        inbox = h.run(h.store.get_mailbox(acct.id, "INBOX"))
        assert len(h.run(h.store.list_messages(inbox.id))) == 1
        err = h.fail(local.deliver("nobody@example.org", b"x"))
        assert getattr(err, "permanent", False)
    finally:
        h.close()


def test_store_local_delivery_directory_down_is_temporary_443(data_dir: Path) -> None:
    """When the directory cannot answer (LDAP down), local delivery fails temporarily with
    4.4.3 (RFC 3463 directory server failure), never as an unknown recipient."""
    from twisted.internet.defer import fail

    from mxd.directory.ldapclient import LDAPUnavailable

    class DownDirectory:
        def is_local_domain(self, domain: str) -> bool:
            return True

        def resolve_recipient(self, address: str):  # type: ignore[no-untyped-def]
            return fail(LDAPUnavailable("no LDAP server available"))

    h = open_store(data_dir, inline=True)
    try:
        local = StoreLocalDelivery(h.store, directory=DownDirectory())
        err = h.fail(local.deliver("alice@example.org", b"x"))
        assert not err.permanent and err.enhanced == "4.4.3"
    finally:
        h.close()
