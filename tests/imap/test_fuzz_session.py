"""Fuzzing a whole session: arbitrary command sequences never crash the server."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.imap.helpers import MSG1, MSG2, Conn, make_store

_ARGS = ["1", "*", "1:*", "2:4", "$", "0", "99", "INBOX", "Sent", "Trash", '"a b"', "()", "(\\Seen)",
         "+FLAGS", "-FLAGS.SILENT", "FLAGS", "(\\Deleted)", "(FLAGS UID)", "BODY[]", "BODY.PEEK[1]",
         "BODY[1.MIME]", "BODY[HEADER.FIELDS (From)]", "BINARY[2]", "BINARY.SIZE[2]", "<0.3>",
         "ENVELOPE", "BODYSTRUCTURE", "ALL", "FAST", "OR", "NOT", "SEEN", "FROM", "alice", "SINCE",
         "1-Jan-2020", "RETURN", "(MIN)", "(CHANGEDSINCE 1)", "(UNCHANGEDSINCE 1)", "{3+}\r\nabc",
         "CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "(QRESYNC (1 1))", '""', "%", "Work/Sub", "&AOk-",
         "(SUBSCRIBED)", "&Jjo", "&-", "&AOk", "(MESSAGES UIDNEXT SIZE)", "HEADER", "X", "UID", "MODSEQ", "LARGER", "5"]
_COMMANDS = ["NOOP", "CAPABILITY", "SELECT", "EXAMINE", "FETCH", "UID FETCH", "STORE", "UID STORE",
             "SEARCH", "UID SEARCH", "COPY", "MOVE", "UID MOVE", "EXPUNGE", "UID EXPUNGE", "CLOSE",
             "UNSELECT", "CREATE", "DELETE", "RENAME", "LIST", "LSUB", "STATUS", "APPEND",
             "SUBSCRIBE", "UNSUBSCRIBE", "ENABLE", "NAMESPACE", "ID", "CHECK", "IDLE", "DONE"]

_LINE = st.builds(lambda c, a: (c + " " + " ".join(a)).strip(), st.sampled_from(_COMMANDS),
                  st.lists(st.sampled_from(_ARGS), max_size=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE, min_size=1, max_size=12))
def test_random_sessions_never_hit_internal_errors(lines: list[str]) -> None:
    """Any sequence of (mostly malformed) commands gets OK/NO/BAD answers, never an
    internal error, and the server keeps answering."""
    store, acc = make_store()
    store.put(acc, "INBOX", MSG1, ["\\Seen"])
    store.put(acc, "INBOX", MSG2)
    store.put(acc, "INBOX", MSG1, ["\\Deleted"])
    c = Conn(store)
    c.login()
    c.select()
    out = b""
    for i, line in enumerate(lines):
        out += c.send(f"t{i} {line}\r\n".encode())
        if c.tr.disconnecting:
            return
        c.clock.advance(0)
        out += c.out()
    out += c.send(b"DONE\r\nz NOOP\r\n")
    assert b"SERVERBUG" not in out, out[-2000:]
    assert c.tr.disconnecting or b"z OK" in out or b"z BAD" in out, out[-2000:]


_RAW = st.sampled_from([b"a ", b"LOGIN ", b"AUTHENTICATE ", b"X-TWO", b"PLAIN ", b"=", b"*", b"\r\n",
                        b"{3}\r\n", b"{5+}\r\n", b"{999999}\r\n", b"alice", b"s3cret", b'"', b"(", b")",
                        b"STARTTLS", b"ID NIL", b"\x00", b"\xff", b"AGFsaWNlAHMzY3JldA==", b"LOGOUT"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_RAW, max_size=30), st.integers(min_value=1, max_value=7))
def test_random_bytes_before_login_never_raise(pieces: list[bytes], split: int) -> None:
    """Arbitrary bytes, in arbitrary packet boundaries, before login: dataReceived never
    raises, nothing hits an internal error, and output is whole lines."""
    store, _ = make_store()
    c = Conn(store)
    data = b"".join(pieces)
    out = b""
    for i in range(0, len(data), split):
        out += c.send(data[i:i + split])
        if c.tr.disconnecting:
            break
    assert b"SERVERBUG" not in out
    assert out == b"" or out.endswith(b"\r\n")  # whole response lines only
