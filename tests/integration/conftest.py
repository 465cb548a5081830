"""Fixtures shared by the integration tests (real programs on loopback)."""

from tests.integration.dnslab import dns_lab, dns_lab_factory  # noqa: F401
from tests.integration.mxdserver import mxd_server, mxd_server_factory  # noqa: F401
