"""mxd.randomids: buffered CSPRNG identifiers."""

from __future__ import annotations

import os
import re

from mxd import randomids


def test_tokens_are_hex_of_the_asked_length_and_distinct() -> None:
    seen = {randomids.token_hex(8) for _ in range(5000)}  # crosses several 4 KiB refills
    assert len(seen) == 5000
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in seen)
    assert len(randomids.token_hex(6)) == 12
    assert len(randomids.token_hex(5000)) == 10000  # larger than the buffer


def test_forked_child_does_not_repeat_the_parent() -> None:
    randomids.token_hex(4)  # the parent has a buffer with octets left
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, randomids.token_hex(16).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.waitpid(pid, 0)
    assert child != randomids.token_hex(16)
