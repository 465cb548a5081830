"""The webmail's search box as an IMAP search program (RFC 9051 §6.4.4), evaluated by
the IMAP server's own evaluator (``mxd.imap.search``), and the paged scan of a mailbox.

``from:ann subject:"budget 2027" is:unseen invoice`` means FROM ann, SUBJECT "budget
2027", UNSEEN and TEXT invoice, all of them (AND).  Prefixes: from:, to:, cc:,
subject:, body:; ``is:`` seen, unseen, flagged, unflagged, answered.  Pure."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from datetime import datetime
from email.message import Message

from mxd.imap.message import ParsedMessage
from mxd.imap.search import Candidate, matches
from mxd.imap.values import SearchKey
from mxd.store.interfaces import MessageInfo

_PREFIX = {"from": "FROM", "to": "TO", "cc": "CC", "subject": "SUBJECT", "body": "BODY"}
_IS = {"seen": "SEEN", "unseen": "UNSEEN", "read": "SEEN", "unread": "UNSEEN",
       "flagged": "FLAGGED", "unflagged": "UNFLAGGED", "answered": "ANSWERED"}
MAX_TERMS = 10


def search_key(query: str) -> SearchKey | None:
    """The program for ``query``; None for an empty query (no search)."""
    try:
        words = shlex.split(query)
    except ValueError:  # an unbalanced quote: take the words as they are
        words = query.split()
    keys: list[SearchKey] = []
    for w in words[:MAX_TERMS]:
        name, sep, value = w.partition(":")
        low = name.lower()
        if sep and low in _PREFIX and value:
            keys.append(SearchKey(_PREFIX[low], (value,)))
        elif sep and low == "is" and value.lower() in _IS:
            keys.append(SearchKey(_IS[value.lower()]))
        elif w:
            keys.append(SearchKey("TEXT", (w,)))
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def match(key: SearchKey, m: MessageInfo, now: datetime,
          load_header: Callable[[MessageInfo], Message],
          load_message: Callable[[MessageInfo], ParsedMessage]) -> bool:
    """Does ``m`` match ``key``?  The loaders run only when a term needs them: flags
    (``is:``) read nothing, from:/to:/cc:/subject: read the header block only, words
    and body: the whole message.  Blocking when a loader runs (a local file read)."""
    # The box's programs have no sequence or UID terms: the Candidate's numbers are moot.
    return matches(key, Candidate(1, m, 1, m.uid, lambda: load_header(m),
                                  lambda: load_message(m), now))


def scan(key: SearchKey, msgs: Sequence[MessageInfo], now: datetime,
         load_header: Callable[[MessageInfo], Message],
         load_message: Callable[[MessageInfo], ParsedMessage]) -> list[MessageInfo]:
    """The messages of ``msgs`` that match ``key`` (in order), in one go."""
    return [m for m in msgs if match(key, m, now, load_header, load_message)]
