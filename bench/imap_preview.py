"""IMAP PREVIEW benchmark (RFC 8970): mxd against Dovecot 2.3 on loopback, the same INBOX.

For an INBOX of N messages (``--messages``, default 10,000; the messages, servers and
raw client of ``bench/imap.py``), each command is timed the first time after the server
starts (cold) and as the best of three more runs (warm), with the server's CPU time:

  * ``UID FETCH 1:* (PREVIEW)``: mxd answers from the preview stored when each message
    was stored; Dovecot computes it on first use and keeps it in its cache;
  * ``UID FETCH 1:* (PREVIEW (LAZY))``: the same where the server may answer NIL for a
    preview it does not have yet (RFC 8970 §3.2).

``--rounds N`` interleaves the servers N times (each round restarts both, Dovecot's
indexes removed first) and prints medians and mxd/Dovecot ratios.  The machine may be
shared: say so next to any figures.

    .venv/bin/python bench/imap_preview.py [--messages 10000] [--rounds 3]
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
        ("preview", "UID FETCH 1:* (PREVIEW)", True),
        ("preview_lazy", "UID FETCH 1:* (PREVIEW (LAZY))", True),
    ]


if __name__ == "__main__":
    main(commands, "preview")
