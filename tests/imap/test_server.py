"""The IMAP server protocol over an in-memory transport with fake store and SASL."""

from __future__ import annotations

import base64
import re
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from mxd.imap.server import IMAPServerSettings
from tests.imap.helpers import MSG1, MSG2, Conn, make_store


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS."""

    tls_started: Any = None

    def startTLS(self, ctx: Any) -> None:
        self.tls_started = ctx


def setup_mailbox(n: int = 2) -> tuple[Any, Any]:
    store, acc = make_store()
    store.put(acc, "INBOX", MSG1, ["\\Seen"])
    if n > 1:
        store.put(acc, "INBOX", MSG2)
    return store, acc


# -- not authenticated ------------------------------------------------------------------------

def test_greeting_and_capabilities_without_tls() -> None:
    """Before TLS: STARTTLS and LOGINDISABLED are offered, plaintext mechanisms are not."""
    store, _ = make_store()
    c = Conn(store, tls=False, tls_ctx=object())
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    caps = c.cmd("a CAPABILITY")
    assert b" STARTTLS" in caps and b"LOGINDISABLED" in caps
    assert b"AUTH=PLAIN" not in caps and b"AUTH=X-TWO" in caps


def test_capabilities_with_tls_and_after_login() -> None:
    """Over TLS there is no STARTTLS/LOGINDISABLED; after login AUTH= goes and extensions appear."""
    store, _ = make_store()
    c = Conn(store)
    caps = c.cmd("a CAPABILITY")
    assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps and b"AUTH=PLAIN" in caps
    r = c.login()
    assert b"[CAPABILITY " in r and b"AUTH=" not in r
    caps = c.cmd("b CAPABILITY")
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"LIST-STATUS",
                b"SPECIAL-USE", b"APPENDLIMIT=", b"UTF8=ACCEPT", b"LITERAL+", b"SASL-IR"):
        assert cap in caps


def test_login_refused_before_tls() -> None:
    """LOGIN before TLS gets NO [PRIVACYREQUIRED] and checks no password."""
    store, _ = make_store()
    c = Conn(store, tls=False, tls_ctx=object())
    r = c.cmd("a LOGIN alice s3cret")
    assert r.startswith(b"a NO [PRIVACYREQUIRED]")
    assert c.proto.account is None


def test_login_wrong_password() -> None:
    """A wrong password gives NO [AUTHENTICATIONFAILED] and the state stays unauthenticated."""
    store, _ = make_store()
    c = Conn(store)
    assert c.cmd("a LOGIN alice wrong").startswith(b"a NO [AUTHENTICATIONFAILED]")
    assert c.cmd("b SELECT INBOX").startswith(b"b BAD")


def test_starttls_discards_pipelined_commands() -> None:
    """Commands pipelined after STARTTLS in the same packet are dropped (injection)."""
    store, _ = make_store()
    c = Conn(store, tls=False, tls_ctx=object())
    tr = TLSStringTransport()
    c.proto.makeConnection(tr)
    tr.clear()
    c.proto.dataReceived(b"a STARTTLS\r\nb LOGIN alice s3cret\r\nc CAPABILITY\r\n")
    out = tr.value()
    assert out == b"a OK Begin TLS negotiation now\r\n"
    assert tr.tls_started is not None
    assert c.proto.account is None
    tr.clear()
    c.proto.dataReceived(b"d CAPABILITY\r\n")
    assert b"STARTTLS" not in tr.value() and b"AUTH=PLAIN" in tr.value()


def test_authenticate_with_initial_response() -> None:
    """AUTHENTICATE PLAIN with SASL-IR logs in without a continuation."""
    store, _ = make_store()
    c = Conn(store)
    ir = base64.b64encode(b"\0alice\0s3cret").decode()
    r = c.cmd(f"a AUTHENTICATE PLAIN {ir}")
    assert r.startswith(b"a OK [CAPABILITY"), r


def test_authenticate_challenge_is_one_line_and_additional_data() -> None:
    """A challenge with a newline is sent as one base64 line; success data as a final '+'."""
    store, _ = make_store()
    c = Conn(store)
    r = c.cmd("a AUTHENTICATE X-TWO")
    assert r.startswith(b"+ ") and r.count(b"\r\n") == 1
    assert base64.b64decode(r[2:-2]).startswith(b"r=challenge,with\nnewline=")
    r = c.cmd(base64.b64encode(b"alice:s3cret").decode())
    assert r == b"+ " + base64.b64encode(b"v=final") + b"\r\n"
    assert c.cmd("").startswith(b"a OK")


def test_authenticate_cancel() -> None:
    """'*' cancels an AUTHENTICATE exchange with a tagged BAD (RFC 9051 §6.2.2)."""
    store, _ = make_store()
    c = Conn(store)
    c.cmd("a AUTHENTICATE X-TWO")
    assert c.cmd("*").startswith(b"a BAD")
    assert c.cmd("b NOOP") == b"b OK NOOP completed\r\n"


def test_authenticate_unknown_mechanism() -> None:
    """A mechanism that is not offered is refused."""
    store, _ = make_store()
    c = Conn(store, tls=False, tls_ctx=object())
    assert c.cmd("a AUTHENTICATE PLAIN").startswith(b"a NO")


def test_synchronising_literal_gets_continuation_only() -> None:
    """'+' is sent for {n} but not for {n+} literals."""
    store, _ = make_store()
    c = Conn(store)
    assert c.send(b"a LOGIN {5}\r\n") == b"+ Ready for literal data\r\n"
    assert c.send(b"alice {6+}\r\ns3cret\r\n").startswith(b"a OK")


def test_oversized_literal_refused() -> None:
    """A too-large synchronising literal is refused with [TOOBIG] and no continuation."""
    store, _ = make_store()
    c = Conn(store)
    r = c.send(b"a LOGIN {100000}\r\n")
    assert r.startswith(b"a BAD [TOOBIG]")
    assert c.cmd("b NOOP").startswith(b"b OK")


def test_oversized_nonsync_literal_closes() -> None:
    """A too-large LITERAL+ cannot be skipped: BYE and close."""
    store, _ = make_store()
    c = Conn(store)
    r = c.send(b"a LOGIN {100000+}\r\n")
    assert r.startswith(b"* BYE") and c.tr.disconnecting


def test_long_line_closes() -> None:
    """A line beyond the limit ends the connection instead of buffering forever."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(max_line=1000))
    r = c.send(b"a NOOP " + b"x" * 5000)
    assert r.startswith(b"* BYE") and c.tr.disconnecting


def test_bad_commands_limit() -> None:
    """Too many invalid commands in a row end the session."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(max_bad_commands=3))
    out = c.send(b"a FOO\r\nb BAR\r\nc BAZ\r\n")
    assert out.count(b" BAD ") == 3 and b"* BYE" in out


def test_login_timeout() -> None:
    """An unauthenticated connection is closed after the login timeout."""
    store, _ = make_store()
    c = Conn(store)
    c.clock.advance(IMAPServerSettings().login_timeout + 1)
    assert c.out().startswith(b"* BYE") and c.tr.disconnecting


def test_login_deadline_is_not_extended_by_traffic() -> None:
    """Before login the deadline counts from the connection: commands (or bytes
    trickling in) do not extend it; after a login the idle timer applies."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(login_timeout=60))
    for _ in range(5):
        c.clock.advance(10)
        c.send(b"a NOOP\r\n")
        c.send(b"b")
    assert not c.tr.disconnecting
    c.clock.advance(11)
    assert b"* BYE" in c.out() and c.tr.disconnecting


def test_logout() -> None:
    """LOGOUT answers BYE then OK and closes."""
    store, _ = make_store()
    c = Conn(store)
    assert c.cmd("a LOGOUT") == b"* BYE Logging out\r\na OK LOGOUT completed\r\n"
    assert c.tr.disconnecting


def test_pipelined_commands_run_in_order() -> None:
    """Pipelined commands are answered strictly in order."""
    store, _ = setup_mailbox()
    c = Conn(store)
    out = c.send(b"1 LOGIN alice s3cret\r\n2 SELECT INBOX\r\n3 FETCH 1 UID\r\n4 NOOP\r\n")
    tags = re.findall(rb"^(\d) (?:OK|NO|BAD)", out, re.M)
    assert tags == [b"1", b"2", b"3", b"4"]


def test_id_and_namespace_and_enable() -> None:
    """ID, NAMESPACE and ENABLE answer as specified."""
    store, _ = make_store()
    c = Conn(store)
    assert b'* ID ("name" "mxd"' in c.cmd('a ID ("name" "test")')
    c.login()
    assert b'* NAMESPACE (("" "/")) NIL NIL' in c.cmd("b NAMESPACE")
    assert b"* ENABLED CONDSTORE UTF8=ACCEPT" in c.cmd("c ENABLE CONDSTORE UTF8=ACCEPT X-UNKNOWN")


# -- mailboxes -------------------------------------------------------------------------------------

def test_list_with_special_use_children_and_status() -> None:
    """LIST shows special-use and children attributes, and LIST-STATUS data."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    assert c.cmd("a CREATE Work/Projects").startswith(b"a OK")
    out = c.cmd('b LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT))')
    assert b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"' in out
    assert b'* LIST (\\HasChildren) "/" "Work"' in out
    assert b'* LIST (\\HasNoChildren) "/" "Work/Projects"' in out
    assert b"* STATUS INBOX (MESSAGES 2 UIDNEXT 3)" in out
    out = c.cmd('c LIST "" "%"')
    assert b'"Work/Projects"' not in out and b'"Work"' in out
    assert c.cmd('d LIST "" ""').startswith(b'* LIST (\\Noselect) "/" ""')


def test_create_delete_rename_subscribe() -> None:
    """Mailbox management commands map store errors to response codes."""
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("a CREATE Foo").startswith(b"a OK")
    assert c.cmd("b CREATE Foo").startswith(b"b NO [ALREADYEXISTS]")
    assert c.cmd("c RENAME Foo Bar").startswith(b"c OK")
    assert c.cmd("d DELETE Foo").startswith(b"d NO [NONEXISTENT]")
    assert c.cmd("e UNSUBSCRIBE Bar").startswith(b"e OK")
    assert b"Bar" not in c.cmd('f LSUB "" "*"')
    assert c.cmd("g DELETE Bar").startswith(b"g OK")
    assert c.cmd("h DELETE INBOX").startswith(b"h NO [CANNOT]")
    assert c.cmd("i SELECT Nope").startswith(b"i NO [NONEXISTENT]")


def test_mutf7_mailbox_names() -> None:
    """Mailbox names travel in modified UTF-7 unless UTF8=ACCEPT is enabled."""
    store, acc = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("a CREATE &AOk-t&AOk-").startswith(b"a OK")
    assert any(b.name == "été" for b in store.mailboxes.values())
    assert b'"&AOk-t&AOk-"' in c.cmd('b LIST "" "*"')
    c.cmd("c ENABLE UTF8=ACCEPT")
    assert '"été"'.encode() in c.cmd('d LIST "" "*"')


def test_status() -> None:
    """STATUS reports counts, UIDNEXT, SIZE and HIGHESTMODSEQ."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    out = c.cmd("a STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE HIGHESTMODSEQ)")
    assert re.search(rb"\* STATUS INBOX \(MESSAGES 2 UNSEEN 1 UIDNEXT 3 UIDVALIDITY \d+ SIZE %d "
                     rb"HIGHESTMODSEQ \d+\)" % (len(MSG1) + len(MSG2)), out), out


def test_append_with_flags_date_and_appenduid() -> None:
    """APPEND stores flags and internal date and answers APPENDUID."""
    store, acc = make_store()
    c = Conn(store)
    c.login()
    r = c.send(b'a APPEND INBOX (\\Seen Foo) "05-Mar-2024 08:09:10 +0200" {5+}\r\nhello\r\n')
    m = re.match(rb"a OK \[APPENDUID (\d+) 1\]", r)
    assert m, r
    box = next(b for b in store.mailboxes.values() if b.name == "INBOX")
    info = box.messages[1].info
    assert info.flags == {"\\Seen", "Foo"}
    assert info.internal_date.isoformat() == "2024-03-05T08:09:10+02:00"
    assert c.cmd('b APPEND Nope {1+}\r\nx').startswith(b"b NO [TRYCREATE]")


def test_append_too_big() -> None:
    """An APPEND above APPENDLIMIT is refused with [TOOBIG] before the data is sent."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(append_limit=1000))
    c.login()
    assert c.send(b"a APPEND INBOX {5000}\r\n").startswith(b"a NO [TOOBIG]")


def test_append_large_body_streams_to_blob() -> None:
    """A large APPEND body goes to a store blob as it arrives, not into memory."""
    store, _ = make_store()
    c = Conn(store, settings=IMAPServerSettings(append_memory=100))
    c.login()
    body = b"Subject: big\r\n\r\n" + b"x" * 5000
    assert c.send(b"a APPEND INBOX {%d}\r\n" % len(body)) == b"+ Ready for literal data\r\n"
    assert c.send(body + b"\r\n").startswith(b"a OK [APPENDUID")
    assert body in store.blobs.values()


# -- selected state ------------------------------------------------------------------------------

def test_select_responses() -> None:
    """SELECT reports FLAGS, EXISTS, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and READ-WRITE."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    out = c.select()
    for part in (b"* 2 EXISTS", b"* OK [UIDNEXT 3]", b"* OK [UIDVALIDITY ", b"[HIGHESTMODSEQ ",
                 b"* OK [UNSEEN 2]", b"S OK [READ-WRITE]"):
        assert part in out
    assert c.cmd("E EXAMINE INBOX").rstrip().endswith(b"E OK [READ-ONLY] EXAMINE completed")


def test_fetch_items() -> None:
    """FETCH returns UID, FLAGS, sizes, envelope, body structure and sections."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    out = c.cmd("a FETCH 1 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert out.startswith(b'* 1 FETCH (UID 1 FLAGS (\\Seen) RFC822.SIZE %d INTERNALDATE "01-Feb-2024 12:00:00 +0000" '
                          b'ENVELOPE ("Thu, 01 Feb 2024 10:00:00 +0000" "hello" (("Alice" NIL "alice" "example.test"))'
                          % len(MSG1)), out
    out = c.cmd("b FETCH 2 (BODY.PEEK[1] BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[]<0.4>)")
    assert b"BODY[1] {13}\r\npart one text" in out
    assert b"BODY[HEADER.FIELDS (SUBJECT)] {34}\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n" in out
    assert b"BODY[]<0> {4}\r\nFrom" in out
    assert b"FLAGS" not in out  # PEEK sets no \Seen
    out = c.cmd("c FETCH 2 (BINARY[2] BINARY.SIZE[2])")
    assert b"BINARY[2] ~{4}\r\n\x00\x01\x02\x03" in out and b"BINARY.SIZE[2] 4" in out
    assert b"FLAGS (\\Seen)" in out  # BINARY without PEEK sets \Seen


def test_fetch_body_sets_seen() -> None:
    """BODY[] without PEEK sets \\Seen and reports it."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    out = c.cmd("a FETCH 2 BODY[]")
    assert b"BODY[] {%d}\r\n" % len(MSG2) + MSG2 in out
    assert b"FLAGS (\\Seen)" in out


def test_fetch_invalid_sequence_number() -> None:
    """A sequence number beyond EXISTS is BAD; UID FETCH of missing UIDs is empty OK."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("a FETCH 5 FLAGS").startswith(b"a BAD")
    assert c.cmd("b UID FETCH 50:60 FLAGS") == b"b OK UID FETCH completed\r\n"
    out = c.cmd("c UID FETCH 5:* FLAGS")
    assert out.startswith(b"* 2 FETCH (UID 2 FLAGS ())")  # RFC 3501: n:* includes the last


def test_store_and_silent() -> None:
    """STORE reports new flags (with UID for UID STORE); .SILENT reports nothing."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    r = c.cmd("a STORE 2 +FLAGS (\\Flagged $Work)")
    assert b"\r\n* 2 FETCH (FLAGS ($Work \\Flagged))\r\n" in r, r  # after FLAGS for $Work
    assert c.cmd("b UID STORE 2 -FLAGS.SILENT ($Work)") == b"b OK STORE completed\r\n"
    assert c.cmd("c UID STORE 1 FLAGS (\\Answered)").startswith(b"* 1 FETCH (UID 1 FLAGS (\\Answered))")
    assert c.cmd("d STORE 1 +FLAGS (\\Bogus)").startswith(b"d BAD")


def test_store_unchangedsince() -> None:
    """CONDSTORE: UNCHANGEDSINCE below a message's modseq fails it with [MODIFIED]."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    out = c.cmd("a STORE 1:2 (UNCHANGEDSINCE 2) +FLAGS (\\Flagged)")
    assert b"a OK [MODIFIED 2]" in out
    assert b"* 1 FETCH" in out and b"MODSEQ (" in out


def test_search_keys_and_esearch() -> None:
    """SEARCH handles flags, headers, body text, sizes and ESEARCH results."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    assert c.cmd("a SEARCH UNSEEN").startswith(b"* SEARCH 2\r\n")
    assert c.cmd("b SEARCH SUBJECT caf").startswith(b"* SEARCH 2\r\n")
    assert c.cmd('c SEARCH BODY "HOW ARE"').startswith(b"* SEARCH 1\r\n")
    assert c.cmd("d SEARCH OR FROM carol SEEN").startswith(b"* SEARCH 1 2\r\n")
    assert c.cmd("e SEARCH NOT LARGER 200").startswith(b"* SEARCH 1\r\n")
    assert c.cmd("f SEARCH HEADER Message-ID <1@example").startswith(b"* SEARCH 1\r\n")
    assert c.cmd("g SEARCH SENTON 1-Feb-2024").startswith(b"* SEARCH 1\r\n")
    assert c.cmd("h UID SEARCH RETURN (MIN MAX COUNT) ALL").startswith(
        b'* ESEARCH (TAG "h") UID MIN 1 MAX 2 COUNT 2\r\n')
    assert c.cmd("i SEARCH TEXT part").startswith(b"* SEARCH 2\r\n")
    assert c.cmd("j SEARCH CHARSET KOI8-R ALL").startswith(b"j NO [BADCHARSET")
    assert c.cmd("k SEARCH RETURN () NOT ALL").startswith(b'* ESEARCH (TAG "k")\r\n')


def test_copy_and_move_with_copyuid() -> None:
    """COPY answers COPYUID; MOVE sends COPYUID untagged and expunges the source."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    out = c.cmd("a COPY 1:2 Archive")
    assert re.search(rb"a OK \[COPYUID \d+ 1,2 1,2\]", out), out
    out = c.cmd("b UID MOVE 1 Trash")
    assert re.search(rb"\* OK \[COPYUID \d+ 1 1\]", out) and b"* 1 EXPUNGE" in out
    assert c.cmd("c COPY 1 Nope").startswith(b"c NO [TRYCREATE]")


def test_expunge_and_uid_expunge() -> None:
    """EXPUNGE removes \\Deleted messages; UID EXPUNGE only those named."""
    store, acc = setup_mailbox()
    store.put(acc, "INBOX", MSG1)
    c = Conn(store)
    c.login()
    c.select()
    c.cmd("a STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("b UID EXPUNGE 2") == b"* 2 EXPUNGE\r\nb OK UID EXPUNGE completed\r\n"
    assert c.cmd("c EXPUNGE") == b"* 2 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK EXPUNGE completed\r\n"


def test_close_expunges_silently_and_unselect_does_not() -> None:
    """CLOSE expunges without responses; UNSELECT leaves messages alone."""
    store, acc = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    c.cmd("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("b UNSELECT") == b"b OK UNSELECT completed\r\n"
    c.select()
    assert c.cmd("c CLOSE") == b"c OK CLOSE completed\r\n"
    assert c.cmd("d FETCH 1 FLAGS").startswith(b"d BAD")
    box = next(b for b in store.mailboxes.values() if b.name == "INBOX")
    assert list(box.messages) == [2]


def test_examine_is_read_only() -> None:
    """EXAMINE refuses STORE and EXPUNGE and sets no \\Seen."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.cmd("a EXAMINE INBOX")
    assert c.cmd("b STORE 1 +FLAGS (\\Flagged)").startswith(b"b NO [READ-ONLY]")
    assert b"FLAGS" not in c.cmd("c FETCH 2 BODY[TEXT]")


# -- concurrency -----------------------------------------------------------------------------------

def test_other_session_changes_reported_at_allowed_points() -> None:
    """New messages, flag changes and expunges by another session reach this one; EXPUNGE
    is held back during FETCH/STORE/SEARCH and sent after NOOP (RFC 3501 §7.4.1)."""
    store, acc = setup_mailbox()
    a = Conn(store)
    b = Conn(store, clock=a.clock, factory=a.factory)
    a.login()
    b.login()
    a.select()
    b.select()
    store.put(acc, "INBOX", MSG1)
    assert b.cmd("n NOOP").startswith(b"* 3 EXISTS\r\n* 1 RECENT\r\n")
    a.cmd("s STORE 1 +FLAGS (\\Deleted)")
    a.cmd("x EXPUNGE")
    out = b.cmd("f FETCH 1:* FLAGS")
    assert b"EXPUNGE" not in out and b"* 3 FETCH (FLAGS (\\Recent))" in out
    out = b.cmd("n2 NOOP")
    assert out == b"* 1 EXPUNGE\r\nn2 OK NOOP completed\r\n"
    assert b.cmd("f2 FETCH 2 UID").startswith(b"* 2 FETCH (UID 3)")


def test_idle_pushes_changes_and_ends_only_on_done() -> None:
    """During IDLE, EXISTS and EXPUNGE arrive at once; only DONE ends IDLE."""
    store, acc = setup_mailbox()
    a = Conn(store)
    b = Conn(store, clock=a.clock, factory=a.factory)
    a.login()
    b.login()
    a.select()
    b.select()
    assert a.cmd("i IDLE") == b"+ idling\r\n"
    store.put(acc, "INBOX", MSG1)
    a.clock.advance(0)
    assert a.out() == b"* 3 EXISTS\r\n* 1 RECENT\r\n"
    b.cmd("s STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd("x EXPUNGE")
    a.clock.advance(0)
    assert a.out() == b"* 1 EXPUNGE\r\n"
    assert a.cmd("NOOP") == b"* BAD Expected DONE\r\n"
    assert a.cmd("DONE") == b"i OK IDLE terminated\r\n"


def test_idle_times_out_after_30_minutes() -> None:
    """An IDLE with no traffic is ended after the idle timeout."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    c.cmd("i IDLE")
    c.clock.advance(29 * 60)
    assert not c.tr.disconnecting
    c.clock.advance(61)
    assert c.out().startswith(b"* BYE") and c.tr.disconnecting


def test_qresync_select_and_vanished() -> None:
    """With QRESYNC, SELECT reports VANISHED (EARLIER) and changes; expunges are VANISHED."""
    store, acc = setup_mailbox()
    store.put(acc, "INBOX", MSG1, ["\\Deleted"])
    store.expunge(next(b.id for b in store.mailboxes.values() if b.name == "INBOX"))
    c = Conn(store)
    c.login()
    c.cmd("e ENABLE QRESYNC")
    uidvalidity = next(b for b in store.mailboxes.values() if b.name == "INBOX").uidvalidity
    out = c.cmd(f"s SELECT INBOX (QRESYNC ({uidvalidity} 1 1:5))")
    assert b"* VANISHED (EARLIER) 3\r\n" in out
    assert b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (" in out
    c.cmd("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("b EXPUNGE").startswith(b"* VANISHED 1\r\n")


def test_slow_reader_pauses_body_output() -> None:
    """When the transport asks to pause, FETCH stops writing body chunks until resumed."""
    store, acc = make_store()
    big = b"Subject: big\r\n\r\n" + b"y" * 1_000_000
    store.put(acc, "INBOX", big)
    c = Conn(store, settings=IMAPServerSettings(chunk_size=65536))
    c.login()
    c.select()
    c.proto.pauseProducing()  # the transport's buffer is full
    c.proto.dataReceived(b"f FETCH 1 BODY.PEEK[]\r\n")
    first = c.out()
    assert len(first) < 200_000 and b"f OK" not in first
    c.proto.resumeProducing()
    rest = c.out()
    assert (first + rest).count(b"y") == 1_000_000 and rest.endswith(b"f OK FETCH completed\r\n")


def test_recent_belongs_to_one_session() -> None:
    """\\Recent goes to the first read-write session that sees a message (RFC 3501 §2.3.2)."""
    store, acc = make_store()
    a = Conn(store)
    b = Conn(store, clock=a.clock, factory=a.factory)
    a.login()
    b.login()
    a.cmd("c CREATE Box")
    b.send(b"p APPEND Box {12+}\r\nSubject: x\r\n\r\n\r\n")
    assert b"RECENT 1" in a.cmd("s STATUS Box (RECENT)")
    out = a.cmd("t SELECT Box")
    assert b"* 1 RECENT" in out
    assert b"FLAGS (\\Recent)" in a.cmd("f FETCH 1 FLAGS")
    assert a.cmd("r SEARCH NEW").startswith(b"* SEARCH 1\r\n")
    assert b"* 0 RECENT" in b.cmd("u SELECT Box")
    assert b.cmd("r SEARCH RECENT").startswith(b"* SEARCH\r\n")


def test_search_raw_utf8_header() -> None:
    """SEARCH matches raw UTF-8 in headers as well as RFC 2047 encoded words."""
    store, acc = make_store()
    store.put(acc, "INBOX", "Subject: Grüße aus Köln\r\n\r\nx".encode())
    c = Conn(store)
    c.login()
    c.select()
    assert c.send("s SEARCH CHARSET UTF-8 SUBJECT {5+}\r\nköln\r\n".encode()).startswith(b"* SEARCH 1\r\n")


def test_selected_mailbox_deleted_elsewhere() -> None:
    """When another session deletes the selected mailbox, this session gets BYE."""
    store, acc = make_store()
    a = Conn(store)
    b = Conn(store, clock=a.clock, factory=a.factory)
    a.login()
    b.login()
    a.cmd("c CREATE Tmp")
    a.cmd("s SELECT Tmp")
    assert b.cmd("d DELETE Tmp").startswith(b"d OK")
    assert a.cmd("n NOOP").startswith(b"* BYE") and a.tr.disconnecting


def test_uid_fetch_vanished() -> None:
    """UID FETCH (CHANGEDSINCE n VANISHED) reports expunged UIDs first (RFC 7162 §3.2.6)."""
    store, acc = setup_mailbox()
    store.put(acc, "INBOX", MSG1, ["\\Deleted"])
    store.expunge(next(b.id for b in store.mailboxes.values() if b.name == "INBOX"))
    c = Conn(store)
    c.login()
    c.cmd("e ENABLE QRESYNC")
    c.select()
    out = c.cmd("f UID FETCH 1:10 FLAGS (CHANGEDSINCE 2 VANISHED)")
    assert out.startswith(b"* VANISHED (EARLIER) 3\r\n* 2 FETCH (UID 2 FLAGS () MODSEQ (3))")


def test_qresync_uses_store_vanished_record() -> None:
    """With a store that records expunges, SELECT (QRESYNC) reports exactly those."""
    store, acc = setup_mailbox()
    store.put(acc, "INBOX", MSG1, ["\\Deleted"])
    box_id = next(b.id for b in store.mailboxes.values() if b.name == "INBOX")
    store.expunge(box_id)
    store.list_vanished = lambda mailbox_id, since: succeed([3])  # type: ignore[attr-defined]
    c = Conn(store)
    c.login()
    c.cmd("e ENABLE QRESYNC")
    uidvalidity = store.mailboxes[box_id].uidvalidity
    out = c.cmd(f"s SELECT INBOX (QRESYNC ({uidvalidity} 3))")
    assert b"* VANISHED (EARLIER) 3\r\n" in out


def test_reading_paused_while_store_call_runs() -> None:
    """While a command waits for the store, the server stops reading; the pipelined next
    command runs only after the first completes."""
    from twisted.internet.defer import Deferred

    store, acc = make_store()
    pending: Deferred[Any] = Deferred()
    real = store.list_mailboxes
    store.list_mailboxes = lambda account_id: pending  # type: ignore[method-assign]
    c = Conn(store)
    c.login()
    out = c.send(b'a LIST "" "*"\r\nb NOOP\r\n')
    assert out == b"" and c.tr.producerState == "paused"
    real(acc.id).addCallback(pending.callback)
    out = c.out()
    assert out.index(b"a OK LIST") < out.index(b"b OK NOOP")
    assert c.tr.producerState == "producing"


def test_command_that_finishes_at_once_does_not_pause_reading() -> None:
    """A command answered without waiting (NOOP, FETCH of a small body) neither pauses
    nor resumes the transport's reading: that would be two needless changes of the
    socket's registration per command."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    calls: list[str] = []
    pause, resume = c.tr.pauseProducing, c.tr.resumeProducing

    def counted_pause() -> None:
        calls.append("pause")
        pause()

    def counted_resume() -> None:
        calls.append("resume")
        resume()

    c.tr.pauseProducing = counted_pause  # type: ignore[method-assign]
    c.tr.resumeProducing = counted_resume  # type: ignore[method-assign]
    out = c.send(b"n NOOP\r\nf UID FETCH 1 (BODY.PEEK[])\r\n")
    assert out.endswith(b"f OK UID FETCH completed\r\n") and b"n OK NOOP" in out, out
    assert calls == [] and c.tr.producerState == "producing"


def test_client_that_never_reads_gets_no_more_commands_run() -> None:
    """While the transport's write buffer is full, pipelined commands wait unread, so
    responses cannot pile up without bound; they run once the client reads again."""
    store, _ = make_store()
    c = Conn(store)
    c.login()
    c.proto.pauseProducing()
    out = c.send(b"n NOOP\r\n" * 100)
    assert out == b"" and c.tr.producerState == "paused"
    c.proto.resumeProducing()
    out = c.out()
    assert out.count(b"n OK NOOP completed") == 100
    assert c.tr.producerState == "producing"


def test_idle_and_done_in_one_packet() -> None:
    """IDLE followed at once by DONE in the same packet ends cleanly."""
    store, _ = setup_mailbox()
    c = Conn(store)
    c.login()
    c.select()
    assert c.send(b"i IDLE\r\nDONE\r\nn NOOP\r\n") == (
        b"+ idling\r\ni OK IDLE terminated\r\nn OK NOOP completed\r\n")


def test_metrics_counted() -> None:
    """Connections, logins and commands are counted through the metrics interface."""
    from twisted.internet.task import Clock

    from mxd.imap.server import IMAPFactory
    from tests.imap.fakes import FakeSASL

    class Recorder:
        def __init__(self) -> None:
            self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        def inc(self, name: str, value: float = 1, **labels: str) -> None:
            key = (name, tuple(sorted(labels.items())))
            self.counts[key] = self.counts.get(key, 0) + value

        def set(self, name: str, value: float, **labels: str) -> None:
            pass

        def observe(self, name: str, value: float, **labels: str) -> None:
            pass

    rec = Recorder()
    store, _ = make_store()
    clock = Clock()
    factory = IMAPFactory(implicit_tls=True, settings=IMAPServerSettings(), store=store,
                          accounts=store, sasl=FakeSASL({"alice": "s3cret"}), tls=None,
                          clock=clock, hostname="mx.example.test", metrics=rec)
    c = Conn(store, clock=clock, factory=factory)
    c.login()
    c.cmd("n NOOP")
    assert rec.counts[("imap_connections", (("implicit_tls", "yes"),))] == 1
    assert rec.counts[("imap_logins", (("result", "ok"),))] == 1
    assert rec.counts[("imap_commands", (("command", "NOOP"), ("status", "OK")))] == 1


def test_connections_per_ip_limited() -> None:
    """Beyond max_connections_per_ip, a new connection is greeted with BYE and closed."""
    store, _ = make_store()
    first = Conn(store, settings=IMAPServerSettings(max_connections_per_ip=2))
    second = Conn(store, clock=first.clock, factory=first.factory)
    third = Conn(store, clock=first.clock, factory=first.factory)
    other_ip = Conn(store, clock=first.clock, factory=first.factory, peer="192.0.2.99")
    assert second.greeting.startswith(b"* OK")
    assert third.greeting.startswith(b"* BYE") and third.tr.disconnecting
    assert other_ip.greeting.startswith(b"* OK")


def test_connections_per_network_and_total_limited() -> None:
    """Beyond max_connections_per_network (one /24) or max_connections in total, a new
    connection is greeted with BYE and closed; other networks still get in until the
    total is reached."""
    store, _ = make_store()
    settings = IMAPServerSettings(max_connections_per_ip=10, max_connections_per_network=2,
                                  max_connections=4)
    first = Conn(store, settings=settings, peer="203.0.113.1")
    f, clock = first.factory, first.clock
    assert Conn(store, clock=clock, factory=f, peer="203.0.113.2").greeting.startswith(b"* OK")
    same_net = Conn(store, clock=clock, factory=f, peer="203.0.113.3")
    assert same_net.greeting.startswith(b"* BYE Too many connections from your network")
    assert Conn(store, clock=clock, factory=f, peer="198.51.100.1").greeting.startswith(b"* OK")
    assert Conn(store, clock=clock, factory=f, peer="192.0.2.1").greeting.startswith(b"* OK")
    full = Conn(store, clock=clock, factory=f, peer="192.0.2.200")
    assert full.greeting.startswith(b"* BYE") and full.tr.disconnecting


def test_malformed_mutf7_name_is_no() -> None:
    """A mailbox name that is not valid modified UTF-7 parses (an astring): the command
    fails with NO, as in Dovecot, not BAD and not an internal error."""
    store, _ = make_store()
    c = Conn(store)
    c.login()
    assert c.cmd("a CREATE &Jjo").startswith(b"a NO [CANNOT]")
    assert c.cmd("b SELECT &Jjo").startswith(b"b NO [CANNOT]")


def test_quota_reporting() -> None:
    """With a store that reports usage, GETQUOTAROOT answers with the account's single
    quota root "" and STORAGE in KiB (RFC 9208); SETQUOTA is refused."""
    store, _ = setup_mailbox()
    store.get_usage = lambda account_id: succeed((5000, 1024 * 1024))  # type: ignore[attr-defined]
    c = Conn(store)
    c.login()
    assert b"QUOTA=RES-STORAGE" in c.cmd("a CAPABILITY")
    out = c.cmd("b GETQUOTAROOT INBOX")
    assert out == b'* QUOTAROOT INBOX ""\r\n* QUOTA "" (STORAGE 5 1024)\r\nb OK GETQUOTAROOT completed\r\n'
    assert c.cmd('c GETQUOTA ""').startswith(b'* QUOTA "" (STORAGE 5 1024)')
    assert c.cmd('d SETQUOTA "" (STORAGE 1)').startswith(b"d NO")
    store.get_usage = lambda account_id: succeed((5000, None))  # type: ignore[attr-defined]
    assert c.cmd("e GETQUOTAROOT INBOX") == b"* QUOTAROOT INBOX\r\ne OK GETQUOTAROOT completed\r\n"


def test_no_quota_capability_without_store_support() -> None:
    """A store without usage reporting gets no QUOTA capability."""
    store, _ = make_store()

    class NoUsage:  # the store's methods, minus get_usage
        def __getattr__(self, name: str) -> object:
            if name == "get_usage":
                raise AttributeError(name)
            return getattr(store, name)

    c = Conn(NoUsage())  # type: ignore[arg-type]
    c.login()
    assert b"QUOTA" not in c.cmd("a CAPABILITY")


def test_nul_in_command_line_gets_a_tagged_bad() -> None:
    """A NUL in a command line is refused with the command's own tag, so a client waiting
    for its tagged reply gets one (RFC 3501 §7.1.3), and the session goes on."""
    store, _ = make_store()
    c = Conn(store)
    r = c.send(b"a1 LOGIN alice\0 s3cret\r\n")
    assert re.search(rb"^a1 BAD .*NUL", r, re.M), r
    assert c.cmd("a2 NOOP").startswith(b"a2 OK")
