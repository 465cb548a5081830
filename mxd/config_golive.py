"""Checks of the host key, ACME, MTA-STS serving and DNS record keys (kept out of
mxd/config.py so that module stays small)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mxd.config import Config


def validate_golive(cfg: Config) -> None:
    from mxd.config import ConfigError, normalise_domain

    src = cfg.source
    for i, p in enumerate(cfg.tls.host_keys):
        if not p.is_file():
            raise ConfigError(src, f"tls.host_keys[{i}]", f"file not found: {p} (`mxd "
                              "quickstart` generates host keys)")
    if cfg.acme.enabled and not cfg.tls.host_keys:
        raise ConfigError(src, "acme.enabled", "ACME needs [tls].host_keys (certificates are "
                          "requested for the pre-generated keys)")
    if cfg.acme.enabled and not any(li.protocol in ("https", "http") for li in cfg.listeners):
        raise ConfigError(src, "acme.enabled", "ACME needs an https (TLS-ALPN-01) or http "
                          "(HTTP-01) listener")
    if cfg.acme.ca_file is not None and not cfg.acme.ca_file.is_file():
        raise ConfigError(src, "acme.ca_file", f"file not found: {cfg.acme.ca_file}")
    for i, mx in enumerate(cfg.mta_sts.mx):
        try:
            normalise_domain(mx.removeprefix("*."))
        except ValueError as e:
            raise ConfigError(src, f"mta_sts.mx[{i}]", str(e)) from None
