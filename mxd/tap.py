"""Composition: ``twistd mxd --config PATH`` builds one MultiService from the config.

This is the only place (with ``mxd.cli``) that reads the config and wires the layers:
store, directory, SASL, resolver, queue and report services, then listeners.  Children
start in that order and stop in reverse, so listeners stop accepting first and the store
closes last.  Sockets are bound in ``privilegedStartService`` so twistd can drop
privileges afterwards.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, cast

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python import usage

import mxd
from mxd.config import (
    WEB_UI_PROTOCOLS,
    Config,
    ConfigError,
    ListenerConfig,
    load_config,
    normalise_domain,
)
from mxd.listeners import ListenError, TCPListener
from mxd.metrics import IMetrics, NoopMetrics
from mxd.tls import TLSConfigError, TLSSettings, load_server_tls

log = Logger(namespace="mxd.tap")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run the mxd mail server from a TOML configuration file."
    optParameters = [
        ["config", "c", None, "Config file (default: $MXD_CONFIG or etc/mxd.toml)."],
    ]

    def postOptions(self) -> None:
        try:
            self.cfg = load_config(self["config"])
            check_ports_free(self.cfg)
            # Build every TLS context now: a bad key or certificate fails before binding.
            for li in self.cfg.listeners:
                tls_settings_for(self.cfg, li)
            check_host_keys(self.cfg)
        except (ConfigError, TLSConfigError, ListenError) as e:
            raise usage.UsageError(str(e)) from None


def tls_settings_for(cfg: Config, li: ListenerConfig) -> TLSSettings | None:
    if li.protocol == "http" or (li.protocol in WEB_UI_PROTOCOLS
                                 and ipaddress.ip_address(li.address).is_loopback):
        return None  # an admin or webmail listener off loopback speaks HTTPS only
    cert, key = cfg.tls_for(li)
    if cert is None or key is None:
        return None
    settings = TLSSettings(cert=cert, key=key, min_version=cfg.tls.min_version,
                           max_version=li.max_tls_version)
    try:
        load_server_tls(settings)
    except TLSConfigError as e:
        raise ConfigError(cfg.source, "tls", str(e)) from None
    return settings


def check_host_keys(cfg: Config) -> None:
    """Fail before binding when a configured host key cannot be used."""
    from mxd.hostkeys import HostKeyError, load_all

    try:
        load_all(cfg.tls.host_keys)
    except HostKeyError as e:
        raise ConfigError(cfg.source, "tls.host_keys", str(e)) from None


def check_ports_free(cfg: Config) -> None:
    """Fail early, naming the listener, when a configured port is already in use."""
    for i, li in enumerate(cfg.listeners):
        if li.port == 0:
            continue
        family = socket.AF_INET6 if ipaddress.ip_address(li.address).version == 6 else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((li.address, li.port))
        except PermissionError:
            pass  # privileged port while not yet root-checked: let twistd try as configured
        except OSError as e:
            raise ListenError(f"{cfg.source}: listeners[{i}]: cannot listen for {li.protocol} "
                              f"on {li.address} port {li.port}: {e.strerror}") from None
        finally:
            s.close()


class MxdService(service.MultiService):
    """The whole server; components are attributes for the admin interface and tests."""

    def __init__(self, cfg: Config, reactor: Any, metrics: IMetrics) -> None:
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.metrics = metrics
        self.listeners: dict[str, TCPListener] = {}
        self.components: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hostname": self.cfg.hostname, "version": mxd.__version__}
        for name, li in self.listeners.items():
            out[f"listener {name}"] = f"{li.address}:{li.port}"
        return out

    def stopService(self) -> Deferred[Any]:
        log.info("stopping")
        d = super().stopService()
        return d if d is not None else succeed(None)


def build_service(cfg: Config, reactor: Any | None = None) -> MxdService:
    """Wire every component from a validated Config (no sockets are bound yet)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    metrics: IMetrics = NoopMetrics()
    prom = None
    if cfg.metrics.enabled:
        from mxd.metrics import PrometheusMetrics

        prom = PrometheusMetrics()
        prom.set("build_info", 1, version=mxd.__version__)
        metrics = prom
    top = MxdService(cfg, reactor, metrics)
    from mxd import components

    comps = components.build(cfg, reactor, metrics, top)
    top.components.update(comps)
    for i, li in enumerate(cfg.listeners):
        name = f"{li.protocol}:{li.port}" if li.port else f"{li.protocol}#{i}"
        if name in top.listeners:  # the same port on another address (one per MX name)
            name = f"{li.protocol}:{li.address}:{li.port}"
        factory = components.listener_factory(cfg, li, comps, reactor, metrics,
                                              tls_settings_for(cfg, li), top, prom)
        listener = TCPListener(reactor, name, li.address, li.port, factory)
        listener.setServiceParent(top)
        top.listeners[name] = listener
    reactor.callWhenRunning(components.freeze_heap)
    return top


def makeService(options: Options) -> service.IService:
    # twistd owns the log observer; with `twistd --logger mxd.log.twistd_observer mxd` the
    # [log] section applies from here on (`mxd serve` uses it directly).
    cfg = options.cfg
    from mxd.log import configure_twistd

    configure_twistd(cfg.log.level, cfg.log.format, cfg.log.levels)
    log.info("mxd {version} starting as {hostname}", version=mxd.__version__,
             hostname=cfg.hostname)
    return cast(service.IService, build_service(cfg))


__all__ = ["Options", "makeService", "build_service", "normalise_domain"]
