"""Fixtures of the admin tests."""

import pytest

from mxd.admin import auth
from tests.admin.test_auth import PASSWORD


@pytest.fixture(scope="module")
def hashed() -> str:
    """The scrypt hash of the test admin password (slow: once per module)."""
    return auth.hash_password(PASSWORD)
