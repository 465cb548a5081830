"""Lookup throughput of mxd's resolver against the DNSSEC lab's unbound, and dnspython's.

Starts the loopback lab (nsd + validating unbound, tests/integration/dnslab.py), then runs the
same A lookups with the same concurrency through:

* mxd ``Resolver`` with its cache off (every lookup is a UDP exchange with unbound, whose own
  cache answers) and with its cache on (all hits after the first);
* dnspython's ``dns.asyncresolver.Resolver`` (asyncio) without and with its LRU cache.

Prints lookups/s and the mxd/dnspython ratios. Usage:
    .venv/bin/python bench/dns_lookup.py [--lookups N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAME = "mx.example.test"


def bench_mxd(lab: Any, lookups: int, concurrency: int, cache: bool) -> float:
    from twisted.internet.defer import DeferredList
    from twisted.internet.epollreactor import EPollReactor

    from mxd.dns.resolver import Resolver
    from mxd.dns.testing import run_with_reactor

    async def go(reactor: Any) -> float:
        settings = lab.resolver_settings(cache_size=10000 if cache else 0)
        resolver = Resolver(reactor, settings)
        answer = await resolver.lookup_a(NAME)  # warm unbound (and our cache)
        assert answer.authentic
        remaining = lookups

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await resolver.lookup_a(NAME)

        from twisted.internet.defer import Deferred

        start = time.perf_counter()
        await DeferredList([Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
                           fireOnOneErrback=True, consumeErrors=True)
        return lookups / (time.perf_counter() - start)

    return run_with_reactor(go, timeout=600, reactor_factory=EPollReactor)


def bench_dnspython(lab: Any, lookups: int, concurrency: int, cache: bool) -> float:
    import dns.asyncresolver
    import dns.flags
    import dns.resolver

    host, port = lab.resolver_address

    async def go() -> float:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [host]
        r.port = port
        r.timeout = 2.0
        r.lifetime = 5.0
        r.use_edns(0, 0, 1232)
        r.flags = dns.flags.RD | dns.flags.AD
        if cache:
            r.cache = dns.resolver.LRUCache(10000)
        answer = await r.resolve(NAME, "A")
        assert answer.response.flags & dns.flags.AD
        remaining = lookups

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await r.resolve(NAME, "A")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lookups / (time.perf_counter() - start)

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from tests.integration.dnslab import DNSLab

    with tempfile.TemporaryDirectory() as tmp, DNSLab(tmp) as lab:
        lab.start()
        n, c = args.lookups, args.concurrency
        print(f"{n} A lookups of {NAME}, {c} concurrent, against unbound at "
              f"{lab.resolver_address[0]}:{lab.resolver_address[1]}")
        runs: dict[str, list[float]] = {}
        configs = [
            ("mxd uncached", bench_mxd, False),
            ("dnspython uncached", bench_dnspython, False),
            ("mxd cached", bench_mxd, True),
            ("dnspython cached", bench_dnspython, True),
        ]
        for _round in range(args.rounds):  # interleaved, so machine noise hits both alike
            for label, fn, cache in configs:
                runs.setdefault(label, []).append(fn(lab, n, c, cache))
        results = {label: statistics.median(v) for label, v in runs.items()}
        for label, value in results.items():
            print(f"  {label:20s} {value:10.0f} lookups/s (median of {args.rounds})")
        print(f"ratio mxd/dnspython uncached: "
              f"{results['mxd uncached'] / results['dnspython uncached']:.2f}")
        print(f"ratio mxd/dnspython cached:   "
              f"{results['mxd cached'] / results['dnspython cached']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
