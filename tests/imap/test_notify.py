"""IMAP NOTIFY (RFC 5465): the grammar with the RFC's rules, and two sessions on one
server: what the watching session is told, unasked, when the other one (or a delivery)
changes something."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap import notifier
from mxd.imap.errors import ParseError
from mxd.imap.notify import EventGroup, NotifyArgs
from mxd.imap.parser import parse_bytes
from mxd.imap.server import IMAPFactory, IMAPServerSettings, IMAPShared
from mxd.imap.values import FetchAtt, Section
from mxd.store.metadata import MemoryMetadata
from tests.imap.fakes import FakeSASL
from tests.imap.helpers import MSG1, Conn, make_store


def pair() -> tuple[Conn, Conn, object, object]:
    """Two logged-in sessions of one account on one server (A watches, B acts)."""
    store, acc = make_store()
    first = Conn(store)
    factory = IMAPFactory(implicit_tls=True, settings=IMAPServerSettings(), store=store,
                          accounts=store, sasl=FakeSASL({"alice": "s3cret"}), tls=None,
                          clock=first.clock, hostname="mx.example.test",
                          shared=IMAPShared(metadata=MemoryMetadata()))
    a = Conn(store, factory=factory, clock=first.clock)
    b = Conn(store, factory=factory, clock=first.clock)
    a.login()
    b.login()
    return a, b, store, acc


def pushed(c: Conn) -> bytes:
    """What the server sends without being asked, once the reactor has run."""
    c.clock.advance(0)
    c.clock.advance(0)
    return c.out()


def test_rfc5465_example_grammar() -> None:
    """RFC 5465 §3.1's first example (as corrected by erratum 1694: parenthesised event
    lists) parses to its groups, fetch items included."""
    cmd = parse_bytes(b"a NOTIFY SET STATUS (selected (MessageNew (uid "
                      b"body.peek[header.fields (from to subject)]) MessageExpunge)) "
                      b"(subtree Lists (MessageNew MessageExpunge))")
    assert cmd.args == NotifyArgs((
        EventGroup("SELECTED", (), frozenset({"MessageNew", "MessageExpunge"}),
                   (FetchAtt("UID"), FetchAtt("BODY", Section((), "HEADER.FIELDS",
                                                              ("FROM", "TO", "SUBJECT")),
                                              peek=True))),
        EventGroup("SUBTREE", ("Lists",), frozenset({"MessageNew", "MessageExpunge"})),
    ), status=True)
    assert parse_bytes(b"a NOTIFY NONE").args == NotifyArgs()


@pytest.mark.parametrize("line", [
    b"a NOTIFY SET (personal (MessageNew))",  # §5: both or neither
    b"a NOTIFY SET (personal (MessageExpunge))",
    b"a NOTIFY SET (personal (FlagChange))",  # §5: needs MessageNew and MessageExpunge
    b"a NOTIFY SET (selected (MessageNew MessageExpunge MailboxName))",  # §6.1
    b"a NOTIFY SET (selected NONE) (selected-delayed NONE)",  # §6.1: only one
    b"a NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",  # fetch items: selected only
    b"a NOTIFY SET",
    b"a NOTIFY SET (bogus (MessageNew MessageExpunge))",
    b"a NOTIFY SET (subtree (MessageNew MessageExpunge))",
])
def test_bad(line: bytes) -> None:
    """What RFC 5465 calls a tagged BAD is a ParseError."""
    with pytest.raises(ParseError):
        parse_bytes(line)


def test_unsupported_events_are_no_badevent() -> None:
    """§3.1: an unsupported event is a tagged NO whose BADEVENT lists the supported ones."""
    a, _, _, _ = pair()
    want = (b"a NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName "
            b"SubscriptionChange MailboxMetadataChange ServerMetadataChange)] "
            b"Unsupported NOTIFY events\r\n")
    assert a.cmd("a NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))") == want
    assert a.cmd("a NOTIFY SET (personal (MessageNew MessageExpunge Bogus))") == want
    assert b" NOTIFY" in a.cmd("c CAPABILITY")


def test_inboxes_message_new_status() -> None:
    """§5.2: a message delivered to a watched mailbox that is not selected gives an
    unsolicited STATUS at once, with no command running; NOTIFY SET STATUS first sends
    the current STATUS (§3.1)."""
    a, _, store, acc = pair()
    assert a.cmd("a NOTIFY SET STATUS (inboxes (MessageNew MessageExpunge))") == (
        b"* STATUS INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 1700000000 UNSEEN 0)\r\n"
        b"a OK NOTIFY completed\r\n")
    store.put(acc, "INBOX", MSG1)
    assert pushed(a) == b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)\r\n"
    store.put(acc, "Sent", MSG1)  # not an inbox
    assert pushed(a) == b""
    assert a.cmd("a NOTIFY NONE") == b"a OK NOTIFY completed\r\n"
    store.put(acc, "INBOX", MSG1)
    assert pushed(a) == b""


def test_selected_events_pushed() -> None:
    """§5.2: EXISTS then FETCH with the MessageNew items; §5.1: another session's flag
    change as FETCH; §5.3: an expunge as EXPUNGE — all between commands."""
    a, b, store, acc = pair()
    store.put(acc, "INBOX", MSG1)
    a.select()
    assert a.cmd("a NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange))") == (
        b"a OK NOTIFY completed\r\n")
    store.put(acc, "INBOX", MSG1)
    assert pushed(a) == (b"* 2 EXISTS\r\n* 1 RECENT\r\n"
                         b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n")
    b.select()
    b.cmd("s STORE 1 +FLAGS (\\Flagged)")
    assert pushed(a) == b"* 1 FETCH (FLAGS (\\Flagged))\r\n"
    b.cmd("s STORE 1 +FLAGS (\\Deleted)")
    pushed(a)
    b.cmd("s EXPUNGE")
    assert pushed(a) == b"* 1 EXPUNGE\r\n"


def test_selected_delayed_holds_expunges() -> None:
    """§6.1.2: with SELECTED-DELAYED an expunge waits for a command that may report it."""
    a, b, store, acc = pair()
    store.put(acc, "INBOX", MSG1)
    a.select()
    a.cmd("a NOTIFY SET (selected-delayed (MessageNew MessageExpunge))")
    b.select()
    b.cmd("s STORE 1 +FLAGS (\\Deleted)")
    b.cmd("s EXPUNGE")
    assert b"EXPUNGE" not in pushed(a)
    assert a.cmd("n NOOP") == b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n"


def test_mailbox_names_subscriptions_metadata() -> None:
    """§5.4 LIST for created, renamed (OLDNAME) and deleted mailboxes; §5.5 LIST with or
    without \\Subscribed; §5.6/§5.7 METADATA with the entry names; the session that made
    the change is not told (§5)."""
    a, b, _, _ = pair()
    a.cmd("a NOTIFY SET (personal (MailboxName SubscriptionChange MailboxMetadataChange "
          "ServerMetadataChange))")
    b.cmd("c CREATE Work")
    assert pushed(a) == b'* LIST () "/" "Work"\r\n'
    assert pushed(b) == b""
    b.cmd("c RENAME Work Job")
    assert pushed(a) == b'* LIST () "/" "Job" ("OLDNAME" ("Work"))\r\n'
    b.cmd("c SUBSCRIBE Job")
    assert pushed(a) == b'* LIST (\\Subscribed) "/" "Job"\r\n'
    b.cmd("c UNSUBSCRIBE Job")
    assert pushed(a) == b'* LIST () "/" "Job"\r\n'
    b.cmd('c SETMETADATA "Job" (/private/color "red" /shared/comment NIL)')
    assert pushed(a) == b'* METADATA "Job" /private/color /shared/comment\r\n'
    b.cmd('c SETMETADATA "" (/private/theme "dark")')
    assert pushed(a) == b'* METADATA "" /private/theme\r\n'
    b.cmd("c DELETE Job")
    assert pushed(a) == b'* LIST (\\NonExistent) "/" "Job"\r\n'


def test_events_queued_while_a_command_runs_go_before_its_reply() -> None:
    """Events that arrive while the watching session is busy are sent before the
    tagged reply of its command (or at once after it)."""
    a, _, store, acc = pair()
    a.cmd("a NOTIFY SET (personal (MessageNew MessageExpunge))")
    store.put(acc, "Sent", MSG1)
    # A command arrives before the reactor had a turn: the queue goes out with it.
    assert a.cmd("n NOOP") == (b'* STATUS "Sent" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)\r\n'
                               b"n OK NOOP completed\r\n")


def test_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """§5.8: past the queue's bound the session gets OK [NOTIFICATIONOVERFLOW] and
    NOTIFY is off (as after NOTIFY NONE)."""
    monkeypatch.setattr(notifier, "MAX_PENDING", 3)
    a, b, store, acc = pair()
    for name in ("A", "B", "C", "D"):
        b.cmd(f"c CREATE {name}")
    a.cmd("a NOTIFY SET (personal (MessageNew MessageExpunge))")
    for name in ("A", "B", "C", "D"):
        store.put(acc, name, MSG1)  # no reactor turn: nothing is sent yet
    assert a.out() == b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is off\r\n"
    assert a.proto.notifier is None
    store.put(acc, "A", MSG1)
    assert pushed(a) == b""


def test_subscribed_filter_follows_subscriptions() -> None:
    """§6.4: SUBSCRIBED is the subscription list as it is now, not when NOTIFY was set."""
    a, b, store, acc = pair()
    b.cmd("c CREATE Lists")
    b.cmd("c UNSUBSCRIBE Lists")
    a.cmd("a NOTIFY SET (subscribed (MessageNew MessageExpunge SubscriptionChange))")
    store.put(acc, "Lists", MSG1)
    assert pushed(a) == b""
    b.cmd("c SUBSCRIBE Lists")
    assert pushed(a) == b'* LIST (\\Subscribed) "/" "Lists"\r\n'
    store.put(acc, "Lists", MSG1)
    assert pushed(a) == b'* STATUS "Lists" (MESSAGES 2 UIDNEXT 3 UNSEEN 2)\r\n'


_EVENTS = st.lists(st.sampled_from(["MessageNew", "MessageExpunge", "FlagChange",
                                    "MailboxName", "SubscriptionChange", "AnnotationChange",
                                    "messagenew", "X-Other"]), max_size=5)
_FILTERS = st.sampled_from(["selected", "SELECTED-DELAYED", "inboxes", "personal",
                            "subscribed", "subtree Lists", "mailboxes (a b)", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FILTERS, _EVENTS), min_size=0, max_size=4), st.booleans())
def test_notify_grammar_property(groups: list[tuple[str, list[str]]], status: bool) -> None:
    """Any NOTIFY SET either parses into groups that keep the RFC's rules, or is a
    ParseError; nothing else escapes the parser."""
    text = "a NOTIFY SET" + (" STATUS" if status else "") + "".join(
        f" ({f} {'(' + ' '.join(evs) + ')' if evs else 'NONE'})" for f, evs in groups)
    try:
        args = parse_bytes(text.encode()).args
    except ParseError:
        return
    assert args.status is status
    assert sum(g.filter.startswith("SELECTED") for g in args.groups) <= 1
    for g in args.groups:
        assert ("MessageNew" in g.events) == ("MessageExpunge" in g.events)
        if "FlagChange" in g.events:
            assert "MessageNew" in g.events


def test_names_changed_by_another_process() -> None:
    """Mailboxes and subscriptions changed without an IMAP command of this process (by
    another worker) reach the session within a second: the hub compares the account's
    names once per second; what this process reported already is not repeated."""
    a, b, store, acc = pair()
    a.cmd("a NOTIFY SET (personal (MailboxName SubscriptionChange))")
    b.cmd("c CREATE Here")
    b.cmd("c UNSUBSCRIBE Here")  # (the memory store subscribes what it creates)
    assert pushed(a) == b'* LIST () "/" "Here"\r\n* LIST () "/" "Here"\r\n'
    a.clock.advance(1.0)
    assert pushed(a) == b""  # nothing new: this process told it already
    store.create_mailbox(acc.id, "There")  # as another process would
    store.set_subscribed(acc.id, "There", False)
    assert pushed(a) == b""
    a.clock.advance(1.0)
    assert pushed(a) == b'* LIST () "/" "There"\r\n'
    store.set_subscribed(acc.id, "There", True)
    store.delete_mailbox(acc.id, "Here")
    a.clock.advance(1.0)
    assert pushed(a) == (b'* LIST (\\NonExistent) "/" "Here"\r\n'
                         b'* LIST (\\Subscribed) "/" "There"\r\n')
    a.clock.advance(1.0)
    assert pushed(a) == b""


def test_account_changes_of_another_process_from_the_store() -> None:
    """A store that reports other processes' account changes (SQLite's journal,
    ``on_account_changes``): a rename arrives as LIST with OLDNAME, subscriptions as
    LIST, annotations as METADATA (§5.4-§5.7), with no comparing of names each second;
    the hub listens once per process."""
    from mxd.store.interfaces import AccountChange

    a, b, store, acc = pair()
    listeners: list = []
    store.on_account_changes = lambda fn: listeners.append(fn) or True  # type: ignore[attr-defined]
    a.cmd("a NOTIFY SET (personal (MailboxName SubscriptionChange MailboxMetadataChange "
          "ServerMetadataChange))")
    b.cmd("b NOTIFY SET (personal (MailboxName))")
    assert len(listeners) == 1
    store.create_mailbox(acc.id, "Work")  # as another process would (told through the journal)
    a.clock.advance(1.0)
    assert pushed(a) == b""
    tell = listeners[0]
    tell([AccountChange(acc.id, "name", "Work"),
          AccountChange(acc.id + 1, "name", "Elsewhere")])  # not this account's
    assert pushed(a) == b'* LIST () "/" "Work"\r\n'
    store.rename_mailbox(acc.id, "Work", "Job")
    tell([AccountChange(acc.id, "name", "Job", old="Work"),
          AccountChange(acc.id, "subscription", "Job", subscribed=True),
          AccountChange(acc.id, "metadata", "Job", entries=("/private/color",)),
          AccountChange(acc.id, "metadata", None, entries=("/shared/admin",)),
          AccountChange(acc.id, "name", "Job", exists=False)])
    assert pushed(a) == (b'* LIST () "/" "Job" ("OLDNAME" ("Work"))\r\n'
                         b'* LIST (\\Subscribed) "/" "Job"\r\n'
                         b'* METADATA "Job" /private/color\r\n'
                         b'* METADATA "" /shared/admin\r\n'
                         b'* LIST (\\NonExistent) "/" "Job"\r\n')
    assert pushed(b) == (b'* LIST () "/" "Work"\r\n* LIST () "/" "Job" ("OLDNAME" ("Work"))\r\n'
                         b'* LIST (\\NonExistent) "/" "Job"\r\n')


def test_selected_mailbox_follows_a_rename() -> None:
    """Another session renames the selected mailbox: it stays selected under the new
    name, so DELETE of the new name deselects it first (no BYE) and NOTIFY's selected
    mailbox is the new name (its new mail comes as EXISTS, not STATUS)."""
    a, b, store, acc = pair()
    b.cmd("c CREATE Work")
    a.select("Work")
    assert a.cmd("a NOTIFY SET (selected (MessageNew MessageExpunge)) "
                 "(personal (MessageNew MessageExpunge))") == b"a OK NOTIFY completed\r\n"
    b.cmd("c RENAME Work Job")
    pushed(a)
    assert a.cmd("a NOOP") == b"a OK NOOP completed\r\n"
    store.put(acc, "Job", MSG1)
    assert pushed(a) == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
    assert a.cmd("a DELETE Job") == b"a OK DELETE completed\r\n"
    assert a.cmd("a NOOP") == b"a OK NOOP completed\r\n"  # not BYE: no longer selected
