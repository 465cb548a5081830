"""A stand-alone IMAP server process for the IMAP integration tests and bench/imap.py.

With ``IMAP_HARNESS_SMTP_PORT`` set it also listens for inbound SMTP there (the SMTP
server of ``mxd.smtp.service``), delivering into the same store.

Runs ``mxd.imap.server.imap_factory`` with the real SQLite store, the real SASL server and
TLS from ``mxd.tls`` on loopback: port ``imap`` (STARTTLS), ``imaps`` (implicit TLS) and
``imap_tls12`` (STARTTLS capped at TLS 1.2, for tls-unique).  It writes ``ready`` into
the data directory once listening.  Used until the composition layer wires IMAP into
``twistd mxd``.

    python -m tests.integration._imap_harness DATA_DIR CERT KEY PORT_IMAP PORT_IMAPS PORT_TLS12 USER PASSWORD
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred


def main(argv: list[str]) -> None:
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from mxd.imap.server import IMAPServerSettings, IMAPShared, imap_factory
    from mxd.sasl.credentials import StoredSecrets
    from mxd.sasl.ratelimit import AuthLimiter
    from mxd.sasl.server import SASLServer, SASLSettings
    from mxd.store.sqlite import SQLiteStore
    from mxd.tls import TLSSettings, load_server_tls

    reactor: Any = _reactor
    data, cert, key, p_imap, p_imaps, p_tls12, user, password = argv[:8]
    users = [(user, password)]
    if len(argv) >= 10:
        users.append((argv[8], argv[9]))
    data_dir = Path(data)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(data_dir / "server.log", "a"))],
                                     redirectStandardIO=False)
    store = SQLiteStore(data_dir, reactor)

    def lookup(name: str) -> Deferred[StoredSecrets | None]:
        return store.get_secrets(name).addCallback(
            lambda t: StoredSecrets.from_text(t) if t else None)

    sasl = SASLServer(lookup, SASLSettings(), AuthLimiter(reactor), reactor, "localhost")
    tls = load_server_tls(TLSSettings(Path(cert), Path(key)))
    tls12 = load_server_tls(TLSSettings(Path(cert), Path(key), max_version="TLSv1.2"))
    settings = IMAPServerSettings(max_connections_per_ip=100_000)  # bench: 1,000 from loopback

    smtp_port = int(os.environ.get("IMAP_HARNESS_SMTP_PORT", "0"))

    async def start() -> None:
        await store.open()
        for name, pw in users:
            if await store.get_account(name) is None:
                await store.add_account(name, StoredSecrets.derive(pw, iterations=4096).to_text(),
                                        [name] if "@" in name else [])
        if smtp_port:
            # Inbound SMTP delivering into the same store, for "IDLE sees a delivery".
            from mxd.directory.local import DirectorySettings, LocalDirectory
            from mxd.smtp.server import SMTPServerSettings
            from mxd.smtp.service import smtp_factory

            directory = LocalDirectory(store, DirectorySettings(domains=("example.test",)))
            reactor.listenTCP(smtp_port, smtp_factory(
                role="smtp", settings=SMTPServerSettings(), store=store, directory=directory,
                sasl=None, outbound=None, tls=tls, clock=reactor, hostname="localhost"),
                interface="127.0.0.1")
        common = dict(settings=settings, store=store, accounts=store, sasl=sasl, clock=reactor,
                      hostname="localhost", shared=IMAPShared())
        reactor.listenTCP(int(p_imap), imap_factory(implicit_tls=False, tls=tls, **common),
                          interface="127.0.0.1")
        reactor.listenTCP(int(p_imaps), imap_factory(implicit_tls=True, tls=tls, **common),
                          interface="127.0.0.1")
        reactor.listenTCP(int(p_tls12), imap_factory(implicit_tls=False, tls=tls12, **common),
                          interface="127.0.0.1", backlog=1024)
        (data_dir / "ready").write_text("ok")

    def failed(f: Any) -> None:
        print(f.getTraceback(), file=sys.stderr)
        reactor.stop()

    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    Deferred.fromCoroutine(start()).addErrback(failed)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
