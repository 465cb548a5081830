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
from pathlib import Path
from typing import Any, Literal, cast

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

import mxd
from mxd.config import (
    WEB_UI_PROTOCOLS,
    Config,
    ConfigError,
    ListenerConfig,
    load_config,
    normalise_domain,
)
from mxd.listeners import AdoptedListener, HandedDownSocket, ListenError, TCPListener
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


# Listeners whose sessions run in the worker processes when [server] workers > 1; the
# others (admin web, the HTTP/HTTPS responders ACME and MTA-STS need) stay in the main
# process, which also runs ACME and the daily report senders.
WORKER_PROTOCOLS = frozenset({"smtp", "submission", "submissions", "imap", "imaps"})


@attrs.frozen
class ProcessRole:
    """Which part of the server this process runs.

    ``single``: everything (``workers = 1``, ``mxd serve``).  ``main``: the supervisor
    of ``workers = N``: binds every listener, serves the admin/HTTP ones, runs ACME and
    the report senders, and starts the workers.  ``worker``: SMTP/submission/IMAP
    sessions on the sockets in ``inherited`` (listener name -> (fd, address family))
    and an outbound queue runner (doc/processes.md)."""

    kind: Literal["single", "main", "worker"] = "single"
    index: int = 0
    inherited: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    lease_owner: str | None = None  # a worker's name on its queue leases


SINGLE = ProcessRole()


def role_for(cfg: Config) -> ProcessRole:
    """The role of the process twistd starts: ``main`` when workers are configured and
    some listener is served by them."""
    if cfg.server.worker_count() > 1 and any(li.protocol in WORKER_PROTOCOLS
                                             for li in cfg.listeners):
        return ProcessRole(kind="main")
    return SINGLE


class MxdService(service.MultiService):
    """The whole server; components are attributes for the admin interface and tests."""

    def __init__(self, cfg: Config, reactor: Any, metrics: IMetrics) -> None:
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.metrics = metrics
        self.listeners: dict[str, Any] = {}  # TCPListener / AdoptedListener by name
        self.handed_down: dict[str, HandedDownSocket] = {}  # main: served by workers
        self.components: dict[str, Any] = {}
        self.role = SINGLE
        # Set by makeService for twistd's application when twistd would otherwise log
        # with its default, unfiltered observer (see mxd.log.twistd_default_observer).
        self.log_observer: Any = None

    def setServiceParent(self, parent: Any) -> None:
        # twistd wraps the service in an Application and then asks that Application for
        # an ILogObserver component before it falls back to its own observer.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hostname": self.cfg.hostname, "version": mxd.__version__}
        for name, li in self.listeners.items():
            out[f"listener {name}"] = f"{li.address}:{li.port}"
        for name, h in self.handed_down.items():
            out[f"listener {name}"] = f"{h.address}:{h.port}"
        workers = self.components.get("workers")
        if workers is not None:
            out["workers"] = " ".join(f"{i}:{pid}" for i, pid in sorted(workers.pids().items()))
        return out

    def stopService(self) -> Deferred[Any]:
        log.info("stopping")
        d = super().stopService()
        return d if d is not None else succeed(None)


def listener_name(cfg: Config, i: int, taken: Any) -> str:
    li = cfg.listeners[i]
    name = f"{li.protocol}:{li.port}" if li.port else f"{li.protocol}#{i}"
    if name in taken:  # the same port on another address (one per MX name)
        name = f"{li.protocol}:{li.address}:{li.port}"
    return name


def build_service(cfg: Config, reactor: Any | None = None, *,
                  role: ProcessRole = SINGLE) -> MxdService:
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
    top.role = role
    from mxd import components

    comps = components.build(cfg, reactor, metrics, top, role=role.kind,
                             lease_owner=role.lease_owner)
    top.components.update(comps)
    taken: set[str] = set()
    for i, li in enumerate(cfg.listeners):
        name = listener_name(cfg, i, taken)
        taken.add(name)
        served_by_workers = li.protocol in WORKER_PROTOCOLS
        if role.kind == "main" and served_by_workers:
            sock = HandedDownSocket(name, li.address, li.port,
                                    slots=cfg.server.worker_count())
            sock.setServiceParent(top)
            top.handed_down[name] = sock
            continue
        if role.kind == "worker" and not served_by_workers:
            continue
        factory = components.listener_factory(cfg, li, comps, reactor, metrics,
                                              tls_settings_for(cfg, li), top, prom)
        listener: Any
        if role.kind == "worker":
            if name not in role.inherited:
                raise ListenError(f"worker {role.index}: no socket handed down for {name}")
            fd, family = role.inherited[name]
            listener = AdoptedListener(reactor, name, fd, family, factory, metrics,
                                       worker=role.index)
        else:
            listener = TCPListener(reactor, name, li.address, li.port, factory)
        listener.setServiceParent(top)
        top.listeners[name] = listener
    reactor.callWhenRunning(components.freeze_heap)
    if role.kind == "main":
        top.components["workers"] = make_supervisor(cfg, reactor, top)
    return top


def make_supervisor(cfg: Config, reactor: Any, top: MxdService) -> Any:
    """The worker processes, started after every socket is bound (a child added last
    starts last and stops first: workers drain before the sockets and the store close)."""
    from mxd.supervisor import InheritedSocket, SupervisorSettings, WorkerSupervisor, worker_argv

    settings = SupervisorSettings(count=cfg.server.worker_count(),
                                  drain_timeout=cfg.server.drain_timeout,
                                  backoff_max=cfg.server.restart_backoff_max)
    config_path = str(Path(cfg.source).resolve())

    def sockets(index: int) -> list[InheritedSocket]:
        """Worker ``index``'s sockets: the same slot of every listener at each start."""
        return [InheritedSocket(name, h.fileno(index - 1), h.family)
                for name, h in top.handed_down.items()]

    def release() -> None:
        for h in top.handed_down.values():
            h.close()

    def store_open() -> Deferred[Any] | None:
        # Workers open the store after the main process has migrated it and, alone on
        # it, cleaned up after a crash.  A fresh Deferred: the caller's callbacks must
        # not change what the store service's ``opened`` fires with.
        opened = top.components["store_service"].opened
        if opened is None:
            return None
        d: Deferred[Any] = Deferred()

        def relay(result: Any) -> Any:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
            return result

        opened.addBoth(relay)
        return d

    def lost(owner: str) -> None:
        """A worker died: the recipients it was delivering are due again now."""
        d = top.components["queue"].store.release_owner(owner, reactor.seconds())

        def released(n: int) -> None:
            if n:
                log.warn("{n} recipient(s) in flight in a lost worker are due again", n=n)

        d.addCallbacks(released, lambda f: log.failure("cannot release leases of {owner}",
                                                       f, owner=owner))

    def reaped(pid: int) -> None:
        """A worker died: the body files it was writing are leftovers now."""
        clean = getattr(top.components["store"], "clean_dead_process", None)
        if clean is None:
            return

        def cleaned(n: Any) -> None:
            if n.tmp or n.pooled or n.pins or n.doomed:
                log.info("removed {tmp} tmp and {pool} unused pooled body file(s) and {pins} "
                         "pin director(ies) of worker pid {pid}; {doomed} body file(s) it kept "
                         "for their grace period go when it ends", tmp=n.tmp, pool=n.pooled,
                         pins=n.pins, doomed=len(n.doomed), pid=pid)

        clean(pid).addCallbacks(cleaned, lambda f: log.failure(
            "cannot clean up after worker pid {pid}", f, pid=pid))

    sup = WorkerSupervisor(reactor, settings, sockets,
                           lambda index, owner, socks, spares: worker_argv(
                               config_path, index, owner, socks, spares),
                           ready=store_open, lost=lost, reaped=reaped, release=release)
    sasl = top.components.get("sasl")
    if sasl is not None:  # the main process checks passwords too (admin API, webmail)
        from mxd import limitsync

        limiter = sasl.limiter
        def outcome(line: bytes) -> None:
            limitsync.apply_line(limiter, line)

        sup.outcome = outcome
        limiter.on_outcome = lambda kind, ip, account: sup.broadcast(
            limitsync.encode(kind, ip, account))
    sup.setServiceParent(top)
    return sup


def makeService(options: Options) -> service.IService:
    # twistd owns the log observer; with `twistd --logger mxd.log.twistd_observer mxd` the
    # [log] section applies from here on (`mxd serve` uses it directly).
    cfg = options.cfg
    from mxd.log import configure_twistd

    configure_twistd(cfg.log.level, cfg.log.format, cfg.log.levels)
    log.info("mxd {version} starting as {hostname}", version=mxd.__version__,
             hostname=cfg.hostname)
    role = role_for(cfg)
    if role.kind == "main" and cfg.metrics.enabled:
        from mxd.metrics import enable_multiprocess

        # The workers count what they serve; /metrics here shows every process.
        enable_multiprocess(cfg.data_dir / "run" / "metrics")
    svc = build_service(cfg, role=role)
    twistd_opts = getattr(options, "parent", None)
    if (twistd_opts is not None and not twistd_opts.get("logger")
            and twistd_opts.get("nodaemon") and not twistd_opts.get("syslog")
            and twistd_opts.get("logfile") in (None, "", "-")):
        # Foreground twistd logging to stdout with its default observer: keep its line
        # format but write only what [log] asks for (the default one writes debug too).
        from mxd.log import twistd_default_observer

        svc.log_observer = twistd_default_observer(cfg.log.level, cfg.log.levels)
    return cast(service.IService, svc)


__all__ = ["Options", "makeService", "build_service", "normalise_domain"]
