"""How the kernel schedules mxd's helper threads against the reactor thread.

A worker's threads share a core (``[server] cpu_affinity``) and Python's interpreter
lock: the reactor thread runs the protocols; the store's writer thread and its fsync
helpers mostly wait for the disk.  When a helper's fsync returns, the default policy
(SCHED_OTHER) lets it preempt the reactor thread at once, only for it to find the
interpreter lock taken and sleep again: two context switches for nothing, several
times per message.  SCHED_BATCH (sched(7): "the scheduler will apply a small scheduling
penalty with respect to wakeup behavior") keeps a woken helper from preempting; it
runs when the reactor thread waits (for the network, for the lock) or its time slice
ends, and otherwise gets its fair share as before.  No privilege is needed; on a system
without the policy nothing changes.
"""

from __future__ import annotations

import os
import threading

from twisted.logger import Logger

log = Logger()


def mark_background() -> bool:
    """Put the calling thread under SCHED_BATCH; False when the system cannot, or when
    called on the main thread (the reactor's: a store run inline, as tools and tests
    do, must not demote it)."""
    if threading.current_thread() is threading.main_thread():
        return False
    policy = getattr(os, "SCHED_BATCH", None)
    setter = getattr(os, "sched_setscheduler", None)
    if policy is None or setter is None:
        return False
    try:
        setter(0, policy, os.sched_param(0))  # 0: the calling thread (Linux)
    except OSError as e:
        log.debug("cannot make a helper thread SCHED_BATCH: {error}", error=e)
        return False
    return True
