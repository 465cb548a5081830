"""Fixtures shared by the integration tests (real programs on loopback)."""

from tests.integration.browser import chrome  # noqa: F401
from tests.integration.mxdserver import (  # noqa: F401
    mxd_server,
    mxd_server_factory,
    mxd_server_module,
)
