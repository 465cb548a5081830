"""UIDONLY (RFC 9586): once a client has sent ``ENABLE UIDONLY``, messages are named by
UID only, both ways.

- Commands that take message sequence numbers (FETCH, STORE, COPY, MOVE, SEARCH, SORT,
  THREAD, REPLACE) and sequence numbers inside a search program are refused with
  ``BAD [UIDREQUIRED]`` (RFC 9586 §3); ``$`` (SEARCHRES) stands for UIDs and is fine.
- FETCH responses become ``* uid UIDFETCH (...)`` (RFC 9586 §3.3), the unsolicited flag
  updates too.
- EXPUNGE responses become VANISHED (RFC 9586 §3.2, as with QRESYNC, RFC 7162 §3.2.10).

EXISTS still counts the messages (RFC 9586 §3.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mxd.imap.dispatch import Reply, bad
from mxd.imap.values import Command, SearchKey, SeqSet

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

CAPABILITY = "UIDONLY"

# RFC 9586 §3: the commands whose message-set arguments are sequence numbers.
SEQUENCE_COMMANDS = frozenset({"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD",
                               "REPLACE"})


def active(s: IMAPSession) -> bool:
    return CAPABILITY in s.enabled


def refusal(cmd: Command) -> Reply | None:
    """BAD [UIDREQUIRED] for a command that uses message sequence numbers (RFC 9586 §3:
    "the server MUST return a tagged BAD response ... SHOULD include the UIDREQUIRED
    response code")."""
    if cmd.name in SEQUENCE_COMMANDS:
        return bad(f"{cmd.name} uses message sequence numbers: use UID {cmd.name}",
                   "UIDREQUIRED")
    key = getattr(cmd.args, "key", None)
    if key is not None and _uses_sequence_numbers(key):
        return bad("Message sequence numbers in a search program: use UID", "UIDREQUIRED")
    return None


def _uses_sequence_numbers(key: Any) -> bool:
    if isinstance(key, SearchKey):
        if key.name == "SEQ":
            return not any(isinstance(a, SeqSet) and a.saved for a in key.args)
        return any(_uses_sequence_numbers(a) for a in key.args)
    if isinstance(key, (tuple, list)):
        return any(_uses_sequence_numbers(a) for a in key)
    return False


def fetch_head(s: IMAPSession, seq: int, uid: int) -> bytes:
    """The start of a FETCH response: ``* seq FETCH (``, or with UIDONLY
    ``* uid UIDFETCH (`` (RFC 9586 §3.3)."""
    if CAPABILITY in s.enabled:
        return b"* %d UIDFETCH (" % uid
    return b"* %d FETCH (" % seq
