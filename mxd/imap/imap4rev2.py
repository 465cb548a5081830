"""IMAP4rev2 (RFC 9051) as a mode of the IMAP4rev1 server, and the search extensions
that come with it.

mxd advertises both IMAP4rev1 and IMAP4rev2 (RFC 9051 §7.2.2 allows both); a client
that sends ``ENABLE IMAP4rev2`` (§6.3.1) gets the rev2 answers from then on.  What
changes (RFC 9051 Appendix E) is decided where the answer is made, each citing this:

- no RECENT response and no ``\\Recent`` flag (server.sync, server.flags_of, SELECT);
- SEARCH answers ESEARCH, with RETURN (ALL) when no option is given (searchcmd);
- SELECT/EXAMINE send the mailbox's LIST response and no ``OK [UNSEEN]`` (§6.3.2);
- mailbox names and strings are UTF-8 as with UTF8=ACCEPT (§5.1; server.utf8);
- LIST answers with the LIST-EXTENDED attributes (``\\NonExistent``, children);
- STATUS DELETED and SIZE (§6.3.11) are there in both modes.

LSUB, NAMESPACE, BINARY, UNSELECT, UIDPLUS, MOVE, ESEARCH, SEARCHRES, LITERAL-, SASL-IR,
IDLE and ENABLE were offered already and stay the same in both modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mxd.imap import response
from mxd.store.interfaces import HIERARCHY_SEPARATOR, MailboxInfo

if TYPE_CHECKING:
    from mxd.imap.server import IMAPSession

# Advertised after login with the other extensions: WITHIN (RFC 5032), SAVEDATE
# (RFC 8514), MULTISEARCH (RFC 7377), CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4),
# PARTIAL (RFC 9394, the RETURN option of CONTEXT=SEARCH).
MORE_CAPABILITIES = ("WITHIN", "SAVEDATE", "MULTISEARCH", "CONTEXT=SEARCH", "CONTEXT=SORT",
                     "PARTIAL")

# ENABLE-able capabilities (RFC 5161 §3.1) in their advertised spelling.
ENABLABLE = {"CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC", "UTF8=ACCEPT": "UTF8=ACCEPT",
             "IMAP4REV2": "IMAP4rev2", "UIDONLY": "UIDONLY"}  # RFC 9586 (mxd.imap.uidonly)


async def select_list(s: IMAPSession, info: MailboxInfo) -> bytes:
    """The LIST response that SELECT/EXAMINE send in IMAP4rev2 (RFC 9051 §6.3.2: "The
    list of mailbox attributes MUST be accurate"): children and special use."""
    assert s.account is not None
    prefix = info.name + HIERARCHY_SEPARATOR
    boxes = await s.store.list_mailboxes(s.account.id)
    attrs = ["\\HasChildren" if any(b.name.startswith(prefix) for b in boxes)
             else "\\HasNoChildren"]
    if info.special_use is not None:
        attrs.append(str(info.special_use))
    return f"LIST ({' '.join(attrs)}) \"{HIERARCHY_SEPARATOR}\" ".encode() + \
        response.mailbox(info.name, s.utf8)
