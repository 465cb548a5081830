"""Building each component from the config (part of the composition layer, with tap.py).

Kept apart from tap.py so that ``mxd localserve``, ``mxd serve`` and the CLI's
account/queue commands build the very same objects as ``twistd mxd``.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, cast

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from mxd.config import Config, ListenerConfig, normalise_domain
from mxd.metrics import IMetrics
from mxd.tls import TLSSettings

log = Logger(namespace="mxd.components")


class StoreService(service.Service):
    """Opens the store at start-up and closes it last at shutdown."""

    name = "store"

    def __init__(self, store: Any, on_open: list[Any]) -> None:
        self.store = store
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
        log.failure("cannot open the store", f)
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor
        reactor.stop()

    def stopService(self) -> Any:
        super().stopService()
        return self.store.close()


def make_store(cfg: Config, reactor: Any) -> Any:
    from mxd.store.sqlite import SQLiteStore

    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SQLiteStore(cfg.data_dir, reactor)


def make_directory(cfg: Config, store: Any) -> Any:
    from mxd.directory.local import DirectorySettings, LocalDirectory

    settings = DirectorySettings(
        domains=tuple(normalise_domain(d) for d in cfg.domains.names),
        localpart_separator=cfg.domains.localpart_separator or None,
        catchall={normalise_domain(d): a for d, a in cfg.domains.catchall.items()},
        scram_iterations=cfg.auth.scram_iterations,
        cram_md5=cfg.auth.cram_md5,
    )
    return LocalDirectory(store, settings)


async def open_store_and_directory(cfg: Config, reactor: Any) -> tuple[Any, Any]:
    """For CLI commands: an open store and its directory (caller closes the store)."""
    store = make_store(cfg, reactor)
    await store.open()
    return store, make_directory(cfg, store)


async def sync_config_accounts(cfg: Config, store: Any) -> None:
    """Create accounts declared in the config (without a usable password) and add their
    addresses; an account's password is set with `mxd account passwd`."""
    for a in cfg.accounts:
        acct = await store.get_account(a.name)
        if acct is None:
            log.warn("account {account} from the config has no password yet: set one with "
                     "`mxd account passwd {account}`", account=a.name)
            continue
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


def make_sasl(cfg: Config, directory: Any, reactor: Any, metrics: IMetrics) -> Any:
    from twisted.internet.threads import deferToThread

    from mxd.sasl.ratelimit import AuthLimiter, AuthLimiterSettings
    from mxd.sasl.server import SASLServer, SASLSettings

    settings = SASLSettings(
        mechanisms=tuple(cfg.auth.mechanisms),
        allow_plaintext_on_loopback=cfg.auth.allow_plaintext_on_loopback,
        fake_salt_key=hmac.new(server_secret(cfg), b"scram fake salt", "sha256").digest(),
        fake_scram_iterations=cfg.auth.scram_iterations,
    )
    m: Any = metrics
    limiter = AuthLimiter(reactor, AuthLimiterSettings(), metrics=m)
    return SASLServer(directory.lookup_secrets, settings, limiter, reactor, cfg.hostname,
                      metrics=m, run_blocking=lambda f: deferToThread(f))


def build(cfg: Config, reactor: Any, metrics: IMetrics, parent: Any) -> dict[str, Any]:
    """Create the shared components; services among them are attached to ``parent``."""
    store = make_store(cfg, reactor)
    directory = make_directory(cfg, store)

    def sync() -> Deferred[None]:
        return Deferred.fromCoroutine(sync_config_accounts(cfg, store))

    store_service = StoreService(store, [sync])
    store_service.setServiceParent(parent)
    sasl = make_sasl(cfg, directory, reactor, metrics)
    return {"store": store, "store_service": store_service, "directory": directory,
            "sasl": sasl}


def listener_factory(cfg: Config, li: ListenerConfig, comps: dict[str, Any], reactor: Any,
                     metrics: IMetrics, tls: TLSSettings | None, top: Any,
                     prom: Any) -> IProtocolFactory:
    if li.protocol == "admin":
        from mxd.admin.web import admin_site

        site: Any = admin_site(top.status, prom)
        return cast(IProtocolFactory, site)
    raise NotImplementedError(f"the {li.protocol} listener is not wired yet")
