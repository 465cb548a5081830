"""Store delivery throughput: 10 KiB messages to one mailbox, fsync on (synchronous=FULL).

    .venv/bin/python bench/store_deliver.py [--count N] [--concurrency 1,8,32] [--dir D]

For each concurrency level, N deliveries are run with that many in flight (like that many
SMTP sessions finishing DATA at once) and deliveries/s is printed.  Concurrency 1 is
bound by fsync latency (body file, then WAL, per message; bodies come from the store's
pool of pre-created files, so no rename or directory fsync); higher levels show group
commit (body fsyncs in parallel, one WAL fsync per batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Keep bench/ off sys.path: a script named like a stdlib module would shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task  # noqa: E402

from mxd.store.interfaces import Delivery, MessageProps  # noqa: E402
from mxd.store.sqlite import SQLiteStore  # noqa: E402


async def run(reactor, data_dir: Path, count: int, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    store = SQLiteStore(data_dir, reactor)
    await store.open()
    acct = await store.add_account(f"bench{concurrency}", "{}")
    body = (b"Subject: bench\r\n\r\n" + os.urandom(10 * 1024 * 3 // 4).hex().encode())[: 10 * 1024]
    remaining = [count]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            w = store.new_blob()
            w.write(body)
            await store.deliver(w, [Delivery(acct.id)], MessageProps())

    start = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    batches, ops = store._writer.batches, store._writer.ops
    await store.close()
    rate = count / elapsed
    print(f"concurrency {concurrency:3d}: {count} deliveries in {elapsed:.2f} s = "
          f"{rate:.0f} deliveries/s ({ops / max(batches, 1):.1f} ops per commit)")
    return rate


async def main(reactor, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mxd-bench-"))
    for c in (int(x) for x in args.concurrency.split(",")):
        d = base / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        await run(reactor, d, args.count, c)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--dir", default=None, help="data directory (default: a new temp dir)")
    args = p.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args)))


if __name__ == "__main__":
    cli()
