"""Store delivery throughput on both backends: SQLite (WAL, synchronous=FULL, group commit)
against PostgreSQL (a private cluster with fsync and synchronous_commit on, psycopg pool of
8), 10 KiB messages to one mailbox (or spread over --mailboxes N), bodies fsynced as files
in both.

    .venv/bin/python bench/store_backends.py [--count N] [--rounds R] [--concurrency 1,8,32]
                                              [--mailboxes N] [--baseline-root DIR]

For each concurrency level (deliveries in flight, like SMTP sessions finishing DATA at
once), the backends run in interleaved rounds; the medians of deliveries/s are printed
with the ratio PostgreSQL / SQLite.  ``--baseline-root DIR`` (a checkout of an older
tree) adds a third contender in the same rounds: the PostgreSQL store running its
operations with DIR's mxd/store/pgconn.py (how they are run: transactions, commits),
everything else as here.  Needs initdb and pg_ctl (Debian postgresql); as root
PostgreSQL runs as nobody.  The machine may be shared: run it when it is quiet, and read
the ratio rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
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

from mxd.store.interfaces import Delivery, MessageProps  # noqa: E402
from mxd.store.postgres import PostgresSettings, PostgresStore  # noqa: E402
from mxd.store.sqlite import SQLiteStore  # noqa: E402
from tests.integration.pglab import PGCluster, _find  # noqa: E402

BODY = (b"Subject: bench\r\n\r\n" + os.urandom(10 * 1024).hex().encode())[: 10 * 1024]


async def one(store: Any, count: int, concurrency: int, mailboxes: int) -> float:
    await store.open()
    accts = [await store.add_account(f"bench{i}", "{}") for i in range(mailboxes)]
    remaining = [count]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            w = store.new_blob()
            w.write(BODY)
            acct = accts[remaining[0] % len(accts)]
            await store.deliver(w, [Delivery(acct.id)], MessageProps())

    start = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker())
                               for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    await store.close()
    return count / elapsed


def baseline_runner(root: Path) -> Any:
    """The ``PGRunner`` class of the tree at ``root``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mxd_baseline_pgconn", root / "mxd" / "store" / "pgconn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PGRunner


def with_runner(store: PostgresStore, runner_cls: Any, reactor: Any) -> PostgresStore:
    """``store`` running its operations with ``runner_cls`` instead of its own."""
    old = store._runner
    runner = runner_cls(reactor, old._threads, store._files)
    runner.on_changes, runner.keep_bodies, runner.publish = (
        old.on_changes, old.keep_bodies, old.publish)
    store._runner = store._writer = runner  # type: ignore[assignment]
    return store


async def main(reactor: Any, args: argparse.Namespace) -> None:
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise SystemExit("initdb/pg_ctl not found (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="mxd-bench-pg-"))
    cluster = PGCluster(initdb, pg_ctl, base, durable=True)
    work = Path(tempfile.mkdtemp(prefix="mxd-bench-store-"))
    try:
        print(f"{args.count} deliveries of 10 KiB per run to {args.mailboxes} mailbox(es), "
              f"{args.rounds} interleaved rounds, medians (machine shared with others: "
              "compare the ratio)")
        base = baseline_runner(Path(args.baseline_root)) if args.baseline_root else None
        for c in (int(x) for x in args.concurrency.split(",")):
            rates: dict[str, list[float]] = {"sqlite": [], "postgresql": [], "baseline": []}
            for r in range(args.rounds):
                if base is not None:
                    blobs = work / f"base-{c}-{r}"
                    blobs.mkdir()
                    pg = with_runner(PostgresStore(
                        cluster.create_database("bench"), blobs, reactor,
                        pg=PostgresSettings(pool_size=8, listen=False)), base, reactor)
                    rates["baseline"].append(await one(pg, args.count, c, args.mailboxes))
                d = work / f"sqlite-{c}-{r}"
                d.mkdir()
                rates["sqlite"].append(await one(SQLiteStore(d, reactor), args.count, c,
                                                 args.mailboxes))
                dsn = cluster.create_database("bench")
                blobs = work / f"pg-{c}-{r}"
                blobs.mkdir()
                pg = PostgresStore(dsn, blobs, reactor, pg=PostgresSettings(pool_size=8,
                                                                             listen=False))
                rates["postgresql"].append(await one(pg, args.count, c, args.mailboxes))
            s, p = statistics.median(rates["sqlite"]), statistics.median(rates["postgresql"])
            line = (f"concurrency {c:3d}: sqlite {s:7.0f}/s  postgresql {p:7.0f}/s  "
                    f"postgresql/sqlite {p / s:.2f}")
            if rates["baseline"]:
                b = statistics.median(rates["baseline"])
                line += f"  |  baseline postgresql {b:7.0f}/s  postgresql/baseline {p / b:.2f}"
            print(line)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--mailboxes", type=int, default=1,
                    help="spread deliveries over this many accounts' INBOXes (1: one "
                    "mailbox, whose row lock serialises PostgreSQL transactions)")
    ap.add_argument("--baseline-root", default=None,
                    help="also run the PostgreSQL store with this older tree's "
                    "mxd/store/pgconn.py, in the same rounds")
    args = ap.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args)))
