"""Building each component from the config (part of the composition layer, with tap.py).

Kept apart from tap.py so that ``mxd localserve``, ``mxd serve`` and the CLI's
account/queue commands build the very same objects as ``twistd mxd``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocolFactory

from mxd.config import Config, ListenerConfig
from mxd.metrics import IMetrics
from mxd.tls import TLSSettings


def build(cfg: Config, reactor: Any, metrics: IMetrics, parent: Any) -> dict[str, Any]:
    """Create the shared components; services among them are attached to ``parent``."""
    return {}


def listener_factory(cfg: Config, li: ListenerConfig, comps: dict[str, Any], reactor: Any,
                     metrics: IMetrics, tls: TLSSettings | None, top: Any,
                     prom: Any) -> IProtocolFactory:
    if li.protocol == "admin":
        from mxd.admin.web import admin_site

        return admin_site(top.status, prom)
    raise NotImplementedError(li.protocol)
