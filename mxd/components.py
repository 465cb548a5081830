"""Building each component from the config (part of the composition layer, with tap.py).

Kept apart from tap.py so that ``mxd localserve``, ``mxd serve`` and the CLI's
account/queue commands build the very same objects as ``twistd mxd``.
"""

from __future__ import annotations

import functools
import hmac
import os
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from mxd.config import Config, ConfigError, ListenerConfig, normalise_domain
from mxd.metrics import IMetrics
from mxd.store.interfaces import AccountExists
from mxd.tls import TLSSettings

log = Logger(namespace="mxd.components")


class StoreService(service.Service):
    """Opens the store at start-up and closes it last at shutdown."""

    name = "store"

    def __init__(self, store: Any, on_open: list[Any], reactor: Any) -> None:
        self.store = store
        self._reactor = reactor
        self._on_open = on_open
        self.opened: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        d = self.store.open()
        for step in self._on_open:
            d.addCallback(lambda _, step=step: step())
        d.addErrback(self._failed)
        self.opened = d

    def _failed(self, f: Any) -> None:
        """Without its store the server cannot accept mail: stop, and exit with status 1
        (twistd itself has no way to report a failure found after start-up).  A stop that
        came first (Ctrl-C during start-up) closed the store under the open: that is a
        clean stop, not a broken store."""
        if not self.running:
            log.info("start-up interrupted by a stop; the store was closed before it was "
                     "ready ({error})", error=f.getErrorMessage())
            return
        log.failure("cannot open the store in {data_dir}", f,
                    data_dir=str(getattr(self.store, "data_dir", "?")))
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self._reactor.stop()

    def stopService(self) -> Any:
        super().stopService()
        return self.store.close()


def freeze_heap() -> None:
    """Move every object alive now into the collector's permanent generation.

    Called once start-up work is done (configuration, imports, the Public Suffix List's
    tens of thousands of entries): these objects live as long as the process, and without
    this every full collection walks them again — a steady per-message CPU cost that grows
    with the size of the start-up heap.  Objects created later are collected as usual."""
    import gc

    gc.freeze()


def make_store(cfg: Config, reactor: Any, *, shared: bool = False) -> Any:
    """The configured store; ``shared``: other server processes use it too (workers)."""
    from mxd.store.sqlite import SQLiteStore, StoreSettings

    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    shared = shared or cfg.store.backend == "postgresql"
    settings = StoreSettings(quota_bytes=cfg.store.quota_bytes or None,
                             # Other processes' sessions still showing an expunged
                             # message pin its body within this time (mxd.store.blobs
                             # "Pins"; they hear of it within 0.2 s, or at once by
                             # PostgreSQL NOTIFY): generous, as a loaded worker lags.
                             unlink_grace=cfg.store.expunged_body_grace if shared else 0.0)
    store: Any
    if cfg.store.backend == "postgresql":
        from mxd.store.orphans import SweepSettings
        from mxd.store.postgres import (
            BlobDirError,
            PostgresSettings,
            PostgresStore,
            check_blob_dir,
        )

        assert cfg.store.blob_dir is not None  # the config check requires it
        # Refused before any port is bound: a node that cannot write bodies must not start.
        try:
            check_blob_dir(cfg.store.blob_dir)
        except BlobDirError as e:
            raise ConfigError(cfg.source, "store.blob_dir", str(e)) from None
        store = PostgresStore(cfg.store.dsn, cfg.store.blob_dir, reactor, settings=settings,
                              pg=PostgresSettings(pool_size=cfg.store.pool_size,
                                                  connect_timeout=cfg.store.connect_timeout,
                                                  sweep=SweepSettings(
                                                      interval=cfg.store.orphan_sweep_interval,
                                                      min_age=cfg.store.orphan_min_age,
                                                      hold_off=cfg.store.orphan_hold_off)))
    else:
        store = SQLiteStore(cfg.data_dir, reactor, settings=settings)
    register_derivers(store)
    return store


def register_derivers(store: Any) -> None:
    """Everything the server stores with each new message (derived data, see the
    ``mxd.store.interfaces`` docstring); a tool that fills a store for the server (a
    benchmark, an import) calls it too, or the server backfills at start."""
    from mxd.imap import preview, summary

    summary.register(store)  # IMAP's ENVELOPE and SORT/THREAD keys
    preview.register(store)  # and its PREVIEW (RFC 8970)


BACKFILL_BATCH = 64
BACKFILL_PAUSE = 0.02  # seconds between batches, so the store's other work goes first


def start_backfill(store: Any, reactor: Any) -> Deferred[int]:
    """Compute the derived data of bodies stored before their deriver was registered (a
    store from an older mxd) in batches, in the background after start-up; fires with
    the number of bodies done.  Never delays the start, never runs on the reactor."""
    from twisted.internet.task import deferLater

    from mxd.store.writer import StoreClosed

    total = 0

    async def run() -> int:
        nonlocal total
        while True:
            n = await store.backfill_derived(BACKFILL_BATCH)
            total += n
            if not n:
                if total:
                    log.info("derived data computed for {n} stored messages", n=total)
                return total
            await deferLater(reactor, BACKFILL_PAUSE, lambda: None)

    def failed(f: Any) -> int:
        if not f.check(StoreClosed):
            log.failure("computing derived data of stored messages failed", f)
        return total

    return Deferred.fromCoroutine(run()).addErrback(failed)


def make_directory(cfg: Config, store: Any, reactor: Any, metrics: IMetrics | None = None) -> Any:
    from mxd.directory.local import DirectorySettings, LocalDirectory

    settings = DirectorySettings(
        domains=tuple(normalise_domain(d) for d in cfg.domains.names),
        localpart_separator=cfg.domains.localpart_separator or None,
        catchall={normalise_domain(d): a for d, a in cfg.domains.catchall.items()},
        scram_iterations=cfg.auth.scram_iterations,
        cram_md5=cfg.auth.cram_md5,
        postmaster=cfg.domains.postmaster or None,
    )
    if cfg.directory.backend == "ldap":
        return make_ldap_directory(cfg, settings, store, reactor, metrics)
    # With the reactor, password hashing (PBKDF2 + scrypt) runs on its thread pool.
    return LocalDirectory(store, settings, reactor=reactor)


def make_ldap_directory(cfg: Config, settings: Any, store: Any, reactor: Any,
                        metrics: IMetrics | None = None) -> Any:
    """The LDAP directory with its client and bounded worker pool (stopped at shutdown)."""
    import attrs

    from mxd.directory import ldap
    from mxd.directory.ldapclient import ClientSettings, LDAPClient

    lc = cfg.ldap
    password = ""
    if lc.bind_password_file is not None:
        lines = lc.bind_password_file.read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
    client = LDAPClient(ClientSettings(
        uris=tuple(lc.uris), starttls=lc.starttls, ca_file=lc.ca_file,
        allow_plaintext=lc.allow_plaintext_on_loopback, bind_dn=lc.bind_dn,
        bind_password=password, pool_size=lc.pool_size, timeout=lc.timeout))
    pool = ldap.make_threadpool(lc.pool_size)
    pool.start()

    def stop() -> None:
        pool.stop()
        client.close()

    reactor.addSystemEventTrigger("during", "shutdown", stop)
    return ldap.LDAPDirectory(client, ldap.settings_from_values(attrs.asdict(lc)), settings,
                              store, reactor, ldap.in_threadpool(reactor, pool),
                              metrics=metrics)


async def open_store_and_directory(cfg: Config, reactor: Any) -> tuple[Any, Any]:
    """For CLI commands: an open store and its directory (caller closes the store)."""
    store = make_store(cfg, reactor)
    await store.open()
    return store, make_directory(cfg, store, reactor)


# The secrets text of an account created from the config: no password yet; no login works
# until `mxd account passwd` sets one (``StoredSecrets.from_text`` refuses it).
NO_PASSWORD = ""


async def sync_config_accounts(cfg: Config, store: Any) -> None:
    """Create accounts declared in the config that do not exist yet (without a password)
    and add their addresses; an account's password is set with `mxd account passwd`."""
    for a in cfg.accounts:
        acct = await store.get_account(a.name)
        if acct is None:
            try:
                await store.add_account(a.name, NO_PASSWORD)
            except AccountExists:
                pass  # another node sharing the database created it just now
            else:
                log.warn("account {account} from the config was created without a "
                         "password: set one with `mxd account passwd {account}`",
                         account=a.name)
        for addr in a.addresses:
            norm = addr.rsplit("@", 1)[0] + "@" + normalise_domain(addr.rsplit("@", 1)[1])
            owner = await store.account_for_address(norm)
            if owner is None:
                await store.add_address(a.name, norm)
            elif owner.name != a.name:
                log.error("address {address} is configured for {account} but belongs to "
                          "{owner}", address=norm, account=a.name, owner=owner.name)


def server_secret(cfg: Config) -> bytes:
    """32 random bytes kept in ``<data_dir>/server.key`` (mode 0600), created once.

    Derived keys (unknown users' fake SCRAM salts, which must not change across restarts
    or they would reveal that a user does not exist) come from it."""
    path = cfg.data_dir / "server.key"
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
    except FileNotFoundError:
        pass
    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = os.urandom(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return data


def auth_limiter_settings(cfg: Config) -> Any:
    """The login back-off of ``[auth]``, for the SASL and the admin API limiters alike."""
    from mxd.sasl.ratelimit import AuthLimiterSettings

    a = cfg.auth
    return AuthLimiterSettings(
        ip_free_failures=a.ip_free_failures, ip_base_delay=a.ip_base_delay,
        ip_max_delay=a.ip_max_delay, account_ip_free_failures=a.ip_free_failures,
        network_free_failures=a.network_free_failures,
        account_free_failures=a.account_free_failures,
        account_base_delay=a.account_base_delay, account_max_delay=a.account_max_delay,
        half_life=a.failure_half_life, trusted_for=a.trusted_for)


def make_sasl(cfg: Config, directory: Any, reactor: Any, metrics: IMetrics) -> Any:
    from mxd.sasl.hashpool import HashPool
    from mxd.sasl.ratelimit import AuthLimiter
    from mxd.sasl.server import SASLServer, SASLSettings

    mechanisms = tuple(cfg.auth.mechanisms)
    if cfg.directory.backend == "ldap":
        # No LDAP account has a CRAM-MD5 secret: offering it would only make clients
        # that prefer it fail (and count as failed logins).
        mechanisms = tuple(m for m in mechanisms if m != "CRAM-MD5")
    settings = SASLSettings(
        mechanisms=mechanisms,
        allow_plaintext_on_loopback=cfg.auth.allow_plaintext_on_loopback,
        fake_salt_key=hmac.new(server_secret(cfg), b"scram fake salt", "sha256").digest(),
        fake_scram_iterations=cfg.auth.scram_iterations,
        verified_cache_ttl=cfg.auth.login_cache_ttl,
    )
    limiter = AuthLimiter(reactor, auth_limiter_settings(cfg), metrics=metrics)
    # scrypt/PBKDF2 on a bounded pool of their own, never on the reactor thread.
    pool = HashPool(reactor, threads=cfg.auth.hash_threads or None,
                    max_pending=cfg.auth.hash_max_pending)
    pool.install()
    return SASLServer(directory.lookup_secrets, settings, limiter, reactor, cfg.hostname,
                      metrics=metrics, run_blocking=pool,
                      dummy_verify=getattr(directory, "dummy_verify", None),
                      normalise_user=getattr(directory, "login_key", None))


def make_resolver(cfg: Config, reactor: Any, metrics: IMetrics) -> Any:
    from mxd.dns.resolver import Resolver, settings_from_values

    settings = settings_from_values(
        cfg.resolver.nameservers, cfg.resolver.trusted, timeout=cfg.resolver.timeout,
        attempts=cfg.resolver.attempts, cache_size=cfg.resolver.cache_size)
    return Resolver(reactor, settings, metrics)


SYSTEM_CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")


def make_tls_policy_factory(cfg: Config, resolver: Any, reactor: Any, parent: Any) -> Any:
    """DANE and MTA-STS for the queue runner; the MTA-STS refresher joins ``parent``."""
    if not (cfg.outbound.dane or cfg.outbound.mta_sts):
        return None
    from cryptography.hazmat.primitives.serialization import Encoding
    from twisted.internet import ssl

    from mxd.mtasts.cache import JSONFilePolicyCache
    from mxd.mtasts.fetch import FetchSettings, PolicyFetcher
    from mxd.mtasts.refresh import RefreshSettings, STSRefresher
    from mxd.mtasts.resolve import STSResolver
    from mxd.mtasts.webpki import load_roots
    from mxd.queue.tlspolicy import make_policy_factory

    ca_file = cfg.outbound.ca_file or SYSTEM_CA_FILE
    try:
        roots = load_roots(str(ca_file))
    except (OSError, ValueError) as e:
        log.error("cannot read WebPKI roots from {ca_file}: {error}; MTA-STS enforce "
                  "domains will not get mail until this is fixed", ca_file=str(ca_file),
                  error=str(e))
        roots = ()
    sts = None
    if cfg.outbound.mta_sts:
        trust_root = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in roots]) if roots else None
        fetcher = PolicyFetcher(reactor, resolver, FetchSettings(
            timeout=cfg.outbound.mta_sts_fetch_timeout, port=cfg.outbound.mta_sts_port,
            trust_root=trust_root))
        cache = JSONFilePolicyCache(cfg.data_dir / "mta-sts-cache.json")
        sts = STSResolver(resolver, fetcher, cache, reactor)
        STSRefresher(sts, cache, reactor, RefreshSettings(
            interval=cfg.outbound.mta_sts_refresh_interval,
            refresh_before=cfg.outbound.mta_sts_refresh_before)).setServiceParent(parent)
    return make_policy_factory(resolver, sts, reactor, roots=roots)


def _smarthost_trust(cfg: Config) -> Any:
    """Trust root for smarthosts with tls = "verified": [outbound].ca_file, else None (the
    system store, ``platformTrust``)."""
    if cfg.outbound.ca_file is None or not any(
            t.tls == "verified" for t in cfg.transports.values()):
        return None
    from twisted.internet import ssl

    from mxd.mtasts.webpki import load_roots

    roots = load_roots(str(cfg.outbound.ca_file))
    from cryptography.hazmat.primitives.serialization import Encoding

    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in roots])


def make_queue_runner(cfg: Config, queue: Any, resolver: Any, store: Any, directory: Any,
                      reactor: Any, metrics: IMetrics, tls_policy_factory: Any = None,
                      sign: Any = None, dsn_recipient: Any = None,
                      lease_owner: str | None = None) -> Any:
    import attrs

    from mxd.queue.local import StoreLocalDelivery
    from mxd.queue.runner import QueueRunner, QueueSettings

    # RFC 5321 §5.1: never deliver to ourselves (an MX naming this host or its addresses).
    # An address is ours when our inbound SMTP listens there on the delivery port.
    own: set[str] = set()
    for li in cfg.listeners:
        if li.protocol == "smtp" and li.port == cfg.queue.smtp_port:
            own |= {"127.0.0.1", "::1"} if li.address in ("::", "0.0.0.0") else {li.address}
    own_addresses = frozenset(own)
    from mxd.config_transports import build_routes

    table, transports = build_routes(cfg)  # passwords are read here, before privileges drop
    for t in transports:
        where = f" {t.address[0]}:{t.address[1]}" if t.host else ""
        log.info("transport {name}: {kind}{where}{tls}", name=t.name, kind=t.kind.value,
                 where=where, tls=f" tls={t.tls.value}" if t.smarthost else "")
    n_routes = len(table.all_routes())
    if n_routes:
        log.info("{n} route(s): account, then sender domain, then global; first match wins",
                 n=n_routes)
    queue.transport_names = frozenset(t.name for t in transports)
    # With workers each runs a share of the server's limits ([queue] max_concurrent is
    # for the server): rounded up, so the total may exceed them by up to one per worker.
    share = cfg.server.worker_count() if lease_owner is not None else 1
    settings = attrs.evolve(QueueSettings(),
                            max_concurrent=-(-cfg.queue.max_concurrent // share),
                            max_per_domain=-(-cfg.queue.max_concurrent_per_domain // share),
                            port=cfg.queue.smtp_port,
                            own_names=frozenset({normalise_domain(cfg.hostname)}),
                            own_addresses=own_addresses, route_table=table,
                            transports=transports, smarthost_trust=_smarthost_trust(cfg),
                            lease=cfg.queue.lease, lease_owner=lease_owner,
                            recover_at_start=lease_owner is None)
    local = StoreLocalDelivery(store, directory=directory)
    return QueueRunner(queue, resolver, reactor, settings, local_delivery=local,
                       hostname=cfg.hostname, metrics=metrics, tls_policy_factory=tls_policy_factory,
                       sign=sign, dsn_recipient=dsn_recipient)


def make_queue_store(store: Any) -> Any:
    """The queue's IQueueStore over ``store`` (whichever backend it is)."""
    from mxd.store.postgres import PostgresQueueStore, PostgresStore
    from mxd.store.sqlitequeue import SQLiteQueueStore

    if isinstance(store, PostgresStore):
        return PostgresQueueStore(store)
    return SQLiteQueueStore(store)


def build(cfg: Config, reactor: Any, metrics: IMetrics, parent: Any,
          role: str = "single", lease_owner: str | None = None) -> dict[str, Any]:
    """Create the shared components; services among them are attached to ``parent``.

    Order matters: the store service starts first (and stops last), then the queue
    runner; listeners are added after these by tap.build_service.

    ``role`` (mxd.tap.ProcessRole.kind): with workers, the ``main`` process runs ACME,
    the inbound DANE check and the daily report senders but no queue runner; each
    ``worker`` runs a queue runner (the queue's leases let several claim work, each
    message once) and none of the once-per-server services."""
    from mxd.queue.queue import Queue
    from mxd.store.metadata import MetadataLimits, SQLiteMetadata

    store = make_store(cfg, reactor, shared=role != "single")
    metadata = SQLiteMetadata(store, MetadataLimits(  # RFC 5464, in the store's database
        max_entry_size=cfg.imap.metadata_max_value, max_entries=cfg.imap.metadata_max_entries,
        max_total=cfg.imap.metadata_max_total))
    directory = make_directory(cfg, store, reactor, metrics)

    def sync() -> Deferred[None]:
        return Deferred.fromCoroutine(sync_config_accounts(cfg, store))

    def backfill() -> None:
        start_backfill(store, reactor)  # not waited for: runs while the server serves

    on_open: list[Any] = [sync, backfill]
    store_service = StoreService(store, on_open, reactor)
    store_service.setServiceParent(parent)
    sasl = make_sasl(cfg, directory, reactor, metrics)
    queue = Queue(make_queue_store(store), reactor, metrics)
    if hasattr(store, "on_queue_work"):  # PostgreSQL: work queued by another node
        store.on_queue_work = queue.wake
    if role == "main":
        # The queue runners are in the workers, which start after this: what a crash
        # left in flight is put back here, once, before any of them claims work.
        def recover() -> Deferred[None]:
            d = queue.store.recover_inflight(reactor.seconds())

            def done(n: int) -> None:
                if n:
                    log.warn("{n} recipient(s) were in flight at the last stop; retrying "
                             "them", n=n)

            return d.addCallback(done)

        on_open.append(recover)
    if role != "worker" and hasattr(store, "sweep_orphans"):
        # PostgreSQL: bodies on the shared directory that no node references any more
        # (a node killed between a body's fsync and its commit), one node at a time.
        from twisted.application.internet import TimerService

        sweeper = TimerService(store.sweep_interval, store.sweep_orphans)
        sweeper.clock = reactor
        sweeper.setServiceParent(parent)
    resolver = make_resolver(cfg, reactor, metrics)
    comps = {"store": store, "store_service": store_service, "directory": directory,
             "sasl": sasl, "queue": queue, "resolver": resolver, "metadata": metadata}
    worker = role == "worker"
    if cfg.tls.host_keys:
        comps.update(make_certificates(cfg, reactor, resolver, parent, worker=worker))
    if cfg.msgauth.inbound_checks and cfg.msgauth.dmarc_reports_send:
        if worker:  # the port-25 checks write the evaluations the main process reports
            from twisted.internet.threads import deferToThreadPool

            from mxd.msgauth.dmarcsend import EvaluationFlusher, EvaluationLog

            evaluations = EvaluationLog(cfg.data_dir / "dmarc" / "evaluations")
            comps["dmarc_evaluations"] = evaluations
            EvaluationFlusher(evaluations, reactor, lambda fn: deferToThreadPool(
                reactor, reactor.getThreadPool(), fn)).setServiceParent(parent)
        else:
            make_dmarc_reporter(cfg, comps, reactor, parent)
    if cfg.tlsrpt.send and not worker:
        make_tls_reporter(cfg, comps, reactor, metrics, parent)
    if role == "main":
        from mxd.config_transports import build_routes

        # The admin API checks transport names here, though the runners are elsewhere.
        queue.transport_names = frozenset(t.name for t in build_routes(cfg)[1])
        log.info("queue: delivered by the worker processes")
    elif cfg.queue.hold_all:
        log.info("queue: hold_all is set, outbound mail stays queued")
    else:
        policies = make_tls_policy_factory(cfg, resolver, reactor, parent)
        ring = dkim_keyring(cfg, comps)
        fwd = forwarder(cfg, comps, reactor)
        runner = make_queue_runner(cfg, queue, resolver, store, directory, reactor, metrics,
                                   policies, sign=ring.sign if ring is not None else None,
                                   dsn_recipient=fwd.unwrap if fwd is not None else None,
                                   lease_owner=lease_owner)
        runner.setServiceParent(parent)
        comps["queue_runner"] = runner
        if worker:
            # Work queued or given back by another process (a message another worker
            # accepted, a retry from the admin web) wakes this runner too.
            store.on_foreign_commit(runner.wake_soon)
    return comps


def make_certificates(cfg: Config, reactor: Any, resolver: Any, parent: Any,
                      worker: bool = False) -> dict[str, Any]:
    """The certificate store on the host keys (SNI), the HTTP-01 responder, the ACME
    service when enabled, and the start-up check of our own TLSA records.  A worker
    process gets the certificate store only, and reloads it from the files the main
    process's ACME service writes (``CertReloader``)."""
    from mxd.certs import CertStore, names_for
    from mxd.dane_inbound import InboundDANECheck
    from mxd.hostkeys import load_all
    from mxd.recordsconfig import acme_dir
    from mxd.wellknown import HTTP01Responder

    keys = load_all(cfg.tls.host_keys)
    names = names_for(normalise_domain(cfg.hostname),
                      [normalise_domain(d) for d in cfg.domains.names])
    store = CertStore(names, keys, acme_dir(cfg) / "certs", min_version=cfg.tls.min_version)
    http01 = HTTP01Responder()
    out: dict[str, Any] = {"certs": store, "http01": http01}
    if worker:
        from mxd.certs import CertReloader

        CertReloader(store, reactor).setServiceParent(parent)
        return out
    smtp_port = next((li.port for li in cfg.listeners if li.protocol == "smtp"), None)
    if smtp_port is not None:
        InboundDANECheck(resolver, store, normalise_domain(cfg.hostname)).setServiceParent(parent)
    if cfg.acme.enabled:
        out["acme"] = make_acme_service(cfg, store, keys, http01, reactor)
        out["acme"].setServiceParent(parent)
    return out


def make_acme_service(cfg: Config, store: Any, keys: Any, http01: Any, reactor: Any) -> Any:
    """ACME orders for every name and host key; the blocking ``acme`` library runs in the
    reactor's thread pool."""
    from twisted.internet.threads import deferToThreadPool

    from mxd.acme.client import ACMEClient, ACMESettings
    from mxd.acme.service import ACMEService, RenewalSettings, StoreProvisioner
    from mxd.recordsconfig import acme_dir

    settings = ACMESettings(directory_url=cfg.acme.directory_url, state_dir=acme_dir(cfg),
                            contact=cfg.acme.contact, ca_file=cfg.acme.ca_file,
                            challenges=tuple(cfg.acme.challenges))
    renewal = RenewalSettings(renew_fraction=cfg.acme.renew_fraction,
                              retry_min=cfg.acme.retry_min, retry_max=cfg.acme.retry_max)
    return ACMEService(store, store.names, keys, ACMEClient(settings),
                       StoreProvisioner(store, http01), reactor,
                       lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f),
                       renewal)


def _smtp_settings(cfg: Config) -> Any:
    from mxd.smtp.session import SMTPServerSettings

    return SMTPServerSettings(
        max_message_size=cfg.smtp.max_message_size,
        max_recipients=cfg.smtp.max_recipients,
        max_connections=cfg.smtp.max_connections,
        max_connections_per_ip=cfg.smtp.max_connections_per_ip,
        max_connections_per_network=cfg.smtp.max_connections_per_network,
        command_timeout=cfg.smtp.command_timeout,
        command_timeout_busy=cfg.smtp.command_timeout_busy,
        data_timeout=cfg.smtp.data_timeout,
        data_min_rate=cfg.smtp.data_min_rate,
        max_hops=cfg.smtp.max_hops,
        requiretls=cfg.smtp.requiretls,
        allow_plaintext_auth_on_loopback=cfg.auth.allow_plaintext_on_loopback,
    )


def _imap_settings(cfg: Config) -> Any:
    from mxd.imap.server import IMAPServerSettings

    return IMAPServerSettings(
        append_limit=cfg.imap.max_literal_size,
        idle_timeout=cfg.imap.idle_timeout,
        login_timeout=cfg.imap.login_timeout,
        max_connections_per_ip=cfg.imap.max_connections_per_ip,
        max_connections_per_network=cfg.imap.max_connections_per_network,
        max_connections=cfg.imap.max_connections,
        plaintext_login_on_loopback=cfg.auth.allow_plaintext_on_loopback,
    )


def message_checker(cfg: Config, role: str, comps: dict[str, Any], reactor: Any) -> Any:
    """The SMTP listener's message checks: iprev/SPF/DKIM/DMARC on port 25, DKIM signing
    on submission (None: nothing to do)."""
    if role == "smtp":
        if not cfg.msgauth.inbound_checks:
            return None
        from twisted.internet.threads import deferToThreadPool

        from mxd.msgauth.inbound import InboundChecker, InboundSettings

        report_addresses = frozenset(_normalise_address(a)
                                     for a in cfg.msgauth.dmarc_report_addresses)
        tls_addresses = frozenset(_normalise_address(a) for a in tls_report_addresses(cfg))

        def run_blocking(fn: Any) -> Any:
            return deferToThreadPool(reactor, reactor.getThreadPool(), fn)

        from mxd.msgauth import dmarc

        reactor.callWhenRunning(lambda: run_blocking(dmarc.warm_up).addCallbacks(
            lambda _: freeze_heap(),
            lambda f: log.failure("cannot load the Public Suffix List", f)))
        return InboundChecker(comps["resolver"], reactor, InboundSettings(
            hostname=normalise_domain(cfg.hostname), dmarc_reject=cfg.msgauth.dmarc_reject,
            report_addresses=report_addresses, tls_report_addresses=tls_addresses),
            reports=dmarc_report_store(cfg) if report_addresses else None,
            tls_reports=tls_report_store(cfg) if tls_addresses else None,
            run_blocking=run_blocking, evaluations=comps.get("dmarc_evaluations"),
            sealer=dkim_keyring(cfg, comps) if cfg.forward else None)
    ring = dkim_keyring(cfg, comps)
    if ring is None:
        return None
    from mxd.msgauth.signing import SubmissionSigner

    return SubmissionSigner(ring, reactor)


def make_dmarc_reporter(cfg: Config, comps: dict[str, Any], reactor: Any, parent: Any) -> Any:
    """The evaluation log the port-25 checks write and the daily report sender."""
    from twisted.internet.threads import deferToThreadPool

    from mxd.msgauth.dmarcsend import DMARCReporter, EvaluationLog, ReporterSettings

    evaluations = EvaluationLog(cfg.data_dir / "dmarc" / "evaluations")
    comps["dmarc_evaluations"] = evaluations
    ring = dkim_keyring(cfg, comps)
    host = normalise_domain(cfg.hostname)

    def run_blocking(fn: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn)

    reporter = DMARCReporter(
        evaluations, comps["resolver"], comps["queue"], reactor,
        ReporterSettings(submitter=host,
                         from_addr=cfg.msgauth.dmarc_reports_from or f"postmaster@{host}"),
        sign=ring.sign if ring is not None else None, run_blocking=run_blocking,
        sent_store=dmarc_sent_store(cfg))
    reporter.setServiceParent(parent)
    comps["dmarc_reporter"] = reporter
    return reporter


def make_tls_reporter(cfg: Config, comps: dict[str, Any], reactor: Any, metrics: IMetrics,
                      parent: Any) -> Any:
    """The daily SMTP TLS report sender (RFC 8460), reading the queue's attempts log."""
    from mxd.tlsrpt.send import SIGNED_HEADERS, SenderSettings, TLSReporter, https_poster

    ring = dkim_keyring(cfg, comps)
    host = normalise_domain(cfg.hostname)
    from_addr = cfg.tlsrpt.from_address or f"postmaster@{host}"
    reporter = TLSReporter(
        comps["queue"].store.tls_attempts_between, comps["resolver"], comps["queue"], reactor,
        SenderSettings(organization_name=cfg.tlsrpt.organization or host, submitter=host,
                       from_addr=from_addr, contact_info=cfg.tlsrpt.contact or from_addr,
                       send_success=cfg.tlsrpt.send_success),
        sign=(functools.partial(ring.sign, extra_headers=SIGNED_HEADERS)
              if ring is not None else None), post=https_poster(reactor),
        state=cfg.data_dir / "tlsrpt" / "last-reported-day", metrics=metrics,
        sent_store=tls_sent_store(cfg))
    reporter.setServiceParent(parent)
    comps["tls_reporter"] = reporter
    return reporter


def _normalise_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local.lower()}@{normalise_domain(domain)}"


def dmarc_report_store(cfg: Config) -> Any:
    """Incoming DMARC aggregate reports, under DATA_DIR/dmarc/incoming."""
    from mxd.msgauth.reportstore import ReportStore

    return ReportStore(cfg.data_dir / "dmarc" / "incoming")


def dmarc_sent_store(cfg: Config) -> Any:
    """DMARC aggregate reports sent, under DATA_DIR/dmarc/sent."""
    from mxd.msgauth.reportstore import SentReportStore

    return SentReportStore(cfg.data_dir / "dmarc" / "sent")


def tls_sent_store(cfg: Config) -> Any:
    """TLS reports sent, under DATA_DIR/tlsrpt/sent."""
    from mxd.tlsrpt.send import SentTLSReports

    return SentTLSReports(cfg.data_dir / "tlsrpt" / "sent")


def tls_report_addresses(cfg: Config) -> list[str]:
    """[tlsrpt] report_addresses and the HostTLSRPT address (a bare local part is at the
    first local domain)."""
    out = list(cfg.tlsrpt.report_addresses)
    host = cfg.tlsrpt.host_address
    if host:
        if "@" not in host and cfg.domains.names:
            host = f"{host}@{cfg.domains.names[0]}"
        if "@" in host:
            out.append(host)
    return out


def tls_report_store(cfg: Config) -> Any:
    """Incoming TLS reports, under DATA_DIR/tlsrpt/incoming."""
    from mxd.tlsrpt.incoming import TLSReportStore

    return TLSReportStore(cfg.data_dir / "tlsrpt" / "incoming")


def forwarder(cfg: Config, comps: dict[str, Any], reactor: Any) -> Any:
    """The one Forwarder of [[forward]] (shared by every SMTP listener), or None."""
    if "forwarder" not in comps:
        from mxd.config_forward import make_forwarder

        comps["forwarder"] = make_forwarder(cfg, reactor)
    return comps["forwarder"]


def dkim_keyring(cfg: Config, comps: dict[str, Any]) -> Any:
    """The DKIM keys of [dkim].selectors, loaded once (a missing key file stops start-up
    with an error naming it); None when no domain signs."""
    if not cfg.dkim.selectors:
        return None
    if "dkim_keyring" not in comps:
        from mxd.msgauth.dkimkeys import DKIMKeyError
        from mxd.msgauth.signing import KeyRing, load_keys

        try:
            comps["dkim_keyring"] = KeyRing(load_keys(cfg.dkim_key_dir, cfg.dkim.selectors))
        except DKIMKeyError as e:
            raise ConfigError(cfg.source, "dkim.selectors", str(e)) from None
    return comps["dkim_keyring"]


def site_for_https(root: Any) -> Any:
    from mxd.wellknown import site

    return site(root)


def admin_factory(cfg: Config, li: ListenerConfig, comps: dict[str, Any], reactor: Any,
                  tls: TLSSettings | None, top: Any, prom: Any) -> IProtocolFactory:
    """The admin web: plain HTTP on loopback, HTTPS elsewhere (the config insists)."""
    import ipaddress

    from twisted.protocols.tls import TLSMemoryBIOFactory

    from mxd.admin import auth
    from mxd.admin.web import AdminContext, admin_site, bounded_admin_factory
    from mxd.sasl.ratelimit import AuthLimiter
    from mxd.tls import load_server_tls

    limiter = comps.get("admin_limiter")
    if limiter is None:
        limiter = comps["admin_limiter"] = AuthLimiter(reactor, auth_limiter_settings(cfg))
    loopback = ipaddress.ip_address(li.address).is_loopback
    ctx = AdminContext(
        top.status, clock=reactor, password_file=admin_password_file(cfg),
        token=auth.local_token(admin_token_file(cfg), create=True),
        hosts=frozenset([cfg.hostname, *cfg.admin.hosts]), loopback=loopback,
        limiter=limiter, queue=comps.get("queue"), store=comps.get("store"), metrics=prom,
        dmarc_reports=dmarc_report_store(cfg), session_lifetime=cfg.admin.session_lifetime,
        session_idle=cfg.admin.session_idle, tls_reports=tls_report_store(cfg),
        directory=comps.get("directory"),
        domains=tuple(normalise_domain(d) for d in cfg.domains.names),
        domain_records=lambda d: admin_domain_records(cfg, d),
        tls_reporter=comps.get("tls_reporter"), recent=recent_problems(comps),
        sasl=comps.get("sasl"), dmarc_sent=dmarc_sent_store(cfg), tls_sent=tls_sent_store(cfg),
        domain_check=(admin_dns_check(cfg, comps["resolver"], reactor)
                      if comps.get("resolver") is not None else None))
    site: Any = bounded_admin_factory(admin_site(ctx), reactor)
    if loopback:
        return cast(IProtocolFactory, site)
    certs = comps.get("certs")
    creator: Any = (load_server_tls(tls) if tls is not None else
                    certs.server_tls(li.max_tls_version) if certs is not None else None)
    if creator is None:
        raise ValueError("an admin listener off loopback needs a certificate")
    return cast(IProtocolFactory, TLSMemoryBIOFactory(creator, False, site))


def webmail_factory(cfg: Config, li: ListenerConfig, comps: dict[str, Any], reactor: Any,
                    tls: TLSSettings | None) -> IProtocolFactory:
    """The webmail: plain HTTP on loopback, HTTPS elsewhere (the config insists).  Its
    sessions are shared by every webmail listener."""
    import ipaddress

    from twisted.protocols.tls import TLSMemoryBIOFactory

    from mxd.tls import load_server_tls
    from mxd.webmail.context import WebmailContext
    from mxd.webmail.site import bounded_webmail_factory, webmail_site

    loopback = ipaddress.ip_address(li.address).is_loopback
    w = cfg.webmail
    ctx = WebmailContext(
        clock=reactor, store=comps["store"], directory=comps["directory"],
        sasl=comps["sasl"], queue=comps.get("queue"),
        hosts=frozenset([cfg.hostname, *w.hosts]), loopback=loopback,
        session_lifetime=w.session_lifetime, session_idle=w.session_idle,
        max_sessions=w.max_sessions, page_size=w.page_size, hostname=cfg.hostname)
    if "webmail_sessions" in comps:
        ctx.sessions = comps["webmail_sessions"]
    comps["webmail_sessions"] = ctx.sessions
    ctx.submitter = web_submitter(cfg, comps, reactor)
    ctx.max_request_body = w.max_upload + 1024 * 1024  # the form's other fields, boundaries
    site: Any = bounded_webmail_factory(webmail_site(ctx), reactor)
    if loopback:
        return cast(IProtocolFactory, site)
    certs = comps.get("certs")
    creator: Any = (load_server_tls(tls) if tls is not None else
                    certs.server_tls(li.max_tls_version) if certs is not None else None)
    if creator is None:
        raise ValueError("a webmail listener off loopback needs a certificate")
    return cast(IProtocolFactory, TLSMemoryBIOFactory(creator, False, site))


def web_submitter(cfg: Config, comps: dict[str, Any], reactor: Any) -> Any:
    """Sending from the webmail: an in-process session of the submission listener's
    protocol with the same settings, checker (DKIM signing) and queue; one for every
    webmail listener."""
    if "web_submitter" not in comps:
        from twisted.internet.threads import deferToThreadPool

        from mxd.smtp.inprocess import InProcessSubmission
        from mxd.webmail.compose import Limits
        from mxd.webmail.submit import WebSubmitter

        def run_blocking(fn: Any) -> Any:
            return deferToThreadPool(reactor, reactor.getThreadPool(), fn)

        max_total = cfg.smtp.max_message_size  # the message as sent (base64 included)
        submission = InProcessSubmission(
            settings=_smtp_settings(cfg), store=comps["store"], directory=comps["directory"],
            outbound=comps["queue"], clock=reactor, hostname=cfg.hostname,
            checker=message_checker(cfg, "submission", comps, reactor),
            metrics=comps.get("metrics"), run_blocking=run_blocking)
        comps["web_submitter"] = WebSubmitter(
            submission, comps["store"], clock=reactor, run_blocking=run_blocking,
            limits=Limits(max_attachment=min(cfg.webmail.max_upload, max_total),
                          max_total=max_total,
                          max_recipients=cfg.smtp.max_recipients))
    return comps["web_submitter"]


def recent_problems(comps: dict[str, Any]) -> Any:
    """One observer of the global log for the admin overview's recent warnings/errors."""
    if "recent_problems" not in comps:
        from twisted.logger import globalLogPublisher

        from mxd.admin.recent import RecentProblems

        comps["recent_problems"] = RecentProblems()
        globalLogPublisher.addObserver(comps["recent_problems"])
    return comps["recent_problems"]


def admin_domain_records(cfg: Config, domain: str) -> list[Any]:
    """The DNS records ``domain`` needs (what ``mxd dns records`` prints); reads key files."""
    from mxd.dnsrecords import records
    from mxd.recordsconfig import record_inputs

    return list(records(record_inputs(cfg, domain)))


def admin_dns_check(cfg: Config, resolver: Any, reactor: Any) -> Any:
    """``mxd dns check DOMAIN`` for the admin domains page, through the server's own
    resolver, bounded to two minutes (the key files it reads are a few small ones)."""
    from twisted.internet.defer import Deferred

    from mxd.dnscheck_cli import checker_for

    def check(domain: str) -> Any:
        async def run() -> list[Any]:
            checker = checker_for(cfg, domain, resolver, reactor)
            return list(await checker.run())

        return Deferred.fromCoroutine(run()).addTimeout(120, reactor)

    return check


def admin_password_file(cfg: Config) -> Path:
    return cfg.admin.password_file or cfg.data_dir / "admin-password"


def admin_token_file(cfg: Config) -> Path:
    """The CLI's credential for the admin API (mode 0600, made by the server)."""
    return cfg.data_dir / "admin.token"


def listener_factory(cfg: Config, li: ListenerConfig, comps: dict[str, Any], reactor: Any,
                     metrics: IMetrics, tls: TLSSettings | None, top: Any,
                     prom: Any) -> IProtocolFactory:
    from mxd.tls import load_server_tls

    if li.protocol == "admin":
        return admin_factory(cfg, li, comps, reactor, tls, top, prom)
    if li.protocol == "webmail":
        return webmail_factory(cfg, li, comps, reactor, tls)

    certs = comps.get("certs")
    if li.protocol == "http":
        from mxd.wellknown import PlainSite, site

        return cast(IProtocolFactory, site(PlainSite(comps["http01"])))
    if li.protocol == "https":
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from mxd.certs import HTTP_ALPN
        from mxd.recordsconfig import client_settings, sts_policy
        from mxd.wellknown import PublicSite

        domains = [normalise_domain(d) for d in cfg.domains.names]
        policy_text = sts_policy(cfg).to_text()
        web: Any = site_for_https(PublicSite(domains, lambda: policy_text,
                                             lambda d: client_settings(cfg, d)))
        creator: Any = (certs.server_tls(li.max_tls_version, alpn=HTTP_ALPN) if certs is not None
                        and tls is None else load_server_tls(tls) if tls is not None else None)
        if creator is None:
            raise ValueError("the https listener needs a certificate")
        return cast(IProtocolFactory, TLSMemoryBIOFactory(creator, False, web))
    # ALPN protocol ids from the IANA registry: "imap" on 143/993, "smtp" on 25/587/465.
    alpn = "imap" if li.protocol in ("imap", "imaps") else "smtp"
    tls_options: Any = (load_server_tls(tls, alpn=alpn) if tls is not None else
                        certs.server_tls(li.max_tls_version, alpn=alpn) if certs is not None
                        else None)
    if li.protocol in ("smtp", "submission", "submissions"):
        from mxd.smtp.service import smtp_factory

        return smtp_factory(role=li.protocol,  # type: ignore[arg-type]
                            settings=_smtp_settings(cfg), store=comps["store"],
                            directory=comps["directory"], sasl=comps["sasl"],
                            outbound=comps["queue"], tls=tls_options, clock=reactor,
                            hostname=cfg.hostname, metrics=metrics,
                            checker=message_checker(cfg, li.protocol, comps, reactor),
                            forwarder=forwarder(cfg, comps, reactor))
    if li.protocol in ("imap", "imaps"):
        from mxd.imap.server import IMAPShared, imap_factory

        # One shared state (message cache, \Recent claims, per-IP counts) for 143 and 993.
        shared = comps.setdefault("imap_shared", IMAPShared(metadata=comps.get("metadata")))
        return imap_factory(implicit_tls=li.protocol == "imaps", settings=_imap_settings(cfg),
                            store=comps["store"], accounts=comps["store"], sasl=comps["sasl"],
                            tls=tls_options, clock=reactor, hostname=cfg.hostname,
                            metrics=metrics, shared=shared)
    raise ValueError(f"unknown listener protocol {li.protocol}")
