"""What IMAP derives from a message's header block, stored with the message.

The store keeps values derived from each body under a kind name (see the
``mxd.store.interfaces`` docstring: ``register_deriver``/``get_derived``); IMAP stores:

* ``ENVELOPE`` (kind ``imap.envelope.1``): the rendered ENVELOPE (RFC 3501 §7.4.2) of a
  session without UTF8=ACCEPT, the octets ``envelope.render_envelope`` gives, so FETCH
  ENVELOPE of a mailbox never opens its files;
* ``KEYS`` (kind ``imap.sortkeys.1``): the header parts of the SORT keys (RFC 5256 §3,
  RFC 5957 §3: sent date, base subject, first From/To/Cc mailbox and display name) and
  of THREAD (RFC 5256 §2.1 reply/forward, Message-ID, References or In-Reply-To);
* ``HSEARCH`` (kind ``imap.hsearch.1``, mxd.imap.headersearch): the decoded, casefolded
  header texts that SEARCH FROM/TO/CC/BCC/SUBJECT/HEADER/SENT* compare.

``derive`` computes all three from one parse of the header block from a body's first octets; the composition registers it with
the store (``register``), which runs it on its own thread when a message is stored.
The format of a value is fixed by its kind name: change it only under a new name.
"""

from __future__ import annotations

import json
from email.message import Message

from mxd.imap import headersearch
from mxd.imap import message as mimemsg
from mxd.imap.envelope import render_envelope
from mxd.imap.messagecache import read_header
from mxd.imap.sort import SortData, header_date, header_sort_keys
from mxd.imap.thread import ThreadData, thread_data
from mxd.store.interfaces import IMailStore, ReadHead

ENVELOPE = "imap.envelope.1"
KEYS = "imap.sortkeys.1"
HSEARCH = headersearch.KIND
KINDS = (ENVELOPE, KEYS, HSEARCH)
DERIVER = "imap"

# The Date header (None: use the internal date) and the header parts of SortData and
# ThreadData; their other fields (seq, uid, dates, size) are filled by the reader.
HeaderKeys = tuple[float | None, SortData, ThreadData]


def header_keys(header: bytes) -> HeaderKeys:
    return keys_of(mimemsg.parse_headers(header))


def keys_of(h: Message) -> HeaderKeys:
    # The per-message fields are the reader's: zero here, as decode_keys gives them.
    return (header_date(h), SortData(0, 0, 0.0, 0.0, 0, *header_sort_keys(h)),
            thread_data(0, 0, 0.0, h))


def derive(read_head: ReadHead) -> dict[str, bytes]:
    """The values IMAP stores for one message (a ``Deriver``)."""
    header = read_header(read_head)
    h = mimemsg.parse_headers(header)
    return {ENVELOPE: render_envelope(header, False), KEYS: encode_keys(keys_of(h)),
            HSEARCH: headersearch.encode(h)}


def register(store: IMailStore) -> None:
    """Have ``store`` compute IMAP's values for every message it stores from now on."""
    store.register_deriver(DERIVER, KINDS, derive)


# -- the KEYS format ----------------------------------------------------------------------
# UTF-8 text, ten fields separated by NUL: date (repr of the float, or empty), sort
# subject, from, to, cc, display from, display to, reply ("1" or empty), Message-ID
# (empty: none), References (space-separated; ids hold no white space).  When a field
# itself holds NUL, the value is "J" and a JSON list of the same fields instead.

def encode_keys(k: HeaderKeys) -> bytes:
    date, s, t = k
    fields = ["" if date is None else repr(date), s.subject, s.from_, s.to, s.cc,
              s.display_from, s.display_to, "1" if t.reply else "", t.message_id or "",
              " ".join(t.references)]
    if any("\0" in f for f in fields) or any(" " in r for r in t.references):
        return b"J" + json.dumps([date, s.subject, s.from_, s.to, s.cc, s.display_from,
                                  s.display_to, t.reply, t.message_id,
                                  list(t.references)]).encode()
    return "\0".join(fields).encode("utf-8", "surrogatepass")


Fields = tuple[float | None, str, str, str, str, str, str, bool, str | None, tuple[str, ...]]


def decode_fields(v: bytes) -> Fields:
    """The fields of an ``encode_keys`` value: (date, subject, from, to, cc, display
    from, display to, reply, Message-ID, References).  Raises ValueError for a
    malformed value."""
    if v[:1] == b"J":
        date, subject, frm, to, cc, dfrom, dto, reply, mid, refs = json.loads(v[1:])
        return (None if date is None else float(date), str(subject), str(frm), str(to),
                str(cc), str(dfrom), str(dto), bool(reply), None if mid is None else str(mid),
                tuple(str(r) for r in refs))
    f = v.decode("utf-8", "surrogatepass").split("\0")
    if len(f) != 10:
        raise ValueError("malformed sort keys")
    return (float(f[0]) if f[0] else None, f[1], f[2], f[3], f[4], f[5], f[6], f[7] == "1",
            f[8] or None, tuple(f[9].split(" ")) if f[9] else ())


def decode_keys(v: bytes) -> HeaderKeys:
    """The inverse of ``encode_keys``; raises ValueError for a malformed value."""
    date, subject, frm, to, cc, dfrom, dto, reply, mid, refs = decode_fields(v)
    return (date, SortData(0, 0, 0.0, 0.0, 0, subject, frm, to, cc, dfrom, dto),
            ThreadData(0, 0, 0.0, subject, reply, mid, refs))
