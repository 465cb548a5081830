"""IMAP METADATA (RFC 5464): the RFC's examples on the wire, limits, and the grammar."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.imap.errors import ParseError
from mxd.imap.metadata import GetMetadataArgs, SetMetadataArgs, entry_problem
from mxd.imap.parser import parse_bytes
from mxd.imap.server import IMAPFactory, IMAPServerSettings, IMAPShared
from mxd.store.metadata import Depth, MemoryMetadata, MetadataLimits
from tests.imap.fakes import FakeSASL
from tests.imap.helpers import Conn, make_store


def conn(limits: MetadataLimits = MetadataLimits()) -> Conn:
    store, _ = make_store()
    c0 = Conn(store)
    factory = IMAPFactory(implicit_tls=True, settings=IMAPServerSettings(), store=store,
                          accounts=store, sasl=FakeSASL({"alice": "s3cret"}), tls=None,
                          clock=c0.clock, hostname="mx.example.test",
                          shared=IMAPShared(metadata=MemoryMetadata(limits)))
    c = Conn(store, factory=factory, clock=c0.clock)
    c.login()
    return c


def test_capability() -> None:
    """METADATA is advertised after login when the store keeps annotations."""
    c = conn()
    assert b" METADATA" in c.cmd("a CAPABILITY")
    store, _ = make_store()
    plain = Conn(store)
    plain.login()
    assert b"METADATA" not in plain.cmd("a CAPABILITY")


def test_rfc5464_examples() -> None:
    """RFC 5464 §4.2, §4.2.1 and §4.3 examples: server and mailbox entries, MAXSIZE with
    LONGENTRIES, entries in the order asked for."""
    c = conn()
    assert c.cmd('a SETMETADATA "" (/shared/comment "Shared comment")') == (
        b"a OK SETMETADATA completed\r\n")
    assert c.cmd('a GETMETADATA "" /shared/comment') == (
        b'* METADATA "" (/shared/comment "Shared comment")\r\n'
        b"a OK GETMETADATA completed\r\n")
    c.send(b"a SETMETADATA INBOX (/private/comment \"My own comment\" "
           b"/shared/comment {2199+}\r\n" + b"x" * 2199 + b")\r\n")
    assert c.cmd("a GETMETADATA INBOX (/shared/comment /private/comment)") == (
        b"* METADATA INBOX (/shared/comment {2199}\r\n" + b"x" * 2199
        + b' /private/comment "My own comment")\r\n'
        b"a OK GETMETADATA completed\r\n")
    # §4.2.1: too long for MAXSIZE: left out, the largest such size in LONGENTRIES.
    assert c.cmd('a GETMETADATA "INBOX" (MAXSIZE 1024) (/shared/comment /private/comment)') == (
        b'* METADATA INBOX (/private/comment "My own comment")\r\n'
        b"a OK [METADATA LONGENTRIES 2199] GETMETADATA completed\r\n")
    # The options before the mailbox, as RFC 5464 §5's grammar has them.
    assert b"LONGENTRIES 2199" in c.cmd(
        "a GETMETADATA (MAXSIZE 1024) INBOX (/shared/comment /private/comment)")
    # §4.3: NIL removes; a missing entry reads NIL.
    assert c.cmd("a SETMETADATA INBOX (/private/comment NIL)") == b"a OK SETMETADATA completed\r\n"
    assert c.cmd("a GETMETADATA INBOX /private/comment") == (
        b"* METADATA INBOX (/private/comment NIL)\r\na OK GETMETADATA completed\r\n")


def test_depth_example() -> None:
    """RFC 5464 §4.2.2: DEPTH 1 returns the children of an entry that has no value."""
    c = conn()
    c.cmd('a SETMETADATA INBOX (/private/filters/values/small "SMALLER than 5000 octets" '
          '/private/filters/values/big "BIGGER than 5000 octets" /private/filters/values/big/x "deep")')
    assert c.cmd('a GETMETADATA "INBOX" (DEPTH 1) (/private/filters/values)') == (
        b'* METADATA INBOX (/private/filters/values/big "BIGGER than 5000 octets" '
        b'/private/filters/values/small "SMALLER than 5000 octets")\r\n'
        b"a OK GETMETADATA completed\r\n")
    assert b"deep" in c.cmd("a GETMETADATA (DEPTH infinity) INBOX /private")


def test_limits_on_the_wire() -> None:
    """RFC 5464 §4.3: NO [METADATA MAXSIZE n] for a value over the entry limit, NO
    [METADATA TOOMANY] over the account's count; a missing mailbox is NONEXISTENT."""
    c = conn(MetadataLimits(max_entry_size=10, max_entries=2, max_total=100))
    assert c.cmd('a SETMETADATA INBOX (/private/x "01234567890")') == (
        b"a NO [METADATA MAXSIZE 10] Value too large\r\n")
    assert c.cmd('a SETMETADATA INBOX (/private/a "1" /private/b "2" /private/c "3")') == (
        b"a NO [METADATA TOOMANY] Too many annotations, or too large in total\r\n")
    assert c.cmd('a SETMETADATA Nope (/private/a "1")') == (
        b"a NO [NONEXISTENT] Mailbox does not exist\r\n")
    # Entry names the grammar refuses are BAD.
    for bad_name in ("/other/x", "/private//x", "/private/x/", "/private/*", "private/x"):
        assert b"a BAD" in c.cmd(f'a SETMETADATA INBOX ({bad_name} "v")'), bad_name


def test_case_insensitive_names() -> None:
    """RFC 5464 §3.2: entry names are case-insensitive."""
    c = conn()
    c.cmd('a SETMETADATA INBOX (/Private/Color "red")')
    assert b'(/private/color "red")' in c.cmd("a GETMETADATA INBOX /PRIVATE/COLOR")


def test_parse() -> None:
    """The parsed forms of GETMETADATA and SETMETADATA."""
    assert parse_bytes(b"a GETMETADATA (DEPTH 1 MAXSIZE 5) \"\" (/shared/a /private/b)").args == (
        GetMetadataArgs("", ("/shared/a", "/private/b"), 5, Depth.ONE))
    assert parse_bytes(b'a SETMETADATA x (/shared/a NIL /private/b "v")').args == (
        SetMetadataArgs("x", (("/shared/a", None), ("/private/b", b"v"))))


_name_chars = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7f) | st.sampled_from(
    "/é*%"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["/private", "/shared", "/other", ""]), _name_chars)
def test_entry_names_property(root: str, rest: str) -> None:
    """Any entry name either parses to its lower-case form with no forbidden part, or is a
    ParseError; never anything else."""
    name = root + rest
    wire = b'a GETMETADATA "" "' + name.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'
    try:
        args = parse_bytes(wire).args
    except ParseError:
        return
    (got,) = args.entries
    assert got == name.lower()
    assert entry_problem(got) is None
    assert "*" not in got and "%" not in got and "//" not in got and not got.endswith("/")
    assert got.startswith(("/private", "/shared"))


def test_list_metadata() -> None:
    """RFC 9590 §3: LIST ... RETURN (METADATA (entries)) follows each listed mailbox with
    its METADATA response, NIL for an entry it does not have."""
    c = conn()
    assert b" LIST-METADATA" in c.cmd("a CAPABILITY")
    c.cmd('a SETMETADATA Sent (/private/color "blue")')
    out = c.cmd('a LIST "" "*" RETURN (METADATA (/private/color /shared/comment))')
    assert (b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* METADATA "Sent" (/private/color "blue" /shared/comment NIL)\r\n') in out, out
    assert b"* METADATA INBOX (/private/color NIL /shared/comment NIL)\r\n" in out
    assert out.endswith(b"a OK LIST completed\r\n")
    assert parse_bytes(b'a LIST "" % RETURN (METADATA (/shared/x))').args.metadata_entries == (
        "/shared/x",)
    assert b"a BAD" in c.cmd('a LIST "" % RETURN (METADATA (/bogus))')
