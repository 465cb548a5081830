"""Fixtures for store tests: an opened SQLiteStore on a fresh data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.helpers import StoreHarness, open_store


@pytest.fixture
def store(data_dir: Path) -> Iterator[StoreHarness]:
    """A threaded SQLiteStore harness (``.store``, ``.run(d)``), closed afterwards."""
    h = open_store(data_dir)
    yield h
    if not h.store._writer._closed:
        h.close()
