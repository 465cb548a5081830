"""Progress of long commands: the INPROGRESS response code (RFC 9585).

A command that runs longer than ``INTERVAL`` seconds tells the client it is still
working with ``* OK [INPROGRESS ("tag" done goal)]``, at most once per ``INTERVAL``:
loops that give the reactor back between work slices (FETCH, SEARCH, SORT, THREAD)
report how far they are through their messages; commands that wait on one store
operation (COPY, MOVE, EXPUNGE, ...) report without counts (NIL, RFC 9585 §2).  Progress
lines go out only where a whole response line may (never inside a FETCH literal).
"""

from __future__ import annotations

from mxd.imap import response

INTERVAL = 1.0  # seconds before the first progress line, and between two

# Commands that write nothing while they wait on the store, so a timer may report their
# progress; the others report from their own loops (``IMAPSession.breathe``) or not at
# all (IDLE, AUTHENTICATE and APPEND are not long in this sense).
TIMED = frozenset({"COPY", "UID COPY", "MOVE", "UID MOVE", "EXPUNGE", "UID EXPUNGE", "CLOSE",
                   "STATUS", "DELETE", "RENAME", "ESEARCH", "GETMETADATA", "SETMETADATA",
                   "SEARCH", "UID SEARCH", "SORT", "UID SORT", "THREAD", "UID THREAD"})


def line(tag: str, done: int | None, goal: int | None) -> bytes:
    """The untagged OK with the INPROGRESS code (RFC 9585 §2: ``"INPROGRESS" [SP "("
    progress-tag SP (number / nil) SP (nz-number / nil) ")"]``).

    A tag holding "]" would end the response code early: NIL is sent instead (as
    Dovecot does).  The count stays below the goal: the command has not finished."""
    wire_tag = b"NIL" if "]" in tag else response.string(tag)
    if goal is not None and goal <= 0:
        goal = None
    if done is not None and goal is not None and done >= goal:
        done = goal - 1
    count = b"NIL" if done is None else b"%d" % max(0, done)
    total = b"NIL" if goal is None else b"%d" % goal
    return b"OK [INPROGRESS (" + wire_tag + b" " + count + b" " + total + b")] Still working"
