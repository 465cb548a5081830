"""Webmail pages on a 10,000-message mailbox in the SQLite store: latency of the message
list (first page, a deep page), a search that has to scan half the mailbox, and a message
view, with the longest reactor stall seen meanwhile (a 1 ms heartbeat measures it).

    .venv/bin/python bench/webmail_list.py [--count 10000] [--rounds 5] [--dir D]

What it shows: whether serving a large mailbox holds the reactor (every other IMAP, SMTP
and web session waits while it does).  There is no peer here: no other webmail runs on
this machine; the figure to compare is the stall against the request's own latency.  The
machine is shared with other test runs: read medians, not single rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Keep bench/ off sys.path: a script named like a stdlib module would shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from mxd.store.interfaces import Delivery, MessageProps  # noqa: E402
from mxd.store.sqlite import SQLiteStore  # noqa: E402
from mxd.webmail.context import COOKIE, WebmailContext  # noqa: E402
from mxd.webmail.site import webmail_site  # noqa: E402


def message(i: int) -> bytes:
    word = "needle" if i % 100 == 0 else "hay"
    return (f"From: Sender {i} <s{i}@remote.example>\r\nTo: bench@example.test\r\n"
            f"Subject: message {i}\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{i}@remote.example>\r\n\r\n"
            + f"line of {word} text {i}\r\n" * 40).encode()


class Heartbeat:
    """The longest gap between 1 ms ticks of the reactor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor, self.worst, self.last = reactor, 0.0, time.perf_counter()
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = reactor

    def tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def reset(self) -> None:
        self.worst, self.last = 0.0, time.perf_counter()


async def get(reactor: Any, site: Any, path: str, cookie: str) -> tuple[float, int]:
    proto: Any = site.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    start = time.perf_counter()
    proto.dataReceived((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: "
                        f"{COOKIE.decode()}={cookie}\r\nConnection: close\r\n\r\n").encode())
    while not tr.disconnecting:
        await task.deferLater(reactor, 0.001, lambda: None)
    took = time.perf_counter() - start
    proto.connectionLost(None)
    return took, int(tr.value().split(b" ", 2)[1])


async def main(reactor: Any, args: argparse.Namespace) -> None:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mxd-bench-"))
    store = SQLiteStore(base, reactor)
    await store.open()
    acct = await store.add_account("bench@example.test", "{}", ["bench@example.test"])
    t0 = time.perf_counter()
    for start in range(0, args.count, 500):
        ds = []
        for i in range(start, min(start + 500, args.count)):
            w = store.new_blob()
            w.write(message(i))
            ds.append(store.deliver(w, [Delivery(acct.id)], MessageProps()))
        await defer.gatherResults(ds)
    print(f"{args.count} messages stored in {time.perf_counter() - t0:.1f} s")
    # As the server does once started (mxd.components.freeze_heap): what filling the
    # store left on this heap is not the server's, and a full collection must not walk it.
    import gc

    gc.collect()
    gc.freeze()
    ctx = WebmailContext(clock=reactor, store=store, directory=None, sasl=None,
                         page_size=50)
    site = webmail_site(ctx)
    cookie = ctx.sessions.create("bench@example.test").sid
    beat = Heartbeat(reactor)
    beat.loop.start(0.001)
    cases = {"list, first page": "/messages?mailbox=INBOX",
             "list, page 150": "/messages?mailbox=INBOX&page=150",
             "search, 50 hits (scans ~5000)": "/messages?mailbox=INBOX&q=needle",
             "message view": f"/message?mailbox=INBOX&uid={args.count // 2}"}
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in ("idle 100 ms", *cases)}
    for _ in range(args.rounds):  # interleaved rounds
        beat.reset()
        await task.deferLater(reactor, 0.1, lambda: None)
        results["idle 100 ms"].append((0.1, beat.worst))
        for name, path in cases.items():
            beat.reset()
            took, code = await get(reactor, site, path, cookie)
            assert code == 200, (path, code)
            results[name].append((took, beat.worst))
    beat.loop.stop()
    print(f"{'page':32s} {'median latency':>15s} {'median worst stall':>19s} {'max stall':>10s}")
    for name, rows in results.items():
        lat = statistics.median(r[0] for r in rows) * 1000
        stall = statistics.median(r[1] for r in rows) * 1000
        print(f"{name:32s} {lat:12.1f} ms {stall:16.1f} ms {max(r[1] for r in rows) * 1000:7.1f} ms")
    print("(shared machine: other test runs compete for the 2 cores)")
    await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir")
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
