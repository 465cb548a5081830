"""Finding the real third-party programs the integration tests drive.

Outside CI a missing program skips the test with a clear message; with ``CI=true`` it
fails, so a CI machine that lacks a tool cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

EXTRA_PATHS = ["/usr/sbin", "/usr/lib/cyrus/bin", "/usr/lib/postfix/sbin"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Return the absolute path of ``name``; fail (CI) or skip (elsewhere) when absent."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_PATHS))
    if path is None:
        msg = f"{name} is not installed (make test-deps installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_module(name: str):  # type: ignore[no-untyped-def]
    """Import a Python test helper; fail in CI, skip elsewhere when missing."""
    try:
        return __import__(name)
    except ImportError:
        msg = f"python module {name} is not installed (pip install -e .[test])"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on loopback right now (bind to 0 and release), never one this
    process was given before: the kernel may hand a just-released port out again, and
    two listeners of one test server must not get the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port")
