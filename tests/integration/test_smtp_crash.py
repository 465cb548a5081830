"""Crash safety of SMTP acceptance (DESIGN.md "Contracts").

SIGKILL the server during a burst of deliveries from several clients; after a restart
every message a client saw 250 for is in the mailbox exactly once, and no message is
there twice."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration._smtp_harness import Harness

pytestmark = pytest.mark.integration


def test_sigkill_during_burst_loses_and_duplicates_nothing(
        tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """Four clients send numbered messages on port 25; the server is killed after 60 acks."""
    h = Harness(tmp_path, tls_files)
    h.start()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", h.ports["smtp"], timeout=10) as s:
                while not stop.is_set():
                    tag = f"c{k}-{n}"
                    body = f"Subject: crash {tag}\r\nMessage-ID: <{tag}@crash.test>\r\n\r\n" + "x" * 2000
                    s.sendmail("load@remote.example", [h.user], body)
                    with lock:
                        acked.append(tag)
                    n += 1
        except (smtplib.SMTPException, OSError):
            return  # the server died under us; unacknowledged mail may or may not be there

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked) >= 60, h.log_tail()
        h.kill()  # SIGKILL mid-burst
        stop.set()
        for t in threads:
            t.join(15)
        with lock:
            seen_acks = list(acked)
        h.start()
        tags = Counter()
        for msg in h.inbox(h.user):
            m = re.search(rb"Subject: crash (c\d+-\d+)", msg["body"])
            assert m is not None
            tags[m.group(1).decode()] += 1
        missing = [t for t in seen_acks if tags[t] != 1]
        assert missing == [], f"acknowledged but not stored exactly once: {missing}"
        assert max(tags.values()) == 1
    finally:
        stop.set()
        h.stop()
