"""Packaging: the wheel ships the twistd plugin without shadowing Twisted's own package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_plugin_and_no_twisted_init(tmp_path):
    """`pip wheel .` yields mxd, twisted/plugins/mxd_plugin.py and the console script, and
    no twisted/__init__.py or twisted/plugins/__init__.py (which would break Twisted)."""
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
    except ImportError:
        pytest.skip("setuptools/wheel not in this environment")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("mxd-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "twisted/plugins/mxd_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "mxd/tap.py" in names and "mxd/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mxd = mxd.cli:main" in zipfile.ZipFile(whl).read(entry).decode()
