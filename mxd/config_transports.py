"""The ``[transports.NAME]`` and routes sections of the config: validation with precise
errors, and conversion to ``mxd.queue.routes`` values (secrets read from their files).

Part of the composition layer, like ``mxd.config``: checked by ``mxd config check`` and
at start-up, before any port is bound.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mxd.queue import routes as r

if TYPE_CHECKING:
    from mxd.config import Config, RouteConfig, TransportConfig

SMARTHOSTS = ("smtp", "submission", "submissions")
SUBMISSION = ("submission", "submissions")
# Which keys apply to which kinds; a key set on another kind is an error (a typo or a
# misunderstanding, e.g. a password on an smtp transport that would never be used).
APPLIES: dict[str, tuple[str, ...]] = {
    "host": (*SMARTHOSTS, "socks5"), "port": (*SMARTHOSTS, "socks5"),
    "tls": SMARTHOSTS, "username": SUBMISSION, "password_file": SUBMISSION,
    "mechanisms": SUBMISSION, "proxy_username": ("socks5",),
    "proxy_password_file": ("socks5",), "remote_ips": ("socks5",),
    "ehlo_hostname": ("direct", *SMARTHOSTS, "socks5"),
    "code": ("fail",), "enhanced": ("fail",), "text": ("fail",),
}


def _error(cfg: Config, key: str, problem: str) -> Exception:
    from mxd.config import ConfigError

    return ConfigError(cfg.source, key, problem)


def read_secret(path: Path) -> str:
    """The first line of a password file; OSError/ValueError with the reason.

    The file must be a regular file that others cannot read (mode without o+r/o+w):
    a world-readable password is refused, like ssh refuses a readable private key."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ValueError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"chmod 600 {path}")
    with open(path, encoding="utf-8") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise ValueError(f"{path} is empty")
    return line


def _secret(cfg: Config, key: str, path: Path) -> str:
    try:
        return read_secret(path)
    except FileNotFoundError:
        raise _error(cfg, key, f"file not found: {path}") from None
    except PermissionError:
        raise _error(cfg, key, f"cannot read {path}: permission denied") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _error(cfg, key, str(e) if isinstance(e, ValueError) else
                     f"cannot read {path}: {e}") from None


def _defaults() -> TransportConfig:
    from mxd.config import TransportConfig

    return TransportConfig(kind="direct")


def all_routes(cfg: Config) -> Iterator[tuple[str, RouteConfig]]:
    """(key path, route) of every route in the config."""
    for i, a in enumerate(cfg.accounts):
        for j, route in enumerate(a.routes):
            yield f"accounts[{i}].routes[{j}]", route
    for dom, rs in cfg.domains.routes.items():
        for j, route in enumerate(rs):
            yield f'domains.routes."{dom}"[{j}]', route
    for j, route in enumerate(cfg.routes):
        yield f"routes[{j}]", route


def validate_transports(cfg: Config, local_domains: set[str]) -> None:
    """Raise ConfigError for the first problem in transports and routes."""
    from mxd.config import normalise_domain
    from mxd.sasl.client import PREFERENCE

    base = _defaults()
    for name, t in cfg.transports.items():
        key = f"transports.{name}"
        for field, kinds in APPLIES.items():
            if t.kind not in kinds and getattr(t, field) != getattr(base, field):
                raise _error(cfg, f"{key}.{field}", f"does not apply to kind {t.kind} "
                             f"(only to {', '.join(kinds)})")
        if t.kind in (*SMARTHOSTS, "socks5") and not t.host:
            raise _error(cfg, f"{key}.host", f"required for kind {t.kind}")
        if t.kind == "socks5":
            try:
                ipaddress.ip_address(t.host)
            except ValueError:
                raise _error(cfg, f"{key}.host", "the SOCKS5 proxy is given by IP address, "
                             f"got {t.host!r}") from None
            if bool(t.proxy_username) != (t.proxy_password_file is not None):
                raise _error(cfg, f"{key}.proxy_password_file" if t.proxy_username else
                             f"{key}.proxy_username",
                             "proxy_username and proxy_password_file go together")
            if t.proxy_password_file is not None:
                _secret(cfg, f"{key}.proxy_password_file", t.proxy_password_file)
        if t.port and not 0 < t.port < 65536:  # pragma: no cover - the schema checks it
            raise _error(cfg, f"{key}.port", f"expected a port from 1 to 65535, got {t.port}")
        if t.kind in SUBMISSION:
            if not t.username:
                raise _error(cfg, f"{key}.username", f"required for kind {t.kind}")
            if t.password_file is None:
                raise _error(cfg, f"{key}.password_file", f"required for kind {t.kind}")
            _secret(cfg, f"{key}.password_file", t.password_file)
            for i, m in enumerate(t.mechanisms):
                if m.upper() not in PREFERENCE:
                    raise _error(cfg, f"{key}.mechanisms[{i}]", f"unknown SASL mechanism "
                                 f"{m!r} (known: {', '.join(PREFERENCE)})")
            if t.tls == "none" and t.mechanisms and all(
                    m.upper() in ("PLAIN", "LOGIN") for m in t.mechanisms):
                raise _error(cfg, f"{key}.mechanisms", "PLAIN and LOGIN are never sent "
                             "without TLS; set tls or allow another mechanism")
        if t.kind == "fail":
            try:
                r.Transport(name=name, kind=r.TransportKind.FAIL, fail_code=t.code,
                            fail_enhanced=t.enhanced, fail_text=t.text)
            except r.RouteError as e:
                raise _error(cfg, f"{key}.enhanced", str(e)) from None
    for dom in cfg.domains.routes:
        try:
            nd = normalise_domain(dom)
        except ValueError as e:
            raise _error(cfg, f'domains.routes."{dom}"', str(e)) from None
        if nd not in local_domains:
            raise _error(cfg, f'domains.routes."{dom}"', "not listed in domains.names")
    for key, route in all_routes(cfg):
        if route.transport not in ("", "direct") and route.transport not in cfg.transports:
            known = ", ".join(sorted(cfg.transports)) or "none defined"
            raise _error(cfg, f"{key}.transport", f"unknown transport {route.transport!r} "
                         f"(transports: {known})")
        if not route.to_domains and not route.from_domains and route.min_attempt <= 1:
            raise _error(cfg, key, "a route needs at least one of to_domains, from_domains "
                         "or min_attempt (to_domains = [\"*\"] matches every message)")
        for field in ("to_domains", "from_domains"):
            for i, p in enumerate(getattr(route, field)):
                if p == "*":
                    continue
                try:
                    normalise_domain(p[1:] if p.startswith(".") else p)
                except ValueError as e:
                    raise _error(cfg, f"{key}.{field}[{i}]", str(e)) from None


def build_routes(cfg: Config) -> tuple[r.RouteTable, tuple[r.Transport, ...]]:
    """The route table and transports of a validated config, with secrets read."""

    def route(rc: RouteConfig) -> r.Route:
        return r.Route(rc.transport, tuple(rc.to_domains), tuple(rc.from_domains),
                       rc.min_attempt)

    table = r.RouteTable(
        global_routes=tuple(route(x) for x in cfg.routes),
        domain_routes={d: tuple(route(x) for x in rs) for d, rs in cfg.domains.routes.items()},
        account_routes={a.name: tuple(route(x) for x in a.routes)
                        for a in cfg.accounts if a.routes},
    )
    out = []
    for name, t in cfg.transports.items():
        key = f"transports.{name}"
        kind = r.TransportKind(t.kind)
        out.append(r.Transport(
            name=name, kind=kind, host=t.host or None, port=t.port or None,
            tls=r.SmarthostTLS(t.tls), username=t.username or None,
            password=(_secret(cfg, f"{key}.password_file", t.password_file)
                      if t.password_file is not None else None),
            mechanisms=tuple(m.upper() for m in t.mechanisms),
            proxy_username=t.proxy_username or None,
            proxy_password=(_secret(cfg, f"{key}.proxy_password_file", t.proxy_password_file)
                            if t.proxy_password_file is not None else None),
            remote_ips=tuple(t.remote_ips), ehlo_hostname=t.ehlo_hostname or None,
            fail_code=t.code, fail_enhanced=t.enhanced, fail_text=t.text))
    return table, tuple(out)
