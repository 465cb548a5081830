"""[server] cpu_affinity: which core each worker process is kept on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxd.config import ConfigError, parse_config
from mxd.worker import affinity_cpu
from tests.test_config import _minimal


@pytest.mark.parametrize(("mode", "index", "workers", "usable", "want"), [
    ("auto", 1, 2, [0, 1], 0),
    ("auto", 2, 2, [0, 1], 1),
    ("auto", 2, 2, [4, 2, 7], 4),  # the usable cores in order, whatever the set's order
    ("auto", 3, 3, [0, 1], None),  # more workers than cores: the scheduler decides
    ("auto", 1, 1, [0, 1], None),  # one process: not pinned
    ("none", 1, 2, [0, 1], None),
    ("auto", 0, 2, [0, 1], None),  # not a worker slot
])
def test_affinity_cpu(mode: str, index: int, workers: int, usable: list[int],
                      want: int | None) -> None:
    assert affinity_cpu(mode, index, workers, usable) == want


def test_cpu_affinity_config_is_checked(tls_files: dict[str, Path]) -> None:
    assert parse_config(_minimal(tls_files)).server.cpu_affinity == "auto"
    none = _minimal(tls_files, '[server]\ncpu_affinity = "none"')
    assert parse_config(none).server.cpu_affinity == "none"
    with pytest.raises(ConfigError, match="cpu_affinity"):
        parse_config(_minimal(tls_files, '[server]\ncpu_affinity = "yes"'))
