"""Run mxd's real QueueRunner (real store, real reactor, real sockets) with transports and
routes, queue messages, and wait until a condition holds; used by the transport tests
against real proxies, Postfix and a second `twistd mxd`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.task import deferLater

from mxd.dns.resolver import Nameserver, Resolver, ResolverSettings
from mxd.queue.queue import Queue
from mxd.queue.routes import Route, RouteTable, Transport
from mxd.queue.runner import QueueRunner, QueueSettings
from mxd.store import queuedb as qs
from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from mxd.store.queuedb import QUEUE_MIGRATIONS
from mxd.store.sqlite import SQLiteStore
from mxd.store.sqlitequeue import SQLiteQueueStore
from tests.integration.test_queue_delivery import run
from tests.integration.tools import (
    STARTUP_TIMEOUT,
    free_port,
    in_ci,
    postfix_main_cf,
    postfix_master_cf,
    require_tool,
)


@attrs.define
class Outcome:
    attempts: dict[str, list[qs.AttemptRecord]]  # queue id -> its attempts
    left: list[qs.QueuedMessage]


def trust_root(ca_pem: Path) -> Any:
    from twisted.internet.ssl import Certificate

    return Certificate.loadPEM(ca_pem.read_bytes())


def deliver(monkeypatch: pytest.MonkeyPatch, data_dir: Path, transports: tuple[Transport, ...],
            messages: list[tuple[str, list[str], dict[str, Any]]], done: Callable[[], bool],
            *, resolver: ResolverSettings | None = None, port: int = 25, trust: Any = None,
            routes: tuple[Route, ...] | None = None, wait: float = 20.0,
            policy: bool = False) -> Outcome:
    """Queue ``messages`` ((sender, recipients, OutboundMessage kwargs)) and run the runner
    until ``done()`` (or ``wait`` seconds); every recipient goes through the first
    transport unless ``routes`` say otherwise."""

    async def go(reactor: Any) -> Outcome:
        store = SQLiteStore(data_dir, reactor)
        store.register_schema("queue", QUEUE_MIGRATIONS)
        await store.open()
        try:
            res = Resolver(reactor, resolver or ResolverSettings(
                nameservers=(Nameserver("127.0.0.1", 1),), timeout=0.5, attempts=1))
            table = RouteTable(global_routes=routes if routes is not None else (
                Route(transports[0].name, to_domains=("*",)),))
            factory = None
            if policy:
                from mxd.queue import tlspolicy

                factory = tlspolicy.make_policy_factory(res, None, reactor)
            queue = Queue(SQLiteQueueStore(store), reactor)
            runner = QueueRunner(
                queue, res, reactor,
                QueueSettings(port=port, route_table=table, transports=transports,
                              smarthost_trust=trust, connect_timeout=10.0),
                hostname="mx.example.org", tls_policy_factory=factory)
            runner.startService()
            ids = []
            for sender, rcpts, kw in messages:
                w = store.new_blob()
                w.write(kw.pop("data", None) or (
                    f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: transport test\r\n"
                    f"Message-ID: <{len(ids)}.{time.time()}@example.org>\r\n\r\nhello\r\n"
                ).encode())
                ids.append(await queue.enqueue(w, OutboundMessage(
                    sender, tuple(OutboundRecipient(r) for r in rcpts), **kw)))
            deadline = reactor.seconds() + wait
            while not done() and reactor.seconds() < deadline:
                await deferLater(reactor, 0.05, lambda: None)
            while runner.in_flight and reactor.seconds() < deadline + 5:
                await deferLater(reactor, 0.05, lambda: None)  # let results be recorded
            attempts = {}
            for qid in ids:
                attempts[qid] = await store.transact(lambda c, q=qid: qs.attempts_for(c, q))
            left = await queue.list()
            await runner.stopService()
            return Outcome(attempts, left)
        finally:
            await store.close()

    return run(go, monkeypatch, timeout=wait + 40)  # type: ignore[no-any-return]


# -- Postfix as a relay ------------------------------------------------------------------

RELAY_SETTINGS = """relay_domains = remote.test
relayhost = [127.0.0.1]:{sink}
smtp_tls_security_level = may
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
"""


class PostfixRelay:
    """A throwaway Postfix on a loopback port that relays remote.test to ``sink_port``,
    offering STARTTLS with ``cert``/``key``."""

    def __init__(self, base: Path, sink_port: int, cert: Path, key: Path) -> None:
        if os.geteuid() != 0:
            msg = "Postfix's master must start as root"
            if in_ci():
                pytest.fail(msg)
            pytest.skip(msg)
        require_tool("postfix")
        # Postfix's daemons run as "postfix", who cannot enter pytest's 0700 temp dirs.
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="mxd-postfix-"))
        self.base = base
        os.chmod(base, 0o755)
        self.conf = base / "postfix"
        self.conf.mkdir()
        q, d = base / "pfqueue", base / "pfdata"
        q.mkdir()
        d.mkdir()
        for x in (self.conf, q):
            os.chmod(x, 0o755)  # whatever the umask: postfix's daemons must enter them
        shutil.chown(d, "postfix")
        self.log = base / "postfix.log"
        shutil.copy(cert, self.conf / "cert.pem")
        shutil.copy(key, self.conf / "key.pem")
        os.chmod(self.conf / "key.pem", 0o600)
        self.port = free_port()
        (self.conf / "main.cf").write_text(postfix_main_cf(
            q, d, self.log, "relay.example.net", RELAY_SETTINGS.format(
                sink=sink_port, cert=self.conf / "cert.pem", key=self.conf / "key.pem")))
        (self.conf / "master.cf").write_text(postfix_master_cf(self.port))
        self.env = dict(os.environ, MAIL_CONFIG=str(self.conf))

    def __enter__(self) -> PostfixRelay:
        r = subprocess.run(["/usr/sbin/postfix", "-c", str(self.conf), "start"], env=self.env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stderr.strip()}")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("Postfix smtpd did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["/usr/sbin/postfix", "-c", str(self.conf), "stop"], env=self.env,
                       capture_output=True)
        self.saved_log = self.log_text()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self) -> str:
        if self.log.exists():
            return self.log.read_text(errors="replace")
        return getattr(self, "saved_log", "")


def self_signed(base: Path, name: str = "relay.example.net") -> tuple[Path, Path]:
    """A self-signed certificate (not from any CA the client trusts)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_p, key_p = base / "selfsigned.pem", base / "selfsigned.key"
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cert_p, key_p
