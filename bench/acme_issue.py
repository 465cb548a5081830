"""Time to obtain one certificate with ACME: mxd's client against certbot, same pebble.

Both order a certificate for a fresh name (n1.example.test, n2.example.test, ...) from one
pebble (Debian package; validation sleeps off, authorization reuse off) that resolves the
names through the loopback DNSSEC lab, and both answer HTTP-01 on pebble's HTTP port:

* mxd: ``mxd.acme.client.ACMEClient.order`` (the code ``twistd mxd`` runs in its thread
  pool) for the ECDSA P-256 host key, answering from mxd's http listener site
  (``mxd.wellknown.PlainSite``) on a reactor thread; the account is registered once before
  the timed rounds, as a running server has it.
* certbot: ``certbot certonly --standalone`` (Debian package), one process per certificate
  as cron or a systemd timer runs it, with an ECDSA key and its account registered before
  the timed rounds.

Rounds are interleaved (mxd, certbot, mxd, ...) and the medians compared.  The machine is
shared and loaded by other work: compare the ratio, not the absolute times.

Usage: ``.venv/bin/python bench/acme_issue.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # for tests.integration.* (bench/ itself stays off sys.path)

    from twisted.internet import reactor

    from mxd import hostkeys
    from mxd.acme.client import ACMEClient, ACMESettings
    from mxd.acme.service import StoreProvisioner
    from mxd.certs import CertStore
    from mxd.hostkeys import KeyKind
    from mxd.wellknown import HTTP01Responder, PlainSite, site
    from tests.integration.dnslab import DNSLab, ZoneSpec
    from tests.integration.pebblelab import Pebble
    from tests.integration.tools import free_port

    certbot = shutil.which("certbot")
    names = [f"n{i}.example.test" for i in range(2 * args.rounds + 2)]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        lab = DNSLab(tmp / "lab")
        lab.start({"example.test": ZoneSpec(records=[f"{n.split('.')[0]} A 127.0.0.1"
                                                      for n in names])})
        http_port = free_port()
        pebble = Pebble(tmp, lab, http_port, free_port(), 7776000)
        try:
            keys = hostkeys.ensure(tmp / "keys")
            ec_key = next(k for k in keys if k.kind is KeyKind.ECDSAP256)
            store = CertStore(names, [ec_key], None)
            responder = HTTP01Responder()
            r: Any = reactor
            r.listenTCP(http_port, site(PlainSite(responder)), interface="127.0.0.1")
            thread = threading.Thread(target=r.run, kwargs={"installSignalHandlers": False},
                                      daemon=True)
            thread.start()
            client = ACMEClient(ACMESettings(directory_url=pebble.directory,
                                             state_dir=tmp / "acme", ca_file=pebble.ca_file,
                                             challenges=("http-01",)))
            provisioner = StoreProvisioner(store, responder)
            env = dict(os.environ, REQUESTS_CA_BUNDLE=str(pebble.ca_file))
            cb = ["--config-dir", str(tmp / "cb"), "--work-dir", str(tmp / "cbw"),
                  "--logs-dir", str(tmp / "cbl"), "--server", pebble.directory,
                  "--non-interactive", "--agree-tos", "-m", "bench@example.test"]

            def mxd_once(name: str) -> float:
                t0 = time.perf_counter()
                client.order(name, ec_key, provisioner)
                return time.perf_counter() - t0

            def certbot_once(name: str) -> float:
                assert certbot is not None
                t0 = time.perf_counter()
                subprocess.run([certbot, "certonly", "--standalone", "--preferred-challenges",
                                "http", "--http-01-port", str(http_port), "--http-01-address",
                                "127.0.0.1", "--key-type", "ecdsa", "-d", name, *cb],
                               check=True, capture_output=True, env=env, timeout=120)
                return time.perf_counter() - t0

            mxd_once(names.pop())  # registers the account (not timed)
            runs: dict[str, list[float]] = {"mxd": [], "certbot": []}
            if certbot is not None:
                # certbot --standalone binds the HTTP-01 port itself: give it the port while
                # it runs by pausing mxd's listener.
                subprocess.run([certbot, "register", *cb], check=True, capture_output=True,
                               env=env, timeout=120)
            for _ in range(args.rounds):
                runs["mxd"].append(mxd_once(names.pop()))
                if certbot is not None:
                    _pause(r, True)
                    try:
                        runs["certbot"].append(certbot_once(names.pop()))
                    finally:
                        _pause(r, False)
            print(f"one certificate (HTTP-01, ECDSA P-256) from pebble, {args.rounds} "
                  "interleaved rounds, machine shared with other work")
            med = {k: statistics.median(v) for k, v in runs.items() if v}
            for k, v in med.items():
                print(f"  {k:8s} {v * 1000:8.0f} ms per certificate (median)")
            if "certbot" in med:
                print(f"ratio certbot/mxd time: {med['certbot'] / med['mxd']:.2f}")
            else:
                print("certbot is not installed: only mxd was measured")
        finally:
            pebble.stop()
            lab.stop()
            r.callFromThread(r.stop)
    return 0


def _pause(reactor: Any, pause: bool) -> None:
    """Stop (or resume) listening on every TCP port of the reactor thread, and wait."""
    done = threading.Event()

    def act() -> None:
        from twisted.internet.defer import DeferredList

        stopped = []
        for p in list(reactor.getReaders()):
            if hasattr(p, "stopListening") and pause:
                _paused.append((p.port, p.factory, p.interface))
                stopped.append(p.stopListening())
        if not pause:
            while _paused:
                port, factory, interface = _paused.pop()
                reactor.listenTCP(port, factory, interface=interface)
        DeferredList(stopped).addBoth(lambda _: done.set())  # the socket is closed

    reactor.callFromThread(act)
    if not done.wait(10):
        raise RuntimeError("the reactor did not stop listening")


_paused: list[tuple[int, Any, str]] = []


if __name__ == "__main__":
    sys.exit(main())
