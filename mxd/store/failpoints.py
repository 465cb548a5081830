"""Failpoints: named places in the store where a test can make the process die.

A crash test sets ``MXD_FAILPOINTS`` to a comma-separated list of names before starting
``twistd mxd``; when the code reaches an enabled point the process exits at once with
status 70, with no clean-up, as a power cut or a kill -9 would leave it.  With the
variable unset (always, outside such tests) ``reach`` is a set lookup and nothing else.

Points:

* ``accept.between``: inside ``SQLiteStore.accept``'s transaction, after the local
  copies are written and before the queue rows are (the two halves an older accept path
  committed separately).
* ``overlap.after_commit``: in the store's writer, right after the COMMIT of rows whose
  bodies' fsync runs alongside it (mxd.store.unsynced), before that fsync is waited for.
* ``overlap.body_lost``: the same place, but the bodies' files are first truncated to
  nothing, as an operating-system crash could leave bodies whose pages were not yet
  written.
"""

from __future__ import annotations

import os

ENV = "MXD_FAILPOINTS"
EXIT_STATUS = 70

_enabled: frozenset[str] = frozenset(
    n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())


def enabled(name: str) -> bool:
    return name in _enabled


def reach(name: str) -> None:
    """Die here when the failpoint ``name`` is enabled."""
    if name in _enabled:
        os._exit(EXIT_STATUS)
