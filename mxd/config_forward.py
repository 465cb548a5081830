"""The ``[[forward]]`` and ``[forwarding]`` sections: validation with precise errors, and
the ``mxd.forwarding.Forwarder`` they describe (the SRS secret read or created).

Part of the composition layer, like ``mxd.config``: checked by ``mxd config check`` and at
start-up, before any port is bound.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxd.forwarding import MAX_TARGETS, Forwarder, ForwardRule

if TYPE_CHECKING:
    from mxd.config import Config


def _error(cfg: Config, key: str, problem: str) -> Exception:
    from mxd.config import ConfigError

    return ConfigError(cfg.source, key, problem)


def _address(cfg: Config, key: str, text: str) -> str:
    """The normalised form of an address (local@a-label), or a ConfigError."""
    from mxd.directory.addresses import InvalidAddress, normalize_address

    if "@" not in text:
        raise _error(cfg, key, f"expected local@domain, got {text!r}")
    try:
        return normalize_address(text)
    except InvalidAddress as e:
        raise _error(cfg, key, str(e)) from None


def rules(cfg: Config) -> list[ForwardRule]:
    out: list[ForwardRule] = []
    for i, f in enumerate(cfg.forward):
        address = _address(cfg, f"forward[{i}].address", f.address)
        targets = tuple(dict.fromkeys(_address(cfg, f"forward[{i}].to[{j}]", t)
                                      for j, t in enumerate(f.to)))
        out.append(ForwardRule(address, targets, f.keep_copy))
    return out


def validate_forward(cfg: Config, local_domains: set[str]) -> None:
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules(cfg)):
        key = f"forward[{i}]"
        if rule.domain not in local_domains:
            raise _error(cfg, f"{key}.address",
                         f"domain {rule.domain} is not listed in domains.names")
        if rule.address in seen:
            raise _error(cfg, f"{key}.address", f"{rule.address} is already forwarded by "
                         f"forward[{seen[rule.address]}]")
        seen[rule.address] = i
        if not rule.targets:
            raise _error(cfg, f"{key}.to", "list at least one address")
        if len(rule.targets) > MAX_TARGETS:
            raise _error(cfg, f"{key}.to", f"at most {MAX_TARGETS} addresses")
        if rule.address in rule.targets:
            raise _error(cfg, f"{key}.to", f"{rule.address} would forward to itself")


def srs_secret(path: Path) -> bytes:
    """The SRS secret in ``path``, created (32 random octets, hex, mode 0600) if missing."""
    try:
        with open(path, "x", encoding="ascii", opener=lambda p, fl: os.open(p, fl, 0o600)) as f:
            f.write(secrets.token_hex(32) + "\n")
    except FileExistsError:
        pass
    from mxd.config_transports import read_secret

    return read_secret(path).encode("ascii")


def make_forwarder(cfg: Config, clock: Any) -> Forwarder | None:
    """The Forwarder of this config, or None when nothing is forwarded."""
    if not cfg.forward:
        return None
    from mxd.srs import SRS

    path = cfg.forwarding.srs_secret_file or cfg.data_dir / "srs.secret"
    try:
        secret = srs_secret(path)
    except (OSError, ValueError) as e:
        raise _error(cfg, "forwarding.srs_secret_file", str(e)) from None
    return Forwarder(rules(cfg), SRS(secret, cfg.forwarding.srs_max_age_days), clock,
                     separator=cfg.domains.localpart_separator)
