"""``mxd dns check DOMAIN``: wires the checker (``mxd.dnscheck``) from a config."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mxd.config import Config, normalise_domain


def checker_for(cfg: Config, domain: str, resolver: Any, reactor: Any,
                ca_file: str | None = None) -> Any:
    """The DNS checker of ``domain`` (``mxd.dnscheck.Checker``) with what this config
    serves: the CLI and the admin web's domains page both use it.  Reads key files."""
    from mxd.certs import CertStore, names_for
    from mxd.dane_inbound import served_chains
    from mxd.dnscheck import Checker
    from mxd.hostkeys import load_all
    from mxd.recordsconfig import acme_dir, record_inputs, sts_policy

    inputs = record_inputs(cfg, domain)
    hostname = normalise_domain(cfg.hostname)
    served: list[tuple[str, list[bytes]]] = []
    if cfg.tls.host_keys:
        store = CertStore(names_for(hostname, [normalise_domain(d) for d in cfg.domains.names]),
                          load_all(cfg.tls.host_keys), acme_dir(cfg) / "certs")
        served = served_chains(store, hostname)
    elif cfg.tls.cert is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        from mxd.certs import parse_pem_chain

        chain = parse_pem_chain(Path(cfg.tls.cert).read_bytes())
        served = [("configured", [c.public_bytes(Encoding.DER) for c in chain])]
    fetch = _fetcher(cfg, resolver, reactor, ca_file)
    return Checker(resolver, inputs, served, fetch,
                   sts_policy_text=sts_policy(cfg).to_text(), acme=cfg.acme.enabled)


def run_check(cfg: Config, domain: str, *, as_json: bool, ca_file: str | None,
              run: Callable[[Callable[[Any], Any]], Any]) -> int:
    from twisted.internet import defer

    from mxd import components
    from mxd.dnscheck import exit_status
    from mxd.metrics import NoopMetrics

    async def main(reactor: Any) -> list[Any]:
        resolver = components.make_resolver(cfg, reactor, NoopMetrics())
        checker = checker_for(cfg, domain, resolver, reactor, ca_file)
        return list(await checker.run())

    results = run(lambda reactor: defer.ensureDeferred(main(reactor)))
    if as_json:
        json.dump({"domain": domain, "results": [r.as_dict() for r in results],
                   "errors": sum(r.status.value == "ERROR" for r in results)},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(r.line())
    return exit_status(results)


def _fetcher(cfg: Config, resolver: Any, reactor: Any, ca_file: str | None) -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding
    from twisted.internet import ssl

    from mxd.mtasts.fetch import FetchSettings, PolicyFetcher
    from mxd.mtasts.webpki import load_roots

    path = ca_file or cfg.outbound.ca_file
    trust_root = None
    if path is not None:
        roots = load_roots(str(path))
        trust_root = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in roots])
    fetcher = PolicyFetcher(reactor, resolver, FetchSettings(
        timeout=min(cfg.outbound.mta_sts_fetch_timeout, 20.0),
        port=cfg.outbound.mta_sts_port, trust_root=trust_root))

    async def fetch(domain: str) -> str:
        fetched = await fetcher.fetch(domain)
        return str(fetched.text)

    return fetch
