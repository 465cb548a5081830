"""IMAP search extensions benchmark: mxd against Dovecot 2.3 on loopback, the same INBOX.

For an INBOX of N messages (``--messages``, default 10,000; the messages, servers and
raw client of ``bench/imap.py``), each of these commands is timed the first time after
the server starts (cold) and as the best of three more runs (warm), with the server's
CPU time:

  * ``UID SEARCH RETURN (COUNT) SUBJECT transport``: ESEARCH over the header of every
    message (RFC 4731); the same with ``FROM``, ``HEADER Message-ID`` and ``OR TO .. CC ..``
    (mxd reads the header search text stored with each message);
  * ``UID SEARCH RETURN (PARTIAL n-49:n) ALL``: the last page of 50 (RFC 5267 §4.4);
  * ``UID SEARCH RETURN (COUNT) YOUNGER 86400``: WITHIN (RFC 5032);
  * ``UID SEARCH RETURN (COUNT) SAVEDSINCE 1-Jan-2020``: SAVEDATE (RFC 8514);
  * ``UID SORT RETURN (COUNT MIN MAX) (DATE) UTF-8 UNSEEN``: ESORT of a filtered set;
  * ``UID SORT`` of the whole INBOX by DATE, SUBJECT and (REVERSE FROM DATE), ``UID THREAD``
    REFERENCES and ORDEREDSUBJECT (RFC 5256);
  * mxd only (Dovecot 2.3 has neither): ``UID SEARCH RETURN (PARTIAL -1:-50) ALL``
    (RFC 9394) and ``ESEARCH IN (personal) RETURN (COUNT) SUBJECT transport``
    (MULTISEARCH, RFC 7377).

``--rounds N`` interleaves the servers N times (each round restarts both, Dovecot's
indexes removed first) and prints medians and mxd/Dovecot ratios; ``--baseline-root DIR``
adds the mxd source tree in DIR (before a change) as ``mxd-base``.  The machine may be
shared: say so next to any figures.

    .venv/bin/python bench/imap_search.py [--messages 10000] [--rounds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.imap_commands import main  # noqa: E402


def commands(n: int) -> list[tuple[str, str, bool]]:
    """(key, command, both servers)."""
    return [
        ("subject", "UID SEARCH RETURN (COUNT) SUBJECT transport", True),
        ("from", "UID SEARCH RETURN (COUNT) FROM sender42", True),
        ("header", "UID SEARCH RETURN (COUNT) HEADER Message-ID example", True),
        ("or_to_cc", "UID SEARCH RETURN (COUNT) OR TO bob CC carol", True),
        ("partial_last", f"UID SEARCH RETURN (PARTIAL {max(1, n - 49)}:{n}) ALL", True),
        ("within", "UID SEARCH RETURN (COUNT) YOUNGER 86400", True),
        ("savedate", "UID SEARCH RETURN (COUNT) SAVEDSINCE 1-Jan-2020", True),
        ("esort_unseen", "UID SORT RETURN (COUNT MIN MAX) (DATE) UTF-8 UNSEEN", True),
        ("sort_date", "UID SORT (DATE) UTF-8 ALL", True),
        ("sort_subject", "UID SORT (SUBJECT) UTF-8 ALL", True),
        ("sort_from", "UID SORT (REVERSE FROM DATE) UTF-8 ALL", True),
        ("thread_refs", "UID THREAD REFERENCES UTF-8 ALL", True),
        ("thread_subject", "UID THREAD ORDEREDSUBJECT UTF-8 ALL", True),
        ("partial_neg", "UID SEARCH RETURN (PARTIAL -1:-50) ALL", False),
        ("multisearch", "ESEARCH IN (personal) RETURN (COUNT) SUBJECT transport", False),
    ]


if __name__ == "__main__":
    main(commands, "search")
